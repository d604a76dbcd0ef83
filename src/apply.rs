//! The per-(route, target) worker: takes dirty paths from its queue, reads
//! the source's current state and makes the target match.
//!
//! Each target has its own worker and queue, so a slow or unreachable target
//! never stalls the others. Every step is idempotent (read current state,
//! write only the difference), which is what makes coalesced events, retries
//! after connection loss and restarts safe.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{FuturesOrdered, FuturesUnordered, StreamExt};
use prometheus::{Histogram, IntCounter, IntGauge};
use tokio::sync::watch;
use tracing::{debug, info, warn, Instrument};
use zookeeper_client::{
    Acl, Acls, CheckWriteError, Client, CreateMode, CreateOptions, Error, EventType, MultiWriteResult,
    PersistentWatcher,
};

use crate::checkpoint::{
    checkpoint_path, ensemble_id, now_ms, persistent, progress_path, put_json, Checkpoint, Progress,
};
use crate::config::{AclMode, BridgeConfig, ConflictPolicy, Endpoint, Route};
use crate::conflict::{self, Conflicts, StopRecord};
use crate::lease::{leases_dir, Balancer, Lease, LeaseRecord};
use crate::metrics::Metrics;
use crate::path::{self, join, parent};
use crate::plan::{self, NodeKind, Op};
use crate::queue::{Dirty, ResyncReason, TargetQueue, Work};
use crate::tree::{self, NodeState};
use crate::zk::{error_kind, is_transient, Ensemble};

/// How long a path that failed for a lasting reason (no permission, data the
/// target refuses) waits before it is tried again.
const PARK_FOR: Duration = Duration::from_secs(30);

/// Reconcile units a leader keeps in flight at once.
const UNITS_IN_FLIGHT: usize = 128;

/// A reconcile unit (`Some(id)`) or a resync (`None`) and how it ended:
/// on failure, the error, the resync to redo, or the paths to put back.
type UnitOutcome = (
    Option<u64>,
    Result<(), (Interrupted, Option<ResyncReason>, Vec<(String, Dirty)>)>,
);
type WatchArming<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<PersistentWatcher, Error>> + Send + 'a>>;
type UnitFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = UnitOutcome> + Send + 'a>>;

/// What `/status` and `/readyz` need to know about a worker.
#[derive(Default)]
pub struct WorkerStatus {
    /// When this instance took the lead (ms since the epoch): the lag of a
    /// leader that has committed no checkpoint yet counts from here.
    pub leading_since_ms: std::sync::atomic::AtomicI64,
    /// This instance holds the route/target's lease.
    pub leading: AtomicBool,
    /// The initial sync since this instance took the lead is finished.
    pub initial_sync_done: AtomicBool,
    /// While not leading: another instance holds the lease (this one is a
    /// standby behind it), as opposed to nobody leading yet.
    pub other_leader: Mutex<Option<String>>,
    pub last_error: Mutex<Option<String>>,
    /// The worker's last panic, until a restarted worker finished its
    /// initial sync (see `supervise`).
    pub panicked: Mutex<Option<String>>,
    /// The last checkpoint this worker committed (or resumed from).
    pub checkpoint: Mutex<Option<Checkpoint>>,
    /// The last (re)sync resumed from a checkpoint (so changes made in the
    /// target meanwhile are looked for by the anti-entropy pass).
    pub resumed: AtomicBool,
    /// Target zxid from which every target change not made by this leader
    /// is a local change: the resumed checkpoint's commit, or the first
    /// checkpoint after a full copy. `-1` until known.
    pub reference_target_zxid: std::sync::atomic::AtomicI64,
    /// Echoes of own writes, paths kept by policy, a stop.
    pub conflicts: Conflicts,
    /// Set while the delete circuit breaker holds deletes (also in the
    /// `stopped` znode, where `zkbridge resume` clears it).
    pub breaker: Mutex<Option<StopRecord>>,
    /// Paths whose deletes the breaker holds (parked in the queue).
    pub held_deletes: Mutex<std::collections::BTreeSet<String>>,
    /// Held deletes an operator released, until they are applied.
    pub released_deletes: Mutex<std::collections::BTreeSet<String>>,
    /// An operator released the held deletes: they go until none is left.
    pub breaker_released: AtomicBool,
    /// Source nodes read by the last resync, and the ops it planned (for
    /// `zkbridge sync`'s progress).
    pub scanned: std::sync::atomic::AtomicU64,
    pub planned: std::sync::atomic::AtomicU64,
}

/// Limits for writing to a target.
#[derive(Clone, Copy)]
pub struct Limits {
    pub batch_max_ops: usize,
    pub batch_max_bytes: usize,
    pub max_in_flight: usize,
    pub verify_reads_per_s: u32,
}

impl From<&BridgeConfig> for Limits {
    fn from(b: &BridgeConfig) -> Self {
        Limits {
            batch_max_ops: b.batch_max_ops,
            batch_max_bytes: b.batch_max_bytes,
            max_in_flight: b.max_in_flight,
            verify_reads_per_s: b.verify_reads_per_s,
        }
    }
}

/// Who this instance is and where its own znodes live.
#[derive(Clone)]
pub struct Identity {
    pub bridge_id: String,
    pub meta_path: String,
    /// Shared by every worker of this instance: spreads leases.
    pub balancer: Arc<Balancer>,
    pub lease_record: LeaseRecord,
}

/// Metric handles of one route/target, resolved once.
struct TargetMetrics {
    creates: IntCounter,
    sets: IntCounter,
    deletes: IntCounter,
    applied_acls: IntCounter,
    batches: IntCounter,
    latency: Histogram,
    mirrored: IntGauge,
    deletes_blocked: IntCounter,
    checkpoint_zxid: IntGauge,
    leader: IntGauge,
    fencing_rejections: IntCounter,
    overwritten: IntCounter,
    kept: IntCounter,
    stopped: IntCounter,
    drift: IntGauge,
    resume_scanned: IntCounter,
    resume_reads: IntCounter,
    resume_writes: IntCounter,
    metrics: Arc<Metrics>,
    labels: [String; 2],
}

impl TargetMetrics {
    fn new(metrics: Arc<Metrics>, route: &str, target: &str) -> Self {
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

    fn error(&self, kind: &str) {
        self.metrics
            .errors
            .with_label_values(&[&self.labels[0], &self.labels[1], kind])
            .inc();
    }

    fn resync(&self, reason: ResyncReason) {
        self.metrics
            .resyncs
            .with_label_values(&[&self.labels[0], &self.labels[1], reason.as_str()])
            .inc();
    }

    fn committed(&self, op: &Op) {
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

/// Mirrors one route into one target ensemble.
pub struct Worker {
    route: Arc<Route>,
    target: Endpoint,
    source_zk: Ensemble,
    target_zk: Ensemble,
    queue: Arc<TargetQueue>,
    limits: Limits,
    status: Arc<WorkerStatus>,
    metrics: TargetMetrics,
    identity: Identity,
    /// The source ensemble's id, learnt at the first (re)sync.
    source_id: Mutex<Option<String>>,
    /// Deletes applied recently, for the delete circuit breaker.
    delete_window: Mutex<crate::breaker::DeleteWindow>,
    /// Source paths already reported as unreadable (reported once each).
    unreadable_reported: Mutex<std::collections::HashSet<String>>,
}

/// Why an attempt must be retried later as a whole.
#[derive(Debug, thiserror::Error)]
#[error("{side} ensemble: {source}")]
struct Interrupted {
    side: &'static str,
    #[source]
    source: Error,
}

impl Interrupted {
    /// The target refused the write because the lease is gone (fenced), or
    /// the session that owned the lease ended: this worker must stop.
    fn lease_lost(&self) -> bool {
        self.side == "target" && matches!(self.source, Error::RuntimeInconsistent | Error::SessionExpired)
    }
}

/// Whether the target watch may still be polled.
enum WatchFlow {
    Going,
    Ended,
    /// The target connection is back: the watch must be re-armed (see
    /// `zk::watch_subtree`).
    Reconnected,
}

/// Why a worker stopped leading.
enum LeadEnd {
    Shutdown,
    LeaseLost,
    /// Handed back to spread work over instances.
    Surplus,
}

impl Worker {
    pub fn new(
        route: Arc<Route>,
        target: Endpoint,
        (source_zk, target_zk): (Ensemble, Ensemble),
        queue: Arc<TargetQueue>,
        status: Arc<WorkerStatus>,
        (limits, identity): (Limits, Identity),
        metrics: Arc<Metrics>,
    ) -> Self {
        let metrics = TargetMetrics::new(metrics, route.name(), &target.ensemble);
        let source_id = Mutex::new(None);
        let delete_window = Mutex::new(crate::breaker::DeleteWindow::new(
            Duration::from_secs(route.config.delete_window_s),
            route.config.max_delete_fraction,
        ));
        Worker {
            delete_window,
            unreadable_reported: Default::default(),
            route,
            target,
            source_zk,
            target_zk,
            queue,
            limits,
            status,
            metrics,
            identity,
            source_id,
        }
    }

    /// Runs until shutdown: competes for the route/target's lease, leads
    /// while it holds it, stands by otherwise. On shutdown the lease is
    /// released at once so a standby takes over without waiting for the
    /// session timeout.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let span = tracing::info_span!(
            "worker",
            route = %self.route.name(),
            target = %self.target.ensemble,
            session = tracing::field::Empty
        );
        async move {
            let dir = leases_dir(&self.identity.meta_path, self.route.name(), &self.target.ensemble);
            loop {
                self.queue.set_leading(false);
                if *shutdown.borrow() {
                    break;
                }
                let acquire = Lease::acquire(&self.target_zk, &dir, &self.identity.lease_record);
                tokio::pin!(acquire);
                let mut look = tokio::time::interval(Duration::from_secs(1));
                let lease = loop {
                    tokio::select! {
                        lease = &mut acquire => break Some(lease),
                        _ = look.tick() => self.note_other_leader(&dir).await,
                        _ = shutdown.changed() => break None,
                    }
                };
                *self.status.other_leader.lock().unwrap() = None;
                let Some(lease) = lease else { continue };
                tracing::Span::current().record("session", tracing::field::display(lease.client().session_id()));
                info!(lease = %lease.path(), "holding the lease: leading");
                self.identity.balancer.gained();
                self.metrics.leader.set(1);
                self.status.initial_sync_done.store(false, Ordering::Relaxed);
                self.status.leading_since_ms.store(now_ms(), Ordering::Relaxed);
                self.status.leading.store(true, Ordering::Relaxed);
                self.queue.set_leading(true);
                let end = self.lead(&lease, &mut shutdown).await;
                self.queue.set_leading(false);
                self.status.leading.store(false, Ordering::Relaxed);
                self.metrics.leader.set(0);
                match end {
                    LeadEnd::Shutdown => {
                        self.identity.balancer.lost();
                        lease.release().await;
                    }
                    LeadEnd::Surplus => {
                        info!(
                            fair_share = self.identity.balancer.fair_share(),
                            "handing the lease to another instance"
                        );
                        lease.release().await;
                    }
                    LeadEnd::LeaseLost => {
                        self.identity.balancer.lost();
                        warn!("lease lost: stopped writing; standing by");
                    }
                }
            }
            info!("worker stopped");
        }
        .instrument(span)
        .await
    }

    /// Records which other instance, if any, holds the lease this worker is
    /// waiting for (for `/readyz`: a standby behind a leader is fine).
    async fn note_other_leader(&self, dir: &str) {
        let Ok(session) = tokio::time::timeout(Duration::from_millis(500), self.target_zk.session()).await else {
            return;
        };
        let read = tokio::time::timeout(Duration::from_secs(2), crate::lease::contenders(&session.client, dir)).await;
        let holder = match read {
            Ok(Ok(c)) => c
                .into_iter()
                .next()
                .filter(|h| !h.same_process(&self.identity.lease_record)),
            _ => None,
        };
        *self.status.other_leader.lock().unwrap() = holder.map(|h| h.instance);
    }

    /// Mirrors while `lease` is held. A unit of work in progress when
    /// shutdown comes finishes (its writes are idempotent either way).
    async fn lead(&self, lease: &Lease, shutdown: &mut watch::Receiver<bool>) -> LeadEnd {
        let since = Instant::now();
        let lost = lease.lost();
        tokio::pin!(lost);
        let mut balance_check = Instant::now();
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.start_leading(lease).await {
                Ok(()) => break,
                Err(e) => {
                    warn!(error = %e, "cannot read the route's conflict state; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {},
                        _ = shutdown.changed() => return LeadEnd::Shutdown,
                        _ = &mut lost => return LeadEnd::LeaseLost,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        backoff = Duration::from_millis(100);
        let mut target_watch: Option<PersistentWatcher> = None;
        // Anti-entropy passes run beside the worker for as long as it leads.
        let _verifier = (self.route.config.verify_interval_s > 0).then(|| {
            let verifier = crate::verify::Verifier {
                route: self.route.clone(),
                target: self.target.clone(),
                source_zk: self.source_zk.clone(),
                target_zk: self.target_zk.clone(),
                queue: self.queue.clone(),
                status: self.status.clone(),
                drift: self.metrics.drift.clone(),
                reads_per_s: self.limits.verify_reads_per_s,
                interval: Duration::from_secs(self.route.config.verify_interval_s),
            };
            AbortOnDrop(tokio::spawn(verifier.run().instrument(tracing::Span::current())))
        });
        let mut running: FuturesUnordered<UnitFuture<'_>> = FuturesUnordered::new();
        let mut checkpointing: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>> = None;
        let mut arming: Option<WatchArming<'_>> = None;
        // No new work before this instant: the last attempt was interrupted.
        let mut paused_until: Option<Instant> = None;
        // No new attempt to arm the target watch before this instant.
        let mut arm_after: Option<Instant> = None;
        let mut arm_backoff = Duration::from_millis(100);
        loop {
            if *shutdown.borrow() {
                return LeadEnd::Shutdown;
            }
            let watch_due =
                self.route.config.verify_interval_s == 0 || self.status.initial_sync_done.load(Ordering::Relaxed);
            // The one place the target watch is armed: on taking the lead,
            // after a reconnect (see `zk::watch_subtree`), and — with
            // anti-entropy on — only once the initial sync is done: every
            // event of a bulk copy would come back to it, halving the write
            // rate, and the pass that follows at once covers the window.
            // Armed alongside the units: a round trip to a distant target
            // is not spent holding up the changes that arrived during the
            // initial sync. Echoes are expected from now on: a unit's write
            // that commits after the watch does fires an event that must not
            // look local.
            let arm_due = arm_after.is_none_or(|t| Instant::now() >= t);
            if target_watch.is_none() && arming.is_none() && watch_due && arm_due {
                self.status.conflicts.set_watching(true);
                arming = Some(Box::pin(crate::zk::watch_subtree(lease.client(), &self.target.path)));
            }
            // With anti-entropy off, nothing else would find local changes:
            // no work (and no checkpoint) without the watch.
            let unwatched = self.route.config.verify_interval_s == 0 && target_watch.is_none();
            let flow = match target_watch.as_mut() {
                Some(w) => self.drain_target_events(w),
                None => WatchFlow::Going,
            };
            match flow {
                WatchFlow::Going => {}
                WatchFlow::Ended => return LeadEnd::LeaseLost,
                // Armed again at the top of the loop (see `zk::watch_subtree`).
                WatchFlow::Reconnected => target_watch = None,
            }
            if let Some(stop) = self.status.conflicts.stopped() {
                tokio::select! {
                    resumed = self.await_resume(lease, &stop) => if resumed {
                        info!(path = %stop.path, "stop cleared by an operator: applying again");
                        self.status.conflicts.set_stopped(None);
                        self.queue.request_resync(ResyncReason::Startup);
                    },
                    _ = shutdown.changed() => {},
                    _ = &mut lost => return LeadEnd::LeaseLost,
                }
                continue;
            }
            if balance_check.elapsed() >= Duration::from_secs(1) {
                balance_check = Instant::now();
                if self.identity.balancer.should_release(since) {
                    // Only when someone is waiting to take it.
                    let dir = leases_dir(&self.identity.meta_path, self.route.name(), &self.target.ensemble);
                    let read = crate::lease::contenders(lease.client(), &dir);
                    let waiting = tokio::time::timeout(Duration::from_secs(2), read)
                        .await
                        .is_ok_and(|c| c.is_ok_and(|c| c.len() > 1));
                    if waiting {
                        return LeadEnd::Surplus;
                    }
                    self.identity.balancer.release_abandoned();
                }
            }
            // A checkpoint on its own costs a round trip to the target: it
            // goes alongside the units rather than holding them up.
            if checkpointing.is_none() && !unwatched {
                if let Some(checkpoint) = self.checkpoint_for(self.queue.reached_barrier()) {
                    checkpointing = Some(Box::pin(self.write_checkpoint(lease, checkpoint)));
                }
            }
            self.review_breaker(lease).await;
            // Start units while there is room. Each costs about one round
            // trip to the target; several in flight hide the distance to a
            // remote region. The queue keeps a path out of a new unit while
            // an older one holds it, and hands out a resync only when no
            // unit is in flight.
            let mut resync = None;
            let paused = paused_until.is_some_and(|t| Instant::now() < t);
            while running.len() < UNITS_IN_FLIGHT && !paused && !unwatched {
                match self.queue.take(self.limits.batch_max_ops * 4) {
                    Some(Work::Paths(unit, paths)) => running.push(Box::pin(async move {
                        let result = self.reconcile(lease, unit, paths).await;
                        (Some(unit), result.map_err(|(e, p)| (e, None, p)))
                    }) as UnitFuture<'_>),
                    Some(Work::Resync(reason)) => {
                        resync = Some(reason);
                        break;
                    }
                    None => break,
                }
            }
            let finished = match resync {
                Some(reason) => {
                    // A standalone checkpoint from before the resync must not
                    // land after it (the source may have been rebuilt).
                    checkpointing = None;
                    Some((
                        None,
                        self.resync(lease, reason)
                            .await
                            .map_err(|e| (e, Some(reason), Vec::new())),
                    ))
                }
                None => {
                    // A due parked path is taken with new work: not while
                    // paused or full, or waking for it would spin.
                    let parked = self
                        .queue
                        .next_parked_due()
                        .filter(|_| !paused && running.len() < UNITS_IN_FLIGHT);
                    let rearm = arm_after.filter(|_| target_watch.is_none() && arming.is_none());
                    tokio::select! {
                        Some(done) = running.next(), if !running.is_empty() => Some(done),
                        _ = async { checkpointing.as_mut().expect("guarded").await }, if checkpointing.is_some() => {
                            checkpointing = None;
                            None
                        }
                        _ = self.queue.notified() => None,
                        armed = async { arming.as_mut().expect("guarded").await }, if arming.is_some() => {
                            arming = None;
                            match armed {
                                Ok(w) => {
                                    target_watch = Some(w);
                                    arm_backoff = Duration::from_millis(100);
                                }
                                Err(e) => {
                                    let retry_in_ms = arm_backoff.as_millis() as u64;
                                    // Without anti-entropy, no work is done meanwhile.
                                    if self.route.config.verify_interval_s == 0 {
                                        warn!(error = %e, retry_in_ms, "cannot watch the target; retrying");
                                    } else {
                                        debug!(error = %e, retry_in_ms, "cannot arm the target watch yet; retrying");
                                    }
                                    arm_after = Some(Instant::now() + arm_backoff);
                                    arm_backoff = (arm_backoff * 2).min(Duration::from_secs(5));
                                }
                            }
                            None
                        }
                        event = async {
                            match target_watch.as_mut() {
                                Some(w) => w.changed().await,
                                None => std::future::pending().await,
                            }
                        } => match self.on_target_event(event) {
                            WatchFlow::Going => None,
                            WatchFlow::Ended => return LeadEnd::LeaseLost,
                            WatchFlow::Reconnected => {
                                target_watch = None;
                                None
                            }
                        },
                        _ = sleep_until(parked) => None,
                        _ = sleep_until(paused_until.filter(|_| paused)) => None,
                        _ = sleep_until(rearm) => None,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => None,
                        _ = shutdown.changed() => None,
                        _ = &mut lost => return LeadEnd::LeaseLost,
                    }
                }
            };
            let Some((unit, result)) = finished else {
                continue;
            };
            self.queue.settle(unit);
            match result {
                Ok(()) => {
                    backoff = Duration::from_millis(100);
                    // An error stays shown while a path it held back waits.
                    if self.queue.next_parked_due().is_none() {
                        *self.status.last_error.lock().unwrap() = None;
                    }
                }
                Err((e, reason, paths)) => {
                    if e.lease_lost() {
                        if e.source == Error::RuntimeInconsistent {
                            self.metrics.fencing_rejections.inc();
                        }
                        return LeadEnd::LeaseLost;
                    }
                    match reason {
                        Some(reason) => self.queue.request_resync(reason),
                        None => self.queue.requeue(paths),
                    }
                    // One incident (a lost connection, say) fails every unit
                    // in flight: it pauses new work once, while the others
                    // come back and are put back too.
                    if paused_until.is_none_or(|t| Instant::now() >= t) {
                        warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "mirroring interrupted; will retry");
                        self.metrics.error(error_kind(&e.source));
                        *self.status.last_error.lock().unwrap() = Some(e.to_string());
                        paused_until = Some(Instant::now() + backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    } else {
                        debug!(error = %e, "unit failed in the same interruption; put back");
                    }
                }
            }
            let error = self.status.last_error.lock().unwrap().clone();
            lease.publish_error(error).await;
        }
    }

    /// What a new leader reads before applying: paths kept by policy and a
    /// stop left by the previous leader; and the watch on the target path
    /// that reveals local changes from now on.
    async fn start_leading(&self, lease: &Lease) -> Result<(), Error> {
        let tgt = lease.client();
        let (meta, route, target) = (&self.identity.meta_path, self.route.name(), &self.target.ensemble);
        self.status.conflicts.set_watching(false);
        let kept = conflict::load_kept(tgt, &conflict::kept_dir(meta, route, target)).await?;
        if !kept.is_empty() {
            info!(paths = kept.len(), "target versions kept by policy (target-wins)");
        }
        self.status.conflicts.set_kept(kept);
        let stop = conflict::read_stopped(tgt, &conflict::stopped_path(meta, route, target)).await?;
        if let Some(stop) = &stop {
            warn!(path = %stop.path, reason = %stop.reason, "route/target is stopped; `zkbridge resume` clears it");
        }
        self.status.conflicts.set_stopped(stop);
        Ok(())
    }

    /// Handles the target events that queued up while a unit was applied.
    /// `Ended` once the target session ended (the watcher must not be
    /// polled again, and the lease is gone with the session).
    fn drain_target_events(&self, watcher: &mut PersistentWatcher) -> WatchFlow {
        use futures::FutureExt;
        while let Some(event) = watcher.changed().now_or_never() {
            match self.on_target_event(event) {
                WatchFlow::Going => {}
                flow => return flow,
            }
        }
        WatchFlow::Going
    }

    /// An event in the target: the echo of an own write, or a possible local
    /// change to look at.
    fn on_target_event(&self, event: zookeeper_client::WatchedEvent) -> WatchFlow {
        match event.event_type {
            EventType::Session if event.session_state.is_terminated() => return WatchFlow::Ended,
            EventType::Session => match event.session_state {
                zookeeper_client::SessionState::Disconnected => {
                    // Events (and echoes) may be lost across the gap; the
                    // anti-entropy pass catches what the watch missed.
                    self.status.conflicts.reset_echoes();
                }
                zookeeper_client::SessionState::SyncConnected => return WatchFlow::Reconnected,
                _ => {}
            },
            EventType::NodeChildrenChanged => {}
            _ => {
                if self.status.conflicts.is_echo(&event.path) {
                    return WatchFlow::Going;
                }
                let Some(rel) = path::relative(&self.target.path, &event.path) else {
                    return WatchFlow::Going;
                };
                if self.route.filter.managed(rel) || rel.is_empty() {
                    debug!(path = %event.path, kind = ?event.event_type, "target changed by someone else");
                    self.queue.mark_target(rel);
                }
            }
        }
        WatchFlow::Going
    }

    /// Waits until an operator deletes the stop record. `true` once cleared.
    async fn await_resume(&self, lease: &Lease, stop: &StopRecord) -> bool {
        let path = conflict::stopped_path(&self.identity.meta_path, self.route.name(), &self.target.ensemble);
        match lease.client().check_and_watch_stat(&path).await {
            Ok((None, _)) => true,
            Ok((Some(_), watcher)) => {
                let _ = tokio::time::timeout(Duration::from_secs(5), watcher.changed()).await;
                false
            }
            Err(e) => {
                debug!(error = %e, path = %stop.path, "cannot read the stop record");
                tokio::time::sleep(Duration::from_secs(1)).await;
                false
            }
        }
    }

    /// Applies the route's policy to a local change at `rel`. Returns
    /// whether the reconcile op for it should still be written.
    async fn on_conflict(
        &self,
        lease: &Lease,
        rel: &str,
        source: Option<&NodeState>,
        target: Option<&NodeState>,
    ) -> bool {
        let path = join(&self.target.path, rel);
        let source_mzxid = source.map(|s| s.stat.mzxid).unwrap_or(-1);
        let target_mzxid = target.map(|t| t.stat.mzxid).unwrap_or(-1);
        let (meta, route, target_name) = (&self.identity.meta_path, self.route.name(), &self.target.ensemble);
        match self.route.config.conflict {
            ConflictPolicy::SourceWins => {
                self.metrics.overwritten.inc();
                info!(%path, source_mzxid = format!("{source_mzxid:#x}"), target_mzxid = format!("{target_mzxid:#x}"), "target changed locally: overwritten (source-wins)");
                true
            }
            ConflictPolicy::TargetWins => {
                self.metrics.kept.inc();
                info!(%path, source_mzxid = format!("{source_mzxid:#x}"), target_mzxid = format!("{target_mzxid:#x}"), "target changed locally: kept (target-wins) until the source changes it again");
                self.status.conflicts.keep(rel, source_mzxid);
                let dir = conflict::kept_dir(meta, route, target_name);
                if let Err(e) =
                    conflict::persist_kept(lease.client(), &dir, rel, source_mzxid, &self.target_zk.acl).await
                {
                    warn!(%path, error = %e, "cannot record the kept path; it is kept until restart");
                }
                false
            }
            ConflictPolicy::Fail => {
                self.metrics.stopped.inc();
                warn!(%path, source_mzxid = format!("{source_mzxid:#x}"), target_mzxid = format!("{target_mzxid:#x}"), "target changed locally: route/target stopped (conflict = fail); resolve the path, then `zkbridge resume`");
                let record = StopRecord {
                    path: path.clone(),
                    reason: "conflict".into(),
                    bridge: self.identity.bridge_id.clone(),
                    ts_ms: now_ms(),
                };
                let stop_path = conflict::stopped_path(meta, route, target_name);
                if let Err(e) = conflict::persist_stop(lease.client(), &stop_path, &record, &self.target_zk.acl).await {
                    warn!(error = %e, "cannot record the stop; it holds until restart");
                }
                *self.status.last_error.lock().unwrap() =
                    Some(format!("{path}: changed locally; stopped by conflict = fail"));
                self.status.conflicts.set_stopped(Some(record));
                false
            }
        }
    }

    /// Passes `ops` through the delete circuit breaker (see `breaker`):
    /// returns what to write now. Held deletes are parked, so they stay
    /// pending (and hold the checkpoint back) until released or no longer
    /// needed.
    async fn hold_mass_deletes(
        &self,
        lease: &Lease,
        ops: Vec<Op>,
        dirty: &BTreeMap<String, Dirty>,
        (root_vanished, mirrored): (bool, usize),
    ) -> Vec<Op> {
        let deletes = ops.iter().filter(|o| matches!(o, Op::Delete { .. })).count();
        if deletes == 0 {
            return ops;
        }
        let now = Instant::now();
        let root_blocked = root_vanished && !self.route.config.allow_root_delete;
        if self.status.breaker_released.load(Ordering::Relaxed) {
            // Only the deletes an operator released skip the check; a new
            // mass delete meanwhile is judged like any other.
            let released = self.status.released_deletes.lock().unwrap();
            if ops
                .iter()
                .all(|o| !matches!(o, Op::Delete { .. }) || released.contains(o.rel()))
            {
                drop(released);
                self.delete_window.lock().unwrap().record(deletes, now);
                return ops;
            }
        }
        // Once tripped, every delete waits for the operator or for the
        // condition to clear: held deletes must not trickle through as the
        // window ages.
        let tripped = self.status.breaker.lock().unwrap().is_some();
        if !root_blocked && !tripped && self.delete_window.lock().unwrap().admit(deletes, mirrored, now) {
            return ops;
        }
        let (held, rest): (Vec<Op>, Vec<Op>) = ops.into_iter().partition(|o| matches!(o, Op::Delete { .. }));
        let why = if root_blocked {
            "the source root vanished (allow_root_delete = false)".to_string()
        } else {
            format!(
                "{deletes} deletes would exceed max_delete_fraction = {} of {mirrored} mirrored nodes within {} s",
                self.route.config.max_delete_fraction, self.route.config.delete_window_s
            )
        };
        if tripped {
            debug!(held = held.len(), reason = %why, "delete circuit breaker still holding deletes");
        } else {
            warn!(held = held.len(), reason = %why, "delete circuit breaker: holding deletes; other writes go on; `zkbridge resume` releases them");
        }
        self.metrics.deletes_blocked.inc_by(held.len() as u64);
        {
            let mut held_set = self.status.held_deletes.lock().unwrap();
            for op in held {
                let rel = op.rel().to_string();
                let d = dirty_or_unmarked(dirty, &rel, now);
                self.queue.park(rel.clone(), d, now + PARK_FOR);
                held_set.insert(rel);
            }
        }
        if !tripped {
            let record = StopRecord {
                path: self.target.path.clone(),
                reason: format!("delete_breaker: {why}"),
                bridge: self.identity.bridge_id.clone(),
                ts_ms: now_ms(),
            };
            let path = conflict::stopped_path(&self.identity.meta_path, self.route.name(), &self.target.ensemble);
            if let Err(e) = conflict::persist_stop(lease.client(), &path, &record, &self.target_zk.acl).await {
                warn!(error = %e, "cannot record the breaker's trip; it holds until restart");
            }
            *self.status.breaker.lock().unwrap() = Some(record);
        }
        rest
    }

    /// After each unit: forgets held deletes that are no longer parked (the
    /// source came back, or a resync rechecked them); clears the trip when
    /// none is left, or when an operator deleted the stop record.
    async fn review_breaker(&self, lease: &Lease) {
        if self.status.breaker.lock().unwrap().is_none() {
            // Released deletes pass until every one of them is applied (they
            // may sit in units in flight for a while).
            let mut released = self.status.released_deletes.lock().unwrap();
            released.retain(|rel| self.queue.is_pending(rel));
            if released.is_empty() {
                self.status.breaker_released.store(false, Ordering::Relaxed);
            }
            return;
        }
        let path = conflict::stopped_path(&self.identity.meta_path, self.route.name(), &self.target.ensemble);
        let cleared_by_operator = matches!(lease.client().check_stat(&path).await, Ok(None));
        let none_left = {
            let mut held = self.status.held_deletes.lock().unwrap();
            held.retain(|rel| self.queue.is_pending(rel));
            held.is_empty()
        };
        if cleared_by_operator {
            info!("held deletes released by an operator");
            self.status.breaker_released.store(true, Ordering::Relaxed);
            let held = std::mem::take(&mut *self.status.held_deletes.lock().unwrap());
            self.status.released_deletes.lock().unwrap().extend(held);
            *self.status.breaker.lock().unwrap() = None;
            self.queue.unpark_all();
        } else if none_left {
            info!("delete circuit breaker cleared: no held delete is needed any more");
            *self.status.breaker.lock().unwrap() = None;
            if self.status.conflicts.stopped().is_none() {
                let _ = lease.client().delete(&path, None).await;
            }
        }
    }

    /// Brings the sequence counter (`cversion`) of each target parent in
    /// `parents` up to its source's, so that a client failing over to the
    /// target region never gets a sequential name that exists or goes
    /// backwards. Each create or delete of a child bumps the counter by one:
    /// throw-away children are created and deleted in one fenced `multi`.
    async fn align_sequence_counters(
        &self,
        lease: &Lease,
        src: &Client,
        parents: Vec<String>,
    ) -> Result<(), Interrupted> {
        if parents.is_empty() {
            return Ok(());
        }
        let base = self.target.path.as_str();
        let sources = tree::read_nodes(src, &self.route.source.path, &parents, self.limits.max_in_flight)
            .await
            .map_err(|source| Interrupted { side: "source", source })?;
        let targets = tree::read_nodes(lease.client(), base, &parents, self.limits.max_in_flight)
            .await
            .map_err(|source| Interrupted { side: "target", source })?;
        for ((rel, s), t) in parents.iter().zip(sources).zip(targets) {
            let (Some((_, s)), Some((_, t))) = (s, t) else { continue };
            if s.ephemeral_owner == -2 || t.cversion >= s.cversion {
                continue;
            }
            let pairs = (s.cversion - t.cversion + 1) / 2;
            let parent_path = join(base, rel);
            let nonce = uuid::Uuid::new_v4().simple().to_string();
            let names: Vec<String> = (0..pairs)
                .map(|i| format!("{parent_path}/.zkbridge-seq-{nonce}-{i}"))
                .collect();
            let mut writer = lease.writer();
            let fail = |source| Interrupted { side: "target", source };
            for name in &names {
                writer
                    .add_create(name, b"", &persistent(&self.target_zk.acl))
                    .map_err(fail)?;
            }
            for name in &names {
                writer.add_delete(name, None).map_err(fail)?;
            }
            for name in &names {
                self.status.conflicts.expect_echo(name.clone());
                self.status.conflicts.expect_echo(name.clone());
            }
            match writer.commit().await.map_err(fenced_error) {
                Ok(_) => debug!(path = %parent_path, from = t.cversion, to = s.cversion, "sequence counter aligned"),
                Err(e) => {
                    for name in &names {
                        self.status.conflicts.cancel_echo(name);
                        self.status.conflicts.cancel_echo(name);
                    }
                    if is_transient(&e) && !is_node_level(&e) {
                        return Err(fail(e));
                    }
                    warn!(path = %parent_path, error = %e, "cannot align the sequence counter; the next change retries");
                }
            }
        }
        Ok(())
    }

    /// Reports a source node the bridge may not read (NoAuth), once per
    /// path: it is skipped, its target twin left alone, the rest goes on.
    fn report_unreadable(&self, rel: &str) {
        if self.unreadable_reported.lock().unwrap().insert(rel.to_string()) {
            let path = join(&self.route.source.path, rel);
            warn!(%path, code = "no_auth", "source node not readable with the configured credentials: skipped (its target copy is left as is)");
            self.metrics.error("no_auth");
        }
    }

    /// The source's current session, and the target session that holds the
    /// lease (the only one this worker may write with).
    async fn clients(&self, lease: &Lease) -> (Client, Client) {
        (self.source_zk.session().await.client, lease.client().clone())
    }

    /// The checkpoint for barrier `barrier`, if it is newer than the last.
    fn checkpoint_for(&self, barrier: Option<crate::queue::Barrier>) -> Option<Checkpoint> {
        let barrier = barrier?;
        let last = self
            .status
            .checkpoint
            .lock()
            .unwrap()
            .as_ref()
            .map(|c| c.source_zxid)
            .unwrap_or(-1);
        if barrier.zxid <= last {
            return None;
        }
        let source_id = self.source_id.lock().unwrap().clone()?;
        Some(Checkpoint {
            version: 1,
            source_ensemble_id: source_id,
            source_zxid: barrier.zxid,
            heartbeat_ts_ms: barrier.ts_ms,
            bridge: self.identity.bridge_id.clone(),
            updated_ms: now_ms(),
        })
    }

    /// A checkpoint that can ride in the same `multi` as the last writes of
    /// the work in flight: only over an existing checkpoint node (a first
    /// checkpoint is created alone).
    fn ride_along_checkpoint(&self, unit: Option<u64>) -> Option<Checkpoint> {
        self.status.checkpoint.lock().unwrap().as_ref()?;
        self.checkpoint_for(self.queue.barrier_completed_by(unit))
    }

    /// Commits the newest fully applied heartbeat barrier as the checkpoint
    /// on its own: used when there were no writes to carry it, or the
    /// batch that carried one was refused. Never ahead of the data: the
    /// barrier is only reached once everything before it is committed.
    async fn write_checkpoint(&self, lease: &Lease, checkpoint: Checkpoint) {
        let tgt = lease.client();
        let path = checkpoint_path(&self.identity.meta_path, self.route.name(), &self.target.ensemble);
        let data = serde_json::to_vec(&checkpoint).expect("JSON of a plain struct");
        // Before the first checkpoint of a route/target, the node is missing.
        let likely_missing = self.status.checkpoint.lock().unwrap().is_none();
        let mut result = fenced_put(lease, &path, &data, &self.target_zk.acl, likely_missing).await;
        if result == Err(Error::NoNode) {
            if let Some(parent) = path::parent_absolute(&path) {
                let _ = tgt.mkdir(parent, &persistent(&self.target_zk.acl)).await;
            }
            result = fenced_put(lease, &path, &data, &self.target_zk.acl, true).await;
        }
        match result {
            Ok(target_zxid) => self.checkpoint_committed(checkpoint, target_zxid).await,
            Err(e) => {
                warn!(error = %e, "cannot write checkpoint; the next heartbeat retries");
                self.metrics.error(error_kind(&e));
            }
        }
    }

    /// Records a committed checkpoint and reports progress to the source
    /// (for `zkbridge wait` and `zkbridge status`).
    async fn checkpoint_committed(&self, checkpoint: Checkpoint, target_zxid: i64) {
        if self.status.reference_target_zxid.load(Ordering::Relaxed) <= 0 {
            self.status.reference_target_zxid.store(target_zxid, Ordering::Relaxed);
        }
        let progress = Progress {
            source_zxid: checkpoint.source_zxid,
            ts_ms: checkpoint.heartbeat_ts_ms,
        };
        {
            // Units commit out of order: an older checkpoint committed after
            // a newer one must not move the known position back.
            let mut known = self.status.checkpoint.lock().unwrap();
            let newer = known.as_ref().is_none_or(|k| {
                k.source_ensemble_id != checkpoint.source_ensemble_id || k.source_zxid < checkpoint.source_zxid
            });
            if !newer {
                return;
            }
            self.metrics.checkpoint_zxid.set(checkpoint.source_zxid);
            *known = Some(checkpoint);
        }
        let src = self.source_zk.session().await.client;
        let path = progress_path(&self.identity.meta_path, self.route.name(), &self.target.ensemble);
        if let Err(e) = put_json(&src, &path, &progress, &self.source_zk.acl).await {
            debug!(error = %e, "cannot write progress to the source; the next checkpoint retries");
        }
    }

    /// Full scan of the source; then either a full scan of the target and
    /// the plan that makes them equal, or — with a valid checkpoint C — a
    /// resume that reads and writes the target only where the source changed
    /// after C.
    async fn resync(&self, lease: &Lease, reason: ResyncReason) -> Result<(), Interrupted> {
        let started = Instant::now();
        let (src, tgt) = self.clients(lease).await;
        let route = &self.route;
        let meta = &self.identity.meta_path;
        let source_id = ensemble_id(&src, meta, &self.source_zk.acl)
            .await
            .map_err(|source| Interrupted { side: "source", source })?;
        ensemble_id(&tgt, meta, &self.target_zk.acl)
            .await
            .map_err(|source| Interrupted { side: "target", source })?;
        *self.source_id.lock().unwrap() = Some(source_id.clone());
        let (stored, stored_target_zxid) = match tgt
            .get_data(&checkpoint_path(meta, route.name(), &self.target.ensemble))
            .await
        {
            // A damaged checkpoint means a full resync, never a guess.
            Ok((data, stat)) => (serde_json::from_slice::<Checkpoint>(&data).ok(), stat.mzxid),
            Err(Error::NoNode) => (None, -1),
            Err(source) => return Err(Interrupted { side: "target", source }),
        };
        let resume_from = match (&stored, reason) {
            (_, ResyncReason::Overflow | ResyncReason::SourceRoot) => None,
            (Some(c), _) if c.source_ensemble_id == source_id => Some(c.source_zxid),
            (Some(c), _) => {
                warn!(
                    checkpoint_source = %c.source_ensemble_id,
                    current_source = %source_id,
                    "checkpoint belongs to another source ensemble (rebuilt or re-pointed): full resync"
                );
                None
            }
            (None, _) => None,
        };
        let mismatch = stored.as_ref().is_some_and(|c| c.source_ensemble_id != source_id);
        self.metrics.resync(if mismatch {
            ResyncReason::CheckpointMismatch
        } else {
            reason
        });
        if mismatch || stored.is_none() {
            // A rebuilt source restarts zxids low: a checkpoint remembered
            // from the old one must not hold the new ones back.
            *self.status.checkpoint.lock().unwrap() = None;
        }
        if let Some(c) = stored.as_ref().filter(|_| !mismatch) {
            // Another instance may have led since this one last did.
            let mut known = self.status.checkpoint.lock().unwrap();
            if known.as_ref().is_none_or(|k| k.source_zxid < c.source_zxid) {
                self.metrics.checkpoint_zxid.set(c.source_zxid);
                *known = Some(c.clone());
            }
        }

        let scan_started = Instant::now();
        let scan_target = || async {
            tree::scan(&tgt, &self.target.path, self.limits.max_in_flight, |rel| {
                !route.filter.excluded(rel)
            })
            .await
            .map_err(|source| Interrupted { side: "target", source })
        };
        // A full copy into an empty target writes while it reads (see
        // `stream_copy`); the plan would be "create everything" anyway.
        let full_target = match resume_from {
            None => Some(scan_target().await?),
            Some(_) => None,
        };
        let streaming = full_target.as_ref().is_some_and(|t| t.is_empty()) && route.config.include == ["**"];
        let (source, streamed) = if streaming {
            self.ensure_target_parent(&tgt).await?;
            self.stream_copy(lease, &src).await?
        } else {
            let source = tree::scan(&src, &route.source.path, self.limits.max_in_flight, |rel| {
                !route.filter.excluded(rel)
            })
            .await
            .map_err(|source| Interrupted { side: "source", source })?;
            (source, 0)
        };
        for (rel, _) in source.iter().filter(|(_, n)| n.is_unreadable()) {
            self.report_unreadable(rel);
        }
        // Managed nodes in the target, when it was scanned.
        let mut in_target = 0;
        let ops = match resume_from {
            Some(c) if !source.is_empty() => self.resume_plan(&tgt, &source, c).await?,
            _ if streaming => Vec::new(),
            _ => {
                let target = match full_target {
                    Some(t) => t,
                    None => scan_target().await?,
                };
                in_target = target.keys().filter(|rel| route.filter.managed(rel)).count();
                plan::plan(route, &source, &target)
            }
        };
        // The fraction is of what the target mirrors: before this resync
        // (the gauge, or the scan) or after it (the source), the largest.
        let mirrored_in_source = source
            .iter()
            .filter(|(rel, n)| plan::is_mirrored(route, rel, n))
            .count();
        let mirrored_before = (self.metrics.mirrored.get().max(0) as usize).max(in_target);
        let mut ops = self
            .hold_mass_deletes(
                lease,
                ops,
                &BTreeMap::new(),
                (source.is_empty(), mirrored_in_source.max(mirrored_before)),
            )
            .await;
        // Target versions kept by policy stay, unless the source changed
        // the node since (which ends the keep).
        let mut ended = Vec::new();
        ops.retain(|op| {
            let source_mzxid = source.get(op.rel()).map(|n| n.stat.mzxid).unwrap_or(-1);
            match self.status.conflicts.keeps(op.rel(), source_mzxid) {
                Some(true) => false,
                Some(false) => {
                    ended.push(op.rel().to_string());
                    true
                }
                None => true,
            }
        });
        let kept_dir = conflict::kept_dir(meta, route.name(), &self.target.ensemble);
        for rel in ended {
            let _ = conflict::unpersist_kept(&tgt, &kept_dir, &rel).await;
        }
        if ops
            .first()
            .is_some_and(|o| matches!(o, Op::Create { rel, .. } if rel.is_empty()))
        {
            self.ensure_target_parent(&tgt).await?;
        }
        let planned = ops.len() + streamed;
        self.status.scanned.store(source.len() as u64, Ordering::Relaxed);
        self.status.planned.store(planned as u64, Ordering::Relaxed);
        self.status.resumed.store(resume_from.is_some(), Ordering::Relaxed);
        if !self.status.initial_sync_done.load(Ordering::Relaxed) {
            // From T on, every write to the target is accounted for: ours
            // since the resumed checkpoint, or — for a full copy, which runs
            // before the target watch is armed — ours since this instance
            // took the lead (its lease node's creation), so that a local
            // change made during the copy is judged as one.
            let reference = match resume_from {
                Some(_) => stored_target_zxid,
                None => match tgt.check_stat(lease.path()).await {
                    Ok(Some(stat)) => stat.czxid,
                    _ => -1,
                },
            };
            self.status.reference_target_zxid.store(reference, Ordering::Relaxed);
        }
        if resume_from.is_some() {
            self.metrics.resume_writes.inc_by(planned as u64);
        }
        let since = Instant::now();
        let scan_ms = (since - scan_started).as_millis() as u64;
        let dirty = BTreeMap::new();
        let checkpoint = self.ride_along_checkpoint(None);
        self.write(lease, ops, &dirty, since, checkpoint).await?;
        let write_ms = since.elapsed().as_millis() as u64;
        if route.config.acls == AclMode::Copy {
            // A resume looks at nodes changed since C; an ACL-only change
            // leaves no trace there and is found by the anti-entropy pass
            // that follows a resume.
            let acl_rels = source
                .iter()
                .filter(|(rel, n)| plan::is_mirrored(route, rel, n) && resume_from.is_none_or(|c| n.stat.mzxid > c))
                .filter(|(rel, _)| !self.status.conflicts.is_kept(rel))
                .map(|(rel, _)| rel.clone())
                .collect();
            self.sync_acls(lease, &src, acl_rels).await?;
        }
        let sequential_parents: Vec<String> = source
            .iter()
            .filter(|(rel, n)| route.filter.managed(rel) && n.children.iter().any(|c| path::is_sequential_name(c)))
            .map(|(rel, _)| rel.clone())
            .collect();
        self.align_sequence_counters(lease, &src, sequential_parents).await?;
        // A first checkpoint has no node to ride along on, and a streamed
        // copy leaves no batch to carry one: it is written before the sync
        // counts as done, so that the changes that follow are written blind
        // (see `reconcile`) instead of a target read later.
        if let Some(checkpoint) = self.checkpoint_for(self.queue.barrier_completed_by(None)) {
            self.write_checkpoint(lease, checkpoint).await;
        }
        let mirrored = mirrored_in_source;
        self.metrics.mirrored.set(mirrored as i64);
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let how = if resume_from.is_some() {
            "resumed from checkpoint"
        } else {
            "full"
        };
        if !self.status.initial_sync_done.swap(true, Ordering::Relaxed) {
            info!(
                nodes = mirrored,
                ops = planned,
                elapsed_ms,
                scan_ms,
                write_ms,
                how,
                "initial sync done"
            );
        } else {
            info!(
                reason = reason.as_str(),
                nodes = mirrored,
                ops = planned,
                elapsed_ms,
                how,
                "resync done"
            );
        }
        Ok(())
    }

    /// Copies the source into an empty target while scanning it: each node
    /// read becomes a create at once, and creates are written in pipelined
    /// batches as they come, parents first (the scan is breadth-first and a
    /// session's requests are applied in order). Scan and write overlap, so
    /// the copy takes about as long as the slower of the two instead of
    /// their sum. Returns the source tree and the number of creates.
    async fn stream_copy(&self, lease: &Lease, src: &Client) -> Result<(tree::Tree, usize), Interrupted> {
        let route = &self.route;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Op>();
        let scan = tree::scan_streaming(
            src,
            &route.source.path,
            self.limits.max_in_flight,
            |rel| !route.filter.excluded(rel),
            move |rel, node| {
                // Once the writer stopped (an error), the scan only reads.
                if plan::is_mirrored(route, rel, node) && !tx.is_closed() {
                    // The rest of the resync needs stats and child lists,
                    // not payloads: the create takes the data.
                    let _ = tx.send(Op::Create {
                        rel: rel.to_string(),
                        kind: NodeKind::of(route, node),
                        data: std::mem::take(&mut node.data),
                    });
                }
            },
        );
        let write = async move {
            // Owning the receiver: on an error it goes, and the scan stops
            // handing over payloads that nobody would write.
            let mut rx = rx;
            let mut written = 0;
            let none = BTreeMap::new();
            while let Some(first) = rx.recv().await {
                let mut ops = vec![first];
                while let Ok(op) = rx.try_recv() {
                    ops.push(op);
                }
                written += ops.len();
                self.write(lease, ops, &none, Instant::now(), None).await?;
            }
            Ok::<usize, Interrupted>(written)
        };
        let (scanned, written) = tokio::join!(scan, write);
        let source = scanned.map_err(|source| Interrupted { side: "source", source })?;
        Ok((source, written?))
    }

    /// The ops a resume from checkpoint `c` needs: the target is read only
    /// for source nodes changed after `c` (`mzxid > c`) and for the child
    /// lists of source nodes whose children changed after `c` (`pzxid > c`,
    /// the only place a delete can hide).
    async fn resume_plan(&self, tgt: &Client, source: &tree::Tree, c: i64) -> Result<Vec<Op>, Interrupted> {
        let route = &self.route;
        let read = |n: &NodeState| n.stat.ephemeral_owner != -1;
        let changed: Vec<String> = source
            .iter()
            .filter(|(_, n)| read(n) && n.stat.mzxid > c)
            .map(|(r, _)| r.clone())
            .collect();
        let reparented: Vec<String> = source
            .iter()
            .filter(|(_, n)| read(n) && n.stat.pzxid > c)
            .map(|(r, _)| r.clone())
            .collect();
        // Changed nodes that existed at C are in the target (the checkpoint
        // says so) and the kept ones are handled with reads: those are
        // written blind, the rest read first. Nodes created after C are
        // created blind. A blind write that finds otherwise is retried with
        // reads (see `write_one`).
        let (blind, changed): (Vec<String>, Vec<String>) = changed.into_iter().partition(|rel| {
            source.get(rel).is_some_and(|n| plan::is_mirrored(route, rel, n)) && !self.status.conflicts.is_kept(rel)
        });
        let mut upserts: Vec<Op> = blind
            .into_iter()
            .map(|rel| {
                let n = &source[&rel];
                if n.stat.czxid > c {
                    Op::Create {
                        kind: NodeKind::of(route, n),
                        data: n.data.clone(),
                        rel,
                    }
                } else {
                    Op::Set {
                        data: n.data.clone(),
                        rel,
                    }
                }
            })
            .collect();
        self.metrics.resume_scanned.inc_by(source.len() as u64);
        self.metrics
            .resume_reads
            .inc_by((changed.len() + reparented.len()) as u64);
        let fail = |source| Interrupted { side: "target", source };
        let target_nodes = tree::read_nodes(tgt, &self.target.path, &changed, self.limits.max_in_flight)
            .await
            .map_err(fail)?;
        let target_lists = tree::scan_from(
            tgt,
            &self.target.path,
            reparented.clone(),
            self.limits.max_in_flight,
            |_| false,
        )
        .await
        .map_err(fail)?;

        for (rel, t) in changed.iter().zip(target_nodes) {
            let t = t.map(|(data, stat)| NodeState {
                data,
                stat,
                children: Vec::new(),
            });
            if let Some(op) = plan::decide(route, rel, source.get(rel), t.as_ref(), false) {
                upserts.push(op);
            }
        }
        let mut delete_roots = Vec::new();
        for parent_rel in &reparented {
            let Some(listed) = target_lists.get(parent_rel) else {
                continue;
            };
            for child in &listed.children {
                let rel = if parent_rel.is_empty() {
                    child.clone()
                } else {
                    format!("{parent_rel}/{child}")
                };
                let present = NodeState {
                    data: Vec::new(),
                    stat: listed.stat,
                    children: Vec::new(),
                };
                if let Some(Op::Delete { rel }) = plan::decide(route, &rel, source.get(&rel), Some(&present), false) {
                    delete_roots.push(rel);
                }
            }
        }
        let mut ops = self.subtree_deletes(tgt, delete_roots).await.map_err(fail)?;
        self.metrics.resume_reads.inc_by(ops.len() as u64);
        upserts.sort_by(|a, b| a.rel().cmp(b.rel()));
        ops.extend(upserts);
        Ok(ops)
    }

    /// Delete ops, children first, for the whole target subtrees at `roots`:
    /// a delete covers the node's subtree, since ZooKeeper deletes children
    /// first and events for them may have been coalesced or lost.
    async fn subtree_deletes(&self, tgt: &Client, roots: Vec<String>) -> Result<Vec<Op>, Error> {
        if roots.is_empty() {
            return Ok(Vec::new());
        }
        let subtree = tree::scan_from(tgt, &self.target.path, roots, self.limits.max_in_flight, |_| true).await?;
        Ok(subtree.into_keys().rev().map(|rel| Op::Delete { rel }).collect())
    }

    /// Creates the target path's ancestors (not the path itself, which is the
    /// mirror of the source root and created with its data).
    async fn ensure_target_parent(&self, tgt: &Client) -> Result<(), Interrupted> {
        let Some(parent) = path::parent_absolute(&self.target.path).filter(|p| *p != "/") else {
            return Ok(());
        };
        match tgt.mkdir(parent, &persistent(&self.target_zk.acl)).await {
            Ok(()) | Err(Error::NodeExists) => Ok(()),
            Err(source) => Err(Interrupted { side: "target", source }),
        }
    }

    /// Reconciles a batch of dirty paths to the source's current state.
    async fn reconcile(
        &self,
        lease: &Lease,
        unit: u64,
        paths: Vec<(String, Dirty)>,
    ) -> Result<(), (Interrupted, Vec<(String, Dirty)>)> {
        let (src, tgt) = self.clients(lease).await;
        let rels: Vec<String> = paths.iter().map(|(r, _)| r.clone()).collect();
        let fail = |side, source, paths: &Vec<(String, Dirty)>| (Interrupted { side, source }, paths.clone());
        let source_nodes = tree::read_nodes(&src, &self.route.source.path, &rels, self.limits.max_in_flight)
            .await
            .map_err(|e| fail("source", e, &paths))?;

        // Source changes to nodes the checkpoint proves are in the target
        // (created at or before C) are written blind, without reading the
        // target first: a round trip saved, which is most of the lag to a
        // distant region. Nodes created after C are created blind. A blind
        // write that finds the target otherwise (NoNode, NodeExists) comes
        // back as "seen changed in the target" and is reconciled with reads.
        let checkpoint_c = self.status.checkpoint.lock().unwrap().as_ref().map(|c| c.source_zxid);
        let mut upserts = Vec::new();
        let mut checked: Vec<(&String, &Dirty, Option<NodeState>)> = Vec::new();
        for ((rel, dirty), s) in paths.iter().zip(source_nodes) {
            let s = s.map(|(data, stat)| NodeState {
                data,
                stat,
                children: Vec::new(),
            });
            let blind = match (&s, checkpoint_c) {
                (Some(node), Some(c))
                    if !dirty.target_only
                        && !dirty.read_first
                        && !dirty.scaffold
                        && plan::is_mirrored(&self.route, rel, node)
                        && !self.status.conflicts.is_kept(rel) =>
                {
                    Some(c)
                }
                _ => None,
            };
            match (blind, s) {
                (Some(c), Some(node)) => upserts.push(if node.stat.czxid > c {
                    Op::Create {
                        rel: rel.clone(),
                        kind: NodeKind::of(&self.route, &node),
                        data: node.data,
                    }
                } else {
                    Op::Set {
                        rel: rel.clone(),
                        data: node.data,
                    }
                }),
                (_, s) => checked.push((rel, dirty, s)),
            }
        }
        let checked_rels: Vec<String> = checked.iter().map(|(rel, _, _)| (*rel).clone()).collect();
        let target_nodes = tree::read_nodes(&tgt, &self.target.path, &checked_rels, self.limits.max_in_flight)
            .await
            .map_err(|e| fail("target", e, &paths))?;

        let mut delete_roots = Vec::new();
        let mut root_vanished = false;
        for ((rel, dirty, s), t) in checked.into_iter().zip(target_nodes) {
            let t = t.map(|(data, stat)| NodeState {
                data,
                stat,
                children: Vec::new(),
            });
            if s.as_ref().is_some_and(NodeState::is_unreadable) {
                self.report_unreadable(rel);
            }
            let decision = plan::decide(&self.route, rel, s.as_ref(), t.as_ref(), dirty.scaffold);
            let source_mzxid = s.as_ref().map(|s| s.stat.mzxid).unwrap_or(-1);
            // An ephemeral mirror goes with the session that owned it (a
            // previous leader): re-creating it is not a conflict.
            let ephemeral_mirror = matches!(
                decision,
                Some(Op::Create {
                    kind: NodeKind::Ephemeral,
                    ..
                })
            );
            if decision.is_some() && !ephemeral_mirror {
                if dirty.target_only {
                    if !self.on_conflict(lease, rel, s.as_ref(), t.as_ref()).await {
                        if self.status.conflicts.stopped().is_some() {
                            // Nothing more is applied; the unit waits for the resume.
                            self.queue.requeue(paths.clone());
                            return Ok(());
                        }
                        continue;
                    }
                } else {
                    match self.status.conflicts.keeps(rel, source_mzxid) {
                        Some(true) => continue,
                        Some(false) => {
                            let dir =
                                conflict::kept_dir(&self.identity.meta_path, self.route.name(), &self.target.ensemble);
                            let _ = conflict::unpersist_kept(&tgt, &dir, rel).await;
                        }
                        None => {}
                    }
                }
            }
            match decision {
                Some(Op::Delete { rel }) => {
                    root_vanished |= rel.is_empty();
                    delete_roots.push(rel)
                }
                Some(op) => upserts.push(op),
                None => {}
            }
        }

        let deletes = self
            .subtree_deletes(&tgt, delete_roots)
            .await
            .map_err(|e| fail("target", e, &paths))?;
        if upserts.first().is_some_and(|o| o.rel().is_empty()) {
            self.ensure_target_parent(&tgt).await.map_err(|e| (e, paths.clone()))?;
        }
        let dirty: BTreeMap<String, Dirty> = paths.iter().cloned().collect();
        upserts.sort_by(|a, b| a.rel().cmp(b.rel()));
        let ops: Vec<Op> = deletes.into_iter().chain(upserts).collect();
        let mirrored = self.metrics.mirrored.get().max(0) as usize;
        let ops = self
            .hold_mass_deletes(lease, ops, &dirty, (root_vanished, mirrored))
            .await;
        let checkpoint = self.ride_along_checkpoint(Some(unit));
        self.write(lease, ops, &dirty, Instant::now(), checkpoint)
            .await
            .map_err(|e| (e, paths.clone()))?;
        let acl_rels = rels
            .into_iter()
            .filter(|rel| !self.status.conflicts.is_kept(rel))
            .collect();
        self.sync_acls(lease, &src, acl_rels)
            .await
            .map_err(|e| (e, paths.clone()))?;
        let parents: std::collections::BTreeSet<String> = paths
            .iter()
            .filter(|(rel, _)| path::is_sequential_name(rel))
            .filter_map(|(rel, _)| parent(rel).map(str::to_string))
            .collect();
        self.align_sequence_counters(lease, &src, parents.into_iter().collect())
            .await
            .map_err(|e| (e, paths))
    }

    /// Commits `ops` in pipelined `multi` batches bounded in ops and bytes,
    /// each fenced by the lease. A batch refused for a node-level reason is
    /// retried op by op, so one bad node cannot hold back the others;
    /// connection-level failures abort the attempt for the caller to retry.
    ///
    /// `checkpoint` (the barrier this work completes) rides in the last
    /// batch, sent once every earlier batch is known to have committed, so
    /// the checkpoint commits atomically with the last writes it covers.
    /// When that cannot be (a refused op, nothing to write), it is left to
    /// `write_checkpoint`.
    async fn write(
        &self,
        lease: &Lease,
        ops: Vec<Op>,
        dirty: &BTreeMap<String, Dirty>,
        since: Instant,
        mut checkpoint: Option<Checkpoint>,
    ) -> Result<(), Interrupted> {
        let base = self.target.path.as_str();
        let acls = self.acl_plan(lease, &ops).await?;
        // A request over the target's jute.maxbuffer makes the server drop
        // the connection, every time: such a node would stall the route as
        // a "network" error. It is held back and kept pending instead.
        let limit = self.target_zk.max_request_bytes;
        let (ops, oversized): (Vec<Op>, Vec<Op>) = ops
            .into_iter()
            .partition(|op| op.wire_size(base.len()) + REQUEST_OVERHEAD <= limit);
        for op in oversized {
            let rel = op.rel().to_string();
            let path = join(base, &rel);
            let bytes = op.wire_size(base.len());
            warn!(%path, bytes, max_request_bytes = limit, "node too large for the target ensemble (its jute.maxbuffer); it stays pending until it shrinks or the limit is raised");
            self.park_refused(
                rel.clone(),
                dirty_or_unmarked(dirty, &rel, since),
                "too_large",
                format!("{path}: {bytes} bytes is over the target's max_request_bytes ({limit})"),
            );
            // The checkpoint was chosen on the premise that this unit
            // commits in full; it waits for the parked path instead.
            checkpoint = None;
        }
        // A whole batch must fit the target's request limit too.
        let limits = Limits {
            batch_max_bytes: self
                .limits
                .batch_max_bytes
                .min(limit.saturating_sub(REQUEST_OVERHEAD * 4)),
            ..self.limits
        };
        let mut batches = batch(ops, base.len(), limits);
        let mut last = checkpoint.as_ref().and_then(|_| batches.pop());
        let mut refused: Vec<Op> = Vec::new();
        let mut interrupted: Option<Error> = None;
        let mut in_flight = FuturesOrdered::new();
        let mut pending = batches.into_iter();
        let checkpoint_write = checkpoint.as_ref().map(|c| {
            (
                checkpoint_path(&self.identity.meta_path, self.route.name(), &self.target.ensemble),
                serde_json::to_vec(c).expect("JSON of a plain struct"),
            )
        });
        let mut carried = false;
        loop {
            while in_flight.len() < self.limits.max_in_flight {
                let Some(batch) = pending.next() else { break };
                in_flight.push_back(commit(lease, base, batch, None, &self.status.conflicts, &acls));
            }
            if in_flight.is_empty() && interrupted.is_none() && refused.is_empty() {
                if let Some(batch) = last.take() {
                    carried = true;
                    in_flight.push_back(commit(
                        lease,
                        base,
                        batch,
                        checkpoint_write.as_ref(),
                        &self.status.conflicts,
                        &acls,
                    ));
                }
            }
            let Some((batch, result)) = in_flight.next().await else {
                break;
            };
            match result {
                Ok(target_zxid) => {
                    self.metrics.batches.inc();
                    for op in &batch {
                        self.metrics.committed(op);
                        let first_seen = dirty.get(op.rel()).map(|d| d.since).unwrap_or(since);
                        self.metrics.latency.observe(first_seen.elapsed().as_secs_f64());
                    }
                    if carried && in_flight.is_empty() && pending.len() == 0 {
                        if let Some(c) = checkpoint.clone() {
                            self.checkpoint_committed(c, target_zxid.unwrap_or(-1)).await;
                        }
                    }
                }
                Err(e) if is_transient(&e) && !is_node_level(&e) => {
                    interrupted.get_or_insert(e);
                }
                Err(e) => {
                    debug!(error = %e, ops = batch.len(), "batch refused; retrying op by op");
                    refused.extend(batch);
                }
            }
        }
        if let Some(source) = interrupted {
            return Err(Interrupted { side: "target", source });
        }
        // The batch that would have carried the checkpoint, when an earlier
        // one was refused.
        refused.extend(last.into_iter().flatten());
        for op in refused {
            self.write_one(lease, op, dirty, since, &acls).await?;
        }
        Ok(())
    }

    /// Sets aside a path the target will not take as it is: counted, shown
    /// in `status` (`error`), retried in `PARK_FOR`, pending meanwhile.
    fn park_refused(&self, rel: String, dirty: Dirty, kind: &str, error: String) {
        self.metrics.error(kind);
        *self.status.last_error.lock().unwrap() = Some(error);
        self.queue.park(rel, dirty, Instant::now() + PARK_FOR);
    }

    /// The ACLs the creates among `ops` get (see [`AclPlan`]).
    async fn acl_plan(&self, lease: &Lease, ops: &[Op]) -> Result<AclPlan, Interrupted> {
        let mut plan = AclPlan {
            default: self.target_zk.acl.clone(),
            copied: HashMap::new(),
        };
        if self.route.config.acls != AclMode::Copy {
            return Ok(plan);
        }
        let creates: Vec<String> = ops
            .iter()
            .filter(|op| matches!(op, Op::Create { .. }))
            .map(|op| op.rel().to_string())
            .collect();
        let (src, _) = self.clients(lease).await;
        let read = tree::read_acls(&src, &self.route.source.path, &creates, self.limits.max_in_flight)
            .await
            .map_err(|source| Interrupted { side: "source", source })?;
        plan.copied = creates
            .into_iter()
            .zip(read)
            .filter_map(|(rel, acl)| Some((rel, acl?)))
            .collect();
        Ok(plan)
    }

    /// Under `acls = "copy"`, brings the ACLs of existing target nodes at
    /// `rels` to their source's. ZooKeeper has no `setACL` in a `multi`, so
    /// these are single requests after the data writes; a source ACL change
    /// fires no watch, so ACL-only changes arrive through anti-entropy.
    async fn sync_acls(&self, lease: &Lease, src: &Client, rels: Vec<String>) -> Result<(), Interrupted> {
        if self.route.config.acls != AclMode::Copy || rels.is_empty() {
            return Ok(());
        }
        let tgt = lease.client();
        let n = self.limits.max_in_flight;
        let sources = tree::read_acls(src, &self.route.source.path, &rels, n)
            .await
            .map_err(|source| Interrupted { side: "source", source })?;
        let targets = tree::read_acls(tgt, &self.target.path, &rels, n)
            .await
            .map_err(|source| Interrupted { side: "target", source })?;
        for ((rel, s), t) in rels.iter().zip(sources).zip(targets) {
            let (Some(s), Some(t)) = (s, t) else { continue };
            if s == t {
                continue;
            }
            let path = join(&self.target.path, rel);
            match tgt.set_acl(&path, &s, None).await {
                Ok(_) => {
                    self.metrics.applied_acls.inc();
                    debug!(%path, "ACL copied from source");
                }
                Err(Error::NoNode) => {}
                Err(e) if is_transient(&e) => {
                    return Err(Interrupted {
                        side: "target",
                        source: e,
                    })
                }
                Err(e) => {
                    warn!(%path, error = %e, "target refused the source's ACL");
                    self.metrics.error(error_kind(&e));
                    *self.status.last_error.lock().unwrap() = Some(format!("{path}: setACL refused: {e}"));
                }
            }
        }
        Ok(())
    }

    /// Applies one op alone and sorts out why it failed: races resolve by
    /// reconciling the path again, lasting failures park it.
    async fn write_one(
        &self,
        lease: &Lease,
        op: Op,
        dirty: &BTreeMap<String, Dirty>,
        since: Instant,
        acls: &AclPlan,
    ) -> Result<(), Interrupted> {
        let base = self.target.path.as_str();
        let rel = op.rel().to_string();
        let d = dirty_or_unmarked(dirty, &rel, since);
        let kind = op.kind();
        let (batch, result) = commit(lease, base, vec![op], None, &self.status.conflicts, acls).await;
        let op = &batch[0];
        match result {
            Ok(_) => {
                self.metrics.batches.inc();
                self.metrics.committed(op);
                self.metrics.latency.observe(d.since.elapsed().as_secs_f64());
            }
            Err(Error::NoNode) if matches!(op, Op::Delete { .. }) => {}
            Err(Error::NoNode) if matches!(op, Op::Create { .. }) => {
                // The target lacks the parent: make it exist first — unless
                // the parent itself waits (too large, no permission): then
                // the child waits with it rather than spin.
                let p = parent(&rel).unwrap_or("").to_string();
                if self.queue.is_parked(&p) {
                    self.queue
                        .park(rel, Dirty { data_only: false, ..d }, Instant::now() + PARK_FOR);
                } else {
                    let d = Dirty { data_only: false, ..d };
                    self.queue.requeue([(p, Dirty { scaffold: true, ..d }), (rel, d)]);
                }
            }
            // A create found the node there: an earlier unit's create (a
            // node created and changed again in quick succession), or a
            // local create, which the target watch reports on its own. Look
            // again, with reads, without calling it a conflict.
            Err(Error::NodeExists) if matches!(op, Op::Create { .. }) => self.queue.requeue([(
                rel,
                Dirty {
                    data_only: false,
                    read_first: true,
                    ..d
                },
            )]),
            // A blind set found the node gone, which the checkpoint said was
            // there: look again, with reads, as a change in the target (it
            // may have been deleted while no bridge watched).
            Err(Error::NoNode) if !matches!(op, Op::Delete { .. }) => self.queue.requeue([(
                rel,
                Dirty {
                    target_only: true,
                    data_only: false,
                    ..d
                },
            )]),
            Err(Error::NoNode | Error::NodeExists | Error::NotEmpty) => {
                self.queue.requeue([(rel, Dirty { data_only: false, ..d })])
            }
            Err(e) if is_transient(&e) => {
                return Err(Interrupted {
                    side: "target",
                    source: e,
                })
            }
            Err(e) => {
                let path = join(base, &rel);
                warn!(%path, op = kind, error = %e, code = error_kind(&e), "target refused a write; will retry in {}s", PARK_FOR.as_secs());
                self.park_refused(rel, d, error_kind(&e), format!("{path}: {kind} refused: {e}"));
            }
        }
        Ok(())
    }
}

/// The dirty record of `rel`, or one for a path the queue did not mark (a
/// resync's ops): first seen at `since`, ordered before everything.
fn dirty_or_unmarked(dirty: &BTreeMap<String, Dirty>, rel: &str, since: Instant) -> Dirty {
    dirty.get(rel).copied().unwrap_or(Dirty {
        since,
        scaffold: false,
        seq: 0,
        target_only: false,
        data_only: false,
        read_first: false,
    })
}

/// Bytes a single-op `multi` adds beyond the op itself: the header, the
/// lease check, the ACL. Generous on purpose.
const REQUEST_OVERHEAD: usize = 1024;

/// Stops a background task when its owner goes.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Errors that concern a node rather than the connection.
fn is_node_level(e: &Error) -> bool {
    matches!(
        e,
        Error::NoNode | Error::NodeExists | Error::NotEmpty | Error::BadVersion
    )
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Splits ops into batches of at most `limits.batch_max_ops` ops and
/// `limits.batch_max_bytes` bytes (an op larger than that goes alone).
fn batch(ops: Vec<Op>, base_len: usize, limits: Limits) -> Vec<Vec<Op>> {
    let mut batches = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for op in ops {
        let size = op.wire_size(base_len);
        if !current.is_empty() && (current.len() >= limits.batch_max_ops || bytes + size > limits.batch_max_bytes) {
            batches.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(op);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// Sends one batch as a `multi` whose first op checks the lease, plus an
/// optional extra set-data (the checkpoint). The request is sent when this
/// is called, not when the future is polled, so batches pipeline in order.
///
/// Each op registers the echo its event will produce in the target watch
/// before the request leaves (the event may arrive before the reply); a
/// failed batch withdraws them.
fn commit<'a>(
    lease: &'a Lease,
    base: &'a str,
    batch: Vec<Op>,
    extra: Option<&(String, Vec<u8>)>,
    conflicts: &'a Conflicts,
    acls: &AclPlan,
) -> impl std::future::Future<Output = (Vec<Op>, Result<Option<i64>, Error>)> + 'a {
    let mut writer = lease.writer();
    let added: Result<(), Error> = batch
        .iter()
        .try_for_each(|op| {
            let path = join(base, op.rel());
            match op {
                Op::Create { data, kind, rel } => writer.add_create(&path, data, &create_options(*kind, acls.of(rel))),
                Op::Set { data, .. } => writer.add_set_data(&path, data, None),
                Op::Delete { .. } => writer.add_delete(&path, None),
            }
        })
        .and_then(|()| match extra {
            Some((path, data)) => writer.add_set_data(path, data, None),
            None => Ok(()),
        });
    let carries_extra = extra.is_some();
    let sent = added.map(|()| {
        for op in &batch {
            conflicts.expect_echo(join(base, op.rel()));
        }
        writer.commit()
    });
    async move {
        // The extra op's stat carries the transaction's zxid in the target.
        let result = match sent {
            Err(e) => Err(e),
            Ok(fut) => fut.await.map_err(fenced_error).map(|results| match results.last() {
                Some(MultiWriteResult::SetData { stat }) if carries_extra => Some(stat.mzxid),
                _ => None,
            }),
        };
        if result.is_err() {
            for op in &batch {
                conflicts.cancel_echo(&join(base, op.rel()));
            }
        }
        (batch, result)
    }
}

/// How a node of `kind` is created in the target.
fn create_options(kind: NodeKind, acl: &[Acl]) -> CreateOptions<'_> {
    match kind {
        NodeKind::Persistent => CreateMode::Persistent.with_acls(Acls::new(acl)),
        NodeKind::Ephemeral => CreateMode::Ephemeral.with_acls(Acls::new(acl)),
    }
}

/// The ACL each node of a write is created with: the source node's under
/// `acls = "copy"` (read just before the write), else the target
/// ensemble's configured ACL.
struct AclPlan {
    default: Arc<Vec<Acl>>,
    copied: HashMap<String, Vec<Acl>>,
}

impl AclPlan {
    fn of(&self, rel: &str) -> &[Acl] {
        self.copied.get(rel).unwrap_or(&self.default)
    }
}

/// Sets (or creates) `path` in a `multi` fenced by the lease.
async fn fenced_put(lease: &Lease, path: &str, data: &[u8], acl: &[Acl], likely_missing: bool) -> Result<i64, Error> {
    // Creating: a create followed by a set of the same node in one `multi`,
    // whose set's stat carries the transaction's zxid (a create's stat in a
    // multi is unreliable on servers before 3.8.2), in one round trip.
    let put = |create: bool| {
        let mut writer = lease.writer();
        let create_op = match create {
            true => writer.add_create(path, data, &persistent(acl)),
            false => Ok(()),
        };
        create_op
            .and_then(|()| writer.add_set_data(path, data, None))
            .map(|()| writer)
    };
    let zxid = |results: Vec<MultiWriteResult>| match results.last() {
        Some(MultiWriteResult::SetData { stat }) => stat.mzxid,
        _ => -1,
    };
    match put(likely_missing)?.commit().await.map_err(fenced_error) {
        Ok(results) => Ok(zxid(results)),
        Err(Error::NoNode | Error::NodeExists) => Ok(zxid(put(!likely_missing)?.commit().await.map_err(fenced_error)?)),
        Err(e) => Err(e),
    }
}

/// A failed lease check means the lease is gone: reported as
/// `RuntimeInconsistent`, as the crate's own lock-fenced writes do.
fn fenced_error(e: CheckWriteError) -> Error {
    match e {
        CheckWriteError::CheckFailed { .. } => Error::RuntimeInconsistent,
        CheckWriteError::RequestFailed { source } | CheckWriteError::OperationFailed { source, .. } => source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rels(batches: &[Vec<Op>]) -> Vec<std::collections::BTreeSet<String>> {
        batches
            .iter()
            .map(|b| b.iter().map(|o| o.rel().to_string()).collect())
            .collect()
    }

    #[test]
    fn batches_respect_ops_and_bytes() {
        let limits = Limits {
            batch_max_ops: 3,
            batch_max_bytes: 2000,
            max_in_flight: 1,
            verify_reads_per_s: 1,
        };
        let ops: Vec<Op> = (0..7)
            .map(|i| Op::Create {
                rel: format!("n{i}"),
                data: vec![0; 10],
                kind: NodeKind::Persistent,
            })
            .collect();
        let b = batch(ops, 5, limits);
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), vec![3, 3, 1]);
        let big: Vec<Op> = (0..3)
            .map(|i| Op::Set {
                rel: format!("b{i}"),
                data: vec![0; 1500],
            })
            .collect();
        let b = batch(big, 5, limits);
        assert_eq!(b.len(), 3, "each 1.5 KB op alone under a 2 KB cap: {:?}", rels(&b));
    }
}
