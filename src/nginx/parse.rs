//! Tokens into a tree of directives, with `include` expanded in place (globs as nginx's
//! `glob(3)`: sorted, a pattern that matches nothing is no error).
//!
//! nginx's stock parameter files (`uwsgi_params`, `mime.types`, ...) are often included by a
//! bare name resolved against `/etc/nginx`; when such a file is not beside the config, the
//! `include` stays in the tree so that the importer can stand in graygate's built-in defaults.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::lexer::{tokenize, Pos, Tok, Token};

/// The stock files of nginx's `conf/` directory that graygate has built in.
pub const STOCK_FILES: &[&str] = &[
    "uwsgi_params",
    "fastcgi_params",
    "fastcgi.conf",
    "scgi_params",
    "proxy_params",
    "mime.types",
];

/// Where something was written: file, line, column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loc {
    pub file: Arc<str>,
    pub pos: Pos,
}

impl std::fmt::Display for Loc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.pos.line, self.pos.col)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arg {
    pub text: String,
    pub quoted: bool,
}

#[derive(Debug, Clone)]
pub struct Directive {
    pub name: String,
    pub args: Vec<Arg>,
    /// `Some` for a block directive (`http { ... }`), even an empty one.
    pub block: Option<Vec<Directive>>,
    pub loc: Loc,
}

impl Directive {
    pub fn arg(&self, i: usize) -> Option<&str> {
        self.args.get(i).map(|a| a.text.as_str())
    }
}

/// An error with the place it was found.
#[derive(Debug, Clone)]
pub struct ParseError {
    pub loc: Loc,
    pub msg: String,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.loc, self.msg)
    }
}

const MAX_INCLUDE_DEPTH: usize = 16;

/// Reads `path` and every file it includes.
pub fn parse_file(path: &Path) -> Result<Vec<Directive>, ParseError> {
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let here = Loc {
        file: Arc::from(path.display().to_string()),
        pos: Pos { line: 1, col: 1 },
    };
    let src = read(path, &here)?;
    parse_str(&src, path, &base, 0)
}

fn read(path: &Path, at: &Loc) -> Result<String, ParseError> {
    std::fs::read_to_string(path).map_err(|e| ParseError {
        loc: at.clone(),
        msg: format!("open() \"{}\" failed ({e})", path.display()),
    })
}

/// Parses `src` (read from `path`); relative includes resolve against `base`, the directory of
/// the top file, as nginx resolves them against its prefix.
pub fn parse_str(
    src: &str,
    path: &Path,
    base: &Path,
    depth: usize,
) -> Result<Vec<Directive>, ParseError> {
    let file: Arc<str> = Arc::from(path.display().to_string());
    let tokens = tokenize(src).map_err(|(pos, msg)| ParseError {
        loc: Loc {
            file: file.clone(),
            pos,
        },
        msg,
    })?;
    let mut p = Parser {
        tokens,
        at: 0,
        file,
        base: base.to_path_buf(),
        depth,
    };
    let body = p.block(false)?;
    Ok(body)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    file: Arc<str>,
    base: PathBuf,
    depth: usize,
}

impl Parser {
    fn loc(&self, pos: Pos) -> Loc {
        Loc {
            file: self.file.clone(),
            pos,
        }
    }

    fn end_loc(&self) -> Loc {
        let pos = self
            .tokens
            .last()
            .map(|t| t.pos)
            .unwrap_or(Pos { line: 1, col: 1 });
        self.loc(pos)
    }

    /// Directives up to the matching `}` (`nested`) or the end of the file.
    fn block(&mut self, nested: bool) -> Result<Vec<Directive>, ParseError> {
        let mut out = Vec::new();
        loop {
            let Some(t) = self.tokens.get(self.at).cloned() else {
                if nested {
                    return Err(ParseError {
                        loc: self.end_loc(),
                        msg: "unexpected end of file, expecting \"}\"".into(),
                    });
                }
                return Ok(out);
            };
            self.at += 1;
            let name = match t.tok {
                Tok::Close if nested => return Ok(out),
                Tok::Word { text, .. } => text,
                other => {
                    let c = match other {
                        Tok::Semi => ";",
                        Tok::Open => "{",
                        _ => "}",
                    };
                    return Err(ParseError {
                        loc: self.loc(t.pos),
                        msg: format!("unexpected \"{c}\""),
                    });
                }
            };
            let mut d = Directive {
                name,
                args: Vec::new(),
                block: None,
                loc: self.loc(t.pos),
            };
            loop {
                let Some(a) = self.tokens.get(self.at).cloned() else {
                    return Err(ParseError {
                        loc: self.end_loc(),
                        msg: "unexpected end of file, expecting \";\" or \"}\"".into(),
                    });
                };
                self.at += 1;
                match a.tok {
                    Tok::Word { text, quoted } => d.args.push(Arg { text, quoted }),
                    Tok::Semi => break,
                    Tok::Open => {
                        d.block = Some(self.block(true)?);
                        break;
                    }
                    Tok::Close => {
                        return Err(ParseError {
                            loc: self.loc(a.pos),
                            msg: "unexpected \"}\"".into(),
                        })
                    }
                }
            }
            if d.name == "include" && d.block.is_none() {
                out.extend(self.include(d)?);
            } else {
                out.push(d);
            }
        }
    }

    fn include(&self, d: Directive) -> Result<Vec<Directive>, ParseError> {
        let [pattern] = d.args.as_slice() else {
            return Err(ParseError {
                loc: d.loc,
                msg: "invalid number of arguments in \"include\" directive".into(),
            });
        };
        if self.depth >= MAX_INCLUDE_DEPTH {
            return Err(ParseError {
                loc: d.loc,
                msg: format!("includes nested deeper than {MAX_INCLUDE_DEPTH} (a loop?)"),
            });
        }
        let full = self.base.join(&pattern.text);
        let files = if has_glob(&pattern.text) {
            glob(&full)
        } else if full.exists() {
            vec![full]
        } else if STOCK_FILES.contains(&pattern.text.rsplit('/').next().unwrap_or("")) {
            return Ok(vec![d]);
        } else {
            return Err(ParseError {
                loc: d.loc,
                msg: format!(
                    "open() \"{}\" failed (2: No such file or directory)",
                    full.display()
                ),
            });
        };
        let mut out = Vec::new();
        for f in files {
            let src = read(&f, &d.loc)?;
            out.extend(parse_str(&src, &f, &self.base, self.depth + 1)?);
        }
        Ok(out)
    }
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The files `pattern` names, sorted; wildcards work within each path component.
fn glob(pattern: &Path) -> Vec<PathBuf> {
    let mut found = vec![PathBuf::new()];
    for comp in pattern.components() {
        let part = comp.as_os_str().to_string_lossy();
        let mut next = Vec::new();
        for dir in &found {
            if !has_glob(&part) {
                next.push(dir.join(comp.as_os_str()));
                continue;
            }
            let Ok(rd) = std::fs::read_dir(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            }) else {
                continue;
            };
            let mut names: Vec<String> = rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.') && wildcard(part.as_bytes(), n.as_bytes()))
                .collect();
            names.sort();
            next.extend(names.into_iter().map(|n| dir.join(n)));
        }
        found = next;
    }
    found.retain(|p| p.is_file());
    found
}

/// `*`, `?` and `[abc]`/`[a-z]`/`[!x]` against one name.
fn wildcard(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') => (0..=s.len()).any(|i| wildcard(&p[1..], &s[i..])),
        Some(b'?') => !s.is_empty() && wildcard(&p[1..], &s[1..]),
        Some(b'[') => {
            let Some(end) = p.iter().skip(1).position(|&c| c == b']').map(|e| e + 1) else {
                return s.first() == Some(&b'[') && wildcard(&p[1..], &s[1..]);
            };
            let Some(&c) = s.first() else { return false };
            let (neg, set) = match p[1..end].split_first() {
                Some((b'!', rest)) => (true, rest),
                _ => (false, &p[1..end]),
            };
            let mut hit = false;
            let mut i = 0;
            while i < set.len() {
                if i + 2 < set.len() && set[i + 1] == b'-' {
                    hit |= set[i] <= c && c <= set[i + 2];
                    i += 3;
                } else {
                    hit |= set[i] == c;
                    i += 1;
                }
            }
            hit != neg && wildcard(&p[end + 1..], &s[1..])
        }
        Some(&c) => s.first() == Some(&c) && wildcard(&p[1..], &s[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(src: &str) -> Result<Vec<Directive>, ParseError> {
        parse_str(src, Path::new("t.conf"), Path::new("/nonexistent"), 0)
    }

    #[test]
    fn blocks_nest() {
        let t = tree("http { upstream b { ip_hash; } server { listen 80; } }").unwrap();
        assert_eq!(t.len(), 1);
        let http = t[0].block.as_ref().unwrap();
        assert_eq!(http[0].name, "upstream");
        assert_eq!(http[0].arg(0), Some("b"));
        assert_eq!(http[1].block.as_ref().unwrap()[0].arg(0), Some("80"));
    }

    #[test]
    fn errors_name_the_place() {
        let e = tree("http {\n  server {\n").unwrap_err();
        assert!(e.msg.contains("expecting \"}\""), "{e}");
        let e = tree("a b;\n}").unwrap_err();
        assert_eq!(e.to_string(), "t.conf:2:1: unexpected \"}\"");
        let e = tree("a b").unwrap_err();
        assert!(e.msg.contains("expecting \";\""), "{e}");
        let e = tree("include missing.conf;").unwrap_err();
        assert!(e.msg.contains("No such file"), "{e}");
    }

    #[test]
    fn stock_includes_stay() {
        let t = tree("location / { include uwsgi_params; }").unwrap();
        assert_eq!(t[0].block.as_ref().unwrap()[0].name, "include");
    }

    #[test]
    fn globs() {
        assert!(wildcard(b"*.conf", b"a.conf"));
        assert!(!wildcard(b"*.conf", b"a.conf.bak"));
        assert!(wildcard(b"s[0-9]?.c*", b"s1x.conf"));
        assert!(!wildcard(b"[!a]*", b"abc"));
        let dir = std::env::temp_dir().join(format!("gg-glob-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("conf.d")).unwrap();
        std::fs::write(dir.join("conf.d/b.conf"), "b 2;").unwrap();
        std::fs::write(dir.join("conf.d/a.conf"), "a 1;").unwrap();
        std::fs::write(dir.join("conf.d/c.txt"), "c 3;").unwrap();
        std::fs::write(dir.join("main.conf"), "include conf.d/*.conf;\nz;").unwrap();
        let t = parse_file(&dir.join("main.conf")).unwrap();
        let names: Vec<_> = t.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "z"]);
        assert!(t[0].loc.file.ends_with("a.conf"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn include_loops_stop() {
        let dir = std::env::temp_dir().join(format!("gg-loop-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.conf"), "include a.conf;").unwrap();
        let e = parse_file(&dir.join("a.conf")).unwrap_err();
        assert!(e.msg.contains("nested deeper"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
