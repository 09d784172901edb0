//! import-nginx for uwsgi apps: `uwsgi_pass`, `uwsgi_param` (with nginx's inheritance: a
//! level that sets any replaces the whole inherited list), `include uwsgi_params` and the
//! `uwsgi_*_timeout`s.
//!
//! graygate always sends the CGI variables of nginx's stock `uwsgi_params`, so that file,
//! whether found beside the config (and read) or not (a marker), adds nothing to the YAML;
//! only `uwsgi_param` lines that differ from it are carried over.

use indexmap::IndexMap;
use serde_yaml::{Mapping, Value};

use super::super::parse::Directive;
use super::Out;

/// nginx's stock `uwsgi_params`, which graygate has built in.
const STOCK: [(&str, &str); 14] = [
    ("QUERY_STRING", "$query_string"),
    ("REQUEST_METHOD", "$request_method"),
    ("CONTENT_TYPE", "$content_type"),
    ("CONTENT_LENGTH", "$content_length"),
    ("REQUEST_URI", "$request_uri"),
    ("PATH_INFO", "$document_uri"),
    ("DOCUMENT_ROOT", "$document_root"),
    ("SERVER_PROTOCOL", "$server_protocol"),
    ("REQUEST_SCHEME", "$scheme"),
    ("HTTPS", "$https"),
    ("REMOTE_ADDR", "$remote_addr"),
    ("REMOTE_PORT", "$remote_port"),
    ("SERVER_PORT", "$server_port"),
    ("SERVER_NAME", "$server_name"),
];

/// What a block inherits.
#[derive(Clone, Default)]
pub(super) struct Scope {
    /// `uwsgi_param` lines other than the stock ones.
    params: IndexMap<String, String>,
    /// Whether this level set its own list (then it replaces the inherited one).
    own: bool,
    /// Whether the list in force includes the stock file (`DOCUMENT_ROOT` then follows `root`).
    stock: bool,
    timeouts: IndexMap<&'static str, String>,
}

impl Scope {
    /// The scope a nested block starts from.
    pub(super) fn child(&self) -> Scope {
        Scope {
            own: false,
            ..self.clone()
        }
    }

    fn own_list(&mut self) {
        if !self.own {
            self.params.clear();
            self.stock = false;
            self.own = true;
        }
    }
}

/// Takes `d` if it is a uwsgi setting valid at any level; false otherwise.
pub(super) fn setting(d: &Directive, scope: &mut Scope, out: &mut Out) -> bool {
    match d.name.as_str() {
        "include" if d.arg(0).and_then(|a| a.rsplit('/').next()) == Some("uwsgi_params") => {
            scope.own_list();
            scope.stock = true;
        }
        "uwsgi_param" => {
            let name = d.arg(0).unwrap_or_default();
            let value = d.arg(1).unwrap_or_default();
            scope.own_list();
            if STOCK.contains(&(name, value)) {
                // The stock file's line (read from the file, or written out): built in.
                scope.stock = true;
                return true;
            }
            if let Err(e) = crate::plan::Template::compile(value) {
                out.note(d, true, format!("not carried over: {}", e.msg));
                return true;
            }
            if d.arg(2) == Some("if_not_empty") {
                out.note(d, false, "if_not_empty: sent even when empty");
            }
            scope.params.insert(name.to_string(), value.to_string());
        }
        "uwsgi_connect_timeout" | "uwsgi_read_timeout" | "uwsgi_send_timeout" => {
            let key = match d.name.as_str() {
                "uwsgi_connect_timeout" => "uwsgi_connect_timeout",
                "uwsgi_read_timeout" => "uwsgi_read_timeout",
                _ => "uwsgi_send_timeout",
            };
            let v = d.arg(0).unwrap_or_default().to_string();
            scope.timeouts.insert(key, v);
        }
        "uwsgi_pass_request_headers" if d.arg(0) == Some("off") => {
            out.note(d, true, "graygate always passes the request headers");
        }
        "uwsgi_pass_request_headers" => {}
        _ => return false,
    }
    true
}

/// `uwsgi_pass NAME|ADDR|unix:PATH` (optionally `uwsgi://`) -> what graygate's `uwsgi_pass`
/// takes: an upstream's name, or the address itself (graygate makes it a pool of its own).
pub(super) fn pass(d: &Directive, out: &mut Out) -> Option<String> {
    let target = d.arg(0)?;
    if target.contains('$') {
        out.note(d, true, "variables in uwsgi_pass are not translated");
        return None;
    }
    if target.starts_with("suwsgi://") {
        out.note(d, true, "uwsgi over TLS (suwsgi) is not translated");
        return None;
    }
    let t = target.strip_prefix("uwsgi://").unwrap_or(target);
    if out.upstreams.contains_key(t) || t.starts_with("unix:/") {
        return Some(t.to_string());
    }
    if !t.contains(':') {
        // nginx: `no port in upstream "..."`, unless an upstream of that name exists.
        out.note(d, true, format!("no upstream \"{t}\" and no port"));
        return None;
    }
    Some(t.to_string())
}

/// The location's uwsgi keys, for `uwsgi_pass` target `to` with `root` (the one in force).
pub(super) fn emit(m: &mut Mapping, to: String, scope: &Scope, root: Option<&Value>) {
    m.insert("uwsgi_pass".into(), to.into());
    let mut params = Mapping::new();
    if let (true, Some(r)) = (scope.stock, root) {
        // nginx's `DOCUMENT_ROOT $document_root`: the location's root.
        if !scope.params.contains_key("DOCUMENT_ROOT") {
            params.insert("DOCUMENT_ROOT".into(), r.clone());
        }
    }
    for (k, v) in &scope.params {
        params.insert(k.as_str().into(), v.as_str().into());
    }
    if !params.is_empty() {
        m.insert("uwsgi_param".into(), Value::Mapping(params));
    }
    for (k, v) in &scope.timeouts {
        m.insert((*k).into(), v.as_str().into());
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_yaml::Value;

    use crate::nginx::import::{import, Imported};
    use crate::nginx::parse::parse_str;

    fn run(src: &str) -> Imported {
        let tree = parse_str(src, Path::new("nginx.conf"), Path::new("/nonexistent"), 0).unwrap();
        import(&tree)
    }

    #[test]
    fn params_inherit_as_nginx_and_the_result_compiles() {
        let i = run("upstream apps { ip_hash; server 127.0.0.1:3001; server 127.0.0.1:3002; }
server { listen 8090;
  uwsgi_param X_SITE main;
  uwsgi_read_timeout 5s;
  location / { uwsgi_pass apps; }
  location /own { include uwsgi_params; uwsgi_param X_OWN \"$remote_addr-$arg_a\"; uwsgi_pass uwsgi://127.0.0.1:3003; }
  location /sock { uwsgi_param QUERY_STRING $query_string; uwsgi_param REMOTE_ADDR $http_x_real_ip; uwsgi_pass unix:/run/app.sock; uwsgi_connect_timeout 2s; }
  location /bad { uwsgi_param X_ROOT $document_root; uwsgi_pass 127.0.0.1:3004; }
}");
        let v: Value = serde_yaml::from_str(&i.yaml).unwrap();
        let locs = v["servers"]["listen_8090"]["locations"]
            .as_sequence()
            .unwrap();
        assert_eq!(locs[0]["uwsgi_pass"], Value::from("apps"));
        assert_eq!(locs[0]["uwsgi_param"]["X_SITE"], Value::from("main"));
        assert_eq!(locs[0]["uwsgi_read_timeout"], Value::from("5s"));
        // A location's own list replaces the server's.
        assert!(locs[1]["uwsgi_param"].get("X_SITE").is_none(), "{}", i.yaml);
        assert_eq!(
            locs[1]["uwsgi_param"]["X_OWN"],
            Value::from("$remote_addr-$arg_a")
        );
        assert_eq!(locs[1]["uwsgi_pass"], Value::from("127.0.0.1:3003"));
        // A stock line is built in; one that differs is carried over.
        assert!(locs[2]["uwsgi_param"].get("QUERY_STRING").is_none());
        assert_eq!(
            locs[2]["uwsgi_param"]["REMOTE_ADDR"],
            Value::from("$http_x_real_ip")
        );
        assert_eq!(locs[2]["uwsgi_pass"], Value::from("unix:/run/app.sock"));
        assert_eq!(locs[2]["uwsgi_connect_timeout"], Value::from("2s"));
        // A variable graygate lacks is named, not carried over.
        let lines: Vec<String> = i.notes.iter().map(|n| n.to_string()).collect();
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert!(lines[0].contains("nginx.conf:8"), "{lines:#?}");
        assert!(lines[0].contains("document_root"), "{lines:#?}");
        let loaded = crate::config::parse("i.yaml".into(), &i.yaml, false).unwrap();
        crate::plan::Plan::compile(&loaded, None).unwrap();
    }
}
