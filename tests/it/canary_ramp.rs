//! The automatic canary (issue 16): steps, the analysis against the stable side, rollback with
//! the reason, waiting for traffic, a restart mid-ramp. Intervals are one second; every
//! transition is awaited through `/api/status`, never slept for.

use std::io::{BufReader, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

/// A gateway with canary "rel" (key `$cookie_uid`, old -> new, `ramp` lines added to it) on
/// location `/`, and an admin listener.
pub struct Ramp {
    pub dir: TempDir,
    pub conf: std::path::PathBuf,
    pub listen: u16,
    pub admin: u16,
    pub gw: Proc,
    _old: Proc,
    _new: Proc,
}

impl Ramp {
    pub fn start(tag: &str, ramp: &str) -> Ramp {
        let dir = TempDir::new(tag);
        let (listen, admin, old, new) = (free_port(), free_port(), free_port(), free_port());
        let _old = backend(&dir, "old", old);
        let _new = backend(&dir, "new", new);
        let yaml = format!(
            "pid_file: {pid}\nupgrade_sock: {sock}\nerror_log: {err}\ngrace_period: 2s\nthreads: 2
admin: {{ listen: \"127.0.0.1:{admin}\" }}
upstreams:
  old: {{ servers: [{{ addr: \"127.0.0.1:{old}\" }}] }}
  new: {{ servers: [{{ addr: \"127.0.0.1:{new}\" }}] }}
canaries:
  rel:
    stable: old
    canary: new
    key: $cookie_uid
{ramp}
servers:
  front:
    listen: [\"127.0.0.1:{listen}\"]
    locations:
      - {{ match: /, proxy_pass: rel }}
",
            pid = dir.s("gw.pid"),
            sock = dir.s("gw.sock"),
            err = dir.s("error.log"),
        );
        let conf = dir.write("gw.yaml", &yaml);
        let gw = start(&conf, &[listen, admin]);
        Ramp {
            dir,
            conf,
            listen,
            admin,
            gw,
            _old,
            _new,
        }
    }

    pub fn cli(&self, args: &[&str]) -> String {
        let conf = self.conf.to_string_lossy().to_string();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-c", conf.as_str()]);
        let (ok, out) = ctl(&all);
        assert!(ok, "graygate {all:?} failed: {out}");
        out
    }

    /// The process error log once it holds `what` (a line is written just after its change).
    pub fn log(&self, what: &str) -> String {
        let p = self.dir.path("error.log");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let text = read(&p);
            if text.contains(what) {
                return text;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what:?} in the error log:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Canary "rel" as `/api/status` shows it; a connection that a draining generation closes
    /// unanswered (right after an upgrade) is asked again.
    pub fn status(&self) -> Value {
        let mut tries = 0;
        let r = loop {
            match get_from(self.admin, "/api/status", None, &[]) {
                Ok(r) => break r,
                Err(e) if tries < 50 => {
                    tries += 1;
                    eprintln!("admin: {e}, asking again");
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("admin answers: {e}"),
            }
        };
        assert_eq!(r.status, 200, "{}", r.body);
        let v: Value = serde_json::from_str(&r.body).expect("status is JSON");
        v["canaries"][0].clone()
    }

    /// Waits until `cond` holds for the canary's status; returns that status.
    pub fn wait(&self, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let last = self.status();
            if cond(&last) {
                return last;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}; the canary is now {last}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Clients sending requests with ever new `uid` cookies (so both sides get users) until
/// dropped; `path(n)` is the path of the n-th request.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Traffic {
    pub fn start(port: u16, path: fn(u64) -> String) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..3u64)
            .map(|t| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut conn: Option<BufReader<std::net::TcpStream>> = None;
                    let mut n = t;
                    while !stop.load(Ordering::Relaxed) {
                        let c = match conn.as_mut() {
                            Some(c) => c,
                            None => match connect(port, None) {
                                Ok(s) => conn.insert(BufReader::new(s)),
                                Err(_) => {
                                    std::thread::sleep(Duration::from_millis(20));
                                    continue;
                                }
                            },
                        };
                        let req = format!(
                            "GET {} HTTP/1.1\r\nHost: x\r\nCookie: uid=u{n}\r\n\r\n",
                            path(n)
                        );
                        let ok = c
                            .get_mut()
                            .write_all(req.as_bytes())
                            .and_then(|_| read_response(c))
                            .is_ok_and(|r| r.header("connection") != Some("close"));
                        if !ok {
                            conn = None;
                        }
                        n += 3;
                    }
                })
            })
            .collect();
        Traffic { stop, threads }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn plain(_: u64) -> String {
    "/".into()
}

fn state(v: &Value) -> &str {
    v["state"].as_str().unwrap_or("")
}

#[test]
fn a_healthy_canary_ramps_to_100_and_is_promoted() {
    let r = Ramp::start(
        "ramp-healthy",
        "    steps: [10, 50, 100]\n    interval: 1s\n    analysis: { min_requests: 10, max_error_rate: 1%, max_error_rate_vs_stable: 2, max_p99: 2s }",
    );
    let _t = Traffic::start(r.listen, plain);
    let out = r.cli(&["canary", "start", "rel"]);
    assert!(
        out.contains("10% to new") && out.contains("state running"),
        "{out}"
    );
    let v = r.wait("step 2", |v| v["ramp"]["step"] == 2);
    assert_eq!(v["percent"], 50.0, "{v}");
    assert!(
        v["why"]
            .as_str()
            .unwrap()
            .contains("analysis at 10% passed"),
        "{v}"
    );
    let v = r.wait("promoted", |v| state(v) == "promoted");
    assert_eq!(v["percent"], 100.0, "{v}");
    assert!(
        v["why"]
            .as_str()
            .unwrap()
            .starts_with("promoted: the last analysis at 50% passed"),
        "{v}"
    );
    // Every transition: one line in the error log and a counter.
    let log = r.log("percent 50 -> 100, state running -> promoted (by ramp:");
    assert!(
        log.contains("percent 10 -> 50, state running -> running (by ramp:"),
        "{log}"
    );
    let m = get_from(r.admin, "/metrics", None, &[])
        .expect("metrics")
        .body;
    assert!(
        m.contains(
            "graygate_canary_transitions_total{canary=\"rel\",from=\"running\",to=\"promoted\"} 1"
        ),
        "{m}"
    );
    assert!(
        m.contains("graygate_request_duration_seconds_count{pool=\"new\",side=\"canary\"}"),
        "{m}"
    );
}

#[test]
fn errors_on_10_percent_of_canary_requests_roll_back_at_the_first_step() {
    let r = Ramp::start(
        "ramp-errors",
        "    steps: [25, 50, 100]\n    interval: 1s\n    analysis: { min_requests: 40, max_error_rate: 1% }",
    );
    // Every 10th request fails, on the canary only.
    let _t = Traffic::start(r.listen, |n| {
        if n % 10 == 0 {
            "/?status=500&only=new".into()
        } else {
            "/".into()
        }
    });
    r.cli(&["canary", "start", "rel"]);
    let v = r.wait("rolled back", |v| state(v) == "rolled back");
    assert_eq!(v["percent"], 0.0, "{v}");
    let why = v["why"].as_str().unwrap();
    assert!(
        why.starts_with("error rate ")
            && why.contains("% > 1% over ")
            && why.ends_with(" requests at 25%"),
        "{why}"
    );
    r.log("percent 25 -> 0, state running -> rolled back (by ramp: error rate");
}

#[test]
fn a_canary_3x_slower_than_stable_rolls_back_on_p99() {
    let r = Ramp::start(
        "ramp-slow",
        "    steps: [30, 100]\n    interval: 1s\n    analysis: { min_requests: 20, max_p99_vs_stable: 1.5 }",
    );
    let _t = Traffic::start(r.listen, |_| "/?delay_ms=30&delay_ms_new=90".into());
    r.cli(&["canary", "start", "rel"]);
    let v = r.wait("rolled back", |v| state(v) == "rolled back");
    let why = v["why"].as_str().unwrap();
    assert!(
        why.starts_with("p99 ") && why.contains("> 1.5 x stable's "),
        "{why}"
    );
    assert!(why.ends_with("requests at 30%"), "{why}");
}

#[test]
fn too_few_requests_wait_and_a_restart_resumes_at_the_same_step() {
    let r = Ramp::start(
        "ramp-restart",
        "    steps: [10, 30, 100]\n    interval: 1s\n    analysis: { min_requests: 200 }",
    );
    let traffic = Traffic::start(r.listen, plain);
    r.cli(&["canary", "start", "rel"]);
    r.wait("step 2", |v| v["ramp"]["step"] == 2);
    drop(traffic);
    // No traffic: the step waits, and says so; it never passes.
    let v = r.wait("waiting", |v| state(v) == "waiting");
    assert_eq!(v["percent"], 30.0, "{v}");
    assert!(
        v["why"]
            .as_str()
            .unwrap()
            .contains("of 200 canary requests needed"),
        "{v}"
    );
    // A manual set pauses the ramp; resume goes back to its step.
    let out = r.cli(&["canary", "set", "rel", "12"]);
    assert!(
        out.contains("state paused") && out.contains("the ramp is paused"),
        "{out}"
    );
    let out = r.cli(&["canary", "resume", "rel"]);
    assert!(
        out.contains("30% to new") && out.contains("state running"),
        "{out}"
    );
    // A restart: the new process resumes at step 2 with a new window.
    let conf = r.conf.to_string_lossy().to_string();
    let (ok, out) = ctl(&["-s", "quit", "-c", &conf]);
    assert!(ok, "{out}");
    let mut gw = r.gw;
    wait_for("gateway exit", Duration::from_secs(20), || gw.exited());
    let _gw = start(&r.conf, &[r.listen, r.admin]);
    let v = r_status(r.admin);
    assert_eq!(v["percent"], 30.0, "{v}");
    assert_eq!(v["ramp"]["step"], 2, "{v}");
    assert!(
        v["why"]
            .as_str()
            .unwrap()
            .contains("resumed at step 2 of 3 after a restart"),
        "{v}"
    );
    let _t = Traffic::start(r.listen, plain);
    let admin = r.admin;
    wait_for(
        "promoted after the restart",
        Duration::from_secs(60),
        || state(&r_status(admin)) == "promoted",
    );
}

fn r_status(admin: u16) -> Value {
    let r = get_from(admin, "/api/status", None, &[]).expect("admin answers");
    let v: Value = serde_json::from_str(&r.body).expect("status is JSON");
    v["canaries"][0].clone()
}

/// The `percent A -> B` of every step the ramp made, as the process error log has them.
fn ramp_moves(log: &str) -> Vec<(String, String)> {
    log.lines()
        .filter(|l| l.contains("(by ramp: "))
        .filter_map(|l| {
            let rest = l.split_once("percent ")?.1;
            let (from, rest) = rest.split_once(" -> ")?;
            let to = rest.split_once(',')?.0;
            (from != to).then(|| (from.to_string(), to.to_string()))
        })
        .collect()
}

/// The master's worker processes (not a `-t` check it runs during an upgrade).
fn workers(master: i32) -> Vec<i32> {
    children(master)
        .into_iter()
        .filter(|&p| read(std::path::Path::new(&format!("/proc/{p}/cmdline"))).contains("--worker"))
        .collect()
}

/// A stopped process, continued when dropped (also when the test fails).
struct Stopped(i32);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = signal(self.0, libc::SIGCONT);
    }
}

#[test]
fn upgrades_mid_ramp_lose_no_step_and_make_none_twice() {
    // Short steps, so that each upgrade falls mid-ramp.
    let steps: Vec<String> = (1..=25).map(|i| (i * 4).to_string()).collect();
    let r = Ramp::start(
        "ramp-upgrade",
        &format!(
            "    steps: [{}]\n    interval: 150ms\n    analysis: {{ min_requests: 1 }}",
            steps.join(", ")
        ),
    );
    let _t = Traffic::start(r.listen, plain);
    r.cli(&["canary", "start", "rel"]);
    let conf = r.conf.to_string_lossy().to_string();
    let log = r.dir.path("error.log");
    let master = r.gw.pid();
    for _ in 0..3 {
        let old = workers(master);
        let moved = ramp_moves(&read(&log)).len();
        let c = conf.clone();
        let upgrade = std::thread::spawn(move || ctl(&["-s", "upgrade", "-c", &c]));
        // The overlap of two generations lasts a few milliseconds: stretch it by holding the
        // master (which tells the old generation to drain) once it has started the new one,
        // until the ramp has moved twice meanwhile. Only one generation may have moved it.
        wait_for("the new generation", Duration::from_secs(20), || {
            workers(master).iter().any(|w| !old.contains(w))
        });
        signal(master, libc::SIGSTOP).expect("stop the master");
        let held = Stopped(master);
        wait_for(
            "two steps while both generations run",
            Duration::from_secs(20),
            || ramp_moves(&read(&log)).len() >= moved + 2,
        );
        drop(held);
        let (ok, out) = upgrade.join().expect("upgrade thread");
        assert!(ok, "{out}");
        let v = r.status();
        assert!(matches!(state(&v), "running" | "waiting"), "{v}");
    }
    let v = r.wait("promoted", |v| state(v) == "promoted");
    assert_eq!(v["percent"], 100.0, "{v}");
    // Each step exactly once, in order: 4 -> 8 -> ... -> 100, whichever generation made it.
    let text = r.log("state running -> promoted (by ramp:");
    let want: Vec<(String, String)> = steps
        .windows(2)
        .map(|w| (w[0].clone(), w[1].clone()))
        .collect();
    let mut got = ramp_moves(&text);
    got.sort_by_key(|(a, _)| a.parse::<u32>().unwrap_or(0));
    assert_eq!(got, want, "{text}");
}
