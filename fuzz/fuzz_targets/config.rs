//! The config loader, bytes to `Plan`: never a panic, every problem with a line and column.
//! Files naming hosts are skipped: they would ask DNS.
#![no_main]
use graygate::{config, plan::Plan};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let literal = |l: &str| {
        !(l.contains("addr") || l.contains("listen"))
            || l.contains("127.0.0.1:")
            || l.contains("[::1]:")
    };
    if !src.lines().all(literal) {
        return;
    }
    let res = config::parse("f.yaml".into(), src, false).and_then(|l| Plan::compile(&l, None));
    if let Err(ps) = res {
        for p in &ps.0 {
            assert!(p.pos.line >= 1, "{p}");
        }
    }
});
