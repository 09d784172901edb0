//! `admin` and `canaries`: the admin listener and the sticky splits between two pools, and the
//! per-request choice of a side ([`Plan::route`]).

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::canary::{bucket, percent_bp, percent_text, CanaryState, Phase, Side, Status};
use crate::config::{parse_addr, Loaded, Problems};
use crate::upstream::Pool;

use super::{Plan, PoolPlan, Template, Vars};

/// What a location proxies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Index into [`Plan::pools`].
    Pool(usize),
    /// Index into [`Plan::canaries`].
    Canary(usize),
}

/// Where one request goes: a pool, and the canary side that chose it, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub pool: usize,
    /// (index into [`Plan::canaries`], side).
    pub canary: Option<(usize, Side)>,
}

/// The admin listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminPlan {
    pub listen: SocketAddr,
    /// The bearer token every request must carry (when a `token_file` is given).
    pub token: Option<String>,
}

/// A canary: users split by a sticky key between two pools.
#[derive(Debug)]
pub struct CanaryPlan {
    pub name: String,
    /// Index into [`Plan::pools`] of each side, by [`Side`].
    pub pools: [usize; 2],
    pub key: Template,
    /// The config file's percent, in basis points.
    pub file_bp: u32,
    /// Live percent and phase, handed on from plan to plan.
    pub state: Arc<CanaryState>,
    /// The automatic ramp, when the canary has `steps` (issue 16).
    pub ramp: Option<super::RampPlan>,
}

/// `admin`, if present.
pub(super) fn compile_admin(l: &Loaded, probs: &mut Problems) -> Option<AdminPlan> {
    let a = l.config.admin.as_ref()?;
    let listen = match parse_addr(&a.listen, "127.0.0.1") {
        Ok(addr) => addr,
        Err(e) => {
            probs.push(l.problem_at("admin.listen", e));
            return None;
        }
    };
    let token = match &a.token_file {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
            Ok(_) => {
                probs.push(l.problem_at("admin.token_file", format!("token file {path} is empty")));
                None
            }
            Err(e) => {
                probs.push(l.problem_at(
                    "admin.token_file",
                    format!("cannot read token file {path}: {e}"),
                ));
                None
            }
        },
        None if !listen.ip().is_loopback() => {
            probs.push(l.problem_at(
                "admin.listen",
                format!(
                    "admin listens on {listen}, not a loopback address: token_file is required"
                ),
            ));
            None
        }
        None => None,
    };
    Some(AdminPlan { listen, token })
}

/// `canaries`; `pools` maps pool names to indexes. A canary of `prev` with the same name lends
/// its live state.
pub(super) fn compile_canaries(
    l: &Loaded,
    pools: &HashMap<&str, usize>,
    prev: Option<&Plan>,
    probs: &mut Problems,
) -> Vec<CanaryPlan> {
    let mut out = Vec::new();
    for (name, c) in &l.config.canaries {
        let base = format!("canaries.{name}");
        if pools.contains_key(name.as_str()) {
            probs.push(l.problem_at_key(
                &base,
                format!("canary \"{name}\" has the name of an upstream: proxy_pass could not tell them apart"),
            ));
        }
        let mut side = |key: &str, pool: &str| match pools.get(pool) {
            Some(&i) => Some(i),
            None => {
                probs.push(l.problem_at(
                    &format!("{base}.{key}"),
                    format!("unknown upstream \"{pool}\" in canary \"{name}\""),
                ));
                None
            }
        };
        let stable = side("stable", &c.stable);
        let canary = side("canary", &c.canary);
        if c.stable == c.canary {
            probs.push(l.problem_at(
                &format!("{base}.canary"),
                format!("canary \"{name}\": stable and canary are the same upstream"),
            ));
        }
        let key = match Template::compile(&c.key) {
            Ok(t) if t.has_vars() => Some(t),
            Ok(_) => {
                probs.push(l.problem_at(
                    &format!("{base}.key"),
                    format!(
                        "key \"{}\" has no variable, so every user would be on the same side",
                        c.key
                    ),
                ));
                None
            }
            Err(e) => {
                probs.push(l.problem_at(&format!("{base}.key"), e));
                None
            }
        };
        let file_bp = match percent_bp(c.percent) {
            Ok(bp) => bp,
            Err(e) => {
                probs.push(l.problem_at(&format!("{base}.percent"), e));
                0
            }
        };
        let ramp = super::canary_ramp::compile_ramp(l, name, c, probs);
        let (Some(stable), Some(canary), Some(key)) = (stable, canary, key) else {
            continue;
        };
        let state = prev
            .and_then(|p| p.canaries.iter().find(|pc| &pc.name == name))
            .map(|pc| Arc::clone(&pc.state))
            .unwrap_or_else(|| Arc::new(CanaryState::new(file_bp)));
        out.push(CanaryPlan {
            name: name.clone(),
            pools: [stable, canary],
            key,
            file_bp,
            state,
            ramp,
        });
    }
    out
}

/// Once a plan is valid: a canary whose percent in the file changed since the last load takes
/// the file's value; otherwise its live value stays.
pub(super) fn apply_file_values(canaries: &[CanaryPlan]) {
    for c in canaries {
        let last = c.state.file_bp.swap(c.file_bp, Ordering::Relaxed);
        if last == c.file_bp {
            continue;
        }
        let old = c.state.status();
        c.state.position().step = None;
        c.state.set(&Status {
            percent_bp: c.file_bp,
            phase: Phase::Manual,
            since: crate::canary::unix_now(),
            why: "configuration file changed".into(),
        });
        log::warn!(
            "canary \"{}\": percent {} -> {} (by the configuration file)",
            c.name,
            percent_text(old.percent_bp),
            percent_text(c.file_bp)
        );
    }
}

/// The admin listener must not take a server block's or a demo's address.
pub(super) fn check_admin_listen(
    l: &Loaded,
    admin: &AdminPlan,
    taken: impl Iterator<Item = SocketAddr>,
    probs: &mut Problems,
) {
    for a in taken {
        if a == admin.listen {
            probs.push(l.problem_at(
                "admin.listen",
                format!("admin listens on {a}, like a server or a demo backend"),
            ));
            return;
        }
    }
}

/// Whether `pool` has a server that could take a request now (up, healthy, under
/// `max_conns`). A server resting after failures still counts: its pool's own retries cover it.
fn serviceable(pool: &Pool) -> bool {
    pool.peers.iter().any(|p| {
        !p.down
            && (p.weight > 0 || p.backup)
            && p.state.healthy.load(Ordering::Relaxed)
            && (p.max_conns == 0 || p.state.active.load(Ordering::Relaxed) < p.max_conns)
    })
}

impl CanaryPlan {
    /// The side of the user `vars` describes: bucket of the rendered key (the client address
    /// when it renders empty) below the live percent means canary. A side without a usable
    /// server hands its requests to the other side.
    fn pick(&self, pools: &[PoolPlan], vars: &dyn Vars, scratch: &mut Vec<u8>) -> (usize, Side) {
        scratch.clear();
        self.key.render(vars, scratch);
        if scratch.is_empty() {
            if let Some(a) = vars.client() {
                let _ = write!(scratch, "{}", a.ip());
            }
        }
        let mine = if bucket(scratch) < self.state.percent_bp() {
            Side::Canary
        } else {
            Side::Stable
        };
        let usable = |s: Side| {
            pools
                .get(self.pools[s as usize])
                .is_some_and(|pp| serviceable(&pp.pool))
        };
        let ok = usable(mine);
        let side = if ok || !usable(mine.other()) {
            mine
        } else {
            self.state.fallbacks[mine as usize].fetch_add(1, Ordering::Relaxed);
            mine.other()
        };
        if self.state.note_fallback(mine, side != mine) {
            if side != mine {
                log::warn!(
                    "canary \"{}\": the {} side has no usable server, its users go to the {} side",
                    self.name,
                    mine.name(),
                    side.name()
                );
            } else {
                log::warn!(
                    "canary \"{}\": the {} side serves its users again",
                    self.name,
                    mine.name()
                );
            }
        }
        (self.pools[side as usize], side)
    }
}

impl Plan {
    /// Where a request to a location with `target` goes (the canary side chosen per request).
    #[inline]
    pub fn route(&self, target: Target, vars: &dyn Vars, scratch: &mut Vec<u8>) -> Pick {
        match target {
            Target::Pool(pool) => Pick { pool, canary: None },
            Target::Canary(c) => match self.canaries.get(c) {
                Some(cp) => {
                    let (pool, side) = cp.pick(&self.pools, vars, scratch);
                    Pick {
                        pool,
                        canary: Some((c, side)),
                    }
                }
                None => Pick {
                    pool: 0,
                    canary: None,
                },
            },
        }
    }
}
