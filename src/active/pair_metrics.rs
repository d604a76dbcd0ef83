//! The metrics of one member pair, labelled `route` and `target =
//! "from->to"` where a mirror names its target (docs/metrics.md).

use std::sync::Arc;

use prometheus::{IntCounter, IntGauge};

use crate::metrics::Metrics;

/// The metrics of one pair, labelled `route`, `target = "from->to"`.
pub struct PairMetrics {
    applied: [IntCounter; 3],
    pub lww_lost: IntCounter,
    pub batches: IntCounter,
    pub pending: IntGauge,
    pub checkpoint_zxid: IntGauge,
    pub leader: IntGauge,
    metrics: Arc<Metrics>,
    labels: [String; 2],
}

impl PairMetrics {
    pub fn new(metrics: Arc<Metrics>, route: &str, pair: &str) -> Self {
        let l = [route, pair];
        let op = |op: &str| metrics.applied_ops.with_label_values(&[route, pair, op]);
        PairMetrics {
            applied: [op("create"), op("set"), op("delete")],
            lww_lost: metrics.conflicts.with_label_values(&[route, pair, "lww_lost"]),
            batches: metrics.apply_batches.with_label_values(&l),
            pending: metrics.pending_paths.with_label_values(&l),
            checkpoint_zxid: metrics.checkpoint_zxid.with_label_values(&l),
            leader: metrics.leader.with_label_values(&l),
            labels: [route.to_string(), pair.to_string()],
            metrics,
        }
    }

    /// One data op committed (origin records and tombstones are not
    /// counted: design §7).
    pub fn applied(&self, op: &str) {
        let i = match op {
            "create" => 0,
            "set" => 1,
            _ => 2,
        };
        self.applied[i].inc();
        self.batches.inc();
    }

    pub(super) fn error(&self, kind: &str) {
        let [route, pair] = &self.labels;
        self.metrics.errors.with_label_values(&[route, pair, kind]).inc();
    }

    pub(super) fn resync(&self, reason: &str) {
        let [route, pair] = &self.labels;
        self.metrics.resyncs.with_label_values(&[route, pair, reason]).inc();
    }
}
