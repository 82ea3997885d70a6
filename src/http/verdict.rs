//! `GET /v1/verdicts/{workflow_id}[?hold_job=<name>]`: the deploy job's provenance check,
//! for one hold job (the service's default unless `hold_job` names another). The caller is a
//! job of that workflow's pipeline (its OIDC token) or, opted in, holds `VERDICT_TOKEN`.
//!
//! 200 `{"workflow_id", "hold_job", "verdict": "approved" | "pending" | "not_approved",
//! "detail", "via", "approved_workflow_id", "approver"}`. The decision is `domain::verdict`'s,
//! gathered by `crate::verdicts`; a workflow with none of its own (a rerun?) is looked up at
//! CircleCI through the rate-limited lookups (429 when they are over their limit).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};

use super::ci::CiShared;
use super::ci_auth::CiRoute;
use super::error::ApiError;
use crate::domain::ids::WorkflowId;
use crate::domain::verdict::Verdict;
use crate::outbound::circleci::lookups::LookupError;
use crate::verdicts::VerdictError;

pub async fn get_verdict(
    State(state): State<CiShared>,
    headers: HeaderMap,
    Path(workflow): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    if !state.auth.serves(CiRoute::Verdicts) {
        return Err(ApiError::NotFound(format!(
            "no route for GET /v1/verdicts/{workflow}"
        )));
    }
    let caller = state.auth.caller(&headers, CiRoute::Verdicts).await?;
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
        .auth
        .may_act_for(&caller, workflow_id, CiRoute::Verdicts)
        .await?;
    let verdict = match state.verdicts.verdict(workflow_id, &hold_job, proven).await {
        Ok(verdict) => verdict,
        Err(VerdictError::Store(e)) => return Err(e.into()),
        Err(VerdictError::Lookup(LookupError::RateLimited)) => {
            state.metrics.lookup_limited();
            return Err(ApiError::LookupsLimited);
        }
        Err(VerdictError::Lookup(LookupError::Upstream(e))) => {
            tracing::warn!(error = %e, "verdict: CircleCI lookup failed");
            return Err(ApiError::Upstream(e.to_string()));
        }
    };
    tracing::info!(
        workflow_id = %workflow_id,
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
        "workflow_id": workflow_id.to_string(),
        "hold_job": hold_job,
        "verdict": verdict,
        "detail": detail,
        "via": via,
        "approved_workflow_id": approved_workflow_id,
        "approver": approver,
    })))
}
