//! The split of a config between a gateway's own file and the fleet's shared part.
//!
//! The shared part is the top-level keys in [`SHARED_KEYS`] (what a request is routed by);
//! everything else (pid file, threads, logs of the process, admin listener, demo backends,
//! `config_store`) stays in each gateway's file. A server's `listen` is the one exception
//! inside the shared part: a gateway whose file names the server with a `listen` of its own
//! listens there (gateways on one host, or hosts with other addresses).

use serde_yaml::{Mapping, Value};

/// The top-level keys a push sends and a gateway takes from the store.
pub const SHARED_KEYS: [&str; 4] = ["upstreams", "servers", "canaries", "log_formats"];

fn mapping(text: &str, what: &str) -> Result<Mapping, String> {
    match serde_yaml::from_str::<Value>(text) {
        Ok(Value::Mapping(m)) => Ok(m),
        Ok(Value::Null) => Ok(Mapping::new()),
        Ok(_) => Err(format!("{what} is not a YAML mapping")),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

fn is_shared(k: &Value) -> bool {
    k.as_str().is_some_and(|k| SHARED_KEYS.contains(&k))
}

/// The shared keys of a whole config file, as the YAML a push writes.
pub fn shared_part(full: &str) -> Result<String, String> {
    let m = mapping(full, "the file")?;
    let shared: Mapping = m.into_iter().filter(|(k, _)| is_shared(k)).collect();
    serde_yaml::to_string(&Value::Mapping(shared)).map_err(|e| e.to_string())
}

/// A gateway's config: its own file's process settings, the store's shared keys, and the
/// `listen` its file gives a shared server. A key of the store that is not shared is refused
/// (a process setting must not reach every gateway).
pub fn merge(local: &str, shared: &str) -> Result<String, String> {
    let local = mapping(local, "the local file")?;
    let shared = mapping(shared, "the fleet's config")?;
    if let Some(k) = shared.keys().find(|k| !is_shared(k)) {
        return Err(format!(
            "the fleet's config has `{}`, which is not shared (only {} are)",
            k.as_str().unwrap_or("?"),
            SHARED_KEYS.join(", ")
        ));
    }
    let listens = local_listens(&local);
    let mut out: Mapping = local.into_iter().filter(|(k, _)| !is_shared(k)).collect();
    for (k, mut v) in shared {
        if k.as_str() == Some("servers") {
            if let Value::Mapping(servers) = &mut v {
                for (name, listen) in &listens {
                    if let Some(Value::Mapping(s)) = servers.get_mut(name) {
                        s.insert("listen".into(), listen.clone());
                    }
                }
            }
        }
        out.insert(k, v);
    }
    serde_yaml::to_string(&Value::Mapping(out)).map_err(|e| e.to_string())
}

/// The problems of a fleet value at the value's own lines (as `graygate pull` prints it):
/// the value is compiled verbatim with the gateway's own keys after it (a server keeps the
/// value's `listen`). `None` when that finds no problem inside the value; then the merged
/// config's own message is all there is.
pub fn diagnose(local: &str, shared: &str, name: &str) -> Option<String> {
    let own: Mapping = mapping(local, "the local file")
        .ok()?
        .into_iter()
        .filter(|(k, _)| !is_shared(k))
        .collect();
    let tail = serde_yaml::to_string(&Value::Mapping(own)).ok()?;
    let shared = shared.trim_end_matches('\n');
    let lines = shared.lines().count();
    let text = format!("{shared}\n{tail}");
    let problems = match crate::config::parse(name.to_string(), &text, false) {
        Err(p) => p,
        Ok(l) => crate::plan::Plan::compile(&l, None).err()?,
    };
    let inside: Vec<_> = problems
        .0
        .into_iter()
        .filter(|p| (1..=lines).contains(&p.pos.line))
        .collect();
    (!inside.is_empty()).then(|| crate::config::Problems(inside).to_string())
}

/// `servers.NAME.listen` of the local file.
fn local_listens(local: &Mapping) -> Vec<(Value, Value)> {
    let Some(Value::Mapping(servers)) = local.get("servers") else {
        return Vec::new();
    };
    servers
        .iter()
        .filter_map(|(name, s)| Some((name.clone(), s.get("listen")?.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_settings_stay_local_and_listen_overrides() {
        let full = "pid_file: /a.pid\nthreads: 2\nupstreams:\n  u: {servers: [{addr: '127.0.0.1:1'}]}\nservers:\n  web:\n    listen: ['127.0.0.1:80']\n    locations: [{match: /, proxy_pass: u}]\n";
        let shared = shared_part(full).unwrap();
        assert!(!shared.contains("pid_file") && shared.contains("upstreams"));
        let local = "pid_file: /b.pid\nservers:\n  web: {listen: ['127.0.0.1:81']}\n";
        let merged: Value = serde_yaml::from_str(&merge(local, &shared).unwrap()).unwrap();
        assert_eq!(merged["pid_file"], Value::from("/b.pid"));
        assert_eq!(merged.get("threads"), None);
        assert_eq!(
            merged["servers"]["web"]["listen"][0],
            Value::from("127.0.0.1:81")
        );
        assert_eq!(
            merged["servers"]["web"]["locations"][0]["proxy_pass"],
            Value::from("u")
        );
    }

    #[test]
    fn a_bad_value_is_named_at_its_own_line() {
        let shared = "# graygate push: by x\nupstreams:\n  u: {servers: [{addr: '127.0.0.1:1'}]}\nservers:\n  web:\n    listen: ['127.0.0.1:80']\n    locations: [{match: /, proxy_pass: nope}]\n";
        let local = "pid_file: /tmp/graygate-merge-test.pid\n";
        let d = diagnose(local, shared, "etcd:/g/config@5").unwrap();
        assert!(d.starts_with("etcd:/g/config@5:7:"), "{d}");
        assert!(d.contains("nope"), "{d}");
        let good = shared.replace("nope", "u");
        assert_eq!(diagnose(local, &good, "x"), None);
    }

    #[test]
    fn a_process_setting_in_the_store_is_refused() {
        let e = merge("pid_file: /b.pid\n", "threads: 8\n").unwrap_err();
        assert!(e.contains("`threads`, which is not shared"), "{e}");
        assert!(merge("", "- a\n").is_err());
    }
}
