//! graygate's ip_hash against a table recorded from real nginx (tests/data/ip_hash_vectors.txt,
//! made by tests/data/gen_ip_hash_vectors.py): same client, same server, for every line.

use std::net::{IpAddr, SocketAddr};

use graygate::config::Policy;
use graygate::upstream::{Attempt, Peer, Pool};

fn pool(weights: &[u32], down: &[usize]) -> Pool {
    let peers = weights
        .iter()
        .enumerate()
        .map(|(i, &weight)| {
            let mut p = Peer::new(SocketAddr::from(([127, 0, 0, 1], 30000 + i as u16)), weight);
            p.down = down.contains(&i);
            p
        })
        .collect();
    Pool::new("v".into(), Policy::IpHash, peers)
}

fn nums(s: &str) -> Vec<usize> {
    if s == "-" {
        return vec![];
    }
    s.split(',').map(|x| x.parse().unwrap()).collect()
}

#[test]
fn matches_nginx_for_every_recorded_client() {
    let text = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/ip_hash_vectors.txt"
    ));
    let mut checked = 0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let weights: Vec<u32> = nums(f[0]).into_iter().map(|w| w as u32).collect();
        let down = nums(f[1]);
        let ip: IpAddr = f[2].parse().unwrap();
        let want: usize = f[3].parse().unwrap();
        let got = pool(&weights, &down).select(Some(ip), &mut Attempt::default());
        assert_eq!(
            got,
            Some(want),
            "weights {weights:?} down {down:?} client {ip}"
        );
        checked += 1;
    }
    assert!(checked >= 6000, "only {checked} vectors");
}
