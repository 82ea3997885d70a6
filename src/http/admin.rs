//! The audit API: `GET /v1/approvals` and `GET /v1/approvals/{id}`, behind `ADMIN_TOKEN`.
//! Without it the routes answer 404 (as if absent).

use std::collections::HashMap;

use axum::extract::{Path, Query, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use uuid::Uuid;

use std::sync::Arc;

use axum::routing::get;
use axum::{middleware, Router};

use super::auth::{check_bearer, BearerToken};
use super::error::ApiError;
use crate::store::audit::{ApprovalDetail, Cursor, Page};
use crate::store::Store;

/// What the audit API needs.
pub struct AdminState {
    pub store: Store,
    /// The audit API's token; None disables the API (404).
    pub admin_token: Option<BearerToken>,
}

pub fn routes(state: AdminState) -> Router {
    let state = Arc::new(state);
    Router::new()
        .route("/v1/approvals", get(list_approvals))
        .route("/v1/approvals/{id}", get(get_approval))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin))
        .with_state(state)
}

const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 200;

/// 404 when the API is disabled, 401 without the right bearer token.
async fn require_admin(
    State(state): State<Arc<AdminState>>,
    request: Request,
    next: Next,
) -> Response {
    match check_bearer(state.admin_token.as_ref(), &request, "audit API") {
        Ok(()) => next.run(request).await,
        Err(refused) => refused.into_response(),
    }
}

async fn list_approvals(
    State(state): State<Arc<AdminState>>,
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

async fn get_approval(
    State(state): State<Arc<AdminState>>,
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
