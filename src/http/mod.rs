//! The HTTP API: routes, shared state and the tower layers around them.
//!
//! Layers, outermost first: a request id is set (or kept) and echoed back, a tracing span
//! carries it, panics become a JSON 500, and every request has a time limit. The webhook route
//! also has a body limit and a cap on requests in flight that sheds overload with 429.

mod admin;
mod auth;
mod error;
mod health;
mod verdict;
mod webhook;

use std::sync::Arc;

use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, Method, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{BoxError, Router};
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
use crate::outbound::circleci::token::TokenCheck;
use crate::outbound::circleci::CircleCiClient;
use crate::store::Store;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub verifier: Arc<Verifier>,
    pub metrics: Metrics,
    /// Wakes the worker when a task is stored.
    pub wake: Arc<Notify>,
    /// ON_DENY, APPROVAL_TIMEOUT, HOLD_JOB_NAMES.
    pub rules: Arc<TaskRules>,
    pub max_body_bytes: usize,
    /// The audit API's token; None disables the API (404).
    pub admin_token: Option<BearerToken>,
    /// The verdict API's token; None disables it (404).
    pub verdict_token: Option<BearerToken>,
    /// For the verdict's lookups of reruns.
    pub circleci: CircleCiClient,
    /// Whose CircleCI token this service holds (`GET /me`).
    pub token: TokenCheck,
}

#[derive(Clone)]
struct Limiter {
    permits: Arc<Semaphore>,
    metrics: Metrics,
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub fn router(state: AppState, config: &HttpConfig) -> Router {
    let limiter = Limiter {
        permits: Arc::new(Semaphore::new(config.max_concurrent_requests)),
        metrics: state.metrics.clone(),
    };
    let webhook = post(webhook::receive)
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(middleware::from_fn_with_state(limiter, shed_overload));

    let audit_api = Router::new()
        .route("/v1/approvals", get(admin::list_approvals))
        .route("/v1/approvals/{id}", get(admin::get_approval))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            admin::require_admin,
        ));

    let verdict_api = Router::new()
        .route("/v1/verdicts/{workflow_id}", get(verdict::get_verdict))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            verdict::require_verdict_token,
        ));

    Router::new()
        .route("/webhooks/sym", webhook)
        .merge(audit_api)
        .merge(verdict_api)
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

/// Sheds requests beyond the cap with 429 instead of queueing them without bound.
async fn shed_overload(State(limiter): State<Limiter>, request: Request, next: Next) -> Response {
    match Arc::clone(&limiter.permits).try_acquire_owned() {
        Ok(_permit) => next.run(request).await,
        Err(_) => {
            limiter.metrics.delivery("rejected_overloaded");
            ApiError::Overloaded.into_response()
        }
    }
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
