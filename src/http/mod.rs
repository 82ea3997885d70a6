//! The HTTP API: routes, shared state and the tower layers around them.
//!
//! Layers, outermost first: a request id is set (or kept) and echoed back, a tracing span
//! carries it, panics become a JSON 500, and every request has a time limit. The webhook
//! handler reads its body under a size and time limit, checks the signature before anything
//! else, and only then takes one of the store-write slots (429 when none frees up soon), so
//! unsigned traffic never holds what signed deliveries need. [`server`] runs the connections.

mod admin;
mod auth;
mod ci;
pub mod ci_auth;
mod error;
mod gates;
mod health;
pub mod server;
mod verdict;
mod webhook;

use axum::error_handling::HandleErrorLayer;
use axum::extract::Request;
use axum::http::{HeaderName, Method, Uri};
use axum::response::IntoResponse;
use axum::{BoxError, Router};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use admin::AdminState;
pub use auth::BearerToken;
pub use ci::CiState;
pub use error::ApiError;
pub use health::HealthState;
pub use webhook::WebhookState;

use crate::config::HttpConfig;

/// Each area of the API with the state it needs, and no more: a handler reaches only its
/// own area's state. Each is one `Arc` (axum clones the state for every request; measured:
/// cloning and dropping many fields was 6 % of the CPU under a forged flood).
pub struct Areas {
    pub webhook: WebhookState,
    pub admin: AdminState,
    pub ci: CiState,
    pub health: HealthState,
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub fn router(areas: Areas, config: &HttpConfig) -> Router {
    Router::new()
        .merge(webhook::routes(areas.webhook))
        .merge(admin::routes(areas.admin))
        .merge(ci::routes(areas.ci))
        .merge(health::routes(areas.health))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
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
