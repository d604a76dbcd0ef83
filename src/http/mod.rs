//! `/metrics`, `/healthz`, `/readyz`, `/status` (design §4);
//! `/explain/ROUTE/PATH` (what this instance's queues hold for one path,
//! for `zkbridge explain`); the status page at `/` and the lag history it
//! draws (`/history`). Read-only: no endpoint changes state, so exposing
//! them is safe.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use futures::future::BoxFuture;

use crate::explain::QueueReport;
use crate::shutdown::Shutdown;
use crate::status::Status;

/// What the endpoints read. The running bridge implements it; the HTTP
/// layer knows nothing else of it.
pub trait Served: Send + Sync + 'static {
    /// The Prometheus text exposition.
    fn metrics_text(&self) -> String;
    /// `None` when ready, else why not (the `/readyz` body).
    fn not_ready(&self) -> Option<String>;
    /// The same status `zkbridge status --json` prints.
    fn status(&self) -> BoxFuture<'_, Status>;
    /// What this instance's queues hold for `relative` in `route`'s
    /// members; `None` for a route it does not run.
    fn explain(&self, route: &str, relative: &str) -> Option<Vec<QueueReport>>;
    /// Recent lag samples and the pending count of every route/target this
    /// instance runs a worker for (for the status page).
    fn history(&self) -> Vec<LagSeries>;
}

/// One route/target's recent lag, as the status page draws it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LagSeries {
    pub route: String,
    pub target: String,
    /// Paths waiting in this instance's queue now.
    pub pending: usize,
    /// Oldest first.
    pub samples: Vec<LagSample>,
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct LagSample {
    pub ts_ms: i64,
    /// `None` while this instance does not lead the route/target.
    pub lag_s: Option<f64>,
}

type Shared = Arc<dyn Served>;

pub async fn serve(listener: tokio::net::TcpListener, bridge: Shared, mut shutdown: Shutdown) {
    let app = Router::new()
        .route("/", get(page))
        .route("/history", get(history))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/explain/:route", get(explain_root))
        .route("/explain/:route/*path", get(explain))
        .with_state(bridge);
    let stop = async move {
        shutdown.requested().await;
    };
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
        tracing::error!(error = %e, "HTTP server failed");
    }
}

async fn metrics(State(bridge): State<Shared>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        bridge.metrics_text(),
    )
        .into_response()
}

async fn readyz(State(bridge): State<Shared>) -> Response {
    match bridge.not_ready() {
        None => (StatusCode::OK, "ready\n".to_string()).into_response(),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

async fn status(State(bridge): State<Shared>) -> Response {
    Json(bridge.status().await).into_response()
}

async fn explain_root(State(bridge): State<Shared>, Path(route): Path<String>) -> Response {
    explained(&bridge, &route, "")
}

async fn explain(State(bridge): State<Shared>, Path((route, path)): Path<(String, String)>) -> Response {
    explained(&bridge, &route, path.trim_matches('/'))
}

fn explained(bridge: &Shared, route: &str, relative: &str) -> Response {
    match bridge.explain(route, relative) {
        Some(reports) => Json(reports).into_response(),
        None => (StatusCode::NOT_FOUND, format!("no route {route:?} here\n")).into_response(),
    }
}

/// The status page: one self-contained document.
async fn page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("page.html"),
    )
        .into_response()
}

async fn history(State(bridge): State<Shared>) -> Response {
    Json(bridge.history()).into_response()
}
