//! Wiring: one session per ensemble, one runner per route (which follows
//! the route's role and runs its capture on the primary and a worker per
//! other member, see `route_runner`), and the HTTP endpoints.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::info;

use crate::capture::HeartbeatSchedule;
use crate::config::Resolved;
use crate::lease::Balancer;
use crate::metrics::Metrics;
use crate::queue::TargetQueue;
use crate::shutdown::Shutdown;
use crate::status::{Sessions, Status};
use crate::worker::{Identity, Leadership, Limits, StatusTx, StatusView};

mod route_runner;

use crate::zk::Ensemble;
use crate::znodes::LeaseRecord;
use route_runner::RouteRunner;
pub use route_runner::RouteView;

/// A running route/target worker, as seen by `/readyz` and `sync`.
pub struct WorkerHandle {
    pub route: String,
    pub target: String,
    pub target_path: String,
    pub status: StatusView,
    pub queue: Arc<TargetQueue>,
    target_zk: Ensemble,
}

/// A running member pair of an active-active route.
pub struct PairHandle {
    pub route: String,
    /// `from->to`, the pair's `target` label.
    pub label: String,
    pub status: StatusView,
}

/// Shared state of a running bridge.
pub struct Bridge {
    pub id: String,
    pub config: Resolved,
    pub metrics: Arc<Metrics>,
    /// A handle per route member: the worker that mirrors into it while it
    /// is not the primary.
    pub workers: Vec<WorkerHandle>,
    pub routes: Vec<RouteHandle>,
    /// Every member pair of the active-active routes.
    pub pairs: Vec<PairHandle>,
    ensembles: BTreeMap<String, Ensemble>,
    /// Recent lag samples per worker (same order as `workers`), for the
    /// status page; written only by `track_lag`.
    history: std::sync::Mutex<Vec<std::collections::VecDeque<crate::http::LagSample>>>,
}

/// Lag samples kept per route/target: ten minutes at one every five seconds.
const HISTORY_SAMPLES: usize = 120;
const HISTORY_EVERY: Duration = Duration::from_secs(5);

/// A route's role as its runner sees it.
pub struct RouteHandle {
    pub name: String,
    pub view: watch::Receiver<RouteView>,
}

impl Bridge {
    /// The workers that mirror now: those of the members that are not
    /// their route's primary.
    pub fn mirrors(&self) -> impl Iterator<Item = &WorkerHandle> {
        self.workers.iter().filter(|w| !self.is_primary(w))
    }

    /// Whether `w`'s member is its route's primary: the first member in
    /// the primary's ensemble (a route may keep two in one ensemble).
    fn is_primary(&self, w: &WorkerHandle) -> bool {
        let Some(handle) = self.routes.iter().find(|r| r.name == w.route) else {
            return false;
        };
        let Some(primary) = handle.view.borrow().role.as_ref().map(|r| r.primary.clone()) else {
            return false;
        };
        self.config
            .route(&w.route)
            .and_then(|r| r.members().find(|m| m.ensemble == primary))
            .is_some_and(|m| m.ensemble == w.target && m.path == w.target_path)
    }
}

impl Bridge {
    /// The same status `zkbridge status` prints, read through this
    /// instance's sessions.
    pub async fn status(&self) -> Status {
        let mut sessions = Sessions::new();
        for (name, ensemble) in &self.ensembles {
            let session = tokio::time::timeout(crate::status::READ_TIMEOUT, ensemble.session()).await;
            sessions.insert(
                name.clone(),
                session.map(|s| s.client).map_err(|_| "no session".to_string()),
            );
        }
        crate::status::collect(&self.config, &sessions).await
    }

    /// `None` when ready, else why not: a route/target this instance leads
    /// has not finished its initial sync or lags more than
    /// `bridge.ready_max_lag_s`; or one it does not lead has no leader
    /// elsewhere either (its target is unreachable, or the lease is still
    /// being taken).
    pub fn not_ready(&self) -> Option<String> {
        let max_lag = self.config.config.bridge.ready_max_lag_s as f64;
        let mut reasons = Vec::new();
        for r in &self.routes {
            let view = r.view.borrow();
            if let Some((a, b)) = &view.split {
                reasons.push(format!(
                    "{}: {a} and {b} both claim to be primary at the same epoch; nothing is mirrored",
                    r.name
                ));
            } else if view.frozen {
                reasons.push(format!("{}: frozen by a switchover", r.name));
            } else if view.role.is_none() {
                reasons.push(format!("{}: no member's role could be read yet", r.name));
            }
        }
        for w in self.mirrors() {
            let name = format!("{}/{}", w.route, w.target);
            let status = w.status.borrow();
            let leading = status.leading();
            if let Some(stop) = status.stopped.as_ref().filter(|_| leading) {
                reasons.push(format!(
                    "{name}: stopped ({}) at {}; `zkbridge resume` clears it",
                    stop.reason, stop.path
                ));
            } else if let Some(trip) = status.breaker.as_ref().filter(|_| leading) {
                reasons.push(format!(
                    "{name}: deletes held by the circuit breaker ({}); `zkbridge resume` releases them",
                    trip.reason
                ));
            } else if let Some(error) = &status.panicked {
                reasons.push(format!("{name}: {error}"));
            } else if leading {
                if !status.initial_sync_done {
                    reasons.push(format!("{name}: initial sync not finished"));
                } else if let Some(lag) = status.lag_seconds(crate::znodes::now_ms()).filter(|l| *l > max_lag) {
                    reasons.push(format!(
                        "{name}: lag {lag:.0}s above bridge.ready_max_lag_s = {max_lag}"
                    ));
                }
            } else if !w.target_zk.is_connected() {
                reasons.push(format!("{name}: target ensemble {} unreachable", w.target));
            } else if status.leadership == (Leadership::Waiting { behind: None }) {
                reasons.push(format!("{name}: taking the lease"));
            }
        }
        for p in &self.pairs {
            let status = p.status.borrow();
            if status.leading() && !status.initial_sync_done {
                reasons.push(format!("{}/{}: initial sync not finished", p.route, p.label));
            }
        }
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }

    /// Closes every session (after the tasks stopped), so that this
    /// instance's ephemeral nodes go at once.
    pub async fn close(&self) {
        futures::future::join_all(self.ensembles.values().map(|e| e.close())).await;
    }

    /// Every route/target is led by this instance and has finished its
    /// initial sync (what `sync` waits for).
    pub fn all_synced(&self) -> bool {
        let done = |s: &crate::worker::WorkerSnapshot| s.leading() && s.initial_sync_done;
        self.routes.iter().all(|r| r.view.borrow().role.is_some())
            && self.mirrors().all(|w| done(&w.status.borrow()))
            && self.pairs.iter().all(|p| done(&p.status.borrow()))
    }
}

impl Bridge {
    /// What each of `route`'s workers on this instance holds for
    /// `relative` (for `zkbridge explain`); `None` for a route it does not
    /// run.
    pub fn explain(&self, route: &str, relative: &str) -> Option<Vec<crate::explain::QueueReport>> {
        use crate::explain::{QueueReport, QueueState};
        use crate::queue::{Parking, PathState};
        self.routes.iter().find(|r| r.name == route)?;
        let now = tokio::time::Instant::now();
        let secs = |d: std::time::Duration| d.as_secs_f64();
        let reports = self
            .workers
            .iter()
            .filter(|w| w.route == route)
            .map(|w| {
                let queue = match w.queue.path_state(relative) {
                    PathState::NotLeading => QueueState::NotLeading,
                    PathState::Idle => QueueState::Idle,
                    PathState::Dirty { since } => QueueState::Dirty {
                        since_s: secs(now - since),
                    },
                    PathState::InFlight => QueueState::InFlight,
                    PathState::Parked {
                        since,
                        why: Parking::HeldByBreaker,
                        ..
                    } => QueueState::Held {
                        since_s: secs(now - since),
                    },
                    PathState::Parked {
                        since,
                        until,
                        why: Parking::Refused(error),
                    } => QueueState::Parked {
                        since_s: secs(now - since),
                        retry_in_s: secs(until.saturating_duration_since(now)),
                        error,
                    },
                    PathState::Resyncing => QueueState::Resyncing,
                };
                QueueReport {
                    target: w.target.clone(),
                    leading: w.status.borrow().leading(),
                    queue,
                }
            })
            .collect();
        Some(reports)
    }
}

impl crate::http::Served for Bridge {
    fn metrics_text(&self) -> String {
        self.metrics.render()
    }

    fn not_ready(&self) -> Option<String> {
        Bridge::not_ready(self)
    }

    fn status(&self) -> futures::future::BoxFuture<'_, Status> {
        Box::pin(Bridge::status(self))
    }

    fn explain(&self, route: &str, relative: &str) -> Option<Vec<crate::explain::QueueReport>> {
        Bridge::explain(self, route, relative)
    }

    fn history(&self) -> Vec<crate::http::LagSeries> {
        let history = self.history.lock().unwrap();
        self.workers
            .iter()
            .zip(history.iter())
            .filter(|(w, _)| !self.is_primary(w))
            .map(|(w, samples)| crate::http::LagSeries {
                route: w.route.clone(),
                target: w.target.clone(),
                pending: w.queue.pending_paths(),
                samples: samples.iter().copied().collect(),
            })
            .collect()
    }
}

/// Starts every session, capture and worker. Returns the shared state and
/// the tasks to await on shutdown. Long but straight: the wiring of every
/// part, in the order the parts need each other.
pub fn start(
    config: &Resolved,
    metrics: Arc<Metrics>,
    shutdown: &Shutdown,
) -> (Arc<Bridge>, Vec<tokio::task::JoinHandle<()>>) {
    let mut ensembles: BTreeMap<String, Ensemble> = BTreeMap::new();
    let mut ensemble = |name: &str| {
        ensembles
            .entry(name.to_string())
            .or_insert_with(|| Ensemble::start(name, config.ensemble(name), metrics.clone(), shutdown.clone()))
            .clone()
    };
    let mut tasks = Vec::new();
    let mut workers = Vec::new();
    let limits = Limits::from(&config.config.bridge);
    let pairs = config.routes.iter().map(|r| r.targets.len()).sum();
    let balancer = Balancer::new(config.config.bridge.balance, pairs);
    let lease_record = LeaseRecord::for_this_process(&config.config.bridge.id);
    let identity = Identity {
        bridge_id: config.config.bridge.id.clone(),
        meta_path: config.config.bridge.meta_path.clone(),
        balancer: balancer.clone(),
        lease_record: lease_record.clone(),
    };
    let mut routes = Vec::new();
    let heartbeat_interval = Duration::from_millis(config.config.bridge.heartbeat_interval_ms);
    let heartbeat_epoch = std::time::Instant::now();
    for (index, route) in config.routes.iter().enumerate() {
        let mut members = Vec::new();
        for member in route.members() {
            let labels = [route.name(), member.ensemble.as_str()];
            let queue = Arc::new(TargetQueue::new(
                config.config.bridge.max_pending_paths,
                metrics.pending_paths.with_label_values(&labels),
            ));
            let status = StatusTx::default();
            workers.push(WorkerHandle {
                route: route.name().to_string(),
                target: member.ensemble.clone(),
                target_path: member.path.clone(),
                status: status.view(),
                queue: queue.clone(),
                target_zk: ensemble(&member.ensemble),
            });
            members.push(route_runner::Member {
                endpoint: member.clone(),
                zk: ensemble(&member.ensemble),
                queue,
                status,
            });
        }
        let (view_tx, view) = watch::channel(RouteView::default());
        let runner = RouteRunner {
            route: route.clone(),
            members,
            identity: identity.clone(),
            limits,
            metrics: metrics.clone(),
            heartbeat: HeartbeatSchedule::spread(heartbeat_interval, index, config.routes.len(), heartbeat_epoch),
            view: view_tx,
        };
        tasks.push(tokio::spawn(runner.run(shutdown.clone())));
        routes.push(RouteHandle {
            name: route.name().to_string(),
            view,
        });
    }
    let mut pairs = Vec::new();
    for route in &config.active {
        for member in &route.members {
            let stamper = crate::active::Stamper {
                route: route.clone(),
                member: member.clone(),
                zk: ensemble(&member.ensemble),
                meta: config.config.bridge.meta_path.clone(),
            };
            tasks.push(tokio::spawn(stamper.run(shutdown.clone())));
        }
        for (from, to) in route.pairs() {
            let status = StatusTx::default();
            pairs.push(PairHandle {
                route: route.name().to_string(),
                label: crate::config::pair_label(&from.ensemble, &to.ensemble),
                status: status.view(),
            });
            let pair = crate::active::Pair::new(crate::active::PairWiring {
                route: route.clone(),
                from: (from.clone(), ensemble(&from.ensemble)),
                to: (to.clone(), ensemble(&to.ensemble)),
                meta: config.config.bridge.meta_path.clone(),
                lease_record: lease_record.clone(),
                limits,
                heartbeat_interval,
                metrics: metrics.clone(),
                status,
            });
            tasks.push(tokio::spawn(pair.run(shutdown.clone())));
        }
    }
    // Every member may be a mirror, whichever is primary now.
    let targets: std::collections::BTreeSet<&str> = config
        .routes
        .iter()
        .flat_map(|r| r.members().map(|t| t.ensemble.as_str()))
        .collect();
    for name in targets {
        tasks.push(tokio::spawn(balancer.clone().register(
            ensemble(name),
            config.config.bridge.meta_path.clone(),
            lease_record.clone(),
            shutdown.clone(),
        )));
    }
    let history = std::sync::Mutex::new(vec![Default::default(); workers.len()]);
    let bridge = Arc::new(Bridge {
        id: config.config.bridge.id.clone(),
        config: config.clone(),
        metrics,
        workers,
        routes,
        pairs,
        ensembles,
        history,
    });
    tasks.push(tokio::spawn(track_lag(bridge.clone(), shutdown.clone())));
    (bridge, tasks)
}

/// Keeps `zkbridge_lag_seconds` current: lag grows while a target is away,
/// so it cannot wait for the next checkpoint to be updated. Member pairs
/// of active-active routes are kept the same way.
async fn track_lag(bridge: Arc<Bridge>, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut sampled: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {},
            _ = shutdown.requested() => return,
        }
        for p in &bridge.pairs {
            let labels = [p.route.as_str(), p.label.as_str()];
            let s = p.status.borrow();
            match s.lag_seconds(crate::znodes::now_ms()).filter(|_| s.leading()) {
                Some(lag) => bridge.metrics.lag_seconds.with_label_values(&labels).set(lag),
                None => {
                    let _ = bridge.metrics.lag_seconds.remove_label_values(&labels);
                }
            }
        }
        let sample = sampled.is_none_or(|at| at.elapsed() >= HISTORY_EVERY);
        if sample {
            sampled = Some(tokio::time::Instant::now());
        }
        for (i, w) in bridge.workers.iter().enumerate() {
            let labels = [w.route.as_str(), w.target.as_str()];
            let lag = if bridge.is_primary(w) {
                None
            } else {
                let s = w.status.borrow();
                s.lag_seconds(crate::znodes::now_ms()).filter(|_| s.leading())
            };
            match lag {
                Some(lag) => bridge.metrics.lag_seconds.with_label_values(&labels).set(lag),
                // Only the leader's figure means anything; a standby's would
                // grow forever from the last checkpoint it saw.
                None => {
                    let _ = bridge.metrics.lag_seconds.remove_label_values(&labels);
                }
            }
            if sample {
                let mut history = bridge.history.lock().unwrap();
                let series = &mut history[i];
                if series.len() == HISTORY_SAMPLES {
                    series.pop_front();
                }
                series.push_back(crate::http::LagSample {
                    ts_ms: crate::znodes::now_ms(),
                    lag_s: lag,
                });
            }
        }
    }
}

/// Runs the bridge until `shutdown` is requested, then stops every task,
/// giving the workers up to 10 s to hand their leases back (work in
/// progress is dropped: every write is idempotent and fenced, and the
/// checkpoint covers only what committed).
pub async fn run(config: Resolved, mut shutdown: Shutdown) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let listener = tokio::net::TcpListener::bind(&config.config.bridge.listen)
        .await
        .map_err(|e| anyhow::anyhow!("bridge.listen: cannot listen on {}: {e}", config.config.bridge.listen))?;
    let (bridge, tasks) = start(&config, metrics, &shutdown);
    info!(listen = %config.config.bridge.listen, routes = config.routes.len(), workers = bridge.workers.len(), "zkbridge running");
    let http = tokio::spawn(crate::http::serve(listener, bridge.clone(), shutdown.clone()));
    shutdown.requested().await;
    info!("shutting down");
    let all = futures::future::join_all(tasks);
    if tokio::time::timeout(Duration::from_secs(10), all).await.is_err() {
        tracing::warn!("some workers did not stop within 10s; abandoning them (their writes are idempotent)");
    }
    let _ = http.await;
    bridge.close().await;
    Ok(())
}
