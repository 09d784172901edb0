//! The request-head scanner: any bytes, split at any point, give the same verdict, never a
//! panic, and a passed head is never longer than the limits.
#![no_main]
use graygate::plan::limits::Limits;
use graygate::proxy::head::{Scan, Verdict};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (cut, bytes) = match data.split_first() {
        Some((c, rest)) => (*c as usize, rest),
        None => return,
    };
    let lim = Limits {
        line_max: 64,
        head_max: 256,
        max_headers: 8,
        ..Limits::default()
    };
    let whole = Scan::default().feed(bytes, &lim);
    let mut scan = Scan::default();
    let first = cut.min(bytes.len());
    let mut v = scan.feed(&bytes[..first], &lim);
    if v == Verdict::More {
        v = scan.feed(bytes, &lim);
    }
    assert_eq!(v, whole);
    if let Verdict::Done(h) = whole {
        assert!(h.len <= bytes.len() && h.len <= lim.head_max);
    }
});
