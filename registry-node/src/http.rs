//! HTTP endpoints for operators: `/metrics` (Prometheus text), `/healthz`
//! (the process is alive) and `/readyz` (the node serves reads).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::readiness::Readiness;
use crate::registry::Registry;

#[derive(Clone)]
struct Http {
    registry: Arc<Registry>,
    readiness: Readiness,
}

pub fn router(registry: Arc<Registry>, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Http { registry, readiness })
}

async fn metrics(State(h): State<Http>) -> impl IntoResponse {
    let gauges = h.registry.gauges(h.readiness.is_ready());
    let mut body = h.registry.metrics.render(h.registry.node_id(), &gauges);
    if let Some(sync) = h.registry.sync_state() {
        crate::cluster::render_metrics(&mut body, h.registry.node_id(), sync);
    }
    ([("content-type", "text/plain; version=0.0.4")], body)
}

async fn readyz(State(h): State<Http>) -> impl IntoResponse {
    if h.readiness.is_ready() {
        (StatusCode::OK, "ready\n")
    } else if h.registry.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "warming up\n")
    }
}
