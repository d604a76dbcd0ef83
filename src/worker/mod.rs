//! The per-(route, target) worker: takes dirty paths from its queue, reads
//! the source's current state and makes the target match.
//!
//! Each target has its own worker and queue, so a slow or unreachable target
//! never stalls the others. Every step is idempotent (read current state,
//! write only the difference), which is what makes coalesced events, retries
//! after connection loss and restarts safe.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{FuturesOrdered, FuturesUnordered, StreamExt};
use prometheus::{Histogram, IntCounter, IntGauge};
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};
use zookeeper_client::{
    Acl, Acls, CheckWriteError, Client, CreateMode, CreateOptions, Error, EventType, MultiWriteResult,
    PersistentWatcher,
};

use crate::checkpoint::{ensemble_id, persistent};
use crate::config::{AclMode, BridgeConfig, ConflictPolicy, Endpoint, Route};
use crate::conflict::{self, Echoes};
use crate::lease::{Balancer, Lease};
use crate::metrics::Metrics;
use crate::path::{self, join, parent};
use crate::plan::{self, Need, NodeKind, Op};
use crate::queue::{Dirty, Parking, ResyncReason, Seen, TargetQueue, TargetRead, Work};
use crate::shutdown::Shutdown;
use crate::tree::{self, NodeState};
use crate::zk::{error_kind, is_transient, Ensemble};
use crate::znodes::{
    checkpoint_path, leases_dir, now_ms, progress_path, Checkpoint, LeaseRecord, Progress, StopRecord,
};

mod acl;
mod breaker;
mod checkpointing;
mod lead;
mod policy;
mod resync;
mod role;
mod sequence;
mod status;
mod target_metrics;
mod target_watch;
mod unit;
mod write;

use acl::AclPlan;
use lead::LeadEnd;
pub use status::{Leadership, StatusTx, StatusView, WorkerSnapshot};
use target_metrics::TargetMetrics;
use target_watch::WatchFlow;
use write::{fenced_error, fenced_put, is_node_level};

/// How long a path that failed for a lasting reason (no permission, data the
/// target refuses) waits before it is tried again.
const PARK_FOR: Duration = Duration::from_secs(30);

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

/// Mirrors one route into one target ensemble.
pub struct Worker {
    route: Arc<Route>,
    target: Endpoint,
    source_zk: Ensemble,
    target_zk: Ensemble,
    queue: Arc<TargetQueue>,
    /// The role this worker runs for: it writes only while the target's
    /// role znode says the same (see `await_role` and `Lease::writer`).
    role: crate::znodes::RoleRecord,
    limits: Limits,
    /// What this worker publishes about itself (the only writer while it runs).
    status: StatusTx,
    /// Echoes of own writes expected back from the target watch.
    echoes: Echoes,
    metrics: TargetMetrics,
    identity: Identity,
    /// The source ensemble's id, learnt at the first (re)sync.
    source_id: Mutex<Option<String>>,
    /// The mirrored count over the breaker's window (see `crate::breaker`).
    breaker: Mutex<crate::breaker::DeleteBreaker>,
    /// While leading: the lease as the instance's balancer counts it
    /// (uncounted when this worker is dropped, also by a panic).
    counted: Mutex<Option<crate::lease::CountedLease>>,
    /// Deletes the breaker holds or an operator released.
    hold: Mutex<breaker::Hold>,
    /// While the breaker is tripped: the watch on its stop record.
    stop_watch: Mutex<Option<breaker::StopWatch>>,
    /// Source paths already reported as unreadable (reported once each).
    unreadable_reported: Mutex<std::collections::HashSet<String>>,
}

/// Why an attempt must be retried later as a whole.
#[derive(Debug, thiserror::Error)]
#[error("{side} ensemble: {source}")]
struct Interrupted {
    side: Side,
    #[source]
    source: Error,
}

/// Which ensemble of a route/target an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Source,
    Target,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Target => "target",
        })
    }
}

impl Interrupted {
    /// The target refused the write because the lease is gone (fenced), or
    /// the session that owned the lease ended: this worker must stop.
    fn lease_lost(&self) -> bool {
        self.side == Side::Target && matches!(self.source, Error::RuntimeInconsistent | Error::SessionExpired)
    }
}

/// What a worker is made of: the route (oriented to its primary), the
/// member it mirrors into, the sessions and queue it uses, the role it
/// writes for. Cloned for each (re)start of the worker.
#[derive(Clone)]
pub struct Wiring {
    pub route: Arc<Route>,
    pub target: Endpoint,
    pub source_zk: Ensemble,
    pub target_zk: Ensemble,
    pub queue: Arc<TargetQueue>,
    pub role: crate::znodes::RoleRecord,
    pub status: StatusTx,
    pub limits: Limits,
    pub identity: Identity,
    pub metrics: Arc<Metrics>,
}

impl Worker {
    pub fn new(wiring: Wiring) -> Self {
        let Wiring {
            route,
            target,
            source_zk,
            target_zk,
            queue,
            role,
            status,
            limits,
            identity,
            metrics,
        } = wiring;
        let metrics = TargetMetrics::new(metrics, route.name(), &target.ensemble);
        let source_id = Mutex::new(None);
        let breaker = Mutex::new(crate::breaker::DeleteBreaker::new(
            Duration::from_secs(route.config.delete_window_s),
            route.config.max_delete_fraction,
        ));
        Worker {
            breaker,
            stop_watch: Mutex::new(None),
            hold: Default::default(),
            counted: Mutex::new(None),
            echoes: Default::default(),
            unreadable_reported: Default::default(),
            route,
            target,
            source_zk,
            target_zk,
            queue,
            role,
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
    pub async fn run(self, mut shutdown: Shutdown) {
        let span = tracing::info_span!(
            "worker",
            route = %self.route.name(),
            target = %self.target.ensemble,
            session = tracing::field::Empty
        );
        async move {
            let dir = leases_dir(&self.identity.meta_path, self.route.name(), &self.target.ensemble);
            loop {
                if shutdown.is_requested() {
                    break;
                }
                let fence = tokio::select! {
                    fence = self.await_role() => fence,
                    _ = shutdown.requested() => continue,
                };
                let acquire = Lease::acquire(&self.target_zk, &dir, &self.identity.lease_record, Some(fence));
                tokio::pin!(acquire);
                let mut look = tokio::time::interval(Duration::from_secs(1));
                let lease = loop {
                    tokio::select! {
                        lease = &mut acquire => break Some(lease),
                        _ = look.tick() => self.note_other_leader(&dir).await,
                        _ = shutdown.requested() => break None,
                    }
                };
                let Some(lease) = lease else { continue };
                tracing::Span::current().record("session", tracing::field::display(lease.client().session_id()));
                self.take_lead(&lease);
                let end = self.lead(&lease, &mut shutdown).await;
                self.leave_lead(lease, end).await;
            }
            info!("worker stopped");
        }
        .instrument(span)
        .await
    }

    /// Waits until the target's role znode says what this worker runs for
    /// (its epoch, with its source as primary), and returns it as the fence
    /// of every write. A target still behind is brought up by the route's
    /// runner; one ahead means the runner is about to stop this worker.
    async fn await_role(&self) -> crate::lease::RoleFence {
        let (meta, route) = (&self.identity.meta_path, self.route.name());
        let mut reported = false;
        let mut retry = crate::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
        loop {
            let session = self.target_zk.session().await;
            let mut version = None;
            // Watched, not polled: the role znode changes once per flip.
            let followed = crate::role_watch::follow(&session.client, meta, route, |primary| match primary {
                Some(p) if p.epoch == self.role.epoch && p.ensemble == self.role.primary => {
                    version = Some(p.version);
                    false
                }
                other => {
                    if !std::mem::replace(&mut reported, true) {
                        info!(
                            target_role = ?other,
                            epoch = self.role.epoch,
                            "the target's role znode is not at this worker's epoch yet; waiting"
                        );
                    }
                    true
                }
            })
            .await;
            if let Some(version) = version {
                return crate::lease::RoleFence {
                    path: crate::znodes::role_path(meta, route),
                    version,
                };
            }
            if let Err(e) = followed {
                debug!(error = %e, "cannot watch the target's role znode; retrying");
                tokio::time::sleep(retry.next_delay()).await;
            }
        }
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
        let behind = holder.map(|h| h.instance);
        self.status.update(|s| {
            if !s.leading() {
                s.leadership = status::Leadership::Waiting { behind };
            }
        });
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

    /// Sets aside a path the target will not take as it is: counted, shown
    /// in `status` (`error`), retried in `PARK_FOR`, pending meanwhile.
    fn park_refused(&self, rel: String, dirty: Dirty, kind: &str, error: String) {
        self.metrics.error(kind);
        self.status.set_error(Some(error.clone()));
        self.queue
            .park(rel, dirty, Instant::now() + PARK_FOR, Parking::Refused(error));
    }
}

/// The dirty record of `rel`, or one for a path the queue did not mark (a
/// resync's ops): first seen at `since`, ordered before everything.
fn dirty_or_unmarked(dirty: &BTreeMap<String, Dirty>, rel: &str, since: Instant) -> Dirty {
    dirty.get(rel).copied().unwrap_or(Dirty::unmarked(since))
}

/// Stops a background task when its owner goes.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
