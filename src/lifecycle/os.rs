//! The few operating-system calls the process model needs that std does not offer, each a thin
//! wrapper with its safety argument. Everything else in `lifecycle` is safe Rust.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The signals the master and the workers handle themselves.
pub const HANDLED: [libc::c_int; 6] = [
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGINT,
];

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// This process's effective uid (who may send control commands).
pub fn euid() -> u32 {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// Sends `sig` to `pid`.
pub fn kill(pid: i32, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: kill(2) takes two integers and touches no memory of ours.
    check(unsafe { libc::kill(pid, sig) }).map(|_| ())
}

/// Whether `pid` exists (signal 0 checks without sending anything).
pub fn process_exists(pid: i32) -> bool {
    pid > 0 && kill(pid, 0).map_or_else(|e| e.raw_os_error() == Some(libc::EPERM), |_| true)
}

/// A new descriptor (close-on-exec) for the open file `fd` names, owned by the caller.
pub fn dup(fd: std::os::fd::RawFd) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) reads no memory; on success the new descriptor is ours
    // alone, so `OwnedFd` may close it.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    // SAFETY: see above; a negative result is an error, not a descriptor.
    (new >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(new) })
}

/// Shuts both directions of the socket `fd` down: a read pending on it (in another task,
/// through another descriptor of the same socket) sees the end of the stream.
pub fn shutdown_socket(fd: std::os::fd::BorrowedFd<'_>) {
    use std::os::fd::AsRawFd;
    // SAFETY: shutdown(2) on a descriptor that the borrow keeps open; it touches no memory.
    unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
}

/// Asks the kernel to send `sig` to this process when its parent thread exits: a worker must
/// not outlive its master (a SIGKILLed master would leave it serving unmanaged).
pub fn die_with_parent(sig: libc::c_int) {
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets an attribute of this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong) };
}

/// The pid of this process's parent now (the master's, or a reaper's once the master died).
pub fn parent_pid() -> i32 {
    // SAFETY: getppid(2) takes no arguments and cannot fail.
    unsafe { libc::getppid() }
}

/// Names this process `graygate` for `ps -C` and `pgrep` (a worker started through
/// `/proc/self/exe` would otherwise be called `exe`).
pub fn set_name() {
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes, which the
    // literal is.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"graygate".as_ptr()) };
}

/// Detaches from the terminal (nginx's `daemon on`). Call before any thread exists.
pub fn daemon() -> io::Result<()> {
    // SAFETY: daemon(3) forks and the parent exits; the caller guarantees no other threads
    // exist, so the child has every lock and allocator state in order.
    check(unsafe { libc::daemon(1, 0) }).map(|_| ())
}

/// Takes an exclusive lock on `fd` without waiting; `Ok(false)` if another process holds it.
pub fn try_lock(fd: &OwnedFd) -> io::Result<bool> {
    // SAFETY: flock(2) on a descriptor we own.
    match check(unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether `fd` stays open across exec (`inherit`) or is closed by it.
pub fn set_inheritable(fd: RawFd, inherit: bool) -> io::Result<()> {
    // SAFETY: fcntl(F_GETFD/F_SETFD) on a descriptor number only reads and sets its flags;
    // an invalid number yields EBADF, no memory is touched. Also async-signal-safe, so it may
    // run between fork and exec.
    unsafe {
        let flags = check(libc::fcntl(fd, libc::F_GETFD))?;
        let flags = if inherit {
            flags & !libc::FD_CLOEXEC
        } else {
            flags | libc::FD_CLOEXEC
        };
        check(libc::fcntl(fd, libc::F_SETFD, flags)).map(|_| ())
    }
}

/// Makes the child of `cmd` inherit `fds` (they stay close-on-exec in this process), and
/// start with the reload and reopen signals ignored: an ignored disposition survives exec,
/// so such a signal cannot kill the worker before it has installed its handlers.
pub fn inherit_in_child(cmd: &mut std::process::Command, fds: Vec<RawFd>) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec; it only calls fcntl and signal (both
    // async-signal-safe) on descriptor numbers open in the parent and so in the child, and
    // allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            for fd in &fds {
                set_inheritable(*fd, true)?;
            }
            ignore_signals(&[libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2]);
            Ok(())
        });
    }
}

/// Adopts a descriptor number handed down through exec (named in an environment variable).
/// Refuses numbers that are not open, so a wrong variable cannot make us own a stranger's fd.
pub fn adopt_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD only checks that the number is open.
    check(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    set_inheritable(fd, false)?;
    // SAFETY: the number is open, was handed to this process to own, and nothing else in this
    // process has wrapped it (each number is adopted once, at start).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An anonymous in-memory file: the checked config bytes handed to a worker.
pub fn memfd(name: &str) -> io::Result<std::fs::File> {
    let name = CString::new(name).map_err(io::Error::other)?;
    // SAFETY: `name` is a valid C string for the duration of the call.
    let fd = check(unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) })?;
    // SAFETY: memfd_create returned a new descriptor that nothing else owns.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// Non-blocking wait for child `pid`: `Some(status)` once it has exited (and is reaped).
pub fn try_wait(pid: i32) -> Option<ExitStatus> {
    let mut status = 0;
    // SAFETY: waitpid(2) writes the status into our local integer.
    let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    if rc == pid {
        Some(ExitStatus(status))
    } else if rc < 0 {
        // ECHILD: not (or no longer) our child; treat as gone.
        Some(ExitStatus(-1))
    } else {
        None
    }
}

/// How a child ended, worded as nginx does.
#[derive(Debug, Clone, Copy)]
pub struct ExitStatus(libc::c_int);

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.0;
        if s == -1 {
            f.write_str("exited (status unknown)")
        } else if libc::WIFSIGNALED(s) {
            write!(f, "exited on signal {}", libc::WTERMSIG(s))
        } else {
            write!(f, "exited with code {}", libc::WEXITSTATUS(s))
        }
    }
}

/// Blocks (or unblocks) the handled signals for the calling thread. Blocked across exec, they
/// stay pending until the new image has its handlers: a reload sent during a re-exec is
/// neither lost nor fatal.
pub fn block_signals(block: bool) {
    // SAFETY: the sigset is a local initialised by sigemptyset before use; pthread_sigmask only
    // changes the calling thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in HANDLED {
            libc::sigaddset(&mut set, s);
        }
        let how = if block {
            libc::SIG_BLOCK
        } else {
            libc::SIG_UNBLOCK
        };
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

/// Ignores `sigs` until real handlers are installed: a worker must not die of a reload or
/// reopen signal that arrives before it is ready (their default action is to terminate).
pub fn ignore_signals(sigs: &[libc::c_int]) {
    for &s in sigs {
        // SAFETY: setting a disposition to SIG_IGN installs no code of ours.
        unsafe { libc::signal(s, libc::SIG_IGN) };
    }
}

/// Replaces this process image with `exe args`, keeping the pid and every inheritable fd.
/// Returns only on failure.
pub fn exec(exe: &Path, args: &[String], env: &[(String, String)]) -> io::Error {
    let cstr = |b: &[u8]| CString::new(b).map_err(io::Error::other);
    let build = || -> io::Result<(CString, Vec<CString>, Vec<CString>)> {
        let path = cstr(exe.as_os_str().as_bytes())?;
        let mut argv = vec![path.clone()];
        for a in args {
            argv.push(cstr(a.as_bytes())?);
        }
        let mut envp = Vec::new();
        let ours: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        for (k, v) in std::env::vars_os() {
            if ours.iter().any(|o| k.as_bytes() == o.as_bytes()) {
                continue;
            }
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            envp.push(cstr(&kv)?);
        }
        for (k, v) in env {
            envp.push(cstr(format!("{k}={v}").as_bytes())?);
        }
        Ok((path, argv, envp))
    };
    let (path, argv, envp) = match build() {
        Ok(b) => b,
        Err(e) => return e,
    };
    let mut argp: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argp.push(std::ptr::null());
    let mut envpp: Vec<*const libc::c_char> = envp.iter().map(|a| a.as_ptr()).collect();
    envpp.push(std::ptr::null());
    // SAFETY: every pointer is to a NUL-terminated CString kept alive across the call, and both
    // arrays end with a null pointer as execve(2) requires.
    unsafe { libc::execve(path.as_ptr(), argp.as_ptr(), envpp.as_ptr()) };
    io::Error::last_os_error()
}
