//! Probes and metrics: `/healthz` (the process is alive), `/readyz` (the store answers, so
//! deliveries can be accepted), `/metrics` (Prometheus).

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use std::sync::Arc;

use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;
use crate::store::Store;

/// What the probes and `/metrics` need.
pub struct HealthState {
    pub store: Store,
    pub metrics: Metrics,
}

pub fn routes(state: HealthState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Arc::new(state))
}

const READY_TIMEOUT: Duration = Duration::from_secs(2);

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<Arc<HealthState>>) -> Response {
    let backend = state.store.backend().name();
    match tokio::time::timeout(READY_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => Json(json!({ "status": "ready", "store": backend })).into_response(),
        outcome => {
            let detail = match outcome {
                Ok(Err(e)) => e.to_string(),
                _ => "the store did not answer in time".to_owned(),
            };
            tracing::warn!(detail = %detail, "not ready: store unavailable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({
                    "status": "not_ready",
                    "store": backend,
                    "error": "store_unavailable",
                    "detail": "the store is not answering",
                })),
            )
                .into_response()
        }
    }
}

async fn metrics(State(state): State<Arc<HealthState>>) -> Response {
    if let Ok(Ok((pending, oldest))) =
        tokio::time::timeout(READY_TIMEOUT, state.store.pending_summary()).await
    {
        let age = oldest.map_or(0.0, |created| {
            (state.store.clock().now_ms() - created) as f64 / 1000.0
        });
        state.metrics.set_pending(pending, age);
    }
    if let Ok(Ok((open, oldest))) =
        tokio::time::timeout(READY_TIMEOUT, state.store.open_gates_summary()).await
    {
        let age = oldest.map_or(0.0, |created| {
            (state.store.clock().now_ms() - created) as f64 / 1000.0
        });
        state.metrics.set_open_gates(open, age);
    }
    if let Ok(Ok(problems)) = tokio::time::timeout(READY_TIMEOUT, state.store.gate_problems()).await
    {
        state.metrics.set_gate_problems(&problems);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
