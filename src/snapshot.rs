//! The live configuration: a [`Plan`] plus the log files it writes, swapped atomically.
//!
//! Requests load the current snapshot once, at their start, and keep that `Arc` until they end,
//! so a reload never changes the rules under a request in flight, and the request path never
//! takes a lock to read the config.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::logs::{self, LogFile};
use crate::plan::Plan;

/// Opens the log file at `path`; with `create_dirs` (the embedded default config) its
/// directory is created first.
pub fn open_log(path: &str, create_dirs: bool) -> std::io::Result<Arc<LogFile>> {
    let dir = create_dirs.then(|| crate::config::log_dir(path));
    logs::open(path, dir.as_deref())
}

#[derive(Debug)]
pub struct Snapshot {
    pub plan: Plan,
    /// Per server block, in plan order.
    pub access_logs: Vec<Option<Arc<LogFile>>>,
    pub error_logs: Vec<Option<Arc<LogFile>>>,
    pub process_log: Option<Arc<LogFile>>,
}

/// Shared handle to the current snapshot.
pub type Live = Arc<ArcSwap<Snapshot>>;

impl Snapshot {
    /// Opens every log file of `plan` (sharing those already open) and wraps it.
    pub fn activate(plan: Plan) -> std::io::Result<Snapshot> {
        let create = plan.create_log_dirs;
        let open = |p: &Option<String>| p.as_deref().map(|p| open_log(p, create)).transpose();
        let mut access_logs = Vec::new();
        let mut error_logs = Vec::new();
        for s in &plan.servers {
            access_logs.push(open(&s.access_log)?);
            error_logs.push(open(&s.error_log)?);
        }
        let process_log = open(&plan.settings.error_log)?;
        Ok(Snapshot {
            plan,
            access_logs,
            error_logs,
            process_log,
        })
    }
}
