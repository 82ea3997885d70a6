//! `GET /v1/verdicts/{workflow_id}`: the deploy job's provenance check, behind
//! `VERDICT_TOKEN`, a token that can ask for one workflow's verdict and nothing else.
//!
//! 200 `{"workflow_id", "verdict": "approved" | "pending" | "not_approved", "detail", "via",
//! "approved_workflow_id", "approver"}`. The decision is `domain::verdict`'s; this handler
//! gathers the records and, for a workflow with none (a rerun?), asks CircleCI about it.

use std::collections::HashMap;

use axum::extract::{Path, Query, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::auth::check_bearer;
use super::error::ApiError;
use super::AppState;
use crate::domain::ids::WorkflowId;
use crate::domain::verdict::{self, Verdict};
use crate::outbound::circleci::CircleError;

/// 404 when no `VERDICT_TOKEN` is configured, 401 without it.
pub async fn require_verdict_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    match check_bearer(state.verdict_token.as_ref(), &request, "verdict API") {
        Ok(()) => next.run(request).await,
        Err(refused) => refused.into_response(),
    }
}

pub async fn get_verdict(
    State(state): State<AppState>,
    Path(workflow): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let workflow_id: WorkflowId = workflow
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("workflow id {workflow:?} is not a UUID")))?;
    let mut hold_job = None;
    for (name, value) in &params {
        match name.as_str() {
            "hold_job" if value.trim().is_empty() => {}
            "hold_job" if state.rules.hold_job_names.iter().any(|n| n == value.trim()) => {
                hold_job = Some(value.trim().to_owned());
            }
            "hold_job" => {
                return Err(ApiError::BadRequest(format!(
                    "hold_job {value:?} is not in HOLD_JOB_NAMES"
                )))
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {other:?}; use hold_job"
                )))
            }
        }
    }
    let default_hold = state.rules.default_hold_job();
    let records = state
        .store
        .approvals_of_workflow(workflow_id, hold_job.as_deref(), default_hold)
        .await?;
    let id = workflow_id.to_string();
    let verdict = match verdict::from_own_records(&id, &records) {
        Some(verdict) => verdict,
        None => rerun_verdict(&state, workflow_id, hold_job.as_deref()).await?,
    };
    tracing::info!(
        workflow_id = %id,
        verdict = ?verdict.verdict,
        via = ?verdict.via,
        "verdict"
    );
    let Verdict {
        verdict,
        detail,
        via,
        approved_workflow_id,
        approver,
    } = verdict;
    Ok(Json(json!({
        "workflow_id": id,
        "verdict": verdict,
        "detail": detail,
        "via": via,
        "approved_workflow_id": approved_workflow_id,
        "approver": approver,
    })))
}

/// A workflow with no approve task of its own: look it up at CircleCI, and if it reruns an
/// approved workflow of the same pipeline, check its hold job.
async fn rerun_verdict(
    state: &AppState,
    workflow_id: WorkflowId,
    hold_job: Option<&str>,
) -> Result<Verdict, ApiError> {
    let id = workflow_id.to_string();
    let mut calls = Vec::new();
    let info = match state.circleci.workflow_info(workflow_id, &mut calls).await {
        Ok(info) => info,
        Err(CircleError::NotFound) => return Ok(verdict::for_rerun(&id, None, None, None)),
        Err(e) => return Err(upstream(e)),
    };
    let default_hold = state.rules.default_hold_job();
    let original = state
        .store
        .approved_in_pipeline(&info.pipeline_id, &info.name, hold_job, default_hold)
        .await?;
    let Some(original) = original else {
        return Ok(verdict::for_rerun(&id, None, None, None));
    };
    let hold_name = original
        .hold_job_name
        .clone()
        .unwrap_or_else(|| default_hold.to_owned());
    let view = state
        .circleci
        .workflow_view(workflow_id, &hold_name, &mut calls)
        .await
        .map_err(upstream)?;
    Ok(verdict::for_rerun(
        &id,
        Some(&original),
        view.hold.as_ref(),
        state.token.user_id().as_deref(),
    ))
}

fn upstream(e: CircleError) -> ApiError {
    tracing::warn!(error = %e, "verdict: CircleCI lookup failed");
    ApiError::Upstream(e.to_string())
}
