//! The live canary page (issue 16) in a real browser: Debian's chromium, headless, driven by
//! Debian's chromedriver through the W3C WebDriver protocol (plain HTTP + JSON, no client
//! library). `scripts/deps.sh` installs both; without them the test fails (it never passes
//! without a browser). Its screenshot goes to `target/test-artefacts/canary-page.png`;
//! `make canary-page` runs it and copies the screenshot to `docs/canary-page.png`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::canary_ramp::{Ramp, Traffic};
use crate::common::*;

const CHROME_ARGS: [&str; 9] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1000,1250",
];

/// One WebDriver call: status and the JSON answer's `value`.
fn wd(port: u16, method: &str, path: &str, body: Option<Value>) -> Value {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect chromedriver");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // chromedriver answers with a Content-Length and may keep the connection open.
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    let body = loop {
        let n = s.read(&mut buf).expect("chromedriver answer");
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw).to_string();
        if let Some((head, b)) = text.split_once("\r\n\r\n") {
            let len = head.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap())
            });
            if len.is_some_and(|len| b.len() >= len) || n == 0 {
                break b.to_string();
            }
        }
        assert!(
            n > 0,
            "chromedriver closed without an answer to {method} {path}"
        );
    };
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["value"].clone()
}

struct Driver {
    child: Child,
    port: u16,
    session: String,
}

/// Where the test leaves files for people: `target/test-artefacts/NAME` (the test binary is
/// `target/<profile>/deps/it-*`). `make canary-page` copies the screenshot to the docs.
fn artefact(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("target directory above target/<profile>/deps");
    let dir = target.join("test-artefacts");
    std::fs::create_dir_all(&dir).expect("create target/test-artefacts");
    dir.join(name)
}

/// Debian's chromium and chromedriver, which `scripts/deps.sh` installs (`make test` runs it):
/// missing, the test fails and says so, it does not pass without a browser.
fn require_browser() {
    let on_path = |name: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
    };
    assert!(
        std::path::Path::new(CHROMIUM).is_file() && on_path("chromedriver"),
        "the page test needs Debian's chromium ({CHROMIUM}) and chromium-driver (chromedriver on PATH): run scripts/deps.sh"
    );
}

const CHROMIUM: &str = "/usr/bin/chromium";

impl Driver {
    fn start(profile: &std::path::Path) -> Driver {
        require_browser();
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver; scripts/deps.sh installs it)");
        wait_for("chromedriver", Duration::from_secs(20), || port_open(port));
        let mut args: Vec<String> = CHROME_ARGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let v = wd(
            port,
            "POST",
            "/session",
            Some(json!({ "capabilities": { "alwaysMatch": {
                "goog:chromeOptions": { "binary": CHROMIUM, "args": args }
            }}})),
        );
        let session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        Driver {
            child,
            port,
            session,
        }
    }

    fn call(&self, method: &str, what: &str, body: Option<Value>) -> Value {
        wd(
            self.port,
            method,
            &format!("/session/{}/{what}", self.session),
            body,
        )
    }

    fn script(&self, js: &str) -> Value {
        self.call(
            "POST",
            "execute/sync",
            Some(json!({ "script": js, "args": [] })),
        )
    }

    fn text(&self, css: &str) -> String {
        let js = format!(
            "const e = document.querySelector({}); return e ? e.innerText : '';",
            json!(css)
        );
        self.script(&js).as_str().unwrap_or("").to_string()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = wd(
            self.port,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_page_shows_the_live_numbers_and_its_abort_button_works() {
    let r = Ramp::start(
        "ramp-page",
        "    steps: [20, 50, 100]\n    interval: 10m\n    analysis: { min_requests: 100, max_error_rate: 1%, max_p99: 800ms, failures_allowed: 1 }",
    );
    let _t = Traffic::start(r.listen, |n| {
        if n % 50 == 0 {
            "/?status=502&only=new".into()
        } else {
            "/?delay_ms=2".into()
        }
    });
    r.cli(&["canary", "start", "rel"]);
    // Two chart samples exist (one every 2 s).
    r.wait("live numbers", |v| {
        v["live"]["canary"]["requests"].as_u64() > Some(0)
    });
    let d = Driver::start(&r.dir.path("chromium-profile"));
    let url = format!("http://127.0.0.1:{}/", r.admin);
    d.call("POST", "url", Some(json!({ "url": url })));
    let card = "#canary-rel";
    let mut text = String::new();
    wait_for("the page shows the canary", Duration::from_secs(20), || {
        text = d.text(card);
        text.contains("running") && text.contains("live p99")
    });
    // What the page shows is what /api/status reports.
    let st = r.status();
    assert!(text.contains("20%"), "{text}");
    assert!(text.contains("step 1 of 3"), "{text}");
    assert!(text.contains("old → new"), "{text}");
    assert!(text.contains(st["why"].as_str().unwrap()), "{text}\n{st}");
    assert!(text.contains("next analysis in"), "{text}");
    let live_rps = d.text(&format!("{card} tbody tr:last-child"));
    assert!(live_rps.contains("ms"), "{live_rps}");
    // The chart is redrawn as samples come in.
    let points = || {
        d.script("return +document.querySelector('#canary-rel').dataset.points")
            .as_u64()
            .unwrap_or(0)
    };
    let first = points();
    wait_for("the chart grows", Duration::from_secs(20), || {
        points() > first
    });
    // The screenshot, for people (and the README).
    let png = d.call("GET", "screenshot", None);
    let png = decode_base64(png.as_str().expect("screenshot"));
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let shot = artefact("canary-page.png");
    std::fs::write(&shot, &png).unwrap_or_else(|e| panic!("write {}: {e}", shot.display()));
    // Abort, pressed in the page and confirmed, sets 0%.
    let b = d.call(
        "POST",
        "element",
        Some(json!({ "using": "css selector", "value": "#canary-rel button[data-op=abort]" })),
    );
    let id = b
        .as_object()
        .and_then(|o| o.values().next())
        .and_then(Value::as_str)
        .expect("abort button")
        .to_string();
    d.call("POST", &format!("element/{id}/click"), Some(json!({})));
    let confirm = d.call("GET", "alert/text", None);
    assert_eq!(confirm, "Canary rel: abort?");
    d.call("POST", "alert/accept", Some(json!({})));
    let v = r.wait("aborted", |v| v["state"] == "aborted");
    assert_eq!(v["percent"], 0.0, "{v}");
    assert!(
        v["why"].as_str().unwrap().starts_with("aborted by API"),
        "{v}"
    );
    wait_for("the page shows the abort", Duration::from_secs(10), || {
        let t = d.text(card);
        t.contains("aborted") && t.contains("0%")
    });
}

fn decode_base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let clean: Vec<u8> = s.bytes().filter(|&c| c != b'=' && c != b'\n').collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for ch in clean.chunks(4) {
        let v: Vec<u32> = ch.iter().map(|&c| u32::from(val(c))).collect();
        let n = v.iter().fold(0u32, |a, &x| (a << 6) | x) << (6 * (4 - v.len()));
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..v.len() - 1]);
    }
    out
}
