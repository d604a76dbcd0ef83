//! The per-(route, target) worker: takes dirty paths from its queue, reads
//! the source's current state and makes the target match.
//!
//! Each target has its own worker and queue, so a slow or unreachable target
//! never stalls the others. Every step is idempotent (read current state,
//! write only the difference), which is what makes coalesced events, retries
//! after connection loss and restarts safe.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{FuturesOrdered, StreamExt};
use prometheus::{Histogram, IntCounter, IntGauge};
use tokio::sync::watch;
use tracing::{debug, info, warn, Instrument};
use zookeeper_client::{Acls, Client, CreateMode, CreateOptions, Error, MultiWriteError};

use crate::checkpoint::{
    checkpoint_path, ensemble_id, get_json, now_ms, progress_path, put_json, Checkpoint, Progress,
};
use crate::config::{BridgeConfig, Endpoint, Route};
use crate::metrics::Metrics;
use crate::plan::{self, Op};
use crate::queue::{Dirty, ResyncReason, TargetQueue, Work};
use crate::tree::{self, join, parent, NodeState};
use crate::zk::{error_kind, is_transient, Ensemble};

/// How long a path that failed for a lasting reason (no permission, data the
/// target refuses) waits before it is tried again.
const PARK_FOR: Duration = Duration::from_secs(30);

const CREATE_OPTIONS: CreateOptions<'static> = CreateMode::Persistent.with_acls(Acls::anyone_all());

/// What `/status` and `/readyz` need to know about a worker.
#[derive(Default)]
pub struct WorkerStatus {
    pub initial_sync_done: AtomicBool,
    pub last_error: Mutex<Option<String>>,
    /// The last checkpoint this worker committed.
    pub checkpoint: Mutex<Option<Checkpoint>>,
}

/// Limits for writing to a target.
#[derive(Clone, Copy)]
pub struct Limits {
    pub batch_max_ops: usize,
    pub batch_max_bytes: usize,
    pub max_in_flight: usize,
}

impl From<&BridgeConfig> for Limits {
    fn from(b: &BridgeConfig) -> Self {
        Limits {
            batch_max_ops: b.batch_max_ops,
            batch_max_bytes: b.batch_max_bytes,
            max_in_flight: b.max_in_flight,
        }
    }
}

/// Who this instance is and where its own znodes live.
#[derive(Clone)]
pub struct Identity {
    pub bridge_id: String,
    pub meta_path: String,
}

/// Metric handles of one route/target, resolved once.
struct TargetMetrics {
    creates: IntCounter,
    sets: IntCounter,
    deletes: IntCounter,
    batches: IntCounter,
    latency: Histogram,
    mirrored: IntGauge,
    deletes_blocked: IntCounter,
    checkpoint_zxid: IntGauge,
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
            batches: metrics.apply_batches.with_label_values(&[route, target]),
            latency: metrics.replication_latency.with_label_values(&[route, target]),
            mirrored: metrics.mirrored_nodes.with_label_values(&[route, target]),
            deletes_blocked: metrics.deletes_blocked.with_label_values(&[route, target]),
            checkpoint_zxid: metrics.checkpoint_zxid.with_label_values(&[route, target]),
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
}

/// Why an attempt must be retried later as a whole.
#[derive(Debug, thiserror::Error)]
#[error("{side} ensemble: {source}")]
struct Interrupted {
    side: &'static str,
    #[source]
    source: Error,
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
        Worker {
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

    /// Runs until shutdown. A unit of work in progress when shutdown comes
    /// finishes (its writes are idempotent either way).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let span = tracing::info_span!("worker", route = %self.route.name(), target = %self.target.ensemble);
        async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                if *shutdown.borrow() {
                    break;
                }
                self.maybe_checkpoint().await;
                let Some(work) = self.queue.take(self.limits.batch_max_ops * 4) else {
                    let parked = self.queue.next_parked_due();
                    tokio::select! {
                        _ = self.queue.notified() => {},
                        _ = sleep_until(parked) => {},
                        _ = shutdown.changed() => {},
                    }
                    continue;
                };
                let result = match work {
                    Work::Resync(reason) => self.resync(reason).await.map_err(|e| (e, Some(reason), Vec::new())),
                    Work::Paths(paths) => self.reconcile(paths).await.map_err(|(e, p)| (e, None, p)),
                };
                self.queue.settle();
                match result {
                    Ok(()) => {
                        backoff = Duration::from_millis(100);
                        *self.status.last_error.lock().unwrap() = None;
                    }
                    Err((e, reason, paths)) => {
                        warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "mirroring interrupted; will retry");
                        self.metrics.error(error_kind(&e.source));
                        *self.status.last_error.lock().unwrap() = Some(e.to_string());
                        match reason {
                            Some(reason) => self.queue.request_resync(reason),
                            None => self.queue.requeue(paths),
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {},
                            _ = shutdown.changed() => {},
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
            info!("worker stopped");
        }
        .instrument(span)
        .await
    }

    async fn clients(&self) -> (Client, Client) {
        (
            self.source_zk.session().await.client,
            self.target_zk.session().await.client,
        )
    }

    /// Commits the newest fully applied heartbeat barrier as the checkpoint
    /// (target) and as progress (source). Written only after the data it
    /// covers, so a crash can leave the checkpoint behind the data, never
    /// ahead of it.
    async fn maybe_checkpoint(&self) {
        let Some(barrier) = self.queue.reached_barrier() else {
            return;
        };
        let last = self
            .status
            .checkpoint
            .lock()
            .unwrap()
            .as_ref()
            .map(|c| c.source_zxid)
            .unwrap_or(-1);
        if barrier.zxid <= last {
            return;
        }
        let Some(source_id) = self.source_id.lock().unwrap().clone() else {
            return;
        };
        let checkpoint = Checkpoint {
            version: 1,
            source_ensemble_id: source_id,
            source_zxid: barrier.zxid,
            heartbeat_ts_ms: barrier.ts_ms,
            bridge: self.identity.bridge_id.clone(),
            updated_ms: now_ms(),
        };
        let (src, tgt) = self.clients().await;
        let (route, target) = (self.route.name(), self.target.ensemble.as_str());
        let meta = &self.identity.meta_path;
        if let Err(e) = put_json(&tgt, &checkpoint_path(meta, route, target), &checkpoint).await {
            warn!(error = %e, "cannot write checkpoint; the next heartbeat retries");
            self.metrics.error(error_kind(&e));
            return;
        }
        self.metrics.checkpoint_zxid.set(barrier.zxid);
        *self.status.checkpoint.lock().unwrap() = Some(checkpoint);
        let progress = Progress {
            source_zxid: barrier.zxid,
            ts_ms: barrier.ts_ms,
        };
        if let Err(e) = put_json(&src, &progress_path(meta, route, target), &progress).await {
            debug!(error = %e, "cannot write progress to the source; the next checkpoint retries");
        }
    }

    /// Full scan of the source; then either a full scan of the target and
    /// the plan that makes them equal, or — with a valid checkpoint C — a
    /// resume that reads and writes the target only where the source changed
    /// after C.
    async fn resync(&self, reason: ResyncReason) -> Result<(), Interrupted> {
        let started = Instant::now();
        let (src, tgt) = self.clients().await;
        let route = &self.route;
        let meta = &self.identity.meta_path;
        let source_id = ensemble_id(&src, meta)
            .await
            .map_err(|source| Interrupted { side: "source", source })?;
        ensemble_id(&tgt, meta)
            .await
            .map_err(|source| Interrupted { side: "target", source })?;
        *self.source_id.lock().unwrap() = Some(source_id.clone());
        let stored: Option<Checkpoint> = get_json(&tgt, &checkpoint_path(meta, route.name(), &self.target.ensemble))
            .await
            .map_err(|source| Interrupted { side: "target", source })?;
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
        if self.status.checkpoint.lock().unwrap().is_none() && !mismatch {
            if let Some(c) = &stored {
                self.metrics.checkpoint_zxid.set(c.source_zxid);
                *self.status.checkpoint.lock().unwrap() = Some(c.clone());
            }
        }

        let source = tree::scan(&src, &route.source.path, self.limits.max_in_flight, |rel| {
            !route.filter.excluded(rel)
        })
        .await
        .map_err(|source| Interrupted { side: "source", source })?;
        let mut ops = match resume_from {
            Some(c) if !source.is_empty() => self.resume_plan(&tgt, &source, c).await?,
            _ => {
                let target = tree::scan(&tgt, &self.target.path, self.limits.max_in_flight, |rel| {
                    !route.filter.excluded(rel)
                })
                .await
                .map_err(|source| Interrupted { side: "target", source })?;
                plan::plan(route, &source, &target)
            }
        };
        if source.is_empty() && !route.config.allow_root_delete {
            let held = ops.iter().filter(|o| matches!(o, Op::Delete { .. })).count();
            if held > 0 {
                warn!(
                    source = %route.source,
                    held_deletes = held,
                    "source root is missing: holding every delete in the target (allow_root_delete = false)"
                );
                self.metrics.deletes_blocked.inc_by(held as u64);
                ops.retain(|o| !matches!(o, Op::Delete { .. }));
            }
        }
        if ops
            .first()
            .is_some_and(|o| matches!(o, Op::Create { rel, .. } if rel.is_empty()))
        {
            self.ensure_target_parent(&tgt).await?;
        }
        let planned = ops.len();
        if resume_from.is_some() {
            self.metrics.resume_writes.inc_by(planned as u64);
        }
        let since = Instant::now();
        let dirty = BTreeMap::new();
        self.write(&tgt, ops, &dirty, since).await?;
        let mirrored = source
            .iter()
            .filter(|(rel, n)| plan::is_mirrored(route, rel, n))
            .count();
        self.metrics.mirrored.set(mirrored as i64);
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let how = if resume_from.is_some() {
            "resumed from checkpoint"
        } else {
            "full"
        };
        if !self.status.initial_sync_done.swap(true, Ordering::Relaxed) {
            info!(nodes = mirrored, ops = planned, elapsed_ms, how, "initial sync done");
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

        let mut upserts = Vec::new();
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
        let Some(parent) = self
            .target
            .path
            .rsplit_once('/')
            .map(|(p, _)| p)
            .filter(|p| !p.is_empty())
        else {
            return Ok(());
        };
        match tgt.mkdir(parent, &CREATE_OPTIONS).await {
            Ok(()) | Err(Error::NodeExists) => Ok(()),
            Err(source) => Err(Interrupted { side: "target", source }),
        }
    }

    /// Reconciles a batch of dirty paths to the source's current state.
    async fn reconcile(&self, paths: Vec<(String, Dirty)>) -> Result<(), (Interrupted, Vec<(String, Dirty)>)> {
        let (src, tgt) = self.clients().await;
        let rels: Vec<String> = paths.iter().map(|(r, _)| r.clone()).collect();
        let fail = |side, source, paths: &Vec<(String, Dirty)>| (Interrupted { side, source }, paths.clone());
        let source_nodes = tree::read_nodes(&src, &self.route.source.path, &rels, self.limits.max_in_flight)
            .await
            .map_err(|e| fail("source", e, &paths))?;
        let target_nodes = tree::read_nodes(&tgt, &self.target.path, &rels, self.limits.max_in_flight)
            .await
            .map_err(|e| fail("target", e, &paths))?;

        let mut upserts = Vec::new();
        let mut delete_roots = Vec::new();
        for (((rel, dirty), s), t) in paths.iter().zip(source_nodes).zip(target_nodes) {
            let s = s.map(|(data, stat)| NodeState {
                data,
                stat,
                children: Vec::new(),
            });
            let t = t.map(|(data, stat)| NodeState {
                data,
                stat,
                children: Vec::new(),
            });
            match plan::decide(&self.route, rel, s.as_ref(), t.as_ref(), dirty.scaffold) {
                Some(Op::Delete { .. }) if rel.is_empty() && !self.route.config.allow_root_delete => {
                    warn!(source = %self.route.source, "source root was deleted: keeping the target root (allow_root_delete = false)");
                    self.metrics.deletes_blocked.inc();
                }
                Some(Op::Delete { rel }) => delete_roots.push(rel),
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
        let ops: Vec<Op> = deletes.into_iter().chain(upserts).collect();
        self.write(&tgt, ops, &dirty, Instant::now())
            .await
            .map_err(|e| (e, paths))
    }

    /// Commits `ops` in pipelined `multi` batches bounded in ops and bytes.
    /// A batch refused for a node-level reason is retried op by op, so one
    /// bad node cannot hold back the others; connection-level failures abort
    /// the attempt for the caller to retry.
    async fn write(
        &self,
        tgt: &Client,
        ops: Vec<Op>,
        dirty: &BTreeMap<String, Dirty>,
        since: Instant,
    ) -> Result<(), Interrupted> {
        let base = self.target.path.as_str();
        let batches = batch(ops, base.len(), self.limits);
        let mut refused: Vec<Op> = Vec::new();
        let mut interrupted: Option<Error> = None;
        let mut in_flight = FuturesOrdered::new();
        let mut pending = batches.into_iter();
        loop {
            while in_flight.len() < self.limits.max_in_flight {
                let Some(batch) = pending.next() else { break };
                in_flight.push_back(commit(tgt, base, batch));
            }
            let Some((batch, result)) = in_flight.next().await else {
                break;
            };
            match result {
                Ok(()) => {
                    self.metrics.batches.inc();
                    for op in &batch {
                        self.metrics.committed(op);
                        let first_seen = dirty.get(op.rel()).map(|d| d.since).unwrap_or(since);
                        self.metrics.latency.observe(first_seen.elapsed().as_secs_f64());
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
        for op in refused {
            self.write_one(tgt, op, dirty, since).await?;
        }
        Ok(())
    }

    /// Applies one op alone and sorts out why it failed: races resolve by
    /// reconciling the path again, lasting failures park it.
    async fn write_one(
        &self,
        tgt: &Client,
        op: Op,
        dirty: &BTreeMap<String, Dirty>,
        since: Instant,
    ) -> Result<(), Interrupted> {
        let base = self.target.path.as_str();
        let rel = op.rel().to_string();
        let d = dirty.get(&rel).copied().unwrap_or(Dirty {
            since,
            scaffold: false,
            seq: 0,
        });
        match commit_single(tgt, base, &op).await {
            Ok(()) => {
                self.metrics.batches.inc();
                self.metrics.committed(&op);
                self.metrics.latency.observe(d.since.elapsed().as_secs_f64());
            }
            Err(Error::NoNode) if matches!(op, Op::Delete { .. }) => {}
            Err(Error::NoNode) if matches!(op, Op::Create { .. }) => {
                // The target lacks the parent: make it exist first.
                let p = parent(&rel).unwrap_or("").to_string();
                self.queue.requeue([(p, Dirty { scaffold: true, ..d }), (rel, d)]);
            }
            Err(Error::NoNode | Error::NodeExists | Error::NotEmpty) => self.queue.requeue([(rel, d)]),
            Err(e) if is_transient(&e) => {
                return Err(Interrupted {
                    side: "target",
                    source: e,
                })
            }
            Err(e) => {
                let path = join(base, &rel);
                warn!(%path, op = op.kind(), error = %e, code = error_kind(&e), "target refused a write; will retry in {}s", PARK_FOR.as_secs());
                self.metrics.error(error_kind(&e));
                *self.status.last_error.lock().unwrap() = Some(format!("{path}: {} refused: {e}", op.kind()));
                self.queue.park(rel, d, Instant::now() + PARK_FOR);
            }
        }
        Ok(())
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

/// Sends one batch; a batch of a single op goes as a plain request, so a
/// node near the 1 MiB limit is not pushed over it by `multi` framing.
fn commit<'a>(
    tgt: &'a Client,
    base: &'a str,
    batch: Vec<Op>,
) -> impl std::future::Future<Output = (Vec<Op>, Result<(), Error>)> + 'a {
    let prepared = if batch.len() == 1 {
        None
    } else {
        let mut writer = tgt.new_multi_writer();
        let added: Result<(), Error> = batch.iter().try_for_each(|op| {
            let path = join(base, op.rel());
            match op {
                Op::Create { data, .. } => writer.add_create(&path, data, &CREATE_OPTIONS),
                Op::Set { data, .. } => writer.add_set_data(&path, data, None),
                Op::Delete { .. } => writer.add_delete(&path, None),
            }
        });
        Some((added, writer.commit()))
    };
    async move {
        let result = match prepared {
            None => commit_single(tgt, base, &batch[0]).await,
            Some((Err(e), _)) => Err(e),
            Some((Ok(()), fut)) => fut.await.map(drop).map_err(|e| match e {
                MultiWriteError::RequestFailed { source } | MultiWriteError::OperationFailed { source, .. } => source,
            }),
        };
        (batch, result)
    }
}

async fn commit_single(tgt: &Client, base: &str, op: &Op) -> Result<(), Error> {
    let path = join(base, op.rel());
    match op {
        Op::Create { data, .. } => tgt.create(&path, data, &CREATE_OPTIONS).await.map(drop),
        Op::Set { data, .. } => tgt.set_data(&path, data, None).await.map(drop),
        Op::Delete { .. } => tgt.delete(&path, None).await,
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
        };
        let ops: Vec<Op> = (0..7)
            .map(|i| Op::Create {
                rel: format!("n{i}"),
                data: vec![0; 10],
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
