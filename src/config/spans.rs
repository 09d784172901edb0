//! Where each value sits in the YAML source.
//!
//! serde gives us typed values but forgets positions, and users must be told the line and column
//! of a value that is semantically wrong (an unknown pool, a duplicate listen address). A second,
//! cheap pass over the marked events of `yaml-rust2` records the position of every node under its
//! dotted path (`upstreams.balance.servers.1.weight`).

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

/// Positions of the nodes of one YAML document, by dotted path.
#[derive(Debug, Default)]
pub struct Spans {
    values: HashMap<String, Pos>,
    keys: HashMap<String, Pos>,
}

impl Spans {
    /// Indexes `src`. A document that does not parse yields an empty index: serde reports the
    /// syntax error with its own position first.
    pub fn index(src: &str) -> Spans {
        let mut rec = Recorder::default();
        let mut parser = Parser::new_from_str(src);
        if parser.load(&mut rec, false).is_err() {
            return Spans::default();
        }
        rec.spans
    }

    /// Position of the value at `path`, falling back to the nearest enclosing node.
    pub fn value(&self, path: &str) -> Pos {
        let mut p = path;
        loop {
            if let Some(pos) = self.values.get(p) {
                return *pos;
            }
            match p.rfind('.') {
                Some(i) => p = &p[..i],
                None => {
                    return self
                        .values
                        .get("")
                        .copied()
                        .unwrap_or(Pos { line: 1, col: 1 })
                }
            }
        }
    }

    /// Position of the key that names `path` (for "this entry" errors), else of its value.
    pub fn key(&self, path: &str) -> Pos {
        self.keys
            .get(path)
            .copied()
            .unwrap_or_else(|| self.value(path))
    }
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, next: usize },
}

#[derive(Default)]
struct Recorder {
    stack: Vec<Frame>,
    spans: Spans,
}

fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}.{child}")
    }
}

impl Recorder {
    /// Path of the node that starts now, advancing the parent's state. `None` means the scalar
    /// is a mapping key.
    fn next_path(&mut self, scalar: Option<&str>, mark: Marker) -> Option<String> {
        let pos = Pos {
            line: mark.line(),
            col: mark.col() + 1,
        };
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, next }) => {
                let p = join(path, &next.to_string());
                *next += 1;
                Some(p)
            }
            Some(Frame::Map { path, key }) => match key.take() {
                Some(k) => Some(join(path, &k)),
                None => {
                    // A key: remember it and where it stands. yaml-rust2 marks a block
                    // mapping's start after its first key, so the first key is where the
                    // mapping starts.
                    if let Some(start) = self.spans.values.get_mut(path.as_str()) {
                        if (pos.line, pos.col) < (start.line, start.col) {
                            *start = pos;
                        }
                    }
                    let k = scalar.unwrap_or("?").to_string();
                    self.spans.keys.insert(join(path, &k), pos);
                    *key = Some(k);
                    None
                }
            },
        }
    }
}

impl MarkedEventReceiver for Recorder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = Pos {
            line: mark.line(),
            col: mark.col() + 1,
        };
        match ev {
            Event::Scalar(ref v, ..) => {
                if let Some(p) = self.next_path(Some(v), mark) {
                    self.spans.values.insert(p, pos);
                }
            }
            Event::Alias(_) => {
                if let Some(p) = self.next_path(None, mark) {
                    self.spans.values.insert(p, pos);
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let p = self.next_path(None, mark).unwrap_or_default();
                self.spans.values.insert(p.clone(), pos);
                self.stack.push(if matches!(ev, Event::MappingStart(..)) {
                    Frame::Map { path: p, key: None }
                } else {
                    Frame::Seq { path: p, next: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_positions() {
        let s = Spans::index("a:\n  b: 1\n  c:\n    - x: 2\n    - 3\n");
        assert_eq!(s.value("a.b"), Pos { line: 2, col: 6 });
        assert_eq!(s.key("a.b"), Pos { line: 2, col: 3 });
        assert_eq!(s.value("a.c.0.x"), Pos { line: 4, col: 10 });
        assert_eq!(s.value("a.c.1"), Pos { line: 5, col: 7 });
        // Unknown paths fall back to the nearest parent.
        assert_eq!(s.value("a.c.1.zz"), Pos { line: 5, col: 7 });
    }

    #[test]
    fn a_mapping_starts_at_its_first_key() {
        let s = Spans::index("a:\n  b: 1\n  c:\n    - x: 2\nd: { e: 1 }\n");
        assert_eq!(s.value(""), Pos { line: 1, col: 1 });
        assert_eq!(s.value("a"), Pos { line: 2, col: 3 });
        assert_eq!(s.value("a.c"), Pos { line: 4, col: 5 });
        assert_eq!(s.value("a.c.0"), Pos { line: 4, col: 7 });
        assert_eq!(s.value("d"), Pos { line: 5, col: 4 });
    }
}
