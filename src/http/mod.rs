//! The HTTP API: routes, shared state and the tower layers around them.
//!
//! Layers, outermost first: a request id is set (or kept) and echoed back, a tracing span
//! carries it, panics become a JSON 500, and every request has a time limit. The webhook
//! handler reads its body under a size and time limit, checks the signature before anything
//! else, and only then takes one of the store-write slots (429 when none frees up soon), so
//! unsigned traffic never holds what signed deliveries need. [`server`] runs the connections.

mod admin;
mod auth;
pub mod ci_auth;
mod error;
mod gates;
mod health;
pub mod server;
mod verdict;
mod webhook;

use std::sync::Arc;

use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderName, Method, Uri};
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{BoxError, Router};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use auth::BearerToken;
pub use error::ApiError;

use crate::config::{HttpConfig, TaskRules};
use crate::inbound::signature::Verifier;
use crate::metrics::Metrics;
use crate::store::Store;

/// What every handler can reach. axum clones the state for every request (and every layer
/// that uses it), so it is one `Arc`: a clone is one reference count, not one per field
/// (measured: cloning and dropping the fields was 6 % of the CPU under a forged flood).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The fields of [`AppState`].
pub struct Shared {
    pub store: Store,
    pub verifier: Arc<Verifier>,
    pub metrics: Metrics,
    /// Wakes the worker when a task is stored.
    pub wake: Arc<Notify>,
    /// ON_DENY, APPROVAL_TIMEOUT, HOLD_JOB_NAMES.
    pub rules: Arc<TaskRules>,
    pub max_body_bytes: usize,
    pub body_read_timeout: Duration,
    /// Slots for writing signed deliveries to the store (MAX_CONCURRENT_REQUESTS).
    pub store_slots: Arc<Semaphore>,
    /// Records deliveries, many to a commit.
    pub intake: crate::store::Intake,
    /// Keeps a flood of refused requests from flooding the log.
    pub refusal_log: Arc<crate::telemetry::RateLimit>,
    /// The audit API's token; None disables the API (404).
    pub admin_token: Option<BearerToken>,
    /// Who may register gates and read verdicts (CircleCI OIDC, or opted-in static tokens),
    /// and the rate-limited CircleCI lookups made for them.
    pub ci: Arc<ci_auth::CiAuth>,
    /// Wakes the reconciler when a gate is registered or a run bound.
    pub reconciler_wake: Arc<Notify>,
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub fn router(state: AppState, config: &HttpConfig) -> Router {
    let webhook = post(webhook::receive);

    let audit_api = Router::new()
        .route("/v1/approvals", get(admin::list_approvals))
        .route("/v1/approvals/{id}", get(admin::get_approval))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            admin::require_admin,
        ));

    Router::new()
        .route("/webhooks/sym", webhook.clone())
        // The same handler: a generic approval event is told from a Sym log entry by its shape.
        .route("/webhooks/approval", webhook)
        .route(
            "/v1/gates",
            post(gates::register).layer(DefaultBodyLimit::max(gates::MAX_GATE_BODY)),
        )
        .merge(audit_api)
        .route("/v1/verdicts/{workflow_id}", get(verdict::get_verdict))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
                .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
                    let request_id = req
                        .headers()
                        .get(REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    tracing::info_span!(
                        "request",
                        method = %req.method(),
                        path = %req.uri().path(),
                        request_id = %request_id,
                    )
                }))
                .layer(PropagateRequestIdLayer::new(REQUEST_ID))
                .layer(CatchPanicLayer::custom(
                    |_panic: Box<dyn std::any::Any + Send>| {
                        tracing::error!("a request handler panicked");
                        ApiError::Internal.into_response()
                    },
                ))
                .layer(HandleErrorLayer::new(|error: BoxError| async move {
                    if error.is::<tower::timeout::error::Elapsed>() {
                        tracing::warn!("request timed out");
                        ApiError::Timeout
                    } else {
                        tracing::error!(error = %error, "request failed in a middleware");
                        ApiError::Internal
                    }
                }))
                .timeout(config.request_timeout),
        )
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
