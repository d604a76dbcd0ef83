//! Prometheus metrics of design §5, registered once and updated where the
//! event happens (never recomputed on scrape).
//!
//! Labels are bounded by configuration (route, target ensemble, op kind):
//! znode paths never become labels.

use prometheus::{
    register_gauge_vec_with_registry, register_histogram_vec_with_registry, register_int_counter_vec_with_registry,
    register_int_gauge_vec_with_registry, GaugeVec, HistogramVec, IntCounterVec, IntGaugeVec, Registry,
};

pub struct Metrics {
    pub registry: Registry,
    pub source_events: IntCounterVec,
    pub applied_ops: IntCounterVec,
    pub apply_batches: IntCounterVec,
    pub pending_paths: IntGaugeVec,
    pub checkpoint_zxid: IntGaugeVec,
    pub lag_seconds: GaugeVec,
    pub replication_latency: HistogramVec,
    pub conflicts: IntCounterVec,
    pub resyncs: IntCounterVec,
    pub errors: IntCounterVec,
    pub leader: IntGaugeVec,
    pub session_state: IntGaugeVec,
    pub session_expirations: IntCounterVec,
    pub session_failures: IntCounterVec,
    pub mirrored_nodes: IntGaugeVec,
    pub fencing_rejections: IntCounterVec,
    pub deletes_blocked: IntCounterVec,
    pub drift_nodes: IntGaugeVec,
    pub build_info: IntGaugeVec,
    pub resume_nodes_scanned: IntCounterVec,
    pub resume_target_reads: IntCounterVec,
    pub resume_target_writes: IntCounterVec,
    pub route_epoch: IntGaugeVec,
    pub route_primary: IntGaugeVec,
    pub switchover_write_freeze: HistogramVec,
    pub divergent_nodes: IntCounterVec,
    pub failovers: IntCounterVec,
}

const RT: &[&str] = &["route", "target"];

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        // The registry is fresh, so registration can only fail on a
        // programming error (a duplicate name): fail loudly at start-up.
        let m = Metrics {
            source_events: register_int_counter_vec_with_registry!(
                "zkbridge_source_events_total",
                "Watch events seen on route sources",
                &["route", "kind"],
                r
            )
            .unwrap(),
            applied_ops: register_int_counter_vec_with_registry!(
                "zkbridge_applied_ops_total",
                "Ops committed to targets",
                &["route", "target", "op"],
                r
            )
            .unwrap(),
            apply_batches: register_int_counter_vec_with_registry!(
                "zkbridge_apply_batches_total",
                "multi transactions committed to targets",
                RT,
                r
            )
            .unwrap(),
            pending_paths: register_int_gauge_vec_with_registry!(
                "zkbridge_pending_paths",
                "Dirty paths not yet applied",
                RT,
                r
            )
            .unwrap(),
            checkpoint_zxid: register_int_gauge_vec_with_registry!(
                "zkbridge_checkpoint_zxid",
                "Source zxid of the last checkpoint",
                RT,
                r
            )
            .unwrap(),
            lag_seconds: register_gauge_vec_with_registry!(
                "zkbridge_lag_seconds",
                "Now minus the heartbeat time of the last checkpoint",
                RT,
                r
            )
            .unwrap(),
            replication_latency: register_histogram_vec_with_registry!(
                "zkbridge_replication_latency_seconds",
                "Source change observed to committed on target",
                RT,
                // 1 ms .. ~65 s, doubling.
                prometheus::exponential_buckets(0.001, 2.0, 17).unwrap(),
                r
            )
            .unwrap(),
            conflicts: register_int_counter_vec_with_registry!(
                "zkbridge_conflicts_total",
                "Target nodes changed locally",
                &["route", "target", "action"],
                r
            )
            .unwrap(),
            resyncs: register_int_counter_vec_with_registry!(
                "zkbridge_resyncs_total",
                "Full scans of a route into a target",
                &["route", "target", "reason"],
                r
            )
            .unwrap(),
            errors: register_int_counter_vec_with_registry!(
                "zkbridge_errors_total",
                "Failed operations by kind",
                &["route", "target", "kind"],
                r
            )
            .unwrap(),
            leader: register_int_gauge_vec_with_registry!(
                "zkbridge_leader",
                "1 where this instance is the active worker of the route/target",
                RT,
                r
            )
            .unwrap(),
            session_state: register_int_gauge_vec_with_registry!(
                "zkbridge_session_state",
                "1 connected, 0 otherwise",
                &["ensemble"],
                r
            )
            .unwrap(),
            session_expirations: register_int_counter_vec_with_registry!(
                "zkbridge_session_expirations_total",
                "ZooKeeper sessions lost to expiry",
                &["ensemble"],
                r
            )
            .unwrap(),
            session_failures: register_int_counter_vec_with_registry!(
                "zkbridge_session_failures_total",
                "Attempts to open a ZooKeeper session that failed, by reason (auth, tls, unreachable, other)",
                &["ensemble", "reason"],
                r
            )
            .unwrap(),
            mirrored_nodes: register_int_gauge_vec_with_registry!(
                "zkbridge_mirrored_nodes",
                "Nodes under the target path managed by the route",
                RT,
                r
            )
            .unwrap(),
            fencing_rejections: register_int_counter_vec_with_registry!(
                "zkbridge_fencing_rejections_total",
                "Batches refused because the lease was lost",
                RT,
                r
            )
            .unwrap(),
            deletes_blocked: register_int_counter_vec_with_registry!(
                "zkbridge_deletes_blocked_total",
                "Deletes held back by delete safety",
                RT,
                r
            )
            .unwrap(),
            drift_nodes: register_int_gauge_vec_with_registry!(
                "zkbridge_drift_nodes",
                "Nodes found different by the last anti-entropy pass",
                RT,
                r
            )
            .unwrap(),
            build_info: register_int_gauge_vec_with_registry!(
                "zkbridge_build_info",
                "Always 1; the version label says which build runs",
                &["version"],
                r
            )
            .unwrap(),
            resume_nodes_scanned: register_int_counter_vec_with_registry!(
                "zkbridge_resume_nodes_scanned_total",
                "Source nodes scanned by resumes from a checkpoint",
                RT,
                r
            )
            .unwrap(),
            resume_target_reads: register_int_counter_vec_with_registry!(
                "zkbridge_resume_target_reads_total",
                "Target nodes read by resumes from a checkpoint",
                RT,
                r
            )
            .unwrap(),
            resume_target_writes: register_int_counter_vec_with_registry!(
                "zkbridge_resume_target_writes_total",
                "Target writes issued by resumes from a checkpoint",
                RT,
                r
            )
            .unwrap(),
            route_epoch: register_int_gauge_vec_with_registry!(
                "zkbridge_route_epoch",
                "The route's current role epoch (the highest its members say)",
                &["route"],
                r
            )
            .unwrap(),
            route_primary: register_int_gauge_vec_with_registry!(
                "zkbridge_route_primary",
                "1 for the route's current primary member, 0 for the others",
                &["route", "ensemble"],
                r
            )
            .unwrap(),
            switchover_write_freeze: register_histogram_vec_with_registry!(
                "zkbridge_switchover_write_freeze_seconds",
                "Write-unavailable window of a switchover (freeze to unfreeze)",
                &["route"],
                vec![0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0],
                r
            )
            .unwrap(),
            divergent_nodes: register_int_counter_vec_with_registry!(
                "zkbridge_divergent_nodes_total",
                "Nodes of a returning old primary's divergent tail archived before it was overwritten",
                &["route", "ensemble"],
                r
            )
            .unwrap(),
            failovers: register_int_counter_vec_with_registry!(
                "zkbridge_failovers_total",
                "Role flips made by this process (switchover, failover, auto)",
                &["route", "kind"],
                r
            )
            .unwrap(),
            registry: r,
        };
        m.build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        m
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
