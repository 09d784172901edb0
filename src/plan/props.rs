//! Properties checked on many generated inputs (`proptest`, a few hundred cases each, so that
//! `make test` stays quick; the `fuzz/` targets run the same properties for as long as one
//! likes): the config loader never panics and puts a position on every problem, templates
//! render anything without panicking, and access-log escaping is nginx's and reversible.

use proptest::prelude::*;

use super::*;
use crate::config;
use crate::logs::access::escaped;

/// A config that compiles, and the pieces mutations draw from. Addresses are literals only, so
/// that no generated file makes the loader ask DNS.
const BASE: &str = "pid_file: /tmp/p.pid\nupstreams:\n  p:\n    policy: ip_hash\n    servers:\n      - { addr: \"127.0.0.1:9\", weight: 2 }\nservers:\n  s:\n    listen: [\"127.0.0.1:8\"]\n    client_max_body_size: 1m\n    real_ip: { from: [\"10.0.0.0/8\"] }\n    locations:\n      - match: /\n        proxy_pass: p\n        proxy_set_header: { X-A: $remote_addr }\n";

const WORDS: &[&str] = &[
    "0",
    "-1",
    "1m",
    "8k",
    "4 8k",
    "1x",
    "999999999999999999999",
    "10s",
    "366d",
    "on",
    "off",
    "true",
    "~",
    "[]",
    "{}",
    "\"",
    "'",
    ":",
    "- ",
    "  ",
    "\n",
    "\t",
    "$remote_addr",
    "$nope",
    "$http_x",
    "= /x",
    "/",
    "127.0.0.1:80",
    "[::1]:80",
    "80",
    "10.0.0.0/33",
    "ip_hash",
    "consistent",
    "p",
    "s",
    "servers",
    "upstreams",
    "listen",
    "addr",
    "weight",
    "real_ip",
    "from",
    "header",
    "locations",
    "match",
    "proxy_pass",
    "max_headers",
    "keepalive_requests",
    "large_client_header_buffers",
    "client_header_timeout",
    "#",
    "&a",
    "*a",
    "!!str",
    "é",
];

fn mutated() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        (0..BASE.len(), 0..3u8, proptest::sample::select(WORDS)),
        1..6,
    )
    .prop_map(|edits| {
        let mut s = BASE.to_string();
        for (at, op, w) in edits {
            let mut at = at.min(s.len());
            while !s.is_char_boundary(at) {
                at -= 1;
            }
            match op {
                0 => s.insert_str(at, w),
                1 => {
                    let mut end = (at + w.len()).min(s.len());
                    while !s.is_char_boundary(end) {
                        end -= 1;
                    }
                    s.replace_range(at..end, w);
                }
                _ => {
                    let mut end = (at + 3).min(s.len());
                    while !s.is_char_boundary(end) {
                        end -= 1;
                    }
                    s.replace_range(at..end, "");
                }
            }
        }
        s
    })
}

/// Loads and compiles `src`; every problem must carry a line and column.
fn check_config(src: &str) {
    // A mutation may turn an address into a host name: those resolve to nothing here.
    for h in ["p", "s", "x"] {
        config::test_hosts::set(h, &[]);
    }
    if src.contains("addr") || src.contains("listen") {
        // Skip files whose addresses are no longer literals (they would ask DNS).
        let literal = |l: &str| {
            !(l.contains("addr") || l.contains("listen"))
                || l.contains("127.0.0.1:")
                || l.contains("[::1]:")
        };
        if !src.lines().all(literal) {
            return;
        }
    }
    let res = config::parse("t.yaml".into(), src, false).and_then(|l| Plan::compile(&l, None));
    if let Err(ps) = res {
        assert!(!ps.0.is_empty());
        for p in &ps.0 {
            assert!(p.pos.line >= 1, "no position: {p}\nfor:\n{src}");
        }
    }
}

struct NoVars;
impl Vars for NoVars {
    fn client(&self) -> Option<std::net::SocketAddr> {
        None
    }
    fn header(&self, _: &str) -> Option<&[u8]> {
        Some(b"\x00\"\\\xff")
    }
    fn host(&self) -> &[u8] {
        b""
    }
    fn path_and_query(&self) -> &str {
        "/"
    }
    fn method(&self) -> &str {
        "GET"
    }
    fn server_port(&self) -> Option<u16> {
        None
    }
}

/// Undoes nginx's `\xHH` escaping.
fn unescape(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() + 1 && b.get(i + 1) == Some(&b'x') {
            let hex = std::str::from_utf8(&b[i + 2..i + 4]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn config_loader_never_panics_on_any_text(src in "\\PC{0,200}") {
        check_config(&src);
    }

    #[test]
    fn config_loader_never_panics_on_a_mutated_file(src in mutated()) {
        check_config(&src);
    }

    #[test]
    fn templates_compile_or_say_why_and_render_anything(text in "[$a-z_ {}]{0,40}") {
        if let Ok(t) = Template::compile(&text) {
            let mut out = Vec::new();
            t.render(&NoVars, &mut out);
        }
    }

    #[test]
    fn access_log_escaping_is_printable_and_reversible(b in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut out = Vec::new();
        escaped(&mut out, &b);
        for &c in &out {
            prop_assert!((0x20..0x7f).contains(&c) && c != b'"');
        }
        prop_assert_eq!(unescape(&out), b);
    }
}

#[test]
fn the_base_file_compiles() {
    let l = config::parse("t.yaml".into(), BASE, false).unwrap();
    Plan::compile(&l, None).unwrap();
}
