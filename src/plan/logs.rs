//! `log_formats` (nginx's `log_format NAME '...'`) and each server's access log format.
//!
//! A format is compiled once, at load, into a [`Template`] of literal pieces and variables;
//! a request only walks that list. `combined` is built in and written by its own code
//! ([`access::combined`]), the fastest path, since it is what nearly everybody logs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::{Loaded, Problems, Server};
use crate::logs::access::{self, Entry, RequestLine};

use super::template::{self, Template, Vars};

/// The built-in format's name, nginx's default.
pub const COMBINED: &str = "combined";

/// How a server's access log lines look.
#[derive(Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// nginx's `combined`.
    Combined,
    /// A `log_formats` entry.
    Custom(Template),
}

impl LogFormat {
    /// Appends one line for a request known only by its head (one the gateway refused before
    /// it reached the proxy), newline included.
    pub fn write_entry(&self, out: &mut Vec<u8>, e: &Entry<'_>) {
        match self {
            LogFormat::Combined => access::combined(out, e),
            LogFormat::Custom(t) => {
                t.render_log(e, out);
                out.push(b'\n');
            }
        }
    }
}

/// The formats of a file by name, `combined` included.
pub(super) struct Formats(HashMap<String, Arc<LogFormat>>);

impl Formats {
    fn known(&self) -> String {
        let mut names: Vec<&str> = self.0.keys().map(String::as_str).collect();
        names.sort_unstable();
        names.join(", ")
    }
}

/// `log_formats`: every entry compiled; a mistake is reported at the variable at fault.
pub(super) fn compile_formats(l: &Loaded, probs: &mut Problems) -> Formats {
    let mut map = HashMap::new();
    map.insert(COMBINED.to_string(), Arc::new(LogFormat::Combined));
    for (name, text) in &l.config.log_formats {
        let at = format!("log_formats.{name}");
        if name == COMBINED {
            probs.push(l.problem_at_key(
                &at,
                "log format \"combined\" is built in and cannot be redefined (give yours another name)",
            ));
            continue;
        }
        match Template::compile_log(text) {
            Ok(t) => {
                map.insert(name.clone(), Arc::new(LogFormat::Custom(t)));
            }
            Err(e) => probs.push(template::problem(l, &at, text, e)),
        }
    }
    Formats(map)
}

/// A server's access log: its file (`None` for none or `off`) and its format.
pub(super) fn server_access_log(
    l: &Loaded,
    base: &str,
    s: &Server,
    formats: &Formats,
    probs: &mut Problems,
) -> (Option<String>, Arc<LogFormat>) {
    let combined = || Arc::new(LogFormat::Combined);
    let Some(a) = &s.access_log else {
        return (None, combined());
    };
    let name = a.format.as_deref().unwrap_or(COMBINED);
    let format = match formats.0.get(name) {
        Some(f) => Arc::clone(f),
        None => {
            // A format with a mistake is already reported; only a name never defined is new.
            if !l.config.log_formats.contains_key(name) {
                probs.push(l.problem_at(
                    &format!("{base}.access_log.format"),
                    format!(
                        "unknown log format \"{name}\" (log_formats: {})",
                        formats.known()
                    ),
                ));
            }
            combined()
        }
    };
    (a.file().map(str::to_string), format)
}

/// A refused request's head, seen through the variables: what the head says, nothing of a
/// proxy or a response beyond its status.
impl Vars for Entry<'_> {
    fn client(&self) -> Option<SocketAddr> {
        self.remote_addr.map(|ip| SocketAddr::new(ip, 0))
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        match name {
            "authorization" => self.authorization,
            "referer" => self.referer,
            "user-agent" => self.user_agent,
            _ => None,
        }
    }
    fn host(&self) -> &[u8] {
        b""
    }
    fn path_and_query(&self) -> &str {
        std::str::from_utf8(self.request.uri).unwrap_or("")
    }
    fn method(&self) -> &str {
        self.request.method
    }
    fn server_port(&self) -> Option<u16> {
        None
    }
    fn request_line(&self) -> Option<RequestLine<'_>> {
        Some(RequestLine {
            method: self.request.method,
            uri: self.request.uri,
            version: self.request.version,
        })
    }
    fn status(&self) -> Option<u16> {
        Some(self.status)
    }
    fn body_bytes_sent(&self) -> Option<usize> {
        Some(self.body_bytes_sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::plan::Plan;

    /// A file with `formats` under `log_formats` and one server whose `access_log` is `log`.
    fn file(formats: &str, log: &str) -> String {
        format!(
            "log_formats:\n{formats}upstreams:\n  p:\n    servers: [{{ addr: 127.0.0.1:2 }}]\nservers:\n  s:\n    listen: [\"127.0.0.1:1\"]\n    access_log: {log}\n    locations: [{{ match: /, proxy_pass: p }}]\n"
        )
    }

    fn compile(src: &str) -> Result<Plan, Vec<String>> {
        let l = config::parse("t.yaml".into(), src, false).map_err(|e| vec![e.to_string()])?;
        Plan::compile(&l, None).map_err(|e| e.0.iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn formats_compile_and_servers_pick_theirs() {
        let p = compile(&file(
            "  up: '$remote_addr \"$request\" $upstream_addr $upstream_status'\n",
            "{ path: /tmp/a.log, format: up }",
        ))
        .unwrap();
        assert!(matches!(*p.servers[0].access_format, LogFormat::Custom(_)));
        assert_eq!(p.servers[0].access_log.as_deref(), Some("/tmp/a.log"));
        // The string form and `off` keep working; `combined` is the default and a name.
        let p = compile(&file("  up: x\n", "/tmp/a.log")).unwrap();
        assert_eq!(*p.servers[0].access_format, LogFormat::Combined);
        let p = compile(&file("  up: x\n", "{ path: off, format: combined }")).unwrap();
        assert_eq!(p.servers[0].access_log, None);
        let p = compile(&file("  up: x\n", "off")).unwrap();
        assert_eq!(p.servers[0].access_log, None);
    }

    #[test]
    fn mistakes_are_placed_at_the_variable_or_name() {
        // Plain, double-quoted (an escape before the variable) and single-quoted scalars.
        assert_eq!(
            compile(&file("  a: $remote_addr $nope\n", "/tmp/a.log")).unwrap_err(),
            ["t.yaml:2:19: unknown variable \"$nope\""]
        );
        assert_eq!(
            compile(&file("  a: \"\\t$status ${bad}\"\n", "/tmp/a.log")).unwrap_err(),
            ["t.yaml:2:17: unknown variable \"$bad\""]
        );
        assert_eq!(
            compile(&file(
                "  a: 'x $nope $nope'\n  b: '$uri $cookie_'\n",
                "/tmp/a.log"
            ))
            .unwrap_err(),
            [
                "t.yaml:2:9: unknown variable \"$nope\"",
                "t.yaml:3:12: unknown variable \"$cookie_\""
            ]
        );
        assert_eq!(
            compile(&file("  a: x\n", "{ path: /tmp/a.log, format: main }")).unwrap_err(),
            ["t.yaml:9:45: unknown log format \"main\" (log_formats: a, combined)"]
        );
        assert_eq!(
            compile(&file("  combined: x\n", "/tmp/a.log")).unwrap_err(),
            ["t.yaml:2:3: log format \"combined\" is built in and cannot be redefined (give yours another name)"]
        );
        let e = compile(&file("  a: x\n", "{ path: /tmp/a.log, fmt: a }")).unwrap_err();
        assert!(e[0].contains("unknown field `fmt`"), "{e:?}");
        // A header template refuses what only a log line knows, at the variable.
        let src = file("  a: x\n", "/tmp/a.log").replace(
            "proxy_pass: p }",
            "proxy_pass: p, proxy_set_header: { X-S: \"s=$status\" } }",
        );
        let e = compile(&src).unwrap_err();
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("t.yaml:10:"), "{e:?}");
        assert!(
            e[0].contains("\"$status\" is known only once the response is sent"),
            "{e:?}"
        );
    }
}
