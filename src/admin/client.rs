//! `graygate canary ...` and `graygate weight ...`: one call to the admin API of the instance
//! that `-c FILE` names, and its answer in words.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use serde_json::Value;

use crate::plan::Plan;

/// Live control of a running instance, through its admin listener.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Show or change a canary (a sticky split between two upstreams).
    Canary {
        #[command(subcommand)]
        action: CanaryAction,
    },
    /// Set the weight of one server of an upstream, live.
    Weight {
        pool: String,
        /// The server's IP:PORT as listed by `canary status`.
        addr: String,
        weight: String,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum CanaryAction {
    /// Every canary and pool, or one canary.
    Status { name: Option<String> },
    /// Set the percent of users on the canary side (0..100, two decimals).
    Set { name: String, percent: String },
    /// Start the automatic ramp at its first step (a canary with `steps`).
    Start { name: String },
    /// Hold the percent (the automatic ramp waits).
    Pause { name: String },
    /// Continue after a pause.
    Resume { name: String },
    /// Send every user to the stable side (0%, state "aborted").
    Abort { name: String },
    /// Send every user to the canary side (100%, state "promoted").
    Promote { name: String },
}

/// Runs `cmd` against the instance configured by `plan`; prints the new state or why not.
pub fn run(cmd: &Command, plan: &Plan, conf: &str) -> ExitCode {
    match call(cmd, plan, conf) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("graygate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn call(cmd: &Command, plan: &Plan, conf: &str) -> Result<String, String> {
    let admin = plan.admin.as_ref().ok_or_else(|| {
        format!("{conf} has no admin listener (add `admin: {{ listen: 127.0.0.1:10080 }}`)")
    })?;
    let (method, path, body) = match cmd {
        Command::Canary { action } => match action {
            CanaryAction::Status { name: None } => ("GET", "/api/status".to_string(), None),
            CanaryAction::Status { name: Some(n) } => ("GET", format!("/api/canaries/{n}"), None),
            CanaryAction::Set { name, percent } => {
                let p: f64 = percent
                    .trim_end_matches('%')
                    .parse()
                    .map_err(|_| format!("percent must be a number 0..100, not \"{percent}\""))?;
                let body = serde_json::json!({ "percent": p }).to_string();
                ("PUT", format!("/api/canaries/{name}"), Some(body))
            }
            CanaryAction::Start { name } => ("POST", format!("/api/canaries/{name}/start"), None),
            CanaryAction::Pause { name } => ("POST", format!("/api/canaries/{name}/pause"), None),
            CanaryAction::Resume { name } => ("POST", format!("/api/canaries/{name}/resume"), None),
            CanaryAction::Abort { name } => ("POST", format!("/api/canaries/{name}/abort"), None),
            CanaryAction::Promote { name } => {
                ("POST", format!("/api/canaries/{name}/promote"), None)
            }
        },
        Command::Weight { pool, addr, weight } => {
            let w: f64 = weight
                .parse()
                .map_err(|_| format!("weight must be a whole number, not \"{weight}\""))?;
            let body = serde_json::json!({ "weight": w }).to_string();
            (
                "PUT",
                format!("/api/upstreams/{pool}/servers/{addr}"),
                Some(body),
            )
        }
    };
    let target = reachable(admin.listen);
    // 503: the worker that answered is handing over to a new generation (upgrade, reload with
    // new listeners); the next connection reaches the new one. Not a fleet's refusal (field
    // "store": etcd did not take the change), which is said at once.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let (status, v) = loop {
        let answer = request(
            target,
            method,
            &path,
            body.as_deref(),
            admin.token.as_deref(),
        )
        .map_err(|e| {
            format!(
                "cannot reach the admin listener {target} of {conf}: {e} (is graygate running?)"
            )
        })?;
        let store = answer.1.get("field").and_then(Value::as_str) == Some("store");
        if answer.0 != 503 || store || std::time::Instant::now() >= deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !(200..300).contains(&status) {
        let msg = v
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("request refused");
        return Err(format!("{msg} (HTTP {status})"));
    }
    Ok(match cmd {
        Command::Canary {
            action: CanaryAction::Status { name: None },
        } => describe_status(&v),
        Command::Canary { .. } => describe_canary(&v),
        Command::Weight { .. } => describe_pool(&v),
    })
}

/// Where to connect for a listener on `addr` (a wildcard address means this host).
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

/// One HTTP/1.1 request with `Connection: close`; the status and the JSON body.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> std::io::Result<(u16, Value)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.unwrap_or("");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nX-Graygate-Client: cli\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer");
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    let json = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    Ok((status, json))
}

fn describe_canary(c: &Value) -> String {
    let s = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
    let percent = c.get("percent").and_then(Value::as_f64).unwrap_or(0.0);
    let mut out = format!(
        "canary {}: {}% to {} (rest to {}), state {} since {} ({})\n",
        s("name"),
        percent,
        s("canary"),
        s("stable"),
        s("state"),
        s("since"),
        s("why")
    );
    if let Some(r) = c.get("ramp").filter(|r| !r.is_null()) {
        let steps: Vec<String> = r
            .get("steps")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|v| format!("{v}%"))
            .collect();
        let step = r.get("step").and_then(Value::as_u64);
        let next = r.get("next_analysis_in").and_then(Value::as_f64);
        out.push_str(&format!(
            "  ramp {}: {}{}\n",
            steps.join(" -> "),
            step.map_or("not running".into(), |i| format!("at step {i}")),
            next.map_or(String::new(), |n| format!(", next analysis in {n:.0}s"))
        ));
    }
    out
}

fn describe_pool(p: &Value) -> String {
    let name = p.get("name").and_then(Value::as_str).unwrap_or("-");
    let mut out = format!("upstream {name}:\n");
    for srv in p
        .get("servers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let n = |k: &str| srv.get(k).and_then(Value::as_u64).unwrap_or(0);
        let b = |k: &str| srv.get(k).and_then(Value::as_bool).unwrap_or(false);
        out.push_str(&format!(
            "  {} weight {}{}{} in flight {} fails {}\n",
            srv.get("addr").and_then(Value::as_str).unwrap_or("-"),
            n("weight"),
            if b("healthy") { "" } else { " unhealthy" },
            if b("down") { " down" } else { "" },
            n("in_flight"),
            n("fails"),
        ));
    }
    out
}

fn describe_status(v: &Value) -> String {
    let mut out = String::new();
    let canaries = v.get("canaries").and_then(Value::as_array);
    for c in canaries.into_iter().flatten() {
        out.push_str(&describe_canary(c));
    }
    for p in v
        .get("pools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.push_str(&describe_pool(p));
    }
    out
}
