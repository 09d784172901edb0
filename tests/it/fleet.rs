//! A fleet of gateways on one etcd (issue 19): three real gateways on a real etcd (Debian's
//! `etcd-server`, started here on loopback ports with a temp data dir).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

/// One etcd member on loopback: client port `client`, data in `DIR/etcd`.
struct Etcd {
    proc: Option<Proc>,
    client: u16,
    peer: u16,
    dir: PathBuf,
}

impl Etcd {
    /// Fails (not skips) without etcd: a fleet test that passes without running is a lie.
    fn start(dir: &TempDir) -> Etcd {
        assert!(
            std::path::Path::new("/usr/bin/etcd").exists(),
            "/usr/bin/etcd is not installed: run scripts/deps.sh (it installs etcd-server)"
        );
        let mut e = Etcd {
            proc: None,
            client: free_port(),
            peer: free_port(),
            dir: dir.path("etcd"),
        };
        e.restart();
        e
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client)
    }

    fn restart(&mut self) {
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let log = std::fs::File::create(self.dir.with_extension("log")).unwrap();
        let child = Command::new("/usr/bin/etcd")
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--listen-client-urls", &self.url()])
            .args(["--advertise-client-urls", &self.url()])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.proc = Some(Proc { child });
        wait_for("etcd answers", Duration::from_secs(20), || {
            self.put_raw("/graygate-test/ping", "1").is_ok()
        });
    }

    fn kill(&mut self) {
        self.proc = None;
        wait_for("etcd gone", Duration::from_secs(10), || {
            !port_open(self.client)
        });
    }

    /// A plain etcd client of this etcd (not graygate's).
    async fn connect(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.url()], None)
            .await
            .unwrap()
    }

    /// Writes `value` at `key` as any etcd client would (not through graygate).
    fn put_raw(&self, key: &str, value: &str) -> Result<i64, String> {
        block_on(async {
            let opts = etcd_client::ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(1))
                .with_timeout(Duration::from_secs(2));
            let mut c = etcd_client::Client::connect([self.url()], Some(opts))
                .await
                .map_err(|e| e.to_string())?;
            let r = c.put(key, value, None).await.map_err(|e| e.to_string())?;
            Ok(r.header().map_or(0, |h| h.revision()))
        })
    }

    /// The value at `key` now, if any.
    fn get_raw(&self, key: &str) -> Option<String> {
        self.get_with_lease(key).map(|(v, _)| v)
    }

    /// The value at `key` now and the lease it is under, if any.
    fn get_with_lease(&self, key: &str) -> Option<(String, i64)> {
        block_on(async {
            let mut c = self.connect().await;
            let r = c.get(key, None).await.unwrap();
            r.kvs()
                .first()
                .map(|kv| (String::from_utf8_lossy(kv.value()).into_owned(), kv.lease()))
        })
    }

    /// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) etcd: its connections stay open, nothing
    /// answers, as an etcd stalled in a disk or a network cut would.
    fn freeze(&self, on: bool) {
        let pid = self.proc.as_ref().expect("etcd runs").pid();
        signal(pid, if on { libc::SIGSTOP } else { libc::SIGCONT }).unwrap();
    }

    /// The keys under `prefix` now.
    fn keys(&self, prefix: &str) -> Vec<String> {
        block_on(async {
            let mut c = self.connect().await;
            let opts = etcd_client::GetOptions::new()
                .with_prefix()
                .with_keys_only();
            let r = c.get(prefix, Some(opts)).await.unwrap();
            r.kvs()
                .iter()
                .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
                .collect()
        })
    }

    /// How many keys are under `prefix` now.
    fn count(&self, prefix: &str) -> usize {
        block_on(async {
            let mut c = self.connect().await;
            let opts = etcd_client::GetOptions::new()
                .with_prefix()
                .with_count_only();
            c.get(prefix, Some(opts)).await.unwrap().count() as usize
        })
    }
}

/// Runs `f` to its end on a runtime of its own (the tests' threads have none).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

const PREFIX: &str = "/graygate/itest";

/// Gateway `i`'s own file: process settings, its listen address, the store.
fn local_yaml(dir: &TempDir, i: usize, listen: u16, admin: u16, etcd: &Etcd) -> String {
    format!(
        "pid_file: {pid}\nerror_log: {err}\ngrace_period: 1s\nthreads: 2
admin: {{ listen: \"127.0.0.1:{admin}\" }}
config_store:
  etcd: {{ endpoints: [\"{url}\"], prefix: {PREFIX} }}
servers:
  front: {{ listen: [\"127.0.0.1:{listen}\"] }}
",
        pid = dir.s(&format!("gw{i}.pid")),
        err = dir.s(&format!("gw{i}.log")),
        url = etcd.url(),
    )
}

/// The shared part: `/` to pool `pool` (`old` or `new`).
/// Writes the operator's file `ops.yaml` (the store and `shared`) and pushes it with `extra`
/// arguments (`--force`), which must succeed.
fn push_ops(dir: &TempDir, etcd: &Etcd, shared: &str, extra: &[&str]) {
    let ops = dir.write(
        "ops.yaml",
        &format!(
            "pid_file: {}\nconfig_store:\n  etcd: {{ endpoints: [\"{}\"], prefix: {PREFIX} }}\n{shared}",
            dir.s("ops.pid"),
            etcd.url(),
        ),
    );
    let conf = ops.display().to_string();
    let mut args = vec!["-c", conf.as_str(), "push"];
    args.extend_from_slice(extra);
    let (ok, out) = ctl(&args);
    assert!(ok, "{out}");
}

fn shared_yaml(old: u16, new: u16, pool: &str) -> String {
    format!(
        "upstreams:
  old: {{ policy: ip_hash, servers: [{{ addr: \"127.0.0.1:{old}\" }}] }}
  new: {{ policy: ip_hash, servers: [{{ addr: \"127.0.0.1:{new}\" }}] }}
canaries:
  split: {{ stable: old, canary: new, key: $remote_addr, percent: 0 }}
servers:
  front:
    listen: [\"127.0.0.1:1\"]
    locations:
      - {{ match: /, proxy_pass: {pool} }}
      - {{ match: /split, proxy_pass: split }}
"
    )
}

fn backend_of(port: u16) -> String {
    get_from(port, "/", None, &[])
        .map(|r| r.backend().to_string())
        .unwrap_or_default()
}

/// Waits until the gateway whose admin listener is on `admin` has its etcd session.
fn wait_reachable(admin: u16) {
    wait_for("etcd reachable", Duration::from_secs(15), || {
        status(admin)["fleet"]["reachable"] == serde_json::Value::Bool(true)
    });
}

/// Gateway `i` of a fleet: its file (from `local_yaml`, passed through `edit`) written and the
/// gateway started. Returns the gateway, its listen and admin ports and its file.
fn fleet_gateway(
    dir: &TempDir,
    etcd: &Etcd,
    i: usize,
    edit: impl Fn(String) -> String,
) -> (Proc, u16, u16, String) {
    let (listen, admin) = (free_port(), free_port());
    let local = dir.write(
        &format!("gw{i}.yaml"),
        &edit(local_yaml(dir, i, listen, admin, etcd)),
    );
    let gw = start(&local, &[listen, admin]);
    (gw, listen, admin, local.display().to_string())
}

/// Two gateways of one fleet, each with its etcd session: the gateways and their admin ports.
fn two_gateways(dir: &TempDir, etcd: &Etcd) -> (Vec<Proc>, Vec<u16>) {
    let (gws, admins): (Vec<Proc>, Vec<u16>) = (0..2)
        .map(|i| {
            let (gw, _, admin, _) = fleet_gateway(dir, etcd, i, |t| t);
            (gw, admin)
        })
        .unzip();
    for &admin in &admins {
        wait_reachable(admin);
    }
    (gws, admins)
}

/// `/api/status` of the gateway whose admin listener is on `admin`.
fn status(admin: u16) -> serde_json::Value {
    get_from(admin, "/api/status", None, &[])
        .ok()
        .and_then(|r| serde_json::from_str(&r.body).ok())
        .unwrap_or_default()
}

fn percent(admin: u16) -> f64 {
    status(admin)["canaries"][0]["percent"]
        .as_f64()
        .unwrap_or(-1.0)
}

/// The side (true = canary) of each of `n` client addresses at gateway `port`.
fn sides(port: u16, n: usize) -> Vec<bool> {
    let chunks: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                (t..n)
                    .step_by(4)
                    .map(|i| {
                        let src = Ipv4Addr::new(127, 20 + (i / 250) as u8, (i % 250) as u8, 3);
                        let r = get_from(port, "/split", Some(src), &[]).expect("request");
                        assert_eq!(r.status, 200);
                        (i, r.backend() == "new")
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut out = vec![false; n];
    for c in chunks {
        for (i, side) in c.join().expect("client thread") {
            out[i] = side;
        }
    }
    out
}

#[test]
fn three_gateways_follow_one_etcd() {
    let dir = TempDir::new("fleet");
    let mut etcd = Etcd::start(&dir);
    let (old, new) = (free_port(), free_port());
    let _b_old = backend(&dir, "old", old);
    let _b_new = backend(&dir, "new", new);
    let listens = [free_port(), free_port(), free_port()];
    let admins = [free_port(), free_port(), free_port()];
    let locals: Vec<PathBuf> = (0..3)
        .map(|i| {
            dir.write(
                &format!("gw{i}.yaml"),
                &local_yaml(&dir, i, listens[i], admins[i], &etcd),
            )
        })
        .collect();
    // The operator's file: the store and the shared part.
    let ops = dir.path("ops.yaml");
    let url = etcd.url();
    let ops_text = |pool: &str| {
        format!(
            "pid_file: {pid}\nerror_log: {err}\nconfig_store:\n  etcd: {{ endpoints: [\"{url}\"], prefix: {PREFIX} }}\nadmin: {{ listen: \"127.0.0.1:{admin}\" }}\n{shared}",
            pid = dir.s("ops.pid"),
            err = dir.s("ops.log"),
            admin = admins[0],
            shared = shared_yaml(old, new, pool),
        )
    };
    let push = |pool: &str, force: bool| {
        std::fs::write(&ops, ops_text(pool)).unwrap();
        let conf = ops.display().to_string();
        let mut args = vec!["-c", conf.as_str(), "push"];
        if force {
            args.push("--force");
        }
        ctl(&args)
    };

    // First push, then the gateways start on it.
    let (ok, out) = push("old", false);
    assert!(ok, "{out}");
    assert!(out.contains("revision"), "{out}");
    let gws: Vec<Proc> = (0..3).map(|i| start(&locals[i], &[listens[i]])).collect();
    for &l in &listens {
        wait_for("gateway serves old", Duration::from_secs(10), || {
            backend_of(l) == "old"
        });
    }
    let pulled = ctl(&["-c", &ops.display().to_string(), "pull"]);
    assert!(
        pulled.0 && pulled.1.contains("proxy_pass: old"),
        "{}",
        pulled.1
    );

    // A push reaches all three under load, nothing fails.
    let loads: Vec<Load> = listens.iter().map(|&l| Load::start(l, 4, false)).collect();
    for l in &loads {
        l.wait_more(100);
    }
    let (ok, out) = push("new", false);
    assert!(ok, "{out}");
    for &l in &listens {
        wait_for("gateway serves new", Duration::from_secs(10), || {
            backend_of(l) == "new"
        });
    }
    for l in &loads {
        l.wait_more(100);
    }

    // A push from a file that did not see the last change is refused, naming the revision.
    let stale = dir.write("stale.yaml", &ops_text("old"));
    let (ok, out) = ctl(&["-c", &stale.display().to_string(), "push"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("push refused") && out.contains("revision"),
        "{out}"
    );

    // A pull to look does not make the stale file pushable; a pull into a file does.
    let stale_s = stale.display().to_string();
    let (ok, out) = ctl(&["-c", &stale_s, "pull"]);
    assert!(ok && out.contains("proxy_pass: new"), "{out}");
    let (ok, out) = ctl(&["-c", &stale_s, "push"]);
    assert!(!ok && out.contains("push refused"), "{out}");
    let pulled_file = dir.path("pulled.yaml");
    let pulled_s = pulled_file.display().to_string();
    let (ok, out) = ctl(&["-c", &stale_s, "pull", "-o", &pulled_s]);
    assert!(ok, "{out}");
    let text = read(&pulled_file);
    assert!(
        text.contains("proxy_pass: new") && text.contains("config_store"),
        "{text}"
    );
    let (ok, out) = ctl(&["-c", &pulled_s, "push"]);
    assert!(ok, "{out}");

    // A live change through one gateway applies on all; every user gets the same side from
    // each gateway.
    let cli = |i: usize, args: &[&str]| {
        let conf = locals[i].display().to_string();
        let mut all = vec!["-c", conf.as_str()];
        all.extend_from_slice(args);
        ctl(&all)
    };
    for &a in &admins {
        wait_reachable(a);
    }
    let (ok, out) = cli(0, &["canary", "set", "split", "30"]);
    assert!(ok, "{out}");
    for &a in &admins {
        wait_for("canary at 30% everywhere", Duration::from_secs(10), || {
            percent(a) == 30.0
        });
    }
    let first = sides(listens[0], 1000);
    let on_canary = first.iter().filter(|s| **s).count();
    assert!(
        (200..400).contains(&on_canary),
        "{on_canary} of 1000 on the canary side"
    );
    for &l in &listens[1..] {
        assert!(
            sides(l, 1000) == first,
            "a user changed sides between gateways"
        );
    }
    let st = status(admins[1]);
    let fleet = &st["fleet"];
    assert_eq!(fleet["reachable"], serde_json::Value::Bool(true), "{st}");
    assert!(fleet["revision"].as_i64().unwrap_or(0) > 0, "{st}");
    wait_for("three members", Duration::from_secs(10), || {
        status(admins[2])["fleet"]["members"]
            .as_array()
            .map_or(0, |m| m.len())
            == 3
    });

    // A live weight, too (compiled and swapped on every gateway).
    let addr = format!("127.0.0.1:{old}");
    let (ok, out) = cli(1, &["weight", "old", &addr, "3"]);
    assert!(ok, "{out}");
    for &a in &admins {
        wait_for("weight 3 everywhere", Duration::from_secs(10), || {
            let st = status(a);
            let pools = st["pools"].as_array().cloned().unwrap_or_default();
            pools
                .iter()
                .filter(|p| p["name"] == "old")
                .any(|p| p["servers"][0]["weight"] == 3)
        });
    }

    // A bad live weights value: refused (once), the running weights stay.
    let weights_key = format!("{PREFIX}/state/weights");
    let bad_w = etcd.put_raw(&weights_key, "not json").unwrap();
    let refused_w = format!("{weights_key} revision {bad_w} refused");
    for (i, &a) in admins.iter().enumerate() {
        let log = dir.path(&format!("gw{i}.log"));
        wait_for("bad weights refused", Duration::from_secs(10), || {
            read(&log).contains(&refused_w)
        });
        let st = status(a);
        let pools = st["pools"].as_array().cloned().unwrap_or_default();
        assert!(
            pools
                .iter()
                .filter(|p| p["name"] == "old")
                .any(|p| p["servers"][0]["weight"] == 3),
            "{st}"
        );
    }

    // A bad value written straight into etcd: every gateway refuses it, keeps serving.
    let bad = shared_yaml(old, new, "nosuchpool");
    let bad_rev = etcd.put_raw(&format!("{PREFIX}/config"), &bad).unwrap();
    for (i, &l) in listens.iter().enumerate() {
        let log = dir.path(&format!("gw{i}.log"));
        wait_for("bad value refused", Duration::from_secs(10), || {
            read(&log).contains(&format!("{PREFIX}/config revision {bad_rev} refused"))
        });
        // Named at its line in the value as `pull` prints it (line 10: the location).
        let at = format!("etcd:{PREFIX}/config@{bad_rev}:10:");
        assert!(read(&log).contains(&at), "{at} not in {}", read(&log));
        assert!(read(&log).contains("nosuchpool"), "{}", read(&log));
        assert_eq!(backend_of(l), "new");
    }

    // etcd away: every gateway keeps serving; a push is refused with the reason.
    etcd.kill();
    for (i, l) in loads.iter().enumerate() {
        l.wait_more(100);
        let log = dir.path(&format!("gw{i}.log"));
        wait_for("etcd away logged", Duration::from_secs(10), || {
            read(&log).contains("serving on the running config")
        });
    }
    let (ok, out) = push("old", true);
    assert!(!ok, "{out}");
    assert!(
        out.contains("push refused, nothing written") && out.contains(&etcd.url()),
        "{out}"
    );
    wait_for("etcd away in the status", Duration::from_secs(10), || {
        status(admins[1])["fleet"]["reachable"] == serde_json::Value::Bool(false)
    });
    let (ok, out) = cli(1, &["canary", "set", "split", "60"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("unreachable") && out.contains("refused"),
        "{out}"
    );
    assert!(admins.iter().all(|&a| percent(a) == 30.0));

    // etcd back: a change applies everywhere.
    etcd.restart();
    let (ok, out) = push("old", false);
    assert!(!ok, "the bad value is newer than this file's push: {out}");
    let (ok, out) = push("old", true);
    assert!(ok, "{out}");
    for &l in &listens {
        wait_for("gateway serves old again", Duration::from_secs(15), || {
            backend_of(l) == "old"
        });
    }
    wait_for(
        "etcd back for live changes",
        Duration::from_secs(15),
        || status(admins[2])["fleet"]["reachable"] == serde_json::Value::Bool(true),
    );
    let (ok, out) = cli(2, &["canary", "set", "split", "60"]);
    assert!(ok, "{out}");
    for &a in &admins {
        wait_for("canary at 60% everywhere", Duration::from_secs(10), || {
            percent(a) == 60.0
        });
    }
    // Events under state/ since then did not log the bad weights again.
    for i in 0..3 {
        let log = read(&dir.path(&format!("gw{i}.log")));
        assert_eq!(log.matches(&refused_w).count(), 1, "{log}");
    }
    for l in &loads {
        l.wait_more(100);
    }
    for (i, l) in loads.into_iter().enumerate() {
        let r = l.finish();
        assert!(
            r.failed.is_empty(),
            "gateway {i}: {:?}",
            &r.failed[..r.failed.len().min(5)]
        );
        assert!(r.ok > 0);
    }
    drop(gws);
}

/// The shared part of the ramp test: a canary of `steps` keyed per request.
fn ramp_yaml(old: u16, new: u16) -> String {
    format!(
        "upstreams:
  old: {{ servers: [{{ addr: \"127.0.0.1:{old}\" }}] }}
  new: {{ servers: [{{ addr: \"127.0.0.1:{new}\" }}] }}
canaries:
  ramp:
    stable: old
    canary: new
    key: $request_id
    steps: [10, 20, 30, 100]
    interval: 3s
    analysis: {{ min_requests: 5 }}
servers:
  front:
    listen: [\"127.0.0.1:1\"]
    locations:
      - {{ match: /, proxy_pass: ramp }}
"
    )
}

fn ramp_step(admin: u16) -> i64 {
    status(admin)["canaries"][0]["ramp"]["step"]
        .as_i64()
        .unwrap_or(0)
}

#[test]
fn one_gateway_leads_the_ramp_on_the_fleets_numbers_and_another_takes_over() {
    let dir = TempDir::new("fleet-ramp");
    let etcd = Etcd::start(&dir);
    let (old, new) = (free_port(), free_port());
    let _b_old = backend(&dir, "old", old);
    let _b_new = backend(&dir, "new", new);
    let listens = [free_port(), free_port(), free_port()];
    let admins = [free_port(), free_port(), free_port()];
    let locals: Vec<PathBuf> = (0..3)
        .map(|i| {
            let text = local_yaml(&dir, i, listens[i], admins[i], &etcd);
            dir.write(&format!("gw{i}.yaml"), &text)
        })
        .collect();
    push_ops(&dir, &etcd, &ramp_yaml(old, new), &[]);
    let mut gws: Vec<Option<Proc>> = (0..3)
        .map(|i| Some(start(&locals[i], &[listens[i], admins[i]])))
        .collect();
    let leader_of = |candidates: &[usize]| -> Option<usize> {
        candidates
            .iter()
            .copied()
            .find(|&i| status(admins[i])["fleet"]["leads"] == serde_json::Value::Bool(true))
    };
    let mut leader = None;
    wait_for("a leader", Duration::from_secs(15), || {
        leader = leader_of(&[0, 1, 2]);
        leader.is_some()
    });
    let leader = leader.unwrap();
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();

    // Traffic on the two others only: the leader can pass an analysis only on their numbers.
    let loads: Vec<Load> = others
        .iter()
        .map(|&i| Load::start(listens[i], 3, false))
        .collect();
    // A gateway takes changes once its etcd session is up (before, it answers 503).
    for &a in &admins {
        wait_reachable(a);
    }
    let conf = locals[others[0]].display().to_string();
    let (ok, out) = ctl(&["-c", &conf, "canary", "start", "ramp"]);
    assert!(ok, "{out}");
    for &a in &admins {
        wait_for("step 2 everywhere", Duration::from_secs(20), || {
            ramp_step(a) >= 2
        });
    }

    // The leader dies mid-ramp: another takes over at the step the fleet is at.
    let before = ramp_step(admins[others[0]]);
    gws[leader] = None;
    let mut next = None;
    wait_for("a new leader", Duration::from_secs(20), || {
        next = leader_of(&others);
        next.is_some()
    });
    let after = ramp_step(admins[others[0]]);
    assert!(
        after >= before,
        "the ramp went back from step {before} to {after}"
    );
    assert_eq!(
        status(admins[others[1]])["canaries"][0]["state"],
        serde_json::Value::from("running")
    );
    for &i in &others {
        wait_for("promoted", Duration::from_secs(30), || {
            status(admins[i])["canaries"][0]["state"] == "promoted"
        });
    }
    let log = read(&dir.path(&format!("gw{}.log", next.unwrap())));
    assert!(log.contains("now runs the fleet's canary ramps"), "{log}");
    for l in loads {
        let r = l.finish();
        assert!(
            r.failed.is_empty(),
            "{:?}",
            &r.failed[..r.failed.len().min(5)]
        );
    }
}

#[test]
fn a_gateway_of_a_fleet_reloads_its_own_file_and_upgrades_without_losing_the_watch() {
    let dir = TempDir::new("fleet-reload");
    let etcd = Etcd::start(&dir);
    let (old, new) = (free_port(), free_port());
    let _b_old = backend(&dir, "old", old);
    let _b_new = backend(&dir, "new", new);
    let (listen, admin, moved) = (free_port(), free_port(), free_port());
    let local = dir.write("gw0.yaml", &local_yaml(&dir, 0, listen, admin, &etcd));
    let push = |pool: &str| push_ops(&dir, &etcd, &shared_yaml(old, new, pool), &[]);
    push("old");
    // As a daemon: the watch's thread must be started after the fork.
    let conf = local.display().to_string();
    struct Stop(String);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = ctl(&["-s", "stop", "-c", &self.0]);
        }
    }
    let (ok, out) = ctl(&["-d", "-c", &conf]);
    assert!(ok, "{out}");
    let _stop = Stop(conf.clone());
    wait_for("the daemon serves", Duration::from_secs(10), || {
        backend_of(listen) == "old"
    });

    // The gateway's own file changes its listen address: -s reload keeps the fleet's part.
    std::fs::write(&local, local_yaml(&dir, 0, moved, admin, &etcd)).unwrap();
    let (ok, out) = ctl(&["-s", "reload", "-c", &conf]);
    assert!(ok, "{out}");
    wait_for("the new listen address", Duration::from_secs(10), || {
        backend_of(moved) == "old"
    });

    // A push reaches the daemon; after a binary upgrade the re-executed master still
    // follows the fleet.
    push("new");
    wait_for("the push", Duration::from_secs(15), || {
        backend_of(moved) == "new"
    });
    let (ok, out) = ctl(&["-s", "upgrade", "-c", &conf]);
    assert!(ok, "{out}");
    push("old");
    wait_for(
        "the push after the upgrade",
        Duration::from_secs(15),
        || backend_of(moved) == "old",
    );
}

#[test]
fn a_gateway_starts_on_its_cache_when_etcd_holds_a_bad_value_or_is_away() {
    let dir = TempDir::new("fleet-cache");
    let mut etcd = Etcd::start(&dir);
    let (old, new) = (free_port(), free_port());
    let _b_old = backend(&dir, "old", old);
    let _b_new = backend(&dir, "new", new);
    let (listen, admin) = (free_port(), free_port());
    let local = dir.write("gw0.yaml", &local_yaml(&dir, 0, listen, admin, &etcd));
    let push = |pool: &str| push_ops(&dir, &etcd, &shared_yaml(old, new, pool), &["--force"]);
    let log = dir.path("gw0.log");

    // The gateway runs only its start revision: that alone must leave a cache.
    push("old");
    let gw = start(&local, &[listen]);
    wait_for("serves old", Duration::from_secs(10), || {
        backend_of(listen) == "old"
    });
    drop(gw);

    // Restarted while etcd holds a bad value: refused, named, and the cached config serves.
    let bad = shared_yaml(old, new, "nosuchpool");
    let bad_rev = etcd.put_raw(&format!("{PREFIX}/config"), &bad).unwrap();
    let gw = start(&local, &[listen]);
    wait_for("serves old from the cache", Duration::from_secs(10), || {
        backend_of(listen) == "old"
    });
    let refused = format!("{PREFIX}/config revision {bad_rev} refused at start");
    wait_for("the refusal logged", Duration::from_secs(10), || {
        let text = read(&log);
        text.contains(&refused)
            && text.contains("nosuchpool")
            && text.contains("cached last good config")
    });
    // And it keeps watching: a good push applies.
    push("new");
    wait_for("serves new", Duration::from_secs(15), || {
        backend_of(listen) == "new"
    });
    // The cache is written once the new config runs: wait for it before the kill.
    let cache = dir.path("gw0.pid.fleet.yaml");
    wait_for("the push cached", Duration::from_secs(10), || {
        read(&cache).contains("proxy_pass: new")
    });
    drop(gw);

    // Started while etcd is down: from the cache.
    etcd.kill();
    let _gw = start(&local, &[listen]);
    wait_for("serves new from the cache", Duration::from_secs(10), || {
        backend_of(listen) == "new"
    });
    wait_for(
        "the start from the cache logged",
        Duration::from_secs(10),
        || read(&log).contains("starting on the cached fleet config"),
    );
}

#[test]
fn a_worker_that_lost_its_lease_joins_again() {
    let dir = TempDir::new("fleet-lease");
    let etcd = Etcd::start(&dir);
    let (old, new) = (free_port(), free_port());
    let _b_old = backend(&dir, "old", old);
    let (listen, admin) = (free_port(), free_port());
    let local = dir.write("gw0.yaml", &local_yaml(&dir, 0, listen, admin, &etcd));
    push_ops(&dir, &etcd, &shared_yaml(old, new, "old"), &[]);
    let gw = start(&local, &[listen, admin]);
    let members = format!("{PREFIX}/members/");
    wait_for("a member", Duration::from_secs(10), || {
        etcd.count(&members) == 1
    });
    // Stopped longer than its lease (5 s): etcd drops the member key.
    let workers = children(gw.pid());
    for &w in &workers {
        signal(w, libc::SIGSTOP).unwrap();
    }
    wait_for("the lease gone", Duration::from_secs(20), || {
        etcd.count(&members) == 0
    });
    for &w in &workers {
        signal(w, libc::SIGCONT).unwrap();
    }
    // The worker starts over (a keep-alive of TTL 0, or a write under the dead lease) and is a
    // member again.
    wait_for("a member again", Duration::from_secs(15), || {
        etcd.count(&members) == 1
    });
}

fn weight_of(admin: u16, pool: &str) -> i64 {
    let st = status(admin);
    let pools = st["pools"].as_array().cloned().unwrap_or_default();
    pools
        .iter()
        .find(|p| p["name"] == pool)
        .and_then(|p| p["servers"][0]["weight"].as_i64())
        .unwrap_or(-1)
}

/// etcd stops answering after the gateway last saw it: a live change is refused (503, with
/// why) and made nowhere, not here either, and etcd never gets it.
#[test]
fn a_live_change_etcd_does_not_take_is_made_nowhere() {
    let dir = TempDir::new("fleet-write-first");
    let etcd = Etcd::start(&dir);
    let (old, new) = (free_port(), free_port());
    let _b_old = backend(&dir, "old", old);
    let _b_new = backend(&dir, "new", new);
    let (listen, admin) = (free_port(), free_port());
    let local = dir.write("gw0.yaml", &local_yaml(&dir, 0, listen, admin, &etcd));
    push_ops(&dir, &etcd, &shared_yaml(old, new, "old"), &[]);
    let _gw = start(&local, &[listen, admin]);
    wait_reachable(admin);
    let conf = local.display().to_string();
    let (ok, out) = ctl(&["-c", &conf, "canary", "set", "split", "20"]);
    assert!(ok, "{out}");
    assert_eq!(percent(admin), 20.0);

    // Frozen right after: the gateway still counts it as reachable (its next look is up to a
    // second away and waits 2 s), so the change gets past the check and its write fails.
    etcd.freeze(true);
    let (ok, out) = ctl(&["-c", &conf, "canary", "set", "split", "60"]);
    assert!(
        !ok,
        "a change etcd did not take was answered as made: {out}"
    );
    assert!(
        // Sent and not answered: etcd may have it, and the answer says so.
        out.contains("503")
            && out.contains(&etcd.url())
            && out.contains("the outcome is unknown")
            && out.contains("graygate canary status")
            || out.contains("unreachable"),
        "{out}"
    );
    assert_eq!(percent(admin), 20.0, "the refused change was made here");
    let addr = format!("127.0.0.1:{old}");
    let (ok, out) = ctl(&["-c", &conf, "weight", "old", &addr, "7"]);
    assert!(!ok, "{out}");
    assert_eq!(weight_of(admin, "old"), 1);

    // Thawed: the store never had it, and the gateway still runs what the store has.
    etcd.freeze(false);
    wait_for("etcd reachable again", Duration::from_secs(20), || {
        status(admin)["fleet"]["reachable"] == serde_json::Value::Bool(true)
    });
    let stored = etcd
        .get_raw(&format!("{PREFIX}/state/canary/split"))
        .unwrap_or_default();
    assert!(stored.contains("\"percent_bp\":2000"), "{stored}");
    assert_eq!(percent(admin), 20.0);
    assert_eq!(weight_of(admin, "old"), 1);
    let (ok, out) = ctl(&["-c", &conf, "canary", "set", "split", "60"]);
    assert!(ok, "{out}");
    assert_eq!(percent(admin), 60.0);
}

/// A worker generation is a member under a name of its own (an upgrade re-executes the master
/// with the same pid, and its two generations overlap), a gateway that stops leaves the fleet
/// at once (its lease revoked), and an upgrade before anything was pushed keeps watching.
#[test]
fn each_generation_is_a_member_of_its_own_and_a_stopped_one_leaves_at_once() {
    let dir = TempDir::new("fleet-members");
    let etcd = Etcd::start(&dir);
    let (old, new) = (free_port(), free_port());
    let _b_old = backend(&dir, "old", old);
    let (listen, admin) = (free_port(), free_port());
    let local = dir.write("gw0.yaml", &local_yaml(&dir, 0, listen, admin, &etcd));
    let conf = local.display().to_string();
    // Nothing pushed yet: the file alone runs.
    let mut gw = start(&local, &[listen, admin]);
    let members = format!("{PREFIX}/members/");
    wait_for("a member", Duration::from_secs(10), || {
        etcd.count(&members) == 1
    });
    let first = etcd.keys(&members);

    let (ok, out) = ctl(&["-s", "upgrade", "-c", &conf]);
    assert!(ok, "{out}");
    // The new generation is a member under its own name; the old one left when it exited.
    wait_for("the new generation alone", Duration::from_secs(20), || {
        let now = etcd.keys(&members);
        now.len() == 1 && now != first
    });
    let second = etcd.keys(&members);
    let master = gw.pid();
    assert!(
        second[0].contains(&format!("-{master}-")) && first[0].contains(&format!("-{master}-")),
        "{first:?} {second:?}"
    );

    // The upgraded master still watches: the first push applies.
    push_ops(&dir, &etcd, &shared_yaml(old, new, "old"), &[]);
    wait_for(
        "the first push after the upgrade",
        Duration::from_secs(15),
        || backend_of(listen) == "old",
    );

    // A graceful stop revokes the lease: no member key is left once the gateway is gone.
    let (ok, out) = ctl(&["-s", "quit", "-c", &conf]);
    assert!(ok, "{out}");
    wait_for("the gateway gone", Duration::from_secs(20), || gw.exited());
    assert_eq!(
        etcd.keys(&members),
        Vec::<String>::new(),
        "a stopped gateway is still a member"
    );
}

/// A pushed value that compiles but cannot be applied yet (its new listener's port is taken)
/// is tried again, without a new push, once it can be.
#[test]
fn a_push_that_cannot_be_applied_yet_is_tried_again() {
    let dir = TempDir::new("fleet-retry");
    let etcd = Etcd::start(&dir);
    let (old, new) = (free_port(), free_port());
    let _b_old = backend(&dir, "old", old);
    let _b_new = backend(&dir, "new", new);
    let (listen, admin, extra) = (free_port(), free_port(), free_port());
    let local = dir.write("gw0.yaml", &local_yaml(&dir, 0, listen, admin, &etcd));
    push_ops(&dir, &etcd, &shared_yaml(old, new, "old"), &[]);
    let _gw = start(&local, &[listen, admin]);
    wait_for("serves old", Duration::from_secs(10), || {
        backend_of(listen) == "old"
    });
    let taken = std::net::TcpListener::bind(("127.0.0.1", extra)).unwrap();
    let shared = format!(
        "{}  extra:\n    listen: [\"127.0.0.1:{extra}\"]\n    locations: [{{ match: /, proxy_pass: new }}]\n",
        shared_yaml(old, new, "old")
    );
    push_ops(&dir, &etcd, &shared, &[]);
    let log = dir.path("gw0.log");
    wait_for("the failed apply logged", Duration::from_secs(20), || {
        read(&log).contains("not applied, the running config")
    });
    assert_eq!(backend_of(listen), "old");
    drop(taken);
    wait_for("applied on a retry", Duration::from_secs(40), || {
        backend_of(extra) == "new"
    });
    assert!(read(&log).contains("trying again in"), "{}", read(&log));
}

/// Two gateways change one canary at the same time, over and over: each write goes to etcd
/// first and every gateway applies values in etcd's revision order, so both end on the value
/// etcd holds last, never on an older one that its watch delivered after its own newer write.
#[test]
fn concurrent_changes_on_two_gateways_end_on_the_stores_last_value() {
    let dir = TempDir::new("fleet-order");
    let etcd = Etcd::start(&dir);
    let (old, new) = (free_port(), free_port());
    let _b_old = backend(&dir, "old", old);
    let _b_new = backend(&dir, "new", new);
    push_ops(&dir, &etcd, &shared_yaml(old, new, "old"), &[]);
    let (_gws, admins) = two_gateways(&dir, &etcd);
    // Four writers per gateway, straight to the admin API, so that writes of both overlap and
    // each gateway's watch delivers several values while a change of its own holds the lock.
    // A write worked out on a value another gateway has replaced meanwhile is refused (409),
    // never written over it.
    let writers: Vec<_> = (0..8)
        .map(|t| {
            let admin = admins[t % 2];
            std::thread::spawn(move || {
                let mut conflicts = 0;
                for step in 0..10 {
                    let p = (1 + t + 8 * step) as u32;
                    let (st, body) = put_json(
                        admin,
                        "/api/canaries/split",
                        &format!("{{\"percent\": {p}}}"),
                    );
                    match st {
                        200 => {}
                        409 => {
                            assert!(
                                body.contains("changed meanwhile by another gateway"),
                                "{body}"
                            );
                            conflicts += 1;
                        }
                        _ => panic!("writer {t}, percent {p}: {st} {body}"),
                    }
                }
                conflicts
            })
        })
        .collect();
    let conflicts: usize = writers
        .into_iter()
        .map(|w| w.join().expect("writer thread"))
        .sum();
    assert!(conflicts < 80, "no write went through");
    let stored = etcd
        .get_raw(&format!("{PREFIX}/state/canary/split"))
        .unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&stored).unwrap_or_default();
    let last = v["percent_bp"].as_f64().unwrap_or(-100.0) / 100.0;
    assert!((1.0..=80.0).contains(&last), "{stored}");
    for &admin in &admins {
        wait_for("the store's last value", Duration::from_secs(5), || {
            percent(admin) == last
        });
    }
}

/// `PUT path` with a JSON body on an admin listener: status and body.
fn put_json(admin: u16, path: &str, body: &str) -> (u16, String) {
    use std::io::{BufReader, Write};
    let req = format!(
        "PUT {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut c = connect(admin, None).expect("connect admin");
    c.write_all(req.as_bytes()).expect("send");
    let r = read_response(&mut BufReader::new(c)).expect("admin answer");
    (r.status, r.body)
}

/// Two operators change the weights of different servers through two gateways at once: the
/// weights are one value in etcd, and a change made from a value another gateway replaced
/// meanwhile is refused (409) rather than written over it, so no server's change is lost.
#[test]
fn weight_changes_through_two_gateways_lose_none() {
    let dir = TempDir::new("fleet-weights");
    let etcd = Etcd::start(&dir);
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let _b = backend(&dir, "old", ports[0]);
    let servers: Vec<String> = ports
        .iter()
        .map(|p| format!("{{ addr: \"127.0.0.1:{p}\" }}"))
        .collect();
    let shared = format!(
        "upstreams:
  old: {{ servers: [{}] }}
servers:
  front:
    listen: [\"127.0.0.1:1\"]
    locations:
      - {{ match: /, proxy_pass: old }}
",
        servers.join(", ")
    );
    push_ops(&dir, &etcd, &shared, &[]);
    let (_gws, admins) = two_gateways(&dir, &etcd);
    // Writer t sets server t's weight to 2..=12, each value until it is taken.
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let admin = admins[t % 2];
            let port = ports[t];
            std::thread::spawn(move || {
                let mut conflicts = 0;
                for w in 2..=12 {
                    let path = format!("/api/upstreams/old/servers/127.0.0.1:{port}");
                    loop {
                        let (st, body) = put_json(admin, &path, &format!("{{\"weight\": {w}}}"));
                        if st == 200 {
                            break;
                        }
                        assert_eq!(st, 409, "{body}");
                        assert!(body.contains("changed meanwhile"), "{body}");
                        conflicts += 1;
                    }
                }
                conflicts
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer thread");
    }
    let stored = etcd
        .get_raw(&format!("{PREFIX}/state/weights"))
        .unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&stored).unwrap_or_default();
    for p in &ports {
        let addr = format!("127.0.0.1:{p}");
        let w = v
            .as_array()
            .and_then(|a| a.iter().find(|o| o["addr"] == addr.as_str()))
            .map(|o| o["weight"].clone());
        assert_eq!(
            w,
            Some(serde_json::json!(12)),
            "server {addr} lost its change: {stored}"
        );
    }
    for &admin in &admins {
        wait_for("every weight 12", Duration::from_secs(5), || {
            status(admin)["pools"][0]["servers"]
                .as_array()
                .is_some_and(|a| a.len() == 4 && a.iter().all(|s| s["weight"] == 12))
        });
    }
}

/// A canary's live value that etcd has before the gateway's config has the canary (another
/// gateway, reloaded first, set it) is applied once the push that adds the canary reloads
/// this one; a live value out of bounds is refused, named with its key and revision.
#[test]
fn a_live_value_for_a_canary_not_here_yet_applies_after_the_reload_that_brings_it() {
    let dir = TempDir::new("fleet-later");
    let etcd = Etcd::start(&dir);
    let (old, new) = (free_port(), free_port());
    let _b_old = backend(&dir, "old", old);
    let _b_new = backend(&dir, "new", new);
    let (listen, admin) = (free_port(), free_port());
    let local = dir.write("gw0.yaml", &local_yaml(&dir, 0, listen, admin, &etcd));
    push_ops(&dir, &etcd, &shared_yaml(old, new, "old"), &[]);
    let _gw = start(&local, &[listen, admin]);
    wait_reachable(admin);
    let log = dir.path("gw0.log");
    etcd.put_raw(
        &format!("{PREFIX}/state/canary/later"),
        r#"{"percent_bp":3000,"state":"manual","since":0,"why":"set on another gateway","file_bp":0}"#,
    )
    .unwrap();
    wait_for("the value seen", Duration::from_secs(10), || {
        read(&log).contains("no canary \"later\" yet")
    });
    // Out of bounds: refused, the running weights stay.
    let bad =
        format!(r#"[{{"pool":"old","addr":"127.0.0.1:{old}","weight":5000,"file_weight":1}}]"#);
    let rev = etcd
        .put_raw(&format!("{PREFIX}/state/weights"), &bad)
        .unwrap();
    wait_for("the weights refused", Duration::from_secs(10), || {
        read(&log).contains(&format!("{PREFIX}/state/weights revision {rev} refused"))
    });
    assert_eq!(weight_of(admin, "old"), 1);

    let shared = shared_yaml(old, new, "old").replace(
        "servers:\n  front:",
        "  later: { stable: old, canary: new, key: $remote_addr, percent: 0 }\nservers:\n  front:",
    );
    assert!(shared.contains("later:"), "{shared}");
    push_ops(&dir, &etcd, &shared, &[]);
    let later = || {
        status(admin)["canaries"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == "later").cloned())
            .unwrap_or_default()
    };
    wait_for("the canary added", Duration::from_secs(15), || {
        !later().is_null()
    });
    wait_for("the fleet's 30% applied", Duration::from_secs(10), || {
        later()["percent"] == 30.0
    });
    assert_eq!(later()["why"], "set on another gateway");
}

/// A gateway that leads the ramps and drains (quit, with a request still in flight) gives the
/// leader key up at once: another gateway leads while the old worker still drains. The
/// leader key's value is the holder's member id, which ends with the lease it is under.
#[test]
fn a_draining_leader_hands_the_ramps_over_at_once() {
    let dir = TempDir::new("fleet-drain");
    let etcd = Etcd::start(&dir);
    let (old, new) = (free_port(), free_port());
    let _b_old = backend(&dir, "old", old);
    let _b_new = backend(&dir, "new", new);
    // max_conns: the server's `in_flight` counts (the test waits for its slow request).
    let shared = shared_yaml(old, new, "old").replace(
        &format!("{{ addr: \"127.0.0.1:{old}\" }}"),
        &format!("{{ addr: \"127.0.0.1:{old}\", max_conns: 10 }}"),
    );
    assert!(shared.contains("max_conns"), "{shared}");
    push_ops(&dir, &etcd, &shared, &[]);
    let mut gws = Vec::new();
    let mut admins = Vec::new();
    let mut listens = Vec::new();
    let mut confs = Vec::new();
    for i in 0..2 {
        let (gw, listen, admin, conf) = fleet_gateway(&dir, &etcd, i, |t| {
            t.replace("grace_period: 1s", "grace_period: 60s")
        });
        confs.push(conf);
        gws.push(gw);
        admins.push(admin);
        listens.push(listen);
    }
    let mut leader = None;
    wait_for("a leader", Duration::from_secs(15), || {
        leader = (0..2).find(|&i| status(admins[i])["fleet"]["leads"] == true);
        leader.is_some()
    });
    let l = leader.unwrap();
    let other = 1 - l;
    let (id, lease) = etcd
        .get_with_lease(&format!("{PREFIX}/leader"))
        .expect("a leader key");
    assert!(
        id.ends_with(&format!("-{lease:x}")),
        "{id} is not under lease {lease:x}"
    );
    assert!(
        etcd.keys(&format!("{PREFIX}/members/"))
            .contains(&format!("{PREFIX}/members/{id}")),
        "{id}"
    );

    // A request that takes 30 s keeps the leader's worker draining.
    let worker = worker_of(gws[l].pid());
    let port = listens[l];
    let slow = std::thread::spawn(move || get_from(port, "/?delay_ms=30000", None, &[]));
    wait_for("the slow request in flight", Duration::from_secs(5), || {
        status(admins[l])["pools"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["name"] == "old").cloned())
            .is_some_and(|p| p["servers"][0]["in_flight"] == 1)
    });
    let (ok, out) = ctl(&["-s", "quit", "-c", &confs[l]]);
    assert!(ok, "{out}");
    wait_for("the other gateway leads", Duration::from_secs(15), || {
        status(admins[other])["fleet"]["leads"] == true
    });
    assert!(alive(worker), "the old worker is gone: nothing drained");
    assert!(
        !slow.is_finished(),
        "the slow request ended: nothing drained"
    );
    let log = read(&dir.path(&format!("gw{l}.log")));
    assert!(log.contains("drains: it gave"), "{log}");
}
