//! The evidence behind `policy: consistent`: for nginx's ip_hash, Pingora's Ketama, rendezvous
//! (HRW) hashing and weighted Maglev, how many of 20,000 client keys move when a server joins,
//! leaves or changes weight (against the theoretical minimum), how far load strays from the
//! weights, and what a lookup costs. Prints the markdown kept in bench/CONSISTENT.md:
//!
//! `cargo bench --bench consistent_table > bench/CONSISTENT.md`

use std::hint::black_box;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use graygate::config::Policy;
use graygate::upstream::{maglev, Attempt, Key, Peer, Pool};
use pingora_ketama::{Bucket, Continuum};

const KEYS: u32 = 20_000;

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 80))
}

fn key_ip(k: u32) -> IpAddr {
    IpAddr::from([(k >> 16) as u8 + 1, (k >> 8) as u8, k as u8, 9])
}

/// One algorithm: builds an assignment function for a weight vector.
trait Algo {
    fn name(&self) -> &'static str;
    fn build(&self, weights: &[u32]) -> Box<dyn Fn(u32) -> usize>;
}

struct GrayPool(Policy, &'static str);
impl Algo for GrayPool {
    fn name(&self) -> &'static str {
        self.1
    }
    fn build(&self, weights: &[u32]) -> Box<dyn Fn(u32) -> usize> {
        let peers = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Peer::new(addr(i), w))
            .collect();
        let pool = Pool::new("t".into(), self.0, peers);
        let policy = self.0;
        Box::new(move |k| {
            let ip = key_ip(k);
            let key = if policy == Policy::Consistent {
                Key::Hash(maglev::hash(ip.to_string().as_bytes(), 0))
            } else {
                Key::Ip(ip)
            };
            pool.select(key, &mut Attempt::default())
                .unwrap_or(usize::MAX)
        })
    }
}

struct Ketama;
impl Algo for Ketama {
    fn name(&self) -> &'static str {
        "Ketama (pingora-ketama)"
    }
    fn build(&self, weights: &[u32]) -> Box<dyn Fn(u32) -> usize> {
        let buckets: Vec<Bucket> = weights
            .iter()
            .enumerate()
            .filter(|(_, &w)| w > 0)
            .map(|(i, &w)| Bucket::new(addr(i), w))
            .collect();
        let c = Continuum::new(&buckets);
        Box::new(move |k| {
            let a = c.node(key_ip(k).to_string().as_bytes());
            (0..4096)
                .find(|&i| Some(addr(i)) == a)
                .unwrap_or(usize::MAX)
        })
    }
}

struct Rendezvous;
impl Algo for Rendezvous {
    fn name(&self) -> &'static str {
        "rendezvous (weighted HRW)"
    }
    fn build(&self, weights: &[u32]) -> Box<dyn Fn(u32) -> usize> {
        let w = weights.to_vec();
        let ids: Vec<u64> = (0..w.len())
            .map(|i| maglev::hash(addr(i).to_string().as_bytes(), 7))
            .collect();
        Box::new(move |k| {
            let kh = maglev::hash(key_ip(k).to_string().as_bytes(), 0);
            let mut best = (f64::MIN, usize::MAX);
            for (i, (&wi, &id)) in w.iter().zip(&ids).enumerate() {
                if wi == 0 {
                    continue;
                }
                let h = maglev::mix(kh ^ id);
                let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
                let score = -f64::from(wi) / u.ln();
                if score > best.0 {
                    best = (score, i);
                }
            }
            best.1
        })
    }
}

fn assign(f: &dyn Fn(u32) -> usize) -> Vec<usize> {
    (0..KEYS).map(f).collect()
}

fn moved(a: &[usize], b: &[usize]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / a.len() as f64
}

fn main() {
    let algos: Vec<Box<dyn Algo>> = vec![
        Box::new(GrayPool(Policy::IpHash, "nginx ip_hash")),
        Box::new(Ketama),
        Box::new(Rendezvous),
        Box::new(GrayPool(
            Policy::Consistent,
            "weighted Maglev (graygate `consistent`)",
        )),
    ];
    let eight = vec![1u32; 8];
    let nine = vec![1u32; 9];
    let heavier = {
        let mut w = eight.clone();
        w[0] = 2;
        w
    };
    let min_join = 1.0 / 9.0;
    let min_weight = 2.0 / 9.0 - 1.0 / 8.0;
    println!("# Consistent hashing: moved keys and balance");
    println!();
    println!("Made by `cargo bench --bench consistent_table` ({KEYS} client addresses as keys).");
    println!("Moved fraction as a multiple of the theoretical minimum: join = 8 -> 9 servers (minimum 1/9),");
    println!("leave = 9 -> 8 (1/9), weight = one of 8 servers from weight 1 to 2 (2/9 - 1/8). Balance = the largest");
    println!("relative deviation of a server's share from its weight, weights 1:2:3:4. Lookup = ns per key (16 servers).");
    println!();
    println!("| algorithm | join moved | x min | leave moved | x min | weight moved | x min | balance | lookup ns |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for a in &algos {
        let e = assign(&*a.build(&eight));
        let n = assign(&*a.build(&nine));
        let h = assign(&*a.build(&heavier));
        let (j, l, w) = (moved(&e, &n), moved(&n, &e), moved(&e, &h));
        let b = assign(&*a.build(&[1, 2, 3, 4]));
        let dev = (0..4)
            .map(|i| {
                let share = b.iter().filter(|&&x| x == i).count() as f64 / b.len() as f64;
                let want = (i + 1) as f64 / 10.0;
                (share - want).abs() / want
            })
            .fold(0.0, f64::max);
        let f = a.build(&[1; 16]);
        let t = Instant::now();
        for k in 0..200_000u32 {
            black_box(f(k));
        }
        let ns = t.elapsed().as_nanos() as f64 / 200_000.0;
        println!(
            "| {} | {:.1}% | {:.2} | {:.1}% | {:.2} | {:.1}% | {:.2} | {:.1}% | {:.0} |",
            a.name(),
            j * 100.0,
            j / min_join,
            l * 100.0,
            l / min_join,
            w * 100.0,
            w / min_weight,
            dev * 100.0,
            ns
        );
    }
    println!();
    println!("Lookup for Ketama includes mapping its answer back to a server index (a linear scan here),");
    println!("and every row includes formatting the key; compare rows with each other, not with `select` in RESULTS.md.");
}
