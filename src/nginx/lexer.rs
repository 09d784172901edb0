//! nginx's config grammar as tokens: words (bare, `"double"` or `'single'` quoted, with `\`
//! escapes), `;`, `{`, `}` and `#` comments, each with its line and column.
//!
//! It follows `ngx_conf_read_token`: a `#` starts a comment only where a token could start, a
//! quote only at the start of a word, `${name}` inside a word does not open a block, and a
//! quoted word must be followed by a space or `;`/`{`/`}`.

/// Where a token starts: 1-based line and column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tok {
    /// A directive name or argument, unquoted and unescaped; `quoted` keeps that it was quoted
    /// (`"~"` is an argument, `~` may be a location modifier).
    Word {
        text: String,
        quoted: bool,
    },
    Semi,
    Open,
    Close,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub tok: Tok,
    pub pos: Pos,
}

/// Splits `src` into tokens, or says where it stops making sense.
pub fn tokenize(src: &str) -> Result<Vec<Token>, (Pos, String)> {
    let mut out = Vec::new();
    let mut it = Chars::new(src);
    while let Some((pos, c)) = it.peek() {
        match c {
            c if c.is_whitespace() => {
                it.next();
            }
            '#' => {
                while let Some((_, c)) = it.next() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            ';' | '{' | '}' => {
                it.next();
                let tok = match c {
                    ';' => Tok::Semi,
                    '{' => Tok::Open,
                    _ => Tok::Close,
                };
                out.push(Token { tok, pos });
            }
            '"' | '\'' => {
                it.next();
                let text = quoted(&mut it, c, pos)?;
                if let Some((p, n)) = it.peek() {
                    if !(n.is_whitespace() || matches!(n, ';' | '{' | '}')) {
                        return Err((p, format!("unexpected \"{n}\" after a quoted string")));
                    }
                }
                out.push(Token {
                    tok: Tok::Word { text, quoted: true },
                    pos,
                });
            }
            _ => {
                let text = bare(&mut it)?;
                out.push(Token {
                    tok: Tok::Word {
                        text,
                        quoted: false,
                    },
                    pos,
                });
            }
        }
    }
    Ok(out)
}

/// The rest of a quoted word; nginx keeps `\x` as is except for `\"`, `\'`, `\\`, `\t`, `\r`, `\n`.
fn quoted(it: &mut Chars, q: char, start: Pos) -> Result<String, (Pos, String)> {
    let mut s = String::new();
    loop {
        match it.next() {
            None => return Err((start, "unterminated quoted string".into())),
            Some((_, c)) if c == q => return Ok(s),
            Some((_, '\\')) => match it.next() {
                None => return Err((start, "unterminated quoted string".into())),
                Some((_, c)) => unescape(&mut s, c),
            },
            Some((_, c)) => s.push(c),
        }
    }
}

/// nginx's escapes after a `\`; anything else keeps its backslash.
fn unescape(s: &mut String, c: char) {
    match c {
        '"' | '\'' | '\\' => s.push(c),
        't' => s.push('\t'),
        'r' => s.push('\r'),
        'n' => s.push('\n'),
        c => {
            s.push('\\');
            s.push(c);
        }
    }
}

/// A bare word ends at whitespace, `;`, `{` (unless it follows `$`) or `}` (unless it closes
/// a `${`); a `\` escapes the next character.
fn bare(it: &mut Chars) -> Result<String, (Pos, String)> {
    let mut s = String::new();
    let mut in_var = false;
    while let Some((pos, c)) = it.peek() {
        match c {
            c if c.is_whitespace() => break,
            ';' => break,
            '{' if s.ends_with('$') => {
                in_var = true;
                s.push(c);
                it.next();
            }
            '}' if in_var => {
                in_var = false;
                s.push(c);
                it.next();
            }
            '{' | '}' => break,
            '\\' => {
                // As in quoted words: `\"`, `\'`, `\\`, `\t`, `\r`, `\n` are escapes, any other
                // `\x` stays as written (regexes: `\.`, `\d`).
                it.next();
                match it.next() {
                    Some((_, n)) => unescape(&mut s, n),
                    None => return Err((pos, "unexpected end of file after \"\\\"".into())),
                }
            }
            _ => {
                s.push(c);
                it.next();
            }
        }
    }
    if in_var {
        if let Some((pos, _)) = it.peek() {
            return Err((
                pos,
                "the closing bracket in a \"${\" variable is missing".into(),
            ));
        }
    }
    Ok(s)
}

/// Characters with their positions, one of lookahead.
struct Chars<'a> {
    inner: std::iter::Peekable<std::str::Chars<'a>>,
    line: usize,
    col: usize,
}

impl<'a> Chars<'a> {
    fn new(src: &'a str) -> Self {
        Chars {
            inner: src.chars().peekable(),
            line: 1,
            col: 1,
        }
    }

    fn peek(&mut self) -> Option<(Pos, char)> {
        let pos = Pos {
            line: self.line,
            col: self.col,
        };
        self.inner.peek().map(|&c| (pos, c))
    }

    fn next(&mut self) -> Option<(Pos, char)> {
        let (pos, c) = self.peek()?;
        self.inner.next();
        if c == '\n' {
            self.line += 1;
            self.col = 1;
        } else {
            self.col += 1;
        }
        Some((pos, c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(src: &str) -> Vec<String> {
        tokenize(src)
            .unwrap()
            .into_iter()
            .map(|t| match t.tok {
                Tok::Word { text, .. } => text,
                Tok::Semi => ";".into(),
                Tok::Open => "{".into(),
                Tok::Close => "}".into(),
            })
            .collect()
    }

    #[test]
    fn splits_words_blocks_and_comments() {
        assert_eq!(
            words("upstream b { ip_hash; # sticky\n server 127.0.0.1:1 weight=2; }"),
            [
                "upstream",
                "b",
                "{",
                "ip_hash",
                ";",
                "server",
                "127.0.0.1:1",
                "weight=2",
                ";",
                "}"
            ]
        );
        assert_eq!(
            words("location ~/media/{root /x;}"),
            ["location", "~/media/", "{", "root", "/x", ";", "}"]
        );
    }

    #[test]
    fn quotes_escapes_and_variables() {
        assert_eq!(
            words(r#"log_format m '$remote_addr "$request"' "a\"b\\c\n";"#),
            [
                "log_format",
                "m",
                "$remote_addr \"$request\"",
                "a\"b\\c\n",
                ";"
            ]
        );
        assert_eq!(words("set $x ${host}a;"), ["set", "$x", "${host}a", ";"]);
        assert_eq!(words("a b\\ c;"), ["a", "b\\ c", ";"]);
        assert_eq!(
            words("location ~ /\\.ht {"),
            ["location", "~", "/\\.ht", "{"]
        );
        assert_eq!(words("a b\\;c;"), ["a", "b\\;c", ";"]);
    }

    #[test]
    fn positions_and_errors() {
        let t = tokenize("a;\n  bb \"c\";").unwrap();
        assert_eq!(t[2].pos, Pos { line: 2, col: 3 });
        assert_eq!(t[3].pos, Pos { line: 2, col: 6 });
        let e = tokenize("a \"unterminated;\n").unwrap_err();
        assert_eq!(e.0, Pos { line: 1, col: 3 });
        assert!(e.1.contains("unterminated"));
        let e = tokenize("a \"x\"y;").unwrap_err();
        assert_eq!((e.0.line, e.0.col), (1, 6));
    }
}
