//! The one error type of the HTTP API. Every variant answers with its status code and a JSON
//! body `{"error": <code>, "detail": <text>}`; internal causes are logged where they happen,
//! never echoed to the caller.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401: any signature or timestamp problem. Deliberately identical for every cause.
    #[error("invalid webhook signature")]
    InvalidSignature,
    /// 401: admin API without a valid bearer token.
    #[error("a valid bearer token is required")]
    AdminUnauthorized,
    /// 401: a CI caller without a valid token (missing, not signed by the issuer, expired,
    /// another issuer or audience); the detail says which.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: a valid CI token that may not do this (another pipeline's, a project that is not
    /// allowed, an SSH rerun).
    #[error("{0}")]
    Forbidden(String),
    /// 503: the OIDC issuer's keys cannot be fetched, so no token can be checked now.
    #[error(
        "CI callers cannot be checked now (the OIDC issuer's keys are unavailable); retry later"
    )]
    IdentityUnavailable,
    /// 400: the body is not JSON or not a Sym log entry; or bad query parameters.
    #[error("{0}")]
    BadRequest(String),
    /// 422: an approve event without a valid UUID `workflow_id`.
    #[error("{0}")]
    InvalidWorkflowId(String),
    /// 422: the event names a hold job that is not in HOLD_JOB_NAMES.
    #[error("{0}")]
    HoldJobNotAllowed(String),
    /// 408: the body did not arrive within BODY_READ_TIMEOUT.
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(std::time::Duration),
    /// 413: the body is over the configured limit.
    #[error("the body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// 404
    #[error("{0}")]
    NotFound(String),
    /// 409: the request contradicts what is stored (a gate with another run).
    #[error("{0}")]
    Conflict(String),
    /// 405
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 429: the CircleCI lookups this request needs are over their rate limit; retry shortly.
    #[error("too many CircleCI lookups at once (5 a second at most); retry shortly")]
    LookupsLimited,
    /// 429: too many requests in flight; retry shortly.
    #[error("too many requests in flight; retry shortly")]
    Overloaded,
    /// 503: the store cannot take the event now; the sender should retry.
    #[error("the event store is unavailable; retry later")]
    StoreUnavailable,
    /// 502: CircleCI could not answer a lookup this request needs; retry later.
    #[error("CircleCI could not be asked: {0}")]
    Upstream(String),
    /// 503: the request took longer than REQUEST_TIMEOUT.
    #[error("the request timed out; retry later")]
    Timeout,
    /// 500: a bug (a caught panic).
    #[error("internal error")]
    Internal,
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::InvalidSignature => (StatusCode::UNAUTHORIZED, "invalid_signature"),
            Self::AdminUnauthorized | Self::Unauthorized(_) => {
                (StatusCode::UNAUTHORIZED, "unauthorized")
            }
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::IdentityUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "oidc_unavailable"),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            Self::InvalidWorkflowId(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_workflow_id"),
            Self::HoldJobNotAllowed(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "hold_job_not_allowed")
            }
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "gate_conflict"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::Overloaded => (StatusCode::TOO_MANY_REQUESTS, "overloaded"),
            Self::LookupsLimited => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::StoreUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            Self::Timeout => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
            Self::Upstream(_) => (StatusCode::BAD_GATEWAY, "upstream_unavailable"),
            Self::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

/// Any store failure answers 503 with `Retry-After`: the caller should come back. The cause
/// is logged here, once, and never shown to the caller.
impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        tracing::error!(error = %e, "store operation failed");
        Self::StoreUnavailable
    }
}

/// The 401 every forged or malformed signature gets, built once: a flood of forgeries costs
/// no serialisation per request.
const INVALID_SIGNATURE_BODY: &str =
    r#"{"detail":"invalid webhook signature","error":"invalid_signature"}"#;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::InvalidSignature = self {
            return (
                StatusCode::UNAUTHORIZED,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                INVALID_SIGNATURE_BODY,
            )
                .into_response();
        }
        let (status, code) = self.status_and_code();
        let mut response = (
            status,
            Json(json!({ "error": code, "detail": self.to_string() })),
        )
            .into_response();
        let headers = response.headers_mut();
        match self {
            Self::Overloaded
            | Self::LookupsLimited
            | Self::StoreUnavailable
            | Self::Timeout
            | Self::Upstream(_)
            | Self::IdentityUnavailable => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            // A client this slow does not get to keep the connection.
            Self::BodyTimeout(_) => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Self::AdminUnauthorized | Self::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}
