//! The checks of `admin` and `canaries`, and the per-request split.

use std::net::SocketAddr;

use super::*;
use crate::canary::{Phase, Side};
use crate::config;

fn compile_with(src: &str, prev: Option<&Plan>) -> Result<Plan, Problems> {
    let loaded = config::parse("t.yaml".into(), src, false)?;
    Plan::compile(&loaded, prev)
}

fn problems(src: &str) -> Vec<String> {
    match compile_with(src, None) {
        Ok(_) => Vec::new(),
        Err(e) => e.0.iter().map(|p| p.to_string()).collect(),
    }
}

/// Two pools, a canary "c" over them at `percent`, and `extra` at the top level.
fn file(percent: &str, key: &str, extra: &str) -> String {
    format!(
        "pid_file: /tmp/graygate-canary-unit.pid
upstreams:
  old: {{ servers: [{{ addr: 127.0.0.1:2 }}] }}
  new: {{ servers: [{{ addr: 127.0.0.1:3 }}] }}
canaries:
  c: {{ stable: old, canary: new, key: \"{key}\", percent: {percent} }}
servers:
  s:
    listen: [\"127.0.0.1:1\"]
    locations: [{{ match: /, proxy_pass: c }}]
{extra}"
    )
}

struct V {
    client: SocketAddr,
    cookie: Option<&'static str>,
}

impl Vars for V {
    fn client(&self) -> Option<SocketAddr> {
        Some(self.client)
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        (name == "cookie").then_some(self.cookie?.as_bytes())
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

fn side(plan: &Plan, ip: [u8; 4], cookie: Option<&'static str>) -> Side {
    let v = V {
        client: SocketAddr::from((ip, 5000)),
        cookie,
    };
    let Some(Target::Canary(_)) = plan.servers[0].locations[0].target else {
        panic!("location should name the canary");
    };
    let target = plan.servers[0].locations[0].target.expect("a proxy_pass");
    let pick = plan.route(target, &v, &mut Vec::new());
    let (_, side) = pick.canary.unwrap();
    assert_eq!(pick.pool, plan.canaries[0].pools[side as usize]);
    side
}

#[test]
fn a_canary_compiles_and_splits_by_bucket() {
    let plan = compile_with(&file("25", "$remote_addr", ""), None).unwrap();
    let c = &plan.canaries[0];
    assert_eq!(c.pools, [0, 1]);
    assert_eq!(c.state.percent_bp(), 2500);
    let mut canary = 0;
    for i in 0..4000u32 {
        let ip = [10, (i >> 8) as u8, i as u8, 1];
        let want =
            crate::canary::bucket(std::net::Ipv4Addr::from(ip).to_string().as_bytes()) < 2500;
        let got = side(&plan, ip, None) == Side::Canary;
        assert_eq!(got, want);
        canary += usize::from(got);
    }
    assert!((900..1100).contains(&canary), "{canary}");
}

#[test]
fn an_empty_key_falls_back_to_the_client_address() {
    let plan = compile_with(&file("50", "$cookie_uid", ""), None).unwrap();
    let by_addr = compile_with(&file("50", "$remote_addr", ""), None).unwrap();
    for i in 0..200u8 {
        let ip = [10, 0, i, 7];
        assert_eq!(side(&plan, ip, None), side(&by_addr, ip, None));
    }
    // With the cookie, the address does not matter.
    let s = side(&plan, [10, 0, 0, 1], Some("uid=u42"));
    for i in 0..50u8 {
        assert_eq!(side(&plan, [10, 9, i, 1], Some("a=1; uid=u42")), s);
    }
}

#[test]
fn a_side_without_usable_servers_hands_its_users_to_the_other() {
    let plan = compile_with(&file("100", "$remote_addr", ""), None).unwrap();
    assert_eq!(side(&plan, [10, 0, 0, 1], None), Side::Canary);
    let new = &plan.pools[1].pool.peers[0];
    new.state.healthy.store(false, Ordering::Relaxed);
    assert_eq!(side(&plan, [10, 0, 0, 1], None), Side::Stable);
    assert_eq!(
        plan.canaries[0].state.fallbacks[Side::Canary as usize].load(Ordering::Relaxed),
        1
    );
    // Neither side can serve: the request stays on its side (and gets the pool's 502).
    plan.pools[0].pool.peers[0]
        .state
        .healthy
        .store(false, Ordering::Relaxed);
    assert_eq!(side(&plan, [10, 0, 0, 1], None), Side::Canary);
}

#[test]
fn a_reload_keeps_the_live_percent_unless_the_file_changed() {
    let first = compile_with(&file("10", "$remote_addr", ""), None).unwrap();
    let st = &first.canaries[0].state;
    st.set(&crate::canary::Status {
        percent_bp: 4000,
        phase: Phase::Paused,
        since: 1,
        why: "test".into(),
    });
    // Same file value: the live value stays.
    let again = compile_with(&file("10", "$remote_addr", ""), Some(&first)).unwrap();
    assert!(Arc::ptr_eq(&again.canaries[0].state, st));
    assert_eq!(st.percent_bp(), 4000);
    assert_eq!(st.status().phase, Phase::Paused);
    // A rejected reload changes nothing, even with a new value.
    assert!(compile_with(&file("20", "$nope", ""), Some(&again)).is_err());
    assert_eq!(st.percent_bp(), 4000);
    // The user edited the file: it wins.
    let edited = compile_with(&file("20", "$remote_addr", ""), Some(&again)).unwrap();
    edited.commit();
    assert_eq!(edited.canaries[0].state.percent_bp(), 2000);
    assert_eq!(st.status().phase, Phase::Manual);
}

#[test]
fn canary_and_admin_mistakes_are_reported_with_their_position() {
    let src = "upstreams:
  old: { servers: [{ addr: 127.0.0.1:2 }] }
canaries:
  old: { stable: old, canary: old, percent: 5 }
  c: { stable: gone, canary: old, key: plain, percent: 100.5 }
  d: { stable: old, canary: old, key: $bogus, percent: 0.125 }
admin: { listen: 0.0.0.0:1 }
servers:
  s:
    listen: [\"127.0.0.1:1\"]
    locations: [{ match: /, proxy_pass: x }]
";
    let want = [
        "4:3: canary \"old\" has the name of an upstream: proxy_pass could not tell them apart",
        "4:31: canary \"old\": stable and canary are the same upstream",
        "5:16: unknown upstream \"gone\" in canary \"c\"",
        "5:40: key \"plain\" has no variable, so every user would be on the same side",
        "5:56: percent must be 0..100, not 100.5",
        "6:29: canary \"d\": stable and canary are the same upstream",
        "6:39: unknown variable \"$bogus\"",
        "6:56: percent has at most two decimals, not 0.125",
        "7:18: admin listens on 0.0.0.0:1, not a loopback address: token_file is required",
        "11:41: unknown upstream or canary \"x\" in proxy_pass (upstreams: old; canaries: c, d)",
    ];
    let want: Vec<String> = want.iter().map(|w| format!("t.yaml:{w}")).collect();
    assert_eq!(problems(src), want);
}

#[test]
fn the_admin_token_file_is_read_and_checked() {
    let dir = std::env::temp_dir().join(format!("gg-admin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tok = dir.join("tok");
    std::fs::write(&tok, "s3cret\n").unwrap();
    let empty = dir.join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let admin = |listen: &str, f: &std::path::Path| {
        format!(
            "admin: {{ listen: \"{listen}\", token_file: {} }}\n",
            f.display()
        )
    };
    let plan = compile_with(&file("0", "$remote_addr", &admin("0.0.0.0:9", &tok)), None).unwrap();
    assert_eq!(
        plan.admin,
        Some(AdminPlan {
            listen: "0.0.0.0:9".parse().unwrap(),
            token: Some("s3cret".into())
        })
    );
    let p = problems(&file("0", "$remote_addr", &admin("9", &empty)));
    assert_eq!(p.len(), 1);
    assert!(
        p[0].ends_with(&format!("token file {} is empty", empty.display())),
        "{p:?}"
    );
    let p = problems(&file("0", "$remote_addr", &admin("9", &dir.join("none"))));
    assert!(p[0].contains("cannot read token file"), "{p:?}");
    // A bare port is loopback; it must not take a server's port.
    let p = problems(&file("0", "$remote_addr", "admin: { listen: \"1\" }\n"));
    assert!(
        p[0].ends_with("admin listens on 127.0.0.1:1, like a server or a demo backend"),
        "{p:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn live_weights_apply_until_the_file_changes_them() {
    let src = |w: u32| {
        format!(
            "pid_file: /tmp/graygate-weights-unit.pid
upstreams:
  p: {{ servers: [{{ addr: 127.0.0.1:2, weight: {w} }}, {{ addr: 127.0.0.1:3 }}] }}
servers:
  s:
    listen: [\"127.0.0.1:1\"]
    locations: [{{ match: /, proxy_pass: p }}]
"
        )
    };
    let first = compile_with(&src(1), None).unwrap();
    let addr: SocketAddr = "127.0.0.1:2".parse().unwrap();
    let set = [crate::canary::store::WeightOverride {
        pool: "p".into(),
        addr,
        weight: 7,
        file_weight: 1,
    }];
    let loaded = config::parse("t.yaml".into(), &src(1), false).unwrap();
    let changed = Plan::compile_with(&loaded, Some(&first), Some(&set)).unwrap();
    assert_eq!(changed.pools[0].pool.peers[0].weight, 7);
    // A reload of the same file keeps it; one that edits the server's weight drops it.
    let live = compile_with(&src(1), Some(&changed)).unwrap();
    assert_eq!(live.pools[0].pool.peers[0].weight, 7);
    assert_eq!(live.weights.len(), 1);
    let edited = compile_with(&src(4), Some(&live)).unwrap();
    assert_eq!(edited.pools[0].pool.peers[0].weight, 4);
    assert!(edited.weights.is_empty());
}

#[test]
fn compiling_changes_no_live_state_until_commit() {
    // A plan running at a live 40%, with a server taken out by a health check.
    let src = |percent: &str, with_check: bool| {
        let f = file(percent, "$remote_addr", "");
        let plain = "old: { servers: [{ addr: 127.0.0.1:2 }] }";
        let check = "old: { servers: [{ addr: 127.0.0.1:2 }], health_check: { path: /h } }";
        if with_check {
            f.replace(plain, check)
        } else {
            f
        }
    };
    let first = compile_with(&src("10", true), None).unwrap();
    first.commit();
    let st = Arc::clone(&first.canaries[0].state);
    st.set(&crate::canary::Status {
        percent_bp: 4000,
        phase: Phase::Paused,
        since: 1,
        why: "live".into(),
    });
    let peer = Arc::clone(&first.pools[0].pool.peers[0].state);
    peer.healthy.store(false, Ordering::Relaxed);
    // A valid plan with a new file percent and without the check: compiled, but not (yet)
    // running, e.g. because its log files cannot be opened. Nothing live may have changed.
    let next = compile_with(&src("20", false), Some(&first)).unwrap();
    assert!(Arc::ptr_eq(&next.canaries[0].state, &st));
    assert_eq!(st.percent_bp(), 4000);
    assert_eq!(st.status().phase, Phase::Paused);
    assert!(!peer.healthy.load(Ordering::Relaxed));
    // Once it runs, its changes apply.
    next.commit();
    assert_eq!(st.percent_bp(), 2000);
    assert_eq!(st.status().phase, Phase::Manual);
    assert!(peer.healthy.load(Ordering::Relaxed));
}
