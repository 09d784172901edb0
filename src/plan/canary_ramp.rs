//! `canaries.NAME.steps`, `interval` and `analysis`: the automatic ramp of a canary (issue 16),
//! checked with the position of every wrong value.

use std::time::Duration;

use crate::canary::analysis::Analysis;
use crate::canary::{percent_bp, BUCKETS};
use crate::config::canary::{Canary, Scalar};
use crate::config::{Loaded, Problems};

/// Shortest interval: an analysis needs a window with requests in it (tests use 1s).
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// A canary's automatic ramp.
#[derive(Debug, Clone, PartialEq)]
pub struct RampPlan {
    /// Percents in basis points, strictly rising, the last one at most 100%.
    pub steps: Vec<u32>,
    pub interval: Duration,
    pub analysis: Analysis,
}

/// The ramp of canary `name`, if it has `steps`.
pub(super) fn compile_ramp(
    l: &Loaded,
    name: &str,
    c: &Canary,
    probs: &mut Problems,
) -> Option<RampPlan> {
    let base = format!("canaries.{name}");
    let Some(raw) = &c.steps else {
        for key in ["interval", "analysis"] {
            let given = match key {
                "interval" => c.interval.is_some(),
                _ => c.analysis.is_some(),
            };
            if given {
                probs.push(l.problem_at_key(
                    &format!("{base}.{key}"),
                    format!(
                        "canary \"{name}\": {key} without steps (add e.g. steps: [5, 25, 50, 100])"
                    ),
                ));
            }
        }
        return None;
    };
    let before = probs.0.len();
    let mut steps = Vec::new();
    if raw.is_empty() {
        probs.push(l.problem_at(&format!("{base}.steps"), "steps is empty"));
    }
    for (i, &p) in raw.iter().enumerate() {
        let at = format!("{base}.steps.{i}");
        match percent_bp(p) {
            Ok(0) => probs.push(l.problem_at(&at, "a step of 0% sends nobody to the canary")),
            Ok(bp) if steps.last().is_some_and(|&last| bp <= last) => probs.push(l.problem_at(
                &at,
                format!("steps must rise: {p} does not come after {}", raw[i - 1]),
            )),
            Ok(bp) => steps.push(bp),
            Err(e) => probs.push(l.problem_at(&at, e)),
        }
    }
    let interval = match c.interval {
        Some(t) if t.0 < MIN_INTERVAL => {
            probs.push(l.problem_at(
                &format!("{base}.interval"),
                "interval must be at least 100ms",
            ));
            MIN_INTERVAL
        }
        Some(t) => t.0,
        None => {
            probs.push(l.problem_at_key(
                &base,
                format!("canary \"{name}\" has steps but no interval (e.g. interval: 10m)"),
            ));
            MIN_INTERVAL
        }
    };
    let analysis = compile_analysis(l, &base, c, probs);
    if probs.0.len() > before {
        return None;
    }
    debug_assert!(steps.last().is_some_and(|&s| s <= BUCKETS));
    Some(RampPlan {
        steps,
        interval,
        analysis,
    })
}

fn compile_analysis(l: &Loaded, base: &str, c: &Canary, probs: &mut Problems) -> Analysis {
    let mut out = Analysis::default();
    let Some(a) = &c.analysis else {
        return out;
    };
    let at = |k: &str| format!("{base}.analysis.{k}");
    if let Some(n) = a.min_requests {
        out.min_requests = n.max(1);
    }
    if let Some(r) = &a.max_error_rate {
        match error_rate(r) {
            Ok(r) => out.max_error_rate = Some(r),
            Err(e) => probs.push(l.problem_at(&at("max_error_rate"), e)),
        }
    }
    let factor = |key: &str, v: Option<f64>, probs: &mut Problems| match v {
        Some(k) if !(k.is_finite() && k >= 1.0) => {
            probs.push(l.problem_at(
                &at(key),
                format!("{key} is a factor of the stable side's value, at least 1, not {k}"),
            ));
            None
        }
        v => v,
    };
    out.max_error_rate_vs_stable = factor(
        "max_error_rate_vs_stable",
        a.max_error_rate_vs_stable,
        probs,
    );
    out.max_p99_vs_stable = factor("max_p99_vs_stable", a.max_p99_vs_stable, probs);
    out.max_p99 = a.max_p99.map(|t| t.0);
    if out.max_p99 == Some(Duration::ZERO) {
        probs.push(l.problem_at(&at("max_p99"), "max_p99 of 0 fails every request"));
    }
    out.failures_allowed = a.failures_allowed.unwrap_or(0);
    out
}

/// `1%`, `0.5%` as a share 0..1.
fn error_rate(v: &Scalar) -> Result<f64, String> {
    let bad = |w: &str| format!("max_error_rate must be a percent such as 1% or 0.5%, not {w}");
    let t = match v {
        Scalar::Text(t) => t,
        Scalar::Number(n) => return Err(bad(&n.to_string())),
    };
    let n: f64 = t
        .trim()
        .strip_suffix('%')
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| bad(&format!("\"{t}\"")))?;
    if !(0.0..=100.0).contains(&n) {
        return Err(format!("max_error_rate must be 0%..100%, not {t}"));
    }
    Ok(n / 100.0)
}

#[cfg(test)]
mod tests {
    use crate::config;
    use crate::plan::Plan;

    fn compile(canary: &str) -> Result<Plan, Vec<String>> {
        let src = format!(
            "pid_file: /tmp/graygate-ramp-unit.pid
upstreams:
  old: {{ servers: [{{ addr: 127.0.0.1:2 }}] }}
  new: {{ servers: [{{ addr: 127.0.0.1:3 }}] }}
canaries:
  c:
    stable: old
    canary: new
{canary}
servers:
  s:
    listen: [\"127.0.0.1:1\"]
    locations: [{{ match: /, proxy_pass: c }}]
"
        );
        config::parse("t.yaml".into(), &src, false)
            .and_then(|l| Plan::compile(&l, None))
            .map_err(|p| p.0.iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn the_issue_example_compiles() {
        let plan = compile(
            "    steps: [5, 25, 50, 100]
    interval: 10m
    analysis:
      min_requests: 100
      max_error_rate: 1%
      max_error_rate_vs_stable: 2
      max_p99: 800ms
      max_p99_vs_stable: 1.5
      failures_allowed: 1",
        )
        .unwrap();
        let r = plan.canaries[0].ramp.as_ref().unwrap();
        assert_eq!(r.steps, vec![500, 2500, 5000, 10_000]);
        assert_eq!(r.interval.as_secs(), 600);
        assert_eq!(r.analysis.max_error_rate, Some(0.01));
        assert_eq!(r.analysis.max_p99.unwrap().as_millis(), 800);
        assert_eq!(r.analysis.failures_allowed, 1);
        // Without steps: manual mode.
        assert!(compile("    percent: 3").unwrap().canaries[0]
            .ramp
            .is_none());
    }

    #[test]
    fn mistakes_are_reported_at_their_position() {
        let e = compile("    steps: [5, 5, 101]\n    interval: 1s").unwrap_err();
        assert_eq!(
            e,
            vec![
                "t.yaml:9:16: steps must rise: 5 does not come after 5",
                "t.yaml:9:19: percent must be 0..100, not 101",
            ]
        );
        let e = compile("    steps: [5]\n    interval: 1s\n    analysis: { max_error_rate: 1 }")
            .unwrap_err();
        assert_eq!(
            e,
            vec!["t.yaml:11:33: max_error_rate must be a percent such as 1% or 0.5%, not 1"]
        );
        let e = compile("    steps: [5]").unwrap_err();
        assert!(e[0].contains("has steps but no interval"), "{e:?}");
        let e = compile("    interval: 1s").unwrap_err();
        assert!(e[0].contains("interval without steps"), "{e:?}");
        let e = compile("    steps: [5]\n    interval: 10ms").unwrap_err();
        assert!(e[0].contains("at least 100ms"), "{e:?}");
        let e =
            compile("    steps: [5]\n    interval: 1s\n    analysis: { max_p99_vs_stable: 0.5 }")
                .unwrap_err();
        assert!(
            e[0].starts_with("t.yaml:11:36: max_p99_vs_stable is a factor"),
            "{e:?}"
        );
    }
}
