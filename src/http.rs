//! `/metrics`, `/healthz`, `/readyz`, `/status` (design §4). Read-only: no
//! endpoint changes state, so exposing them is safe.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::sync::watch;

use crate::bridge::Bridge;

pub async fn serve(listener: tokio::net::TcpListener, bridge: Arc<Bridge>, mut shutdown: watch::Receiver<bool>) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(bridge);
    let stop = async move {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
    };
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
        tracing::error!(error = %e, "HTTP server failed");
    }
}

async fn metrics(State(bridge): State<Arc<Bridge>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        bridge.metrics.render(),
    )
        .into_response()
}

async fn readyz(State(bridge): State<Arc<Bridge>>) -> Response {
    match bridge.not_ready() {
        None => (StatusCode::OK, "ready\n".to_string()).into_response(),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

async fn status(State(bridge): State<Arc<Bridge>>) -> Response {
    Json(bridge.status().await).into_response()
}
