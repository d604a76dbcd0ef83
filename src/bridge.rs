//! Wiring: one session per ensemble, one capture task per route, one worker
//! per (route, target), and the HTTP endpoints; then wait for a signal.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tracing::info;

use crate::apply::{Identity, Limits, Worker, WorkerStatus};
use crate::capture::Capture;
use crate::config::Resolved;
use crate::metrics::Metrics;
use crate::queue::TargetQueue;
use crate::zk::Ensemble;

/// A running route/target worker, as seen by `/status` and `/readyz`.
pub struct WorkerHandle {
    pub route: String,
    pub target: String,
    pub target_path: String,
    pub status: Arc<WorkerStatus>,
    pub queue: Arc<TargetQueue>,
}

impl WorkerHandle {
    fn lag_seconds(&self) -> Option<f64> {
        let ts = self.status.checkpoint.lock().unwrap().as_ref()?.heartbeat_ts_ms;
        Some(((crate::checkpoint::now_ms() - ts) as f64 / 1000.0).max(0.0))
    }
}

/// Shared state of a running bridge.
pub struct Bridge {
    pub id: String,
    pub metrics: Arc<Metrics>,
    pub workers: Vec<WorkerHandle>,
}

#[derive(Serialize)]
pub struct RouteTargetStatus {
    pub route: String,
    pub target: String,
    pub target_path: String,
    pub leader: Option<String>,
    pub initial_sync_done: bool,
    /// Source zxid of the last checkpoint, `0x…`.
    pub checkpoint_zxid: Option<String>,
    /// Now minus the heartbeat time of the last checkpoint.
    pub lag_seconds: Option<f64>,
    pub pending_paths: i64,
    pub last_error: Option<String>,
}

#[derive(Serialize)]
pub struct Status {
    pub bridge: String,
    pub version: &'static str,
    pub routes: Vec<RouteTargetStatus>,
}

impl Bridge {
    pub fn status(&self) -> Status {
        let routes = self
            .workers
            .iter()
            .map(|w| RouteTargetStatus {
                route: w.route.clone(),
                target: w.target.clone(),
                target_path: w.target_path.clone(),
                // Without leases (a later release) this instance is the only writer.
                leader: Some(self.id.clone()),
                initial_sync_done: w.status.initial_sync_done.load(Ordering::Relaxed),
                checkpoint_zxid: w
                    .status
                    .checkpoint
                    .lock()
                    .unwrap()
                    .as_ref()
                    .map(|c| format!("{:#x}", c.source_zxid)),
                lag_seconds: w.lag_seconds(),
                pending_paths: self
                    .metrics
                    .pending_paths
                    .with_label_values(&[&w.route, &w.target])
                    .get(),
                last_error: w.status.last_error.lock().unwrap().clone(),
            })
            .collect();
        Status {
            bridge: self.id.clone(),
            version: env!("CARGO_PKG_VERSION"),
            routes,
        }
    }

    /// `None` when ready, else why not.
    pub fn not_ready(&self) -> Option<String> {
        let waiting: Vec<String> = self
            .workers
            .iter()
            .filter(|w| !w.status.initial_sync_done.load(Ordering::Relaxed))
            .map(|w| format!("{}/{}", w.route, w.target))
            .collect();
        (!waiting.is_empty()).then(|| format!("initial sync not finished: {}", waiting.join(", ")))
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
    let identity = Identity {
        bridge_id: config.config.bridge.id.clone(),
        meta_path: config.config.bridge.meta_path.clone(),
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
            metrics.leader.with_label_values(&labels).set(1);
            let status = Arc::new(WorkerStatus::default());
            let worker = Worker::new(
                route.clone(),
                target.clone(),
                (source.clone(), ensemble(&target.ensemble)),
                queue.clone(),
                status.clone(),
                (limits, identity.clone()),
                metrics.clone(),
            );
            tasks.push(tokio::spawn(worker.run(shutdown.clone())));
            workers.push(WorkerHandle {
                route: route.name().to_string(),
                target: target.ensemble.clone(),
                target_path: target.path.clone(),
                status,
                queue: queue.clone(),
            });
            queues.push(queue);
        }
        let capture = Capture {
            route: route.clone(),
            source,
            queues,
            metrics: metrics.clone(),
            bridge_id: config.config.bridge.id.clone(),
            meta_path: config.config.bridge.meta_path.clone(),
            heartbeat_interval: Duration::from_millis(config.config.bridge.heartbeat_interval_ms),
        };
        tasks.push(tokio::spawn(capture.run(shutdown.clone())));
    }
    let bridge = Arc::new(Bridge {
        id: config.config.bridge.id.clone(),
        metrics,
        workers,
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
            if let Some(lag) = w.lag_seconds() {
                bridge
                    .metrics
                    .lag_seconds
                    .with_label_values(&[&w.route, &w.target])
                    .set(lag);
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
    Ok(())
}
