//! `POST /v1/gates`: CircleCI registers a hold job and its Sym run right after `sym/request`,
//! behind `GATE_TOKEN` (a token that can register gates and do nothing else).
//!
//! 201 for a new gate, 200 for the same gate again, 409 when the workflow is registered with
//! another run or hold job; 400/422 for bad input. The gate is committed before any 2xx.

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::check_bearer;
use super::error::ApiError;
use super::AppState;
use crate::domain::ids::WorkflowId;
use crate::outbound::sym_api::validate_run_id;
use crate::store::Registered;

/// Largest registration body: three short strings.
pub const MAX_GATE_BODY: usize = 16 * 1024;

/// 404 when no `GATE_TOKEN` is configured, 401 without it.
pub async fn require_gate_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    match check_bearer(state.gate_token.as_ref(), &request, "gate API") {
        Ok(()) => next.run(request).await,
        Err(refused) => refused.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Registration {
    workflow_id: String,
    sym_run_id: String,
    #[serde(default)]
    hold_job_name: Option<String>,
}

pub async fn register(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let registration: Registration = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "body must be JSON {{\"workflow_id\", \"sym_run_id\", \"hold_job_name\"?}}: {e}"
        ))
    })?;
    let workflow: WorkflowId = registration.workflow_id.parse().map_err(|_| {
        ApiError::InvalidWorkflowId(format!(
            "workflow_id {:?} is not a UUID",
            registration.workflow_id
        ))
    })?;
    validate_run_id(&registration.sym_run_id)
        .map_err(|why| ApiError::BadRequest(format!("sym_run_id: {why}")))?;
    let hold_job = match registration
        .hold_job_name
        .as_deref()
        .map(str::trim)
        .filter(|h| !h.is_empty())
    {
        None => state.rules.default_hold_job().to_owned(),
        Some(name) if state.rules.hold_job_names.iter().any(|n| n == name) => name.to_owned(),
        Some(name) => {
            return Err(ApiError::HoldJobNotAllowed(format!(
                "hold job {name:?} is not in HOLD_JOB_NAMES ({})",
                state.rules.hold_job_names.join(", ")
            )))
        }
    };
    let answer = json!({
        "workflow_id": workflow.to_string(),
        "sym_run_id": registration.sym_run_id,
        "hold_job_name": hold_job,
    });
    match state
        .store
        .register_gate(workflow, &registration.sym_run_id, &hold_job)
        .await?
    {
        Registered::Created => {
            tracing::info!(workflow_id = %workflow, sym_run_id = %registration.sym_run_id, hold_job = %hold_job, "gate registered");
            state.reconciler_wake.notify_one();
            Ok((StatusCode::CREATED, Json(with_status(answer, "registered"))))
        }
        Registered::Same => Ok((
            StatusCode::OK,
            Json(with_status(answer, "already_registered")),
        )),
        Registered::Conflict { sym_run_id } => Err(ApiError::Conflict(format!(
            "workflow {workflow} is already registered with Sym run {sym_run_id:?} (or another \
             hold job)"
        ))),
    }
}

fn with_status(mut answer: Value, status: &str) -> Value {
    answer["status"] = status.into();
    answer
}
