//! Metric handles of one route/target, resolved once when the worker starts.

use super::*;

/// Metric handles of one route/target, resolved once.
pub(super) struct TargetMetrics {
    pub(super) creates: IntCounter,
    pub(super) sets: IntCounter,
    pub(super) deletes: IntCounter,
    pub(super) applied_acls: IntCounter,
    pub(super) batches: IntCounter,
    pub(super) latency: Histogram,
    pub(super) mirrored: IntGauge,
    pub(super) deletes_blocked: IntCounter,
    pub(super) checkpoint_zxid: IntGauge,
    pub(super) leader: IntGauge,
    pub(super) fencing_rejections: IntCounter,
    pub(super) overwritten: IntCounter,
    pub(super) kept: IntCounter,
    pub(super) stopped: IntCounter,
    pub(super) drift: IntGauge,
    pub(super) resume_scanned: IntCounter,
    pub(super) resume_reads: IntCounter,
    pub(super) resume_writes: IntCounter,
    pub(super) metrics: Arc<Metrics>,
    pub(super) labels: [String; 2],
}

impl Worker {
    /// Counts a committed batch: in the metrics, and in the published
    /// status (which `zkbridge sync` reads for its progress; metrics are
    /// only ever written).
    pub(super) fn count_committed(&self, batch: &[Op]) {
        self.metrics.batches.inc();
        let deleted = batch.iter().filter(|o| matches!(o, Op::Delete { .. })).count() as u64;
        for op in batch {
            self.metrics.committed(op);
        }
        self.status.update(|s| {
            s.deleted += deleted;
            s.written += batch.len() as u64 - deleted;
        });
    }
}

impl TargetMetrics {
    pub(super) fn new(metrics: Arc<Metrics>, route: &str, target: &str) -> Self {
        let op = |kind| metrics.applied_ops.with_label_values(&[route, target, kind]);
        TargetMetrics {
            creates: op("create"),
            sets: op("set"),
            deletes: op("delete"),
            applied_acls: op("acl"),
            batches: metrics.apply_batches.with_label_values(&[route, target]),
            latency: metrics.replication_latency.with_label_values(&[route, target]),
            mirrored: metrics.mirrored_nodes.with_label_values(&[route, target]),
            deletes_blocked: metrics.deletes_blocked.with_label_values(&[route, target]),
            checkpoint_zxid: metrics.checkpoint_zxid.with_label_values(&[route, target]),
            leader: metrics.leader.with_label_values(&[route, target]),
            fencing_rejections: metrics.fencing_rejections.with_label_values(&[route, target]),
            overwritten: metrics.conflicts.with_label_values(&[route, target, "overwritten"]),
            kept: metrics.conflicts.with_label_values(&[route, target, "kept"]),
            stopped: metrics.conflicts.with_label_values(&[route, target, "stopped"]),
            drift: metrics.drift_nodes.with_label_values(&[route, target]),
            resume_scanned: metrics.resume_nodes_scanned.with_label_values(&[route, target]),
            resume_reads: metrics.resume_target_reads.with_label_values(&[route, target]),
            resume_writes: metrics.resume_target_writes.with_label_values(&[route, target]),
            labels: [route.to_string(), target.to_string()],
            metrics,
        }
    }

    pub(super) fn error(&self, kind: &str) {
        self.metrics
            .errors
            .with_label_values(&[&self.labels[0], &self.labels[1], kind])
            .inc();
    }

    pub(super) fn resync(&self, reason: ResyncReason) {
        self.metrics
            .resyncs
            .with_label_values(&[&self.labels[0], &self.labels[1], reason.as_str()])
            .inc();
    }

    pub(super) fn committed(&self, op: &Op) {
        match op {
            Op::Create { .. } => {
                self.creates.inc();
                self.mirrored.inc();
            }
            Op::Set { .. } => self.sets.inc(),
            Op::Delete { .. } => {
                self.deletes.inc();
                self.mirrored.dec();
            }
        }
    }
}
