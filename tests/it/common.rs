//! Test harness: the real graygate binary, real backend processes, real sockets on loopback.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

pub fn graygate() -> &'static str {
    env!("CARGO_BIN_EXE_graygate")
}

/// A fresh directory for one test's files.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "graygate-test-{}-{}-{}",
            tag,
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).expect("write file");
        p
    }

    pub fn s(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port that was free a moment ago and that no other test in this process was given: all
/// tests share one process, and a port handed out twice lets one test's gateway start on top of
/// another's (start() then sees the other one's port open).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        if GIVEN.lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// Polls `cond` until it holds; panics with `what` after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        if Instant::now() > end {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

pub use libc::SIGKILL;

/// Sends `sig` to process `pid`: the one way tests signal processes.
pub fn signal(pid: i32, sig: i32) -> std::io::Result<()> {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A dead server dies whole: its workers too, not only the master. And it is dead when
        // drop returns: SIGKILL only starts an exit, and a worker still holding its listener
        // would take (and then reset) the next test request meant to find the port closed.
        let workers = children(self.pid());
        for &w in &workers {
            // Already gone is fine: this only makes sure.
            let _ = signal(w, SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        wait_for("killed workers gone", Duration::from_secs(10), || {
            workers.iter().all(|&w| !alive(w))
        });
    }
}

/// Runs `graygate ARGS` to completion.
pub fn run(args: &[&str]) -> Output {
    Command::new(graygate())
        .args(args)
        .output()
        .expect("run graygate")
}

/// Starts `graygate -c conf` and waits until every port in `ports` accepts.
pub fn start(conf: &Path, ports: &[u16]) -> Proc {
    let child = Command::new(graygate())
        .arg("-c")
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn graygate");
    let mut p = Proc { child };
    for &port in ports {
        wait_for(&format!("port {port}"), Duration::from_secs(20), || {
            assert!(
                !p.exited(),
                "graygate exited during start-up ({})",
                conf.display()
            );
            port_open(port)
        });
    }
    p
}

/// A real backend process: graygate serving one built-in demo backend named `name`.
pub fn backend(dir: &TempDir, name: &str, port: u16) -> Proc {
    let conf = dir.write(
        &format!("backend-{name}-{port}.yaml"),
        &format!(
            "pid_file: {}\nupgrade_sock: {}\nerror_log: {}\ndemo_backends:\n  - {{ listen: \"127.0.0.1:{port}\", name: {name} }}\n",
            dir.s(&format!("backend-{port}.pid")),
            dir.s(&format!("backend-{port}.sock")),
            dir.s(&format!("backend-{port}.log")),
        ),
    );
    start(&conf, &[port])
}

/// One HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The backend's name, from the demo backend's body.
    pub fn backend(&self) -> &str {
        self.body
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("backend: "))
            .unwrap_or("")
    }

    /// A request header as the backend saw it.
    pub fn seen(&self, name: &str) -> Option<&str> {
        let prefix = format!("{}: ", name.to_ascii_lowercase());
        self.body
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
    }
}

/// Connects to 127.0.0.1:`port`, from `src` if given.
pub fn connect(port: u16, src: Option<Ipv4Addr>) -> std::io::Result<TcpStream> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    if let Some(ip) = src {
        s.bind(&SocketAddr::from((ip, 0)).into())?;
    }
    s.connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)).into(),
        Duration::from_secs(5),
    )?;
    let t: TcpStream = s.into();
    t.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok(t)
}

/// Reads one response from a keep-alive connection (plain or TLS).
pub fn read_response<R: BufRead>(r: &mut R) -> std::io::Result<Resp> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let mut resp = Resp {
        status,
        headers,
        body: String::new(),
    };
    if let Some(len) = resp
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        let mut buf = vec![0; len];
        r.read_exact(&mut buf)?;
        resp.body = String::from_utf8_lossy(&buf).into_owned();
    } else if resp
        .header("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        loop {
            let mut sz = String::new();
            r.read_line(&mut sz)?;
            let n = usize::from_str_radix(sz.trim(), 16).map_err(std::io::Error::other)?;
            let mut buf = vec![0; n + 2];
            r.read_exact(&mut buf)?;
            if n == 0 {
                break;
            }
            resp.body.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    } else if resp
        .header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    {
        let mut rest = String::new();
        r.read_to_string(&mut rest)?;
        resp.body = rest;
    }
    Ok(resp)
}

/// One request on a new connection, with extra header lines (`"Name: value"`).
pub fn get_from(
    port: u16,
    path: &str,
    src: Option<Ipv4Addr>,
    extra: &[&str],
) -> std::io::Result<Resp> {
    let mut s = connect(port, src)?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\n");
    for h in extra {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    read_response(&mut BufReader::new(s))
}

pub fn get(port: u16, path: &str) -> Resp {
    get_from(port, path, None, &[]).expect("request")
}

/// Reads a file, empty if missing.
pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// A gateway config for tests: one server block on `listen` in front of one pool.
pub fn gateway_yaml(
    dir: &TempDir,
    listen: u16,
    policy: &str,
    servers: &[(u16, u32)],
    extra_pool: &str,
) -> String {
    let mut s = format!(
        "pid_file: {}\nupgrade_sock: {}\nerror_log: {}\nthreads: 2\nupstreams:\n  pool:\n    policy: {policy}\n{extra_pool}    servers:\n",
        dir.s("gw.pid"),
        dir.s("gw.sock"),
        dir.s("error.log"),
    );
    for (port, w) in servers {
        s.push_str(&format!(
            "      - {{ addr: \"127.0.0.1:{port}\", weight: {w} }}\n"
        ));
    }
    s.push_str(&format!(
        "servers:\n  front:\n    listen: [\"127.0.0.1:{listen}\"]\n    access_log: {}\n    error_log: {}\n    locations:\n      - match: /\n        proxy_pass: pool\n        proxy_set_header:\n          X-Real-IP: $remote_addr\n          X-Forwarded-For: $proxy_add_x_forwarded_for\n",
        dir.s("access.log"),
        dir.s("front.error.log"),
    ));
    s
}

/// Pids of the direct children of `pid` (the master's workers).
pub fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // The command name is in parentheses and may hold spaces: fields follow the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.first() == Some(&"Z") {
            continue;
        }
        if f.get(1).and_then(|pp| pp.parse::<i32>().ok()) == Some(pid) {
            out.push(p);
        }
    }
    out
}

/// Whether any thread of process `pid` still runs. The main thread alone is not enough: after a
/// SIGKILL it can be a zombie while other threads are still exiting and still hold the
/// process's sockets; the open files go only with the last thread.
pub fn alive(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        std::fs::read_to_string(t.path().join("stat")).is_ok_and(|s| {
            // The command name is in parentheses and may hold spaces: the state follows the last ')'.
            s.rsplit_once(')')
                .and_then(|(_, r)| r.trim_start().chars().next())
                .is_some_and(|state| !matches!(state, 'Z' | 'X'))
        })
    })
}

/// Outcome of a client load.
#[derive(Debug, Default)]
pub struct LoadResult {
    pub ok: u64,
    /// Requests that were sent on an open connection and got no (or a non-200) response.
    pub failed: Vec<String>,
    /// New connections refused (only expected once the gateway has stopped).
    pub refused: u64,
}

/// Keep-alive clients hammering `port` until stopped: each sends a request, reads the answer,
/// and reconnects when told `Connection: close`.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    count: std::sync::Arc<std::sync::atomic::AtomicU64>,
    threads: Vec<std::thread::JoinHandle<LoadResult>>,
}

impl Load {
    pub fn start(port: u16, clients: usize, stop_on_refused: bool) -> Load {
        use std::sync::atomic::{AtomicBool, AtomicU64};
        use std::sync::Arc;
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let threads = (0..clients)
            .map(|i| {
                let stop = stop.clone();
                let count = count.clone();
                std::thread::spawn(move || {
                    let src = Ipv4Addr::new(127, 77, (i / 250) as u8, (i % 250) as u8 + 1);
                    let mut res = LoadResult::default();
                    let mut conn: Option<BufReader<TcpStream>> = None;
                    let mut served_on_conn = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let c = match conn.as_mut() {
                            Some(c) => c,
                            None => match connect(port, Some(src)) {
                                Ok(s) => conn.insert(BufReader::new(s)),
                                Err(_) => {
                                    res.refused += 1;
                                    if stop_on_refused {
                                        break;
                                    }
                                    std::thread::sleep(Duration::from_millis(5));
                                    continue;
                                }
                            },
                        };
                        let req = format!("GET /load/{i} HTTP/1.1\r\nHost: localhost\r\n\r\n");
                        let fresh = served_on_conn == 0;
                        let outcome = c
                            .get_mut()
                            .write_all(req.as_bytes())
                            .and_then(|_| read_response(c));
                        match outcome {
                            Ok(r) if r.status == 200 => {
                                served_on_conn += 1;
                                res.ok += 1;
                                count.fetch_add(1, Ordering::Relaxed);
                                if r.header("connection")
                                    .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                                {
                                    conn = None;
                                    served_on_conn = 0;
                                }
                            }
                            Ok(r) => {
                                res.failed.push(format!("status {}", r.status));
                                conn = None;
                            }
                            // A connection the kernel queued just before a stopping gateway closed
                            // its listener is reset unanswered, as with nginx: for a client that
                            // is the same as a refused connection. Only with `stop_on_refused`.
                            Err(_) if fresh && stop_on_refused => {
                                res.refused += 1;
                                break;
                            }
                            Err(e) => {
                                res.failed.push(format!("client {i}: {e}"));
                                conn = None;
                                served_on_conn = 0;
                            }
                        }
                    }
                    res
                })
            })
            .collect();
        Load {
            stop,
            count,
            threads,
        }
    }

    /// Successful requests so far.
    pub fn done(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Waits until `n` more requests have succeeded.
    pub fn wait_more(&self, n: u64) {
        let target = self.done() + n;
        wait_for("client load progress", Duration::from_secs(60), || {
            self.done() >= target
        });
    }

    pub fn finish(self) -> LoadResult {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = LoadResult::default();
        for t in self.threads {
            let r = t.join().expect("load thread");
            total.ok += r.ok;
            total.refused += r.refused;
            total.failed.extend(r.failed);
        }
        total
    }
}

/// Runs `graygate ARGS` and returns (success, stdout + stderr).
pub fn ctl(args: &[&str]) -> (bool, String) {
    let out = run(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// nginx (Debian's package) with `http_body` in its `http` block and `server_body` inside
/// one `server` on a free loopback port, if nginx is installed; `None` otherwise. Its access
/// log is `DIR/nginx.access`.
pub fn nginx_with(dir: &TempDir, http_body: &str, server_body: &str) -> Option<(Proc, u16)> {
    let bin = ["/usr/sbin/nginx", "/usr/local/sbin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let port = free_port();
    let d = dir.s("");
    let conf = dir.write(
        "nginx.conf",
        &format!(
            "daemon off; master_process off; pid {d}/nginx.pid; error_log {d}/nginx.err info;\n\
             events {{}}\n\
             http {{ access_log {d}/nginx.access; client_body_temp_path {d}; proxy_temp_path {d};\n\
             fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
             {http_body}\n\
             server {{ listen 127.0.0.1:{port};\n{server_body}}} }}\n"
        ),
    );
    let child = Command::new(bin)
        .arg("-p")
        .arg(&d)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let p = Proc { child };
    wait_for("nginx", Duration::from_secs(10), || port_open(port));
    Some((p, port))
}

/// The master's (first) worker, waiting for it: the master binds the port before it forks the
/// worker, so an open port does not mean a worker exists yet.
pub fn worker_of(master: i32) -> i32 {
    let mut found = 0;
    wait_for("a worker process", Duration::from_secs(20), || {
        found = children(master).first().copied().unwrap_or(0);
        found != 0
    });
    found
}
