//! The audit API: `GET /v1/approvals` and `GET /v1/approvals/{id}`, behind a bearer token.
//!
//! Without `ADMIN_TOKEN` the routes answer 404 (as if absent). The token check compares
//! SHA-256 digests in constant time, so neither the content nor the length of the configured
//! token leaks through timing.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::error::ApiError;
use super::AppState;
use crate::store::audit::{ApprovalDetail, Cursor, Page};

const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 200;

/// The configured admin token, kept as its digest for constant-time comparison.
#[derive(Clone)]
pub struct AdminToken(Arc<[u8; 32]>);

impl AdminToken {
    pub fn new(token: &SecretString) -> Self {
        Self(Arc::new(
            Sha256::digest(token.expose_secret().as_bytes()).into(),
        ))
    }

    fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        digest.ct_eq(self.0.as_ref()).into()
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken([REDACTED])")
    }
}

/// 404 when the API is disabled, 401 without the right bearer token.
pub async fn require_admin(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = &state.admin_token else {
        let path = request.uri().path().to_owned();
        return ApiError::NotFound(format!("no route for {} {path}", request.method()))
            .into_response();
    };
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match presented {
        Some(p) if token.matches(p) => next.run(request).await,
        _ => {
            tracing::warn!(path = %request.uri().path(), "audit API: missing or wrong bearer token");
            ApiError::AdminUnauthorized.into_response()
        }
    }
}

pub async fn list_approvals(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Page>, ApiError> {
    let mut workflow_id = None;
    let mut limit = DEFAULT_LIMIT;
    let mut cursor = None;
    for (name, value) in &params {
        let value = value.trim();
        match name.as_str() {
            _ if value.is_empty() => {}
            "workflow_id" => {
                workflow_id = Some(Uuid::try_parse(value).map_err(|_| {
                    ApiError::BadRequest(format!("workflow_id {value:?} is not a UUID"))
                })?);
            }
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "limit must be an integer from 1 to {MAX_LIMIT}, not {value:?}"
                        ))
                    })?;
            }
            "cursor" => {
                cursor = Some(Cursor::decode(value).ok_or_else(|| {
                    ApiError::BadRequest("cursor is not one this API returned".into())
                })?);
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {other:?}; use workflow_id, limit, cursor"
                )))
            }
        }
    }
    let page = state
        .store
        .audit_list(workflow_id, limit, cursor.as_ref())
        .await?;
    Ok(Json(page))
}

pub async fn get_approval(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ApprovalDetail>, ApiError> {
    let unknown = || ApiError::NotFound(format!("no approval with id {id:?}"));
    if Uuid::try_parse(&id).is_err() {
        return Err(unknown());
    }
    state
        .store
        .audit_get(&id)
        .await?
        .map(Json)
        .ok_or_else(unknown)
}
