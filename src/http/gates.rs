//! `POST /v1/gates`: a CircleCI job registers a hold job of its own workflow and the Sym run
//! it waits for, right after `sym/request`. The caller proves itself with its OIDC token
//! (scoped to its pipeline) or, opted in, the static `GATE_TOKEN` (`super::ci_auth`).
//!
//! 201 for a new gate, 200 for the same gate again, 409 when the hold job is registered with
//! another run, the run with another gate, or Sym signed that the run was requested for
//! another workflow or hold job (no answer names a run or another workflow); 401/403 for the
//! caller; 400/422 for bad input. The gate is committed before any 2xx.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::ci::CiShared;
use super::ci_auth::CiRoute;
use super::error::ApiError;
use crate::domain::ids::WorkflowId;
use crate::outbound::sym_api::validate_run_id;
use crate::store::{GateConflict, NewGate, Registered};

/// Largest registration body: three short strings.
pub const MAX_GATE_BODY: usize = 16 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Registration {
    workflow_id: String,
    sym_run_id: String,
    #[serde(default)]
    hold_job_name: Option<String>,
}

pub async fn register(
    State(state): State<CiShared>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if !state.auth.serves(CiRoute::Gates) {
        return Err(ApiError::NotFound("no route for POST /v1/gates".into()));
    }
    let caller = state.auth.caller(&headers, CiRoute::Gates).await?;
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
    let proven = state
        .auth
        .may_act_for(&caller, workflow, CiRoute::Gates)
        .await?;
    let gate = NewGate {
        workflow_id: workflow,
        hold_job_name: &hold_job,
        sym_run_id: &registration.sym_run_id,
        pipeline_id: proven.as_ref().map(|w| w.pipeline_id.as_str()),
        project_slug: proven.as_ref().and_then(|w| w.project_slug.as_deref()),
    };
    let answer = json!({
        "workflow_id": workflow.to_string(),
        "sym_run_id": registration.sym_run_id,
        "hold_job_name": hold_job,
    });
    match state.store.register_gate(&gate).await? {
        Registered::Created { evicted } => {
            if evicted {
                state.metrics.gate_refused();
                tracing::warn!(workflow_id = %workflow, hold_job = %hold_job, "an earlier gate named this gate's Sym run, which Sym bound here: that gate is closed (run_bound_elsewhere)");
            }
            tracing::info!(workflow_id = %workflow, sym_run_id = %registration.sym_run_id, hold_job = %hold_job, "gate registered");
            state.reconciler_wake.notify_one();
            Ok((StatusCode::CREATED, Json(with_status(answer, "registered"))))
        }
        Registered::Same => Ok((
            StatusCode::OK,
            Json(with_status(answer, "already_registered")),
        )),
        Registered::Conflict(conflict) => {
            let detail = match conflict {
                GateConflict::HoldJobHasAnotherRun => format!(
                    "hold job {hold_job:?} of workflow {workflow} is already registered with \
                     another Sym run"
                ),
                GateConflict::RunHasAnotherGate => {
                    "this Sym run is already registered for another gate; a run gates one hold \
                     job of one workflow"
                        .to_owned()
                }
                GateConflict::RunBoundElsewhere => {
                    state.metrics.gate_refused();
                    "this Sym run was requested for another workflow or hold job (Sym signed \
                     that); it cannot gate this one"
                        .to_owned()
                }
            };
            tracing::warn!(workflow_id = %workflow, hold_job = %hold_job, ?conflict, "gate registration refused");
            Err(ApiError::Conflict(detail))
        }
    }
}

fn with_status(mut answer: Value, status: &str) -> Value {
    answer["status"] = status.into();
    answer
}
