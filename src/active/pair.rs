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

use futures::FutureExt;
use tokio::time::Instant;
use tracing::{info, warn};
use zookeeper_client::{Client, EventType, PersistentWatcher, WatchedEvent};

use super::outcome::PathError;
use super::pair_metrics::PairMetrics;
use crate::checkpoint::{ensemble_id, ensure_path};
use crate::config::{pair_label, ActiveRoute, Endpoint};
use crate::lease::Lease;
use crate::metrics::Metrics;
use crate::path::relative;
use crate::shutdown::Shutdown;
use crate::worker::{Leadership, Limits, StatusTx};
use crate::zk::{Ensemble, SessionChange, SessionTracker};
use crate::znodes::{conflicts_dir, leases_dir, now_ms, origin_records_root, LeaseRecord};

/// A dirty path: when to try it. (A delete with no record is stamped by
/// the member's `stamp::Stamper`, which knows the member's ephemerals; the
/// pair stamps only deletes its records prove.)
#[derive(Debug, Clone, Default)]
pub(super) struct Mark {
    pub(super) not_before: Option<Instant>,
    /// Refused by a member: reported, and not holding the checkpoint back.
    pub(super) parked: bool,
    /// Tries that found the path still moving (see `work::DEFERS`).
    pub(super) defers: u32,
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
    pub(super) meta: String,
    pub(super) lease_record: LeaseRecord,
    pub(super) limits: Limits,
    heartbeat_interval: Duration,
    /// The conflicts counted when the destination's log was last trimmed.
    pub(super) trimmed_at: std::sync::atomic::AtomicU64,
    /// See [`Filling`]; learnt at each lead, updated by the checkpoints.
    pub(super) first: std::sync::Mutex<Filling>,
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
                    if self.mark(&event, &mut dirty, &mut watches.tracker) { full_pass = true; }
                    if tracker_ended(&event) { return End::Restart(format!("{} session ended", self.from.ensemble)); }
                }
                event = watches.records.changed() => {
                    if self.mark(&event, &mut dirty, &mut watches.tracker) { full_pass = true; }
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
        ensure_path(from, &self.from.path, &self.from_zk.acl).await?;
        ensure_path(to, &self.to.path, &self.to_zk.acl).await?;
        ensure_path(from, &self.from_records, &self.from_zk.acl).await?;
        ensure_path(to, &self.to_records, &self.to_zk.acl).await?;
        ensure_path(to, &self.conflicts_dir, &self.to_zk.acl).await?;
        let id = ensemble_id(from, &self.meta, &self.from_zk.acl).await?;
        let data = crate::zk::watch_subtree(from, &self.from.path).await?;
        let records = crate::zk::watch_subtree(from, &self.from_records).await?;
        Ok((id, data, records))
    }

    /// Marks the path an event is about; `true` when the watch was away
    /// and a full pass must find what it missed.
    pub(super) fn mark(
        &self,
        event: &WatchedEvent,
        dirty: &mut BTreeMap<String, Mark>,
        tracker: &mut SessionTracker,
    ) -> bool {
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
}

/// The source member's two watches (its subtree, its records) and their
/// session, owned by one lead.
pub(super) struct Watches {
    data: PersistentWatcher,
    records: PersistentWatcher,
    tracker: SessionTracker,
}

/// What draining the watches found besides paths.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Drained {
    /// The session was away: changes meanwhile sent no event, a full pass
    /// must find them.
    pub(super) away: bool,
    /// The session ended: the lead starts over.
    pub(super) ended: bool,
}

impl Watches {
    /// Marks every path the watches report now, without waiting.
    pub(super) fn drain_into(&mut self, pair: &Pair, dirty: &mut BTreeMap<String, Mark>) -> Drained {
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
