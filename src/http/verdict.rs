//! `GET /v1/verdicts/{workflow_id}[?hold_job=<name>]`: the deploy job's provenance check,
//! for one hold job (the service's default unless `hold_job` names another). The caller is a
//! job of that workflow's pipeline (its OIDC token) or, opted in, holds `VERDICT_TOKEN`.
//!
//! 200 `{"workflow_id", "hold_job", "verdict": "approved" | "pending" | "not_approved",
//! "detail", "via", "approved_workflow_id", "approver"}`. The decision is `domain::verdict`'s;
//! this handler gathers the records and, for a workflow with none of its own (a rerun?), asks
//! CircleCI through the rate-limited lookups (429 when they are over their limit).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};

use super::ci_auth::CiRoute;
use super::error::ApiError;
use super::AppState;
use crate::domain::ids::WorkflowId;
use crate::domain::verdict::{self, Verdict};
use crate::domain::workflow::WorkflowInfo;
use crate::outbound::circleci::lookups::LookupError;

pub async fn get_verdict(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(workflow): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    if !state.ci.serves(CiRoute::Verdicts) {
        return Err(ApiError::NotFound(format!(
            "no route for GET /v1/verdicts/{workflow}"
        )));
    }
    let caller = state.ci.caller(&headers, CiRoute::Verdicts).await?;
    let workflow_id: WorkflowId = workflow
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("workflow id {workflow:?} is not a UUID")))?;
    let mut hold_job = state.rules.default_hold_job().to_owned();
    for (name, value) in &params {
        match name.as_str() {
            "hold_job" if value.trim().is_empty() => {}
            "hold_job" if state.rules.hold_job_names.iter().any(|n| n == value.trim()) => {
                value.trim().clone_into(&mut hold_job);
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
    let proven = state
        .ci
        .may_act_for(&caller, workflow_id, CiRoute::Verdicts)
        .await?;
    let default_hold = state.rules.default_hold_job();
    let records = state
        .store
        .approvals_of_workflow(workflow_id, Some(&hold_job), default_hold)
        .await?;
    let id = workflow_id.to_string();
    let verdict = match verdict::from_own_records(&id, &records) {
        Some(verdict) => verdict,
        None => rerun_verdict(&state, workflow_id, &hold_job, proven).await?,
    };
    tracing::info!(
        workflow_id = %id,
        hold_job = %hold_job,
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
        "hold_job": hold_job,
        "verdict": verdict,
        "detail": detail,
        "via": via,
        "approved_workflow_id": approved_workflow_id,
        "approver": approver,
    })))
}

/// A workflow with no approve task of its own for the hold job: look it up at CircleCI, and if
/// it reruns an approved workflow of the same pipeline, check that its hold job is the very
/// job that was approved. `known` is the workflow as the caller check already read it.
async fn rerun_verdict(
    state: &AppState,
    workflow_id: WorkflowId,
    hold_job: &str,
    known: Option<WorkflowInfo>,
) -> Result<Verdict, ApiError> {
    let id = workflow_id.to_string();
    let info = match known {
        Some(info) => info,
        None => match state.ci.lookups().workflow(workflow_id).await {
            Ok(Some(info)) => info,
            Ok(None) => return Ok(verdict::for_rerun(&id, None, None)),
            Err(e) => return Err(lookup_failed(state, e)),
        },
    };
    let default_hold = state.rules.default_hold_job();
    let original = state
        .store
        .approved_in_pipeline(&info.pipeline_id, &info.name, Some(hold_job), default_hold)
        .await?;
    let Some(original) = original else {
        return Ok(verdict::for_rerun(&id, None, None));
    };
    let hold = state
        .ci
        .lookups()
        .hold_job(workflow_id, hold_job)
        .await
        .map_err(|e| lookup_failed(state, e))?;
    Ok(verdict::for_rerun(&id, Some(&original), hold.as_ref()))
}

fn lookup_failed(state: &AppState, e: LookupError) -> ApiError {
    match e {
        LookupError::RateLimited => {
            state.metrics.lookup_limited();
            ApiError::LookupsLimited
        }
        LookupError::Upstream(e) => {
            tracing::warn!(error = %e, "verdict: CircleCI lookup failed");
            ApiError::Upstream(e.to_string())
        }
    }
}
