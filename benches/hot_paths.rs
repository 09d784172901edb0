//! Criterion benchmarks for the per-request pieces graygate adds to Pingora: server selection
//! for every policy and pool size, header templates, and access log formatting.
//!
//! `cargo bench --bench hot_paths`; the figures are summarised in bench/RESULTS.md.

use std::hint::black_box;
use std::net::{IpAddr, SocketAddr};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use graygate::config::Policy;
use graygate::logs::access::{self, Entry, RequestLine};
use graygate::plan::template::{Template, Vars};
use graygate::upstream::{Attempt, Peer, Pool};

fn pool(policy: Policy, n: usize) -> Pool {
    let peers = (0..n)
        .map(|i| {
            Peer::new(
                SocketAddr::from(([10, (i >> 8) as u8, i as u8, 1], 8080)),
                1 + (i % 3) as u32,
            )
        })
        .collect();
    Pool::new("bench".into(), policy, peers)
}

fn selection(c: &mut Criterion) {
    let mut g = c.benchmark_group("select");
    for policy in [Policy::IpHash, Policy::RoundRobin, Policy::Consistent] {
        for n in [2usize, 16, 256, 4096] {
            let p = pool(policy, n);
            let mut i = 0u32;
            g.bench_with_input(BenchmarkId::new(format!("{policy:?}"), n), &n, |b, _| {
                b.iter(|| {
                    i = i.wrapping_add(1);
                    let ip = IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
                    black_box(p.select(Some(ip), &mut Attempt::default()))
                })
            });
        }
    }
    g.finish();
}

struct Req;
impl Vars for Req {
    fn client(&self) -> Option<SocketAddr> {
        Some(SocketAddr::from(([127, 0, 0, 1], 40000)))
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        (name == "x-forwarded-for").then_some(b"203.0.113.9".as_slice())
    }
    fn host(&self) -> &[u8] {
        b"localhost:10001"
    }
    fn path_and_query(&self) -> &str {
        "/api/items?page=2"
    }
    fn method(&self) -> &str {
        "GET"
    }
    fn server_port(&self) -> Option<u16> {
        Some(10001)
    }
}

fn headers(c: &mut Criterion) {
    let real_ip = Template::compile("$remote_addr").unwrap();
    let xff = Template::compile("$proxy_add_x_forwarded_for").unwrap();
    let mut buf = Vec::with_capacity(128);
    c.bench_function("header/x_real_ip", |b| {
        b.iter(|| {
            buf.clear();
            real_ip.render(&Req, &mut buf);
            black_box(buf.len())
        })
    });
    c.bench_function("header/x_forwarded_for", |b| {
        b.iter(|| {
            buf.clear();
            xff.render(&Req, &mut buf);
            black_box(buf.len())
        })
    });
}

fn access_log(c: &mut Criterion) {
    let mut buf = Vec::with_capacity(256);
    let e = Entry {
        remote_addr: Some(IpAddr::from([127, 0, 0, 1])),
        authorization: None,
        request: RequestLine {
            method: "GET",
            uri: b"/api/items?page=2",
            version: http::Version::HTTP_11,
        },
        status: 200,
        body_bytes_sent: 9,
        referer: None,
        user_agent: Some(b"Mozilla/5.0 (X11; Linux x86_64) wrk"),
    };
    c.bench_function("log/combined", |b| {
        b.iter(|| {
            buf.clear();
            access::combined(&mut buf, black_box(&e));
            black_box(buf.len())
        })
    });
}

criterion_group!(benches, selection, headers, access_log);
criterion_main!(benches);
