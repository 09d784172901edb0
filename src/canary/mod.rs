//! Gray releases as one operation: sticky canary splits whose percent changes live.
//!
//! - [`bucket`]: the fixed hash of a user's key into 10,000 buckets (a user's side is `bucket <
//!   percent * 100`, so raising the percent only moves users stable -> canary).
//! - [`state`]: a canary's live percent and phase (atomics the request path reads lock-free).
//! - [`store`]: the state file that carries live values over upgrades and restarts, and the
//!   lead (which process may change them); `file`: its safe, durable reads and writes.
//!
//! - [`analysis`]: per-side counts (requests, 5xx, durations), windows and the verdict.
//! - [`ramp`]: the automatic ramp from step to step (a background service of the worker).
//!
//! The compiled canaries and the per-request choice live in `plan::canary`; the admin API that
//! changes them in `crate::admin`.

pub mod analysis;
mod bucket;
mod file;
pub mod persist;
pub mod ramp;
mod state;
pub mod store;

pub use bucket::{bucket, BUCKETS};
pub use state::{percent_bp, percent_text, unix_now, CanaryState, Phase, Position, Side, Status};
pub use store::Store;
