//! Wiring: one session per ensemble, one capture task per route, one worker
//! per (route, target), and the HTTP endpoints; then wait for a signal.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::info;

use crate::capture::Capture;
use crate::config::Resolved;
use crate::lease::Balancer;
use crate::metrics::Metrics;
use crate::queue::TargetQueue;
use crate::status::{Sessions, Status};
use crate::supervise::supervise;
use crate::worker::{Identity, Leadership, Limits, StatusTx, StatusView, Worker};
use crate::zk::Ensemble;
use crate::znodes::LeaseRecord;

/// A running route/target worker, as seen by `/readyz` and `sync`.
pub struct WorkerHandle {
    pub route: String,
    pub target: String,
    pub target_path: String,
    pub status: StatusView,
    pub queue: Arc<TargetQueue>,
    target_zk: Ensemble,
}

/// Shared state of a running bridge.
pub struct Bridge {
    pub id: String,
    pub config: Resolved,
    pub metrics: Arc<Metrics>,
    pub workers: Vec<WorkerHandle>,
    ensembles: BTreeMap<String, Ensemble>,
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
        for w in &self.workers {
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
        self.workers.iter().all(|w| {
            let s = w.status.borrow();
            s.leading() && s.initial_sync_done
        })
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
}

/// Starts every session, capture and worker. Returns the shared state and
/// the tasks to await on shutdown.
pub fn start(
    config: &Resolved,
    metrics: Arc<Metrics>,
    shutdown: &watch::Receiver<bool>,
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
    for route in &config.routes {
        let source = ensemble(&route.source.ensemble);
        let mut queues = Vec::new();
        for target in &route.targets {
            let labels = [route.name(), target.ensemble.as_str()];
            let queue = Arc::new(TargetQueue::new(
                config.config.bridge.max_pending_paths,
                metrics.pending_paths.with_label_values(&labels),
            ));
            metrics.leader.with_label_values(&labels).set(0);
            let status = StatusTx::default();
            let make_worker = {
                let (route, target, source, target_zk) = (
                    route.clone(),
                    target.clone(),
                    source.clone(),
                    ensemble(&target.ensemble),
                );
                let (queue, status, identity, metrics) =
                    (queue.clone(), status.clone(), identity.clone(), metrics.clone());
                let shutdown = shutdown.clone();
                move || {
                    Worker::new(
                        route.clone(),
                        target.clone(),
                        (source.clone(), target_zk.clone()),
                        queue.clone(),
                        status.clone(),
                        (limits, identity.clone()),
                        metrics.clone(),
                    )
                    .run(shutdown.clone())
                }
            };
            let on_panic = {
                let (status, metrics) = (status.clone(), metrics.clone());
                let labels = [route.name().to_string(), target.ensemble.clone()];
                move |message: &str, retry_in: Duration| {
                    let labels = [labels[0].as_str(), labels[1].as_str()];
                    metrics.errors.with_label_values(&[labels[0], labels[1], "panic"]).inc();
                    metrics.leader.with_label_values(&labels).set(0);
                    status.after_panic(format!("internal error: {message}; restarting in {retry_in:?}"));
                }
            };
            tasks.push(tokio::spawn(supervise(make_worker, on_panic, shutdown.clone())));
            workers.push(WorkerHandle {
                route: route.name().to_string(),
                target: target.ensemble.clone(),
                target_path: target.path.clone(),
                status: status.view(),
                queue: queue.clone(),
                target_zk: ensemble(&target.ensemble),
            });
            queues.push(queue);
        }
        let make_capture = {
            let capture = Capture {
                route: route.clone(),
                source,
                queues,
                metrics: metrics.clone(),
                bridge_id: config.config.bridge.id.clone(),
                meta_path: config.config.bridge.meta_path.clone(),
                heartbeat_interval: Duration::from_millis(config.config.bridge.heartbeat_interval_ms),
            };
            let shutdown = shutdown.clone();
            move || capture.clone().run(shutdown.clone())
        };
        let on_panic = {
            let (metrics, route) = (metrics.clone(), route.name().to_string());
            move |_: &str, _: Duration| metrics.errors.with_label_values(&[&route, "", "panic"]).inc()
        };
        tasks.push(tokio::spawn(supervise(make_capture, on_panic, shutdown.clone())));
    }
    let targets: std::collections::BTreeSet<&str> = config
        .routes
        .iter()
        .flat_map(|r| r.targets.iter().map(|t| t.ensemble.as_str()))
        .collect();
    for name in targets {
        tasks.push(tokio::spawn(balancer.clone().register(
            ensemble(name),
            config.config.bridge.meta_path.clone(),
            lease_record.clone(),
            shutdown.clone(),
        )));
    }
    // Ensembles used only as sources still get a session for `/status`.
    for name in config.config.ensembles.keys() {
        if config.routes.iter().any(|r| &r.source.ensemble == name) {
            ensemble(name);
        }
    }
    let bridge = Arc::new(Bridge {
        id: config.config.bridge.id.clone(),
        config: config.clone(),
        metrics,
        workers,
        ensembles,
    });
    tasks.push(tokio::spawn(track_lag(bridge.clone(), shutdown.clone())));
    (bridge, tasks)
}

/// Keeps `zkbridge_lag_seconds` current: lag grows while a target is away,
/// so it cannot wait for the next checkpoint to be updated.
async fn track_lag(bridge: Arc<Bridge>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tick.tick() => {},
            _ = shutdown.changed() => return,
        }
        for w in &bridge.workers {
            let labels = [w.route.as_str(), w.target.as_str()];
            let lag = {
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
        }
    }
}

/// Runs the bridge until `shutdown` turns true, then stops every task,
/// giving in-flight batches a moment to finish.
pub async fn run(config: Resolved, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let listener = tokio::net::TcpListener::bind(&config.config.bridge.listen)
        .await
        .map_err(|e| anyhow::anyhow!("bridge.listen: cannot listen on {}: {e}", config.config.bridge.listen))?;
    let (bridge, tasks) = start(&config, metrics, &shutdown);
    info!(listen = %config.config.bridge.listen, routes = config.routes.len(), workers = bridge.workers.len(), "zkbridge running");
    let http = tokio::spawn(crate::http::serve(listener, bridge.clone(), shutdown.clone()));
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            break;
        }
    }
    info!("shutting down");
    let all = futures::future::join_all(tasks);
    if tokio::time::timeout(Duration::from_secs(10), all).await.is_err() {
        tracing::warn!("some workers did not stop within 10s; abandoning them (their writes are idempotent)");
    }
    let _ = http.await;
    bridge.close().await;
    Ok(())
}
