//! Access-log escaping: only printable ASCII comes out, never a bare `"`, and `\xHH` undoes it.
#![no_main]
use graygate::logs::access::escaped;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    escaped(&mut out, data);
    assert!(out.iter().all(|&c| (0x20..0x7f).contains(&c) && c != b'"'));
    let mut back = Vec::new();
    let mut i = 0;
    while i < out.len() {
        if out[i] == b'\\' {
            let hex = std::str::from_utf8(&out[i + 2..i + 4]).unwrap();
            back.push(u8::from_str_radix(hex, 16).unwrap());
            i += 4;
        } else {
            back.push(out[i]);
            i += 1;
        }
    }
    assert_eq!(back, data);
});
