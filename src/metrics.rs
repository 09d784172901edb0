//! Prometheus metrics (placeholder until the metrics land).

use crate::plan::Plan;

/// The exposition of every metric.
pub fn encode(_plan: &Plan) -> Vec<u8> {
    b"# EOF\n".to_vec()
}
