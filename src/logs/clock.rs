//! Time stamps for log lines, formatted at most once per second per thread.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{Local, TimeZone};

struct Cache {
    secs: u64,
    local: String,
    error: String,
    iso8601: String,
}

thread_local! {
    static CACHE: RefCell<Cache> = const { RefCell::new(Cache { secs: u64::MAX, local: String::new(), error: String::new(), iso8601: String::new() }) };
}

fn with<R>(f: impl FnOnce(&Cache) -> R) -> R {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.secs != secs {
            let t = Local
                .timestamp_opt(secs as i64, 0)
                .single()
                .unwrap_or_else(Local::now);
            c.local = t.format("%d/%b/%Y:%H:%M:%S %z").to_string();
            c.error = t.format("%Y/%m/%d %H:%M:%S").to_string();
            c.iso8601 = t.format("%Y-%m-%dT%H:%M:%S%:z").to_string();
            c.secs = secs;
        }
        f(&c)
    })
}

/// nginx's `$time_local`: `25/Nov/2026:04:35:56 +0000`.
pub fn time_local(out: &mut Vec<u8>) {
    with(|c| out.extend_from_slice(c.local.as_bytes()));
}

/// nginx's error log time: `2026/11/25 04:35:56`.
pub fn error_time(out: &mut Vec<u8>) {
    with(|c| out.extend_from_slice(c.error.as_bytes()));
}

/// nginx's `$time_iso8601`: `2026-11-25T04:35:56+00:00`.
pub fn time_iso8601(out: &mut Vec<u8>) {
    with(|c| out.extend_from_slice(c.iso8601.as_bytes()));
}

/// nginx's `$msec`: seconds since the epoch with millisecond resolution, `1764045356.123`.
pub fn msec(out: &mut Vec<u8>) {
    use std::io::Write;
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let _ = write!(out, "{}.{:03}", d.as_secs(), d.subsec_millis());
}
