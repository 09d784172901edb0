//! The config bytes the master checked, handed to workers as they are.
//!
//! The master reads the file once per start, reload or upgrade, compiles it, and gives the
//! very same bytes to the worker in an anonymous in-memory file (`memfd`) that the worker
//! inherits: a file saved between the master's check and the worker's start can never make a
//! worker apply something that was not checked. An in-place reload rewrites that memfd before
//! the worker's `SIGHUP`.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::config::{self, Pos, Problem, Problems};
use crate::plan::Plan;

/// Environment variable naming the worker's config memfd.
pub const CONF_FD_ENV: &str = "GRAYGATE_CONF_FD";

/// A config file's bytes and where they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// `None` for the embedded default.
    pub path: Option<PathBuf>,
    pub text: String,
}

impl Source {
    /// Reads `path` (or takes the embedded default).
    pub fn read(path: Option<&Path>) -> Result<Source, Problems> {
        let Some(p) = path else {
            return Ok(Source {
                path: None,
                text: config::EMBEDDED.to_string(),
            });
        };
        let text = std::fs::read_to_string(p).map_err(|e| {
            Problems::one(Problem::new(
                &p.display().to_string(),
                Pos { line: 0, col: 0 },
                format!("cannot read: {e}"),
            ))
        })?;
        Ok(Source {
            path: Some(p.to_path_buf()),
            text,
        })
    }

    /// The name used in messages.
    pub fn name(&self) -> String {
        match &self.path {
            Some(p) => p.display().to_string(),
            None => config::EMBEDDED_NAME.to_string(),
        }
    }

    /// Parses and checks these bytes (`prev`: the running plan, whose servers keep state).
    pub fn compile(&self, prev: Option<&Plan>) -> Result<Plan, Problems> {
        self.compile_noting(prev).map(|(p, _)| p)
    }

    /// [`Source::compile`], with the notices a start logs once: keys accepted but ignored.
    pub fn compile_noting(&self, prev: Option<&Plan>) -> Result<(Plan, Vec<String>), Problems> {
        let l = config::parse(self.name(), &self.text, self.path.is_none())?;
        let mut notes = Vec::new();
        if l.config.upgrade_sock.is_some() {
            notes.push(
                "upgrade_sock is ignored (listening sockets pass from the master by inheritance)"
                    .to_string(),
            );
        }
        Plan::compile(&l, prev).map(|p| (p, notes))
    }

    /// A new memfd holding these bytes.
    pub fn to_memfd(&self) -> io::Result<File> {
        let f = super::os::memfd("graygate-config")?;
        self.write_to(&f)?;
        Ok(f)
    }

    /// Replaces the content of `f` (a worker's memfd) with these bytes.
    pub fn write_to(&self, mut f: &File) -> io::Result<()> {
        f.set_len(0)?;
        f.seek(SeekFrom::Start(0))?;
        match &self.path {
            Some(p) => writeln!(f, "file {}", p.display())?,
            None => writeln!(f, "embedded")?,
        }
        f.write_all(self.text.as_bytes())?;
        f.flush()
    }

    /// Reads what [`Source::write_to`] wrote.
    pub fn read_from(mut f: &File) -> io::Result<Source> {
        f.seek(SeekFrom::Start(0))?;
        let mut all = String::new();
        f.read_to_string(&mut all)?;
        let (head, text) = all.split_once('\n').unwrap_or((all.as_str(), ""));
        let path = match head {
            "embedded" => None,
            h => Some(PathBuf::from(h.strip_prefix("file ").ok_or_else(|| {
                io::Error::other(format!("bad config hand-over header {h:?}"))
            })?)),
        };
        Ok(Source {
            path,
            text: text.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memfd_round_trip_keeps_path_and_bytes() {
        for s in [
            Source {
                path: Some("/etc/graygate/a b.yaml".into()),
                text: "pid_file: x\n# café\n".into(),
            },
            Source {
                path: None,
                text: config::EMBEDDED.into(),
            },
        ] {
            let f = s.to_memfd().unwrap();
            assert_eq!(Source::read_from(&f).unwrap(), s);
            let shorter = Source {
                path: None,
                text: "a".into(),
            };
            shorter.write_to(&f).unwrap();
            assert_eq!(Source::read_from(&f).unwrap(), shorter);
        }
    }
}
