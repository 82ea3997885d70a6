//! The fake's HTTP handlers: token check, fault injection and recording around each
//! operation.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::{
    standard_workflow, FakeJob, Fault, Inner, RecordedCall, Shared, DEFAULT_HOLD, TOKEN_USER_ID,
};

#[derive(Deserialize)]
pub(super) struct PageQuery {
    #[serde(rename = "page-token")]
    page_token: Option<String>,
}

fn message(status: StatusCode, text: &str) -> Response {
    (status, Json(json!({ "message": text }))).into_response()
}

/// Marks an approve's answer: the hold job was already approved (by this user) when it was
/// carried out.
#[derive(Clone, Copy)]
struct FoundApproved(Uuid);

/// Token check, fault injection and recording around one operation. `found_approved_by`: an
/// approve whose hold job was already approved when it arrived, and by whom.
#[allow(clippy::too_many_arguments)]
async fn handle(
    shared: &Shared,
    headers: &HeaderMap,
    operation: &'static str,
    method: &'static str,
    path: String,
    query: Option<String>,
    found_approved_by: Option<Uuid>,
    act: impl FnOnce(&mut Inner) -> Response,
) -> Response {
    let token_ok = headers
        .get("circle-token")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == shared.token);
    let fault = if token_ok {
        shared.take_fault(operation, &path)
    } else {
        None
    };
    let mut found_approved_by = found_approved_by;
    let response = match (&fault, token_ok) {
        (_, false) => message(StatusCode::UNAUTHORIZED, "You must log in first."),
        (Some(f), true) if !f.after_effect && f.status != 0 => fault_response(f),
        (fault, true) => {
            if let Some(delay) = fault.as_ref().and_then(|f| f.effect_delay) {
                tokio::time::sleep(delay).await;
            }
            let done = act(&mut shared.lock());
            found_approved_by = done.extensions().get::<FoundApproved>().map(|f| f.0);
            match fault {
                Some(f) if f.status != 0 => fault_response(f),
                _ => done,
            }
        }
    };
    let now = SystemTime::now();
    shared.record(RecordedCall {
        operation,
        method,
        path,
        query,
        token_ok,
        status: response.status().as_u16(),
        at: Some(Instant::now()),
        unix_ms: crate::unix_ms(now),
        unix_us: now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
        fault: fault.as_ref().and_then(|f| f.label),
        found_approved_by,
    });
    // The effect and the record above are done; only the answer is late (a client timeout
    // then leaves the outcome unknown to the caller, as with a real slow API).
    if let Some(delay) = fault.as_ref().and_then(|f| f.delay) {
        tokio::time::sleep(delay).await;
    }
    response
}

fn fault_response(fault: &Fault) -> Response {
    let status = StatusCode::from_u16(fault.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = message(status, "injected fault");
    if let Some(secs) = fault.retry_after {
        if let Ok(value) = secs.to_string().parse() {
            response.headers_mut().insert("retry-after", value);
        }
    }
    response
}

/// With `--any-workflow`, a workflow is created the first time any route names it (its jobs
/// and its own record may be read in either order, or at once).
fn seen(shared: &Shared, inner: &mut Inner, workflow_id: Uuid) {
    if let Some(project) = &shared.any_workflow {
        inner
            .workflows
            .entry(workflow_id)
            .or_insert_with(|| standard_workflow(project, DEFAULT_HOLD).1);
    }
}

pub(super) async fn list_jobs(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Query(query): Query<PageQuery>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/api/v2/workflow/{id}/job");
    let page_size = shared.page_size;
    let start: usize = query
        .page_token
        .as_deref()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let raw_query = query.page_token.as_ref().map(|t| format!("page-token={t}"));
    handle(
        &shared,
        &headers,
        "list_jobs",
        "GET",
        path,
        raw_query,
        None,
        |inner| {
            let Ok(workflow_id) = Uuid::try_parse(&id) else {
                return message(StatusCode::NOT_FOUND, "Workflow not found");
            };
            seen(&shared, inner, workflow_id);
            let Some(workflow) = inner.workflows.get(&workflow_id) else {
                return message(StatusCode::NOT_FOUND, "Workflow not found");
            };
            let items: Vec<_> = workflow
                .jobs
                .iter()
                .skip(start)
                .take(page_size)
                .map(|j| {
                    json!({
                        "id": j.id,
                        "name": j.name,
                        "type": j.job_type,
                        "status": j.effective_status(),
                        "approval_request_id": j.approval_request_id,
                        "project_slug": workflow.project_slug,
                        "job_number": (j.job_type != "approval").then_some(j.job_number),
                        "approved_by": j.approved_by,
                        "dependencies": [],
                        "started_at": null,
                        "stopped_at": null,
                    })
                })
                .collect();
            let next =
                (start + page_size < workflow.jobs.len()).then(|| (start + page_size).to_string());
            Json(json!({ "items": items, "next_page_token": next })).into_response()
        },
    )
    .await
}

pub(super) async fn me(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    handle(
        &shared,
        &headers,
        "me",
        "GET",
        "/api/v2/me".to_owned(),
        None,
        None,
        |_| {
            Json(
                json!({ "id": TOKEN_USER_ID, "login": "sym-approver-bot", "name": "Sym approver" }),
            )
            .into_response()
        },
    )
    .await
}

pub(super) async fn workflow(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/api/v2/workflow/{id}");
    handle(
        &shared,
        &headers,
        "get_workflow",
        "GET",
        path,
        None,
        None,
        |inner| {
            let Ok(workflow_id) = Uuid::try_parse(&id) else {
                return message(StatusCode::NOT_FOUND, "Workflow not found");
            };
            seen(&shared, inner, workflow_id);
            let Some(workflow) = inner.workflows.get(&workflow_id) else {
                return message(StatusCode::NOT_FOUND, "Workflow not found");
            };
            let status = if workflow
                .jobs
                .iter()
                .any(|j| j.effective_status() == "on_hold")
            {
                "on_hold"
            } else {
                "running"
            };
            Json(json!({
                "id": workflow_id,
                "name": workflow.name,
                "pipeline_id": workflow.pipeline_id,
                "pipeline_number": 1,
                "project_slug": workflow.project_slug,
                "status": status,
                "started_by": Uuid::nil(),
                "created_at": "2026-11-25T12:00:00Z",
                "stopped_at": null,
            }))
            .into_response()
        },
    )
    .await
}

pub(super) async fn approve(
    State(shared): State<Arc<Shared>>,
    Path((id, approval_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    // Carried out in a task of its own: a caller that hangs up does not stop an approve that
    // CircleCI has received (as with the real API).
    let detached = tokio::spawn(async move {
        let path = format!("/api/v2/workflow/{id}/approve/{approval_id}");
        let target = Uuid::try_parse(&id)
            .ok()
            .zip(Uuid::try_parse(&approval_id).ok());
        let found_approved_by = target.and_then(|(workflow_id, approval_id)| {
            hold_job(&mut shared.lock(), workflow_id, approval_id)
                .filter(|job| job.effective_status() == "success")
                .map(|job| job.approved_by.unwrap_or_default())
        });
        handle(
            &shared,
            &headers,
            "approve",
            "POST",
            path,
            None,
            found_approved_by,
            |inner| {
                let Some(job) = target.and_then(|(workflow_id, approval_id)| {
                    hold_job(inner, workflow_id, approval_id)
                }) else {
                    return message(StatusCode::NOT_FOUND, "Not found");
                };
                match job.effective_status() {
                    "on_hold" => {}
                    "success" => {
                        let mut refused = message(StatusCode::BAD_REQUEST, "Job is not on hold.");
                        let by = job.approved_by.unwrap_or_default();
                        refused.extensions_mut().insert(FoundApproved(by));
                        return refused;
                    }
                    _ => return message(StatusCode::BAD_REQUEST, "Job is not on hold."),
                }
                job.status = "success".to_owned();
                job.on_hold_at = None;
                job.approved_by = Some(TOKEN_USER_ID);
                (
                    StatusCode::ACCEPTED,
                    Json(json!({ "message": "Accepted." })),
                )
                    .into_response()
            },
        )
        .await
    });
    detached
        .await
        .unwrap_or_else(|_| message(StatusCode::INTERNAL_SERVER_ERROR, "fake CircleCI failed"))
}

/// The approval job an approve names (by `approval_request_id`, or by job id for a job
/// without one).
fn hold_job(inner: &mut Inner, workflow_id: Uuid, approval_id: Uuid) -> Option<&mut FakeJob> {
    inner
        .workflows
        .get_mut(&workflow_id)?
        .jobs
        .iter_mut()
        .find(|j| {
            j.job_type == "approval"
                && (j.approval_request_id == Some(approval_id)
                    || (j.approval_request_id.is_none() && j.id == approval_id))
        })
}

pub(super) async fn cancel(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/api/v2/workflow/{id}/cancel");
    handle(
        &shared,
        &headers,
        "cancel",
        "POST",
        path,
        None,
        None,
        |inner| {
            let Some(workflow) = Uuid::try_parse(&id)
                .ok()
                .and_then(|id| inner.workflows.get_mut(&id))
            else {
                return message(StatusCode::NOT_FOUND, "Workflow not found");
            };
            for job in &mut workflow.jobs {
                if job.status != "success" {
                    job.status = "canceled".to_owned();
                    job.on_hold_at = None;
                }
            }
            (
                StatusCode::ACCEPTED,
                Json(json!({ "message": "Accepted." })),
            )
                .into_response()
        },
    )
    .await
}
