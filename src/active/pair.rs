//! The worker of one member pair (from → to) of an active-active route: it
//! carries the changes made in `from` into `to`.
//!
//! Like a mirror worker it is level-triggered: `from`'s watch marks paths
//! dirty, and each dirty path is reconciled from both members' current
//! state (`apply`); a full pass over both members starts every lead and
//! repeats every `verify_interval_s`. Its lease lives in `to` (so the
//! instance that can write there leads) and fences every write there; its
//! checkpoint (`to`, keyed by `from`) says how far `from`'s changes have
//! arrived, for the lag and `zkbridge status`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use futures::FutureExt;
use prometheus::{IntCounter, IntGauge};
use tokio::time::Instant;
use tracing::{info, warn};
use zookeeper_client::{Client, EventType, PersistentWatcher, WatchedEvent};

use super::decide::Step;
use super::outcome::{Applied, PathError};
use super::records::{self, Side};
use crate::checkpoint::{ensemble_id, persistent};
use crate::config::{pair_label, ActiveRoute, Endpoint};
use crate::lease::Lease;
use crate::metrics::Metrics;
use crate::path::{join, relative};
use crate::shutdown::Shutdown;
use crate::worker::{Leadership, Limits, StatusTx};
use crate::zk::{Ensemble, SessionChange, SessionTracker};
use crate::znodes::{
    checkpoint_path, conflicts_dir, heartbeat_path, leases_dir, now_ms, origin_records_root, Checkpoint, Heartbeat,
    LeaseRecord,
};

/// How long a path refused by a member (no permission, say) waits.
const PARK_FOR: Duration = Duration::from_secs(30);
/// How long a delete waits for the destination's children to go first.
const DEFER_FOR: Duration = Duration::from_millis(200);
/// Tries a path still moving gets before it is parked: 10 s of waiting.
const DEFERS: u32 = 50;

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

    fn error(&self, kind: &str) {
        let [route, pair] = &self.labels;
        self.metrics.errors.with_label_values(&[route, pair, kind]).inc();
    }

    fn resync(&self, reason: &str) {
        let [route, pair] = &self.labels;
        self.metrics.resyncs.with_label_values(&[route, pair, reason]).inc();
    }
}

/// A dirty path: when to try it. (A delete with no record is stamped by
/// the member's `stamp::Stamper`, which knows the member's ephemerals; the
/// pair stamps only deletes its records prove.)
#[derive(Debug, Clone, Default)]
struct Mark {
    not_before: Option<Instant>,
    /// Refused by a member: reported, and not holding the checkpoint back.
    parked: bool,
    /// Tries that found the path still moving (see [`DEFERS`]).
    defers: u32,
}

/// Carries one member's changes into another.
pub struct Pair {
    pub(super) route: Arc<ActiveRoute>,
    pub(super) from: Endpoint,
    pub(super) to: Endpoint,
    pub(super) from_zk: Ensemble,
    pub(super) to_zk: Ensemble,
    /// Where each member keeps the route's origin records.
    pub(super) from_records: String,
    pub(super) to_records: String,
    /// The destination's conflict log.
    pub(super) conflicts_dir: String,
    pub(super) metrics: PairMetrics,
    /// What this pair publishes about itself (the only writer).
    pub(super) status: StatusTx,
    meta: String,
    lease_record: LeaseRecord,
    limits: Limits,
    heartbeat_interval: Duration,
    /// The conflicts counted when the destination's log was last trimmed.
    trimmed_at: std::sync::atomic::AtomicU64,
    /// See [`Filling`]; learnt at each lead, updated by the checkpoints.
    first: std::sync::Mutex<Filling>,
}

/// What the pair may do while a member is being filled, learnt from the
/// pairs' checkpoints — kept in ZooKeeper, so it holds across restarts and
/// instances.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Filling {
    /// The destination holds no checkpoint of this pair while the pair from
    /// it has run before: it lost its data (rebuilt). Its own changes held
    /// here are given back (`Step::BackToOrigin`) until this pair's first
    /// checkpoint there, which follows a pass with nothing left to do.
    pub refill: bool,
    /// The source holds the checkpoint of the pair into it (to → from): it
    /// has been filled since its ensemble was (re)built, so a node of its
    /// own that it no longer has is a delete. Until then its absences prove
    /// nothing and are not stamped.
    pub infer_deletes: bool,
}

/// Why a lead ended.
enum End {
    Shutdown,
    LeaseLost,
    /// The source member's session ended or a member failed as a whole:
    /// lead again (a new full pass).
    Restart(String),
}

/// The pieces a pair is built from.
pub struct PairWiring {
    pub route: Arc<ActiveRoute>,
    pub from: (Endpoint, Ensemble),
    pub to: (Endpoint, Ensemble),
    pub meta: String,
    pub lease_record: LeaseRecord,
    pub limits: Limits,
    pub heartbeat_interval: Duration,
    pub metrics: Arc<Metrics>,
    pub status: StatusTx,
}

impl Pair {
    pub fn new(w: PairWiring) -> Pair {
        let (from, from_zk) = w.from;
        let (to, to_zk) = w.to;
        let name = w.route.name().to_string();
        Pair {
            metrics: PairMetrics::new(w.metrics, &name, &pair_label(&from.ensemble, &to.ensemble)),
            from_records: origin_records_root(&w.meta, &name),
            to_records: origin_records_root(&w.meta, &name),
            conflicts_dir: conflicts_dir(&w.meta, &name),
            route: w.route,
            from,
            to,
            from_zk,
            to_zk,
            status: w.status,
            meta: w.meta,
            lease_record: w.lease_record,
            limits: w.limits,
            heartbeat_interval: w.heartbeat_interval,
            trimmed_at: Default::default(),
            first: Default::default(),
        }
    }

    /// Competes for the pair's lease and leads while it holds it, until
    /// shutdown.
    pub async fn run(self, mut shutdown: Shutdown) {
        let dir = leases_dir(&self.meta, self.route.name(), &self.from.ensemble);
        let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        while !shutdown.is_requested() {
            let lease = tokio::select! {
                lease = Lease::acquire(&self.to_zk, &dir, &self.lease_record, None) => lease,
                _ = shutdown.requested() => break,
            };
            info!(route = self.route.name(), from = %self.from, to = %self.to, "leading member pair");
            self.metrics.leader.set(1);
            self.status.update(|s| {
                s.leadership = Leadership::Leading { since_ms: now_ms() };
                s.initial_sync_done = false;
            });
            let end = self.lead(&lease, &mut shutdown).await;
            self.metrics.leader.set(0);
            self.status.update(|s| {
                s.leadership = Leadership::Waiting { behind: None };
                s.initial_sync_done = false;
            });
            match end {
                End::Shutdown => {
                    lease.release().await;
                    break;
                }
                End::LeaseLost => warn!(route = self.route.name(), from = %self.from, to = %self.to, "lease lost"),
                End::Restart(why) => {
                    warn!(route = self.route.name(), from = %self.from, to = %self.to, error = %why, "member pair restarts");
                    self.status.update(|s| s.last_error = Some(why.clone()));
                    lease.publish_error(Some(why)).await;
                    lease.release().await;
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay()) => {},
                        _ = shutdown.requested() => break,
                    }
                }
            }
        }
    }

    /// One lead: prepare both members, a full pass, then carry every
    /// change the watch reports until the lease, the session or the
    /// process ends. Kept whole: the loop's state (dirty paths, whether a
    /// full pass is owed, the next heartbeat) and its one `select!` are read
    /// together, and each step it takes is a named method.
    async fn lead(&self, lease: &Lease, shutdown: &mut Shutdown) -> End {
        let session = tokio::select! {
            s = self.from_zk.session() => s,
            _ = shutdown.requested() => return End::Shutdown,
        };
        let from = &session.client;
        let lost = lease.lost();
        tokio::pin!(lost);
        let prepared = tokio::select! {
            p = self.prepare(lease, from) => p,
            _ = &mut lost => return End::LeaseLost,
            _ = shutdown.requested() => return End::Shutdown,
        };
        let (from_id, data_watch, record_watch) = match prepared {
            Ok(p) => p,
            Err(e) => return End::Restart(e.to_string()),
        };
        match self.filling(lease.client(), from).await {
            Ok(first) => *self.first.lock().unwrap() = first,
            Err(e) => return End::Restart(e.to_string()),
        }
        let mut watches = Watches {
            data: data_watch,
            records: record_watch,
            tracker: SessionTracker::default(),
        };
        let mut dirty: BTreeMap<String, Mark> = BTreeMap::new();
        let mut full_pass = true;
        // Due at once: the first checkpoint follows the first pass.
        let mut next_beat = Instant::now();
        let verify_every = Duration::from_secs(self.route.config.verify_interval_s.max(1));
        let mut verify = tokio::time::interval_at(Instant::now() + verify_every, verify_every);
        verify.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Everything the watches hold now is marked before work starts,
            // so that one pass covers a burst.
            let drained = watches.drain_into(self, &mut dirty);
            if drained.ended {
                return End::Restart(format!("{} session ended", self.from.ensemble));
            }
            full_pass |= drained.away;
            let due = dirty.values().any(|m| m.not_before.is_none_or(|t| t <= Instant::now()));
            let beat = !full_pass && Instant::now() >= next_beat;
            if full_pass || due || beat {
                let step = async {
                    if beat {
                        next_beat = Instant::now() + self.heartbeat_interval;
                        return self
                            .checkpoint(lease, from, &from_id, &mut watches, &mut dirty)
                            .await
                            .map(|d| d.away);
                    }
                    if full_pass {
                        self.metrics.resync(if self.status.get().initial_sync_done {
                            "verify"
                        } else {
                            "startup"
                        });
                        return self.pass(lease, from, &mut dirty).await.map(|()| false);
                    }
                    self.work(lease, from, &mut dirty).await.map(|()| false)
                };
                let done = tokio::select! {
                    r = step => r,
                    _ = &mut lost => return End::LeaseLost,
                    _ = shutdown.requested() => return End::Shutdown,
                };
                match done {
                    Ok(away) => {
                        if full_pass && !beat {
                            self.status.update(|s| s.initial_sync_done = true);
                        }
                        full_pass = (full_pass && beat) || away;
                    }
                    Err(PathError::LeaseLost) => return End::LeaseLost,
                    Err(e) => return End::Restart(e.to_string()),
                }
                self.metrics.pending.set(dirty.len() as i64);
                continue;
            }
            let retry_at = dirty.values().filter_map(|m| m.not_before).min();
            tokio::select! {
                event = watches.data.changed() => {
                    if watches.tracker_marks(self, &event, &mut dirty) { full_pass = true; }
                    if tracker_ended(&event) { return End::Restart(format!("{} session ended", self.from.ensemble)); }
                }
                event = watches.records.changed() => {
                    if watches.tracker_marks(self, &event, &mut dirty) { full_pass = true; }
                    if tracker_ended(&event) { return End::Restart(format!("{} session ended", self.from.ensemble)); }
                }
                _ = tokio::time::sleep_until(next_beat) => {}
                _ = verify.tick(), if self.route.config.verify_interval_s > 0 => full_pass = true,
                _ = sleep_until(retry_at) => {}
                _ = &mut lost => return End::LeaseLost,
                _ = shutdown.requested() => return End::Shutdown,
            }
        }
    }

    /// Makes sure both members have what the pair writes to (the member
    /// roots, the record roots, the destination's conflict log) and arms
    /// the source member's watches (before the first pass reads, so that
    /// nothing changed during it goes unseen).
    async fn prepare(
        &self,
        lease: &Lease,
        from: &Client,
    ) -> Result<(String, PersistentWatcher, PersistentWatcher), zookeeper_client::Error> {
        let to = lease.client();
        let mk = |client: &Client, path: String, acl: Arc<Vec<zookeeper_client::Acl>>| {
            let client = client.clone();
            async move {
                match client.mkdir(&path, &persistent(&acl)).await {
                    Ok(()) | Err(zookeeper_client::Error::NodeExists) => Ok(()),
                    Err(e) => Err(e),
                }
            }
        };
        mk(from, self.from.path.clone(), self.from_zk.acl.clone()).await?;
        mk(to, self.to.path.clone(), self.to_zk.acl.clone()).await?;
        mk(from, self.from_records.clone(), self.from_zk.acl.clone()).await?;
        mk(to, self.to_records.clone(), self.to_zk.acl.clone()).await?;
        mk(to, self.conflicts_dir.clone(), self.to_zk.acl.clone()).await?;
        let id = ensemble_id(from, &self.meta, &self.from_zk.acl).await?;
        let data = crate::zk::watch_subtree(from, &self.from.path).await?;
        let records = crate::zk::watch_subtree(from, &self.from_records).await?;
        Ok((id, data, records))
    }

    pub(super) fn filling_now(&self) -> Filling {
        *self.first.lock().unwrap()
    }

    /// What the pair may do while a member is being filled (see
    /// [`Filling`]), from the two pairs' checkpoints.
    async fn filling(&self, to: &Client, from: &Client) -> Result<Filling, zookeeper_client::Error> {
        let mine = checkpoint_path(&self.meta, self.route.name(), &self.from.ensemble);
        let into_source = checkpoint_path(&self.meta, self.route.name(), &self.to.ensemble);
        // The pair into the source has run (its checkpoint is there): the
        // destination has been a member before, so a destination without
        // this pair's checkpoint lost its data. A route that is new has
        // neither, and nothing of a member's own to give back.
        let into_source_ran = from.check_stat(&into_source).await?.is_some();
        let filling = Filling {
            refill: into_source_ran && to.check_stat(&mine).await?.is_none(),
            infer_deletes: into_source_ran,
        };
        if !filling.infer_deletes {
            info!(route = self.route.name(), member = %self.from, "no checkpoint of the pair into this member yet (new or rebuilt): nodes missing there are not taken as deletes until it is filled");
        }
        Ok(filling)
    }

    /// Marks the path an event is about; `true` when the watch was away
    /// and a full pass must find what it missed.
    fn mark(&self, event: &WatchedEvent, dirty: &mut BTreeMap<String, Mark>, tracker: &mut SessionTracker) -> bool {
        if event.event_type == EventType::Session {
            return tracker.on(event.session_state) == SessionChange::Back;
        }
        let rel = relative(&self.from.path, &event.path).or_else(|| relative(&self.from_records, &event.path));
        let Some(rel) = rel else { return false };
        let mark = dirty.entry(rel.to_string()).or_default();
        mark.not_before = None;
        mark.parked = false;
        false
    }

    /// Reconciles the dirty paths that are due, parents before children,
    /// many at once within a level.
    async fn work(&self, lease: &Lease, from: &Client, dirty: &mut BTreeMap<String, Mark>) -> Result<(), PathError> {
        let now = Instant::now();
        let due: Vec<(String, Mark)> = dirty
            .iter()
            .filter(|(_, m)| m.not_before.is_none_or(|t| t <= now))
            .map(|(rel, m)| (rel.clone(), m.clone()))
            .collect();
        for (rel, _) in &due {
            dirty.remove(rel);
        }
        self.run_levels(lease, from, due, dirty).await
    }

    /// Reconciles `due`, parents before children, and then the deletes that
    /// waited for children, deepest first.
    async fn run_levels(
        &self,
        lease: &Lease,
        from: &Client,
        due: Vec<(String, Mark)>,
        dirty: &mut BTreeMap<String, Mark>,
    ) -> Result<(), PathError> {
        let mut deferred = Vec::new();
        for level in by_depth(due) {
            for (rel, mark, result) in self.reconcile_all(lease, from, level).await {
                match result {
                    Ok(Applied::Defer) => deferred.push((rel, mark)),
                    result => self.settle(rel, mark, result, dirty)?,
                }
            }
        }
        // Deletes that waited for their children, deepest first: the sweep
        // above has just deleted those.
        for level in by_depth(deferred).into_iter().rev() {
            for (rel, mark, result) in self.reconcile_all(lease, from, level).await {
                self.settle(rel, mark, result, dirty)?;
            }
        }
        Ok(())
    }

    /// Reconciles the paths of one level, many at once.
    async fn reconcile_all(
        &self,
        lease: &Lease,
        from: &Client,
        level: Vec<(String, Mark)>,
    ) -> Vec<(String, Mark, Result<Applied, PathError>)> {
        stream::iter(level)
            .map(|(rel, mark)| async move {
                let r = self.reconcile(lease, from, &rel).await;
                (rel, mark, r)
            })
            .buffer_unordered(self.limits.max_in_flight.max(1))
            .collect()
            .await
    }

    /// Puts a path's outcome where it belongs: done, back in the dirty set
    /// for later, or the error that ends the lead. A delete that keeps
    /// waiting for children the destination keeps (its own, or ephemerals)
    /// is parked after [`DEFERS`] tries, so that it holds back neither the
    /// checkpoint nor the loop.
    fn settle(
        &self,
        rel: String,
        mark: Mark,
        result: Result<Applied, PathError>,
        dirty: &mut BTreeMap<String, Mark>,
    ) -> Result<(), PathError> {
        let later = |after: Duration, parked: bool, defers: u32| Mark {
            not_before: Some(Instant::now() + after),
            parked,
            defers,
        };
        let put = match result {
            Ok(Applied::Done) => None,
            Ok(Applied::Defer) | Ok(Applied::Again) if mark.defers + 1 >= DEFERS => {
                warn!(route = self.route.name(), path = %join(&self.to.path, &rel), "path still moving (a delete waiting for children the destination keeps, or racing writes); retrying in 30s");
                self.status.update(|s| {
                    s.last_error = Some(format!("{rel}: waits for the destination's children or keeps racing"))
                });
                Some(later(PARK_FOR, true, 0))
            }
            Ok(Applied::Defer) | Ok(Applied::Again) => Some(later(DEFER_FOR, false, mark.defers + 1)),
            Err(e @ (PathError::Refused { .. } | PathError::TooLarge { .. })) => {
                warn!(route = self.route.name(), path = %join(&self.to.path, &rel), error = %e, "path refused; retrying in 30s");
                self.metrics.error(e.kind());
                self.status.update(|s| s.last_error = Some(format!("{rel}: {e}")));
                Some(later(PARK_FOR, true, 0))
            }
            Err(e) => {
                self.metrics.error(e.kind());
                return Err(e);
            }
        };
        if let Some(put) = put {
            // A newer event for the path wins over the retry time.
            dirty.entry(rel).or_insert(put);
        }
        Ok(())
    }

    /// The full pass: both members' subtrees and records are scanned, and
    /// every path either holds is decided; tombstones older than
    /// `tombstone_ttl_s` are collected in the destination.
    async fn pass(&self, lease: &Lease, from: &Client, dirty: &mut BTreeMap<String, Mark>) -> Result<(), PathError> {
        let to = lease.client();
        let inflight = self.limits.max_in_flight.max(1);
        let descend = |rel: &str| !self.route.filter.excluded(rel);
        let scan = |client: &Client, base: String, member: String| {
            let client = client.clone();
            async move {
                crate::tree::scan(&client, &base, inflight, descend)
                    .await
                    .map_err(|e| self.error_of(&member, e))
            }
        };
        let (fe, te) = (self.from.ensemble.clone(), self.to.ensemble.clone());
        let (xd, xr, yd, yr) = futures::try_join!(
            scan(from, self.from.path.clone(), fe.clone()),
            scan(from, self.from_records.clone(), fe),
            scan(to, self.to.path.clone(), te.clone()),
            scan(to, self.to_records.clone(), te),
        )?;
        let mut rels: Vec<String> = xd
            .keys()
            .chain(xr.keys())
            .chain(yd.keys())
            .chain(yr.keys())
            .cloned()
            .collect();
        rels.sort_unstable();
        rels.dedup();
        let (xd, xr, yd, yr) = (&xd, &xr, &yd, &yr);
        // The scans are hints: the four were read at different moments, and
        // only what they show as different is read again, path by path, and
        // decided from those reads.
        let differ: Vec<(String, Mark)> = rels
            .into_iter()
            .filter(|rel| {
                let unreadable = [xd.get(rel), yd.get(rel)].iter().flatten().any(|n| n.is_unreadable());
                let (x, y) = (Side::from_scans(xd, xr, rel), Side::from_scans(yd, yr, rel));
                !unreadable && !matches!(self.step_for(rel, &x, &y).0, Step::Nothing | Step::BackToOrigin(_))
            })
            .map(|rel| (rel, Mark::default()))
            .collect();
        self.run_levels(lease, from, differ, dirty).await?;
        self.collect_tombstones(lease, yd, yr).await
    }

    /// Deletes the destination's tombstones older than `tombstone_ttl_s`
    /// (deepest first: a record znode with records below it stays).
    async fn collect_tombstones(
        &self,
        lease: &Lease,
        data: &crate::tree::Tree,
        recs: &crate::tree::Tree,
    ) -> Result<(), PathError> {
        let ttl_ms = (self.route.config.tombstone_ttl_s as i64).saturating_mul(1000);
        let now = now_ms();
        for (rel, _) in recs.iter().rev() {
            let Some(version) = records::collectable(recs, data, rel, now, ttl_ms) else {
                continue;
            };
            let mut writer = lease.writer();
            writer.add_delete(&join(&self.to_records, rel), Some(version))?;
            match writer.commit().await {
                Ok(_) => {}
                Err(zookeeper_client::CheckWriteError::CheckFailed { .. }) => return Err(PathError::LeaseLost),
                // Changed or gone since the scan: the next pass decides.
                Err(_) => {}
            }
        }
        Ok(())
    }

    pub(super) fn error_of(&self, member: &str, e: zookeeper_client::Error) -> PathError {
        let member = member.to_string();
        if e == zookeeper_client::Error::RuntimeInconsistent {
            return PathError::LeaseLost;
        }
        use zookeeper_client::Error as E;
        if crate::zk::is_transient(&e) || matches!(e, E::SessionExpired | E::ClientClosed) {
            PathError::Interrupted { member, source: e }
        } else {
            PathError::Refused { member, source: e }
        }
    }

    /// Writes the source member's heartbeat, carries every change made
    /// before it, and then records in the destination that the pair has
    /// caught up to it: the heartbeat's zxid and time (the lag counts from
    /// that time). Events are delivered before the reply to a later
    /// write on the same session, so the heartbeat's reply means every
    /// earlier change is marked.
    async fn checkpoint(
        &self,
        lease: &Lease,
        from: &Client,
        from_id: &str,
        watches: &mut Watches,
        dirty: &mut BTreeMap<String, Mark>,
    ) -> Result<Drained, PathError> {
        let ts_ms = now_ms();
        let beat = Heartbeat {
            bridge: self.lease_record.instance.clone(),
            ts_ms,
        };
        let path = heartbeat_path(&self.meta, self.route.name());
        let zxid = crate::checkpoint::put_json(from, &path, &beat, &self.from_zk.acl)
            .await
            .map_err(|e| self.error_of(&self.from.ensemble, e))?;
        let drained = watches.drain_into(self, dirty);
        if drained.ended || drained.away {
            // What the watch missed is not covered: no checkpoint.
            return Ok(drained);
        }
        self.work(lease, from, dirty).await?;
        if dirty.values().any(|m| !m.parked) {
            return Ok(drained);
        }
        let checkpoint = Checkpoint {
            version: 1,
            source_ensemble_id: from_id.to_string(),
            source_zxid: zxid,
            heartbeat_ts_ms: ts_ms,
            bridge: self.lease_record.instance.clone(),
            updated_ms: now_ms(),
        };
        let path = checkpoint_path(&self.meta, self.route.name(), &self.from.ensemble);
        let data = serde_json::to_vec(&checkpoint).expect("JSON of a plain struct");
        let put = |create: bool| {
            let mut writer = lease.writer();
            if create {
                writer.add_create(&path, &data, &persistent(&self.to_zk.acl))?;
            } else {
                writer.add_set_data(&path, &data, None)?;
            }
            Ok::<_, zookeeper_client::Error>(writer)
        };
        let mut result = put(false)?.commit().await;
        if let Err(zookeeper_client::CheckWriteError::OperationFailed {
            source: zookeeper_client::Error::NoNode,
            ..
        }) = result
        {
            if let Some(dir) = crate::path::parent_absolute(&path) {
                let _ = lease.client().mkdir(dir, &persistent(&self.to_zk.acl)).await;
            }
            result = put(true)?.commit().await;
        }
        match result {
            Ok(_) => {
                self.trim_conflicts(lease).await;
                self.metrics.checkpoint_zxid.set(zxid);
                self.status.update(|s| {
                    s.checkpoint = Some(checkpoint);
                    if !dirty.values().any(|m| m.parked) {
                        s.last_error = None;
                    }
                });
                self.after_checkpoint(from).await;
                Ok(drained)
            }
            Err(zookeeper_client::CheckWriteError::CheckFailed { .. }) => Err(PathError::LeaseLost),
            Err(e) => Err(self.error_of(&self.to.ensemble, e.into())),
        }
    }
}

impl Pair {
    /// After a checkpoint: this pair has filled its destination once, and
    /// the pair into the source may have filled it meanwhile.
    async fn after_checkpoint(&self, from: &Client) {
        let infer = self.filling_now().infer_deletes;
        let into_source = checkpoint_path(&self.meta, self.route.name(), &self.to.ensemble);
        let filled = infer || matches!(from.check_stat(&into_source).await, Ok(Some(_)));
        let mut filling = self.first.lock().unwrap();
        filling.refill = false;
        filling.infer_deletes = filled;
    }

    /// Keeps the destination's conflict log bounded, once new entries came.
    async fn trim_conflicts(&self, lease: &Lease) {
        use std::sync::atomic::Ordering;
        let counted = self.metrics.lww_lost.get();
        if counted == self.trimmed_at.load(Ordering::Relaxed) {
            return;
        }
        match super::conflicts::trim(lease.client(), &self.meta, self.route.name()).await {
            Ok(_) => self.trimmed_at.store(counted, Ordering::Relaxed),
            Err(e) => {
                warn!(route = self.route.name(), member = %self.to.ensemble, error = %e, "cannot trim the conflict log; trying again at the next checkpoint")
            }
        }
    }
}

/// The source member's two watches (its subtree, its records) and their
/// session, owned by one lead.
struct Watches {
    data: PersistentWatcher,
    records: PersistentWatcher,
    tracker: SessionTracker,
}

/// What draining the watches found besides paths.
#[derive(Debug, Clone, Copy, Default)]
struct Drained {
    /// The session was away: changes meanwhile sent no event, a full pass
    /// must find them.
    away: bool,
    /// The session ended: the lead starts over.
    ended: bool,
}

impl Watches {
    /// Marks every path the watches report now, without waiting.
    fn drain_into(&mut self, pair: &Pair, dirty: &mut BTreeMap<String, Mark>) -> Drained {
        let mut drained = Drained::default();
        for watcher in [&mut self.data, &mut self.records] {
            while let Some(event) = watcher.changed().now_or_never() {
                drained.away |= pair.mark(&event, dirty, &mut self.tracker);
                if tracker_ended(&event) {
                    drained.ended = true;
                    return drained;
                }
            }
        }
        drained
    }

    /// Marks one event's path; `true` when the session was away.
    fn tracker_marks(&mut self, pair: &Pair, event: &WatchedEvent, dirty: &mut BTreeMap<String, Mark>) -> bool {
        pair.mark(event, dirty, &mut self.tracker)
    }
}

fn tracker_ended(event: &WatchedEvent) -> bool {
    event.event_type == EventType::Session && event.session_state.is_terminated()
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Paths grouped by depth, shallowest first: a parent is written before
/// its children, and the paths of one level go out together.
fn by_depth<T>(paths: Vec<(String, T)>) -> Vec<Vec<(String, T)>> {
    let mut levels: BTreeMap<usize, Vec<(String, T)>> = BTreeMap::new();
    for (rel, t) in paths {
        let depth = if rel.is_empty() {
            0
        } else {
            rel.matches('/').count() + 1
        };
        levels.entry(depth).or_default().push((rel, t));
    }
    levels.into_values().collect()
}
