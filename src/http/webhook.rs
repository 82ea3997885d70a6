//! `POST /webhooks/sym`: verify, parse, store, answer. The approval itself happens later, in
//! the worker; this handler only makes the event durable.
//!
//! Order matters: the raw body is read under BODY_READ_TIMEOUT (408) and MAX_BODY_BYTES (413),
//! the signature is checked on those exact bytes (401, reason logged, rate-limited), then the
//! JSON is parsed (400/422); only a signed, valid event then takes a store-write slot (429
//! when none frees up within [`SLOT_WAIT`]), and the delivery and its task are committed in
//! one transaction (503 if the store cannot) before any 2xx.

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};

use std::sync::Arc;

use axum::routing::post;
use axum::Router;
use tokio::sync::{Notify, Semaphore};

use super::error::ApiError;
use crate::clock::Clock;
use crate::domain::task::TaskRules;
use crate::inbound::signature::{Verifier, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP};
use crate::inbound::sym_event::EventError;
use crate::metrics::Metrics;
use crate::store::{Intake, NewDelivery, Recorded};
use crate::telemetry::RateLimit;

/// How long a signed delivery waits for a store-write slot before 429.
const SLOT_WAIT: Duration = Duration::from_millis(250);

/// What the webhook routes need.
pub struct WebhookState {
    pub verifier: Verifier,
    pub clock: Clock,
    pub metrics: Metrics,
    /// ON_DENY, APPROVAL_TIMEOUT, HOLD_JOB_NAMES.
    pub rules: Arc<TaskRules>,
    pub max_body_bytes: usize,
    pub body_read_timeout: Duration,
    /// Slots for writing signed deliveries to the store (MAX_CONCURRENT_REQUESTS).
    pub store_slots: Semaphore,
    /// Records deliveries, many to a commit.
    pub intake: Intake,
    /// Keeps a flood of refused requests from flooding the log.
    pub refusal_log: RateLimit,
    /// Wakes the reconciler when a run is bound.
    pub reconciler_wake: Arc<Notify>,
}

/// `POST /webhooks/sym` and `POST /webhooks/approval`: one handler, since a generic approval
/// event is told from a Sym log entry by its shape.
pub fn routes(state: WebhookState) -> Router {
    Router::new()
        .route("/webhooks/sym", post(receive))
        .route("/webhooks/approval", post(receive))
        .with_state(Arc::new(state))
}

async fn receive(
    State(state): State<Arc<WebhookState>>,
    request: axum::extract::Request,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let started = Instant::now();
    // The request taken apart, not its headers extracted: a `HeaderMap` extractor would copy
    // every header of every (forged) request.
    let (parts, body) = request.into_parts();
    let result = handle(&state, &parts.headers, body, started).await;
    // A stored delivery was counted where it was stored (see `handle`); refusals here.
    let outcome = match &result {
        Ok((_, outcome)) => *outcome,
        Err(e) => {
            let outcome = rejection_outcome(e);
            state.metrics.delivery(outcome);
            outcome
        }
    };
    if let Err(e) = &result {
        if matches!(e, ApiError::BodyTimeout(_)) {
            state
                .metrics
                .connection_closed(super::server::reason::BODY_TIMEOUT);
        }
        if let Some(suppressed) = state.refusal_log.allow() {
            tracing::info!(
                outcome,
                suppressed,
                latency_ms = started.elapsed().as_millis() as u64,
                "delivery refused"
            );
        }
    }
    result.map(|(response, _)| response)
}

type Handled = ((StatusCode, Json<Value>), &'static str);

/// The whole body, within the size and time limits.
async fn read_body(state: &Arc<WebhookState>, body: Body) -> Result<Bytes, ApiError> {
    let limited = http_body_util::Limited::new(body, state.max_body_bytes);
    match tokio::time::timeout(
        state.body_read_timeout,
        http_body_util::BodyExt::collect(limited),
    )
    .await
    {
        Err(_) => Err(ApiError::BodyTimeout(state.body_read_timeout)),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::PayloadTooLarge(state.max_body_bytes))
        }
        Ok(Err(e)) => Err(ApiError::BadRequest(format!("cannot read the body: {e}"))),
    }
}

async fn handle(
    state: &Arc<WebhookState>,
    headers: &HeaderMap,
    body: Body,
    started: Instant,
) -> Result<Handled, ApiError> {
    let body = read_body(state, body).await?;

    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let now = state.clock.unix_secs();
    let verified = state
        .verifier
        .verify(
            header(HEADER_ID),
            header(HEADER_TIMESTAMP),
            header(HEADER_SIGNATURE),
            &body,
            now,
        )
        .map_err(|reason| {
            // The reason helps operators; the caller gets the same 401 whatever it was. A
            // flood of forgeries is counted in full but logged only a few times a second.
            if let Some(suppressed) = state.refusal_log.allow() {
                tracing::warn!(reason = %reason, suppressed, "webhook signature check failed");
            }
            ApiError::InvalidSignature
        })?;

    let event = crate::inbound::parse_event(&body).map_err(|e| {
        tracing::warn!(webhook_id = %verified.webhook_id, error = %e, "signed body refused");
        match e {
            EventError::InvalidWorkflowId(detail) => ApiError::InvalidWorkflowId(detail),
            other => ApiError::BadRequest(other.to_string()),
        }
    })?;

    let received_at = state.clock.now_ms();
    let refused = |refused: crate::domain::task::HoldJobNotAllowed| {
        tracing::warn!(webhook_id = %verified.webhook_id, error = %refused, "signed event refused");
        ApiError::HoldJobNotAllowed(refused.to_string())
    };
    let task = state.rules.task_for(&event, received_at).map_err(refused)?;
    let binding = state.rules.binding_for(&event).map_err(refused)?;

    // Only now, signed and valid, does the delivery take a store-write slot.
    let _slot = match tokio::time::timeout(SLOT_WAIT, state.store_slots.acquire()).await {
        Ok(Ok(slot)) => slot,
        _ => return Err(ApiError::Overloaded),
    };
    // Stored and counted in a task of its own (the intake wakes the worker or hands it the task): a sender that hangs up
    // while its delivery is being committed cancels this handler, and the delivery, stored
    // all the same, must still be counted and worked on at once.
    let delivery = NewDelivery {
        webhook_id: verified.webhook_id.clone(),
        event: event.clone(),
        received_at,
        task,
        binding,
    };
    let storing = {
        let state = state.clone();
        tokio::spawn(async move {
            let recorded = state.intake.record(delivery).await?;
            state.metrics.delivery(recorded.status().as_str());
            if !matches!(recorded, Recorded::Duplicate { .. }) {
                // A run may have been bound: a gate waiting for that is read again now.
                state.reconciler_wake.notify_one();
            }
            Ok::<_, crate::store::StoreError>(recorded)
        })
    };
    let recorded = storing
        .await
        .map_err(|_| ApiError::StoreUnavailable)?
        .inspect_err(|_| {
            tracing::warn!(sym_event_id = %event.id, "delivery not stored; the sender should retry");
        })?;

    let delivery_id = recorded.delivery_id();
    let outcome = recorded.status().as_str();
    let (status, body) = match &recorded {
        Recorded::Queued { .. } => (
            StatusCode::ACCEPTED,
            json!({ "delivery_id": delivery_id, "status": outcome }),
        ),
        Recorded::Bound { .. } => (
            StatusCode::OK,
            json!({ "delivery_id": delivery_id, "status": outcome }),
        ),
        Recorded::Ignored { .. } => (
            StatusCode::OK,
            json!({ "delivery_id": delivery_id, "status": outcome, "event_type": event.event_type }),
        ),
        Recorded::Duplicate { .. } => (
            StatusCode::OK,
            json!({ "delivery_id": delivery_id, "status": outcome }),
        ),
    };
    tracing::info!(
        delivery_id = %delivery_id,
        webhook_id = %verified.webhook_id,
        sym_event_id = %event.id,
        event_type = %event.event_type,
        workflow_id = event.workflow_id.map(|w| w.to_string()),
        approver = event.approver_username.as_deref().or(event.approver_name.as_deref()),
        outcome,
        latency_ms = started.elapsed().as_millis() as u64,
        "delivery"
    );
    Ok(((status, Json(body)), outcome))
}

/// The metrics label for a refused delivery.
fn rejection_outcome(error: &ApiError) -> &'static str {
    match error {
        ApiError::InvalidSignature => "rejected_signature",
        ApiError::BadRequest(_) => "rejected_invalid_body",
        ApiError::InvalidWorkflowId(_) => "rejected_invalid_workflow_id",
        ApiError::HoldJobNotAllowed(_) => "rejected_hold_job_not_allowed",
        ApiError::PayloadTooLarge(_) => "rejected_too_large",
        ApiError::BodyTimeout(_) => "rejected_body_timeout",
        ApiError::Overloaded => "rejected_overloaded",
        ApiError::StoreUnavailable => "store_unavailable",
        _ => "rejected_other",
    }
}
