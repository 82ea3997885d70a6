//! The generic approval event: for approval systems other than Sym (a Slack workflow, a
//! ticketing system's automation, anything that can call a webhook after a decision). Signed
//! like Sym's deliveries (Standard Webhooks), deduplicated, approved exactly once, audited and
//! verdicted the same way; only its shape differs. The JSON Schema is
//! `docs/approval-event.schema.json`:
//!
//! ```json
//! {"request_id": "CHG-1042", "decision": "approve", "workflow_id": "<uuid>",
//!  "approver": "alice@example.com", "hold_job_name": "wait_for_sym_approval"}
//! ```
//!
//! Told apart from a Sym log entry by its top-level `decision` (a log entry has none; it has
//! an `event` object). Sym's log entry stays the primary input, unchanged.

use serde::Deserialize;
use uuid::Uuid;

use super::sym_event::EventError;
use crate::domain::event::{Event, EventKind};

/// Longest request id, approver and approver name accepted.
const MAX_TEXT: usize = 256;

#[derive(Deserialize)]
struct RawApproval {
    request_id: serde_json::Value,
    decision: serde_json::Value,
    workflow_id: serde_json::Value,
    approver: serde_json::Value,
    #[serde(default)]
    approver_name: Option<serde_json::Value>,
    #[serde(default)]
    hold_job_name: Option<serde_json::Value>,
}

/// Is this body a generic approval event (rather than a Sym log entry)?
pub fn is_generic(value: &serde_json::Value) -> bool {
    value.get("decision").is_some() && value.get("event").is_none()
}

fn text(value: &serde_json::Value, field: &str) -> Result<String, EventError> {
    match value.as_str().map(str::trim) {
        Some(s) if !s.is_empty() && s.len() <= MAX_TEXT && !s.chars().any(char::is_control) => {
            Ok(s.to_owned())
        }
        _ => Err(EventError::NotLogEntry(format!(
            "`{field}` must be text of 1 to {MAX_TEXT} characters without control characters"
        ))),
    }
}

/// The event, as the service works every approval: a [`Event`] whose id is
/// `generic:<request_id>:<decision>` (so a repeat of the same decision is a duplicate), with
/// no Sym run.
pub fn parse(value: serde_json::Value) -> Result<Event, EventError> {
    let raw: RawApproval = serde_json::from_value(value).map_err(|e| {
        EventError::NotLogEntry(format!(
            "not an approval event {{\"request_id\", \"decision\", \"workflow_id\", \"approver\"}}: \
             {e}"
        ))
    })?;
    let request_id = text(&raw.request_id, "request_id")?;
    let (kind, decision) = match raw.decision.as_str() {
        Some("approve") => (EventKind::Approve, "approve"),
        Some("deny") => (EventKind::Deny, "deny"),
        _ => {
            return Err(EventError::NotLogEntry(
                "`decision` must be \"approve\" or \"deny\"".into(),
            ))
        }
    };
    let workflow_id = raw
        .workflow_id
        .as_str()
        .and_then(|w| Uuid::try_parse(w.trim()).ok())
        .ok_or_else(|| {
            EventError::InvalidWorkflowId("`workflow_id` must be a CircleCI workflow UUID".into())
        })?;
    let approver = text(&raw.approver, "approver")?;
    let approver_name = raw
        .approver_name
        .filter(|v| !v.is_null())
        .map(|v| text(&v, "approver_name"))
        .transpose()?;
    let hold_job_name = match raw.hold_job_name {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) if s.trim().is_empty() => None,
        Some(v) => Some(text(&v, "hold_job_name")?),
    };
    Ok(Event {
        id: format!("generic:{request_id}:{decision}"),
        event_type: decision.to_owned(),
        kind,
        workflow_id: Some(workflow_id),
        workflow_url: None,
        merging_user: None,
        approver_username: Some(approver),
        approver_name,
        run_srn: None,
        run_id: None,
        hold_job_name,
    })
}

/// A generic approval event body (for `send-event --generic` and the tests).
pub fn sample_body(
    request_id: &str,
    decision: &str,
    workflow_id: &str,
    approver: &str,
    hold_job_name: Option<&str>,
) -> serde_json::Value {
    let mut body = serde_json::json!({
        "request_id": request_id,
        "decision": decision,
        "workflow_id": workflow_id,
        "approver": approver,
    });
    if let Some(hold) = hold_job_name {
        body["hold_job_name"] = hold.into();
    }
    body
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const WF: &str = "7b2d6c1e-8f3a-4b5c-9d0e-1f2a3b4c5d6e";

    #[test]
    fn an_approval_becomes_the_event_the_service_works() {
        let body = sample_body("CHG-1", "approve", WF, "alice@example.com", Some("prod"));
        assert!(is_generic(&body));
        let event = parse(body).unwrap();
        assert_eq!(event.id, "generic:CHG-1:approve");
        assert_eq!(event.kind, EventKind::Approve);
        assert_eq!(event.workflow_id.unwrap().to_string(), WF);
        assert_eq!(
            event.approver_username.as_deref(),
            Some("alice@example.com")
        );
        assert_eq!(event.hold_job_name.as_deref(), Some("prod"));
        assert_eq!(event.run_id, None);
        let deny = parse(sample_body("CHG-1", "deny", WF, "bob", None)).unwrap();
        assert_eq!(
            (deny.kind, deny.id.as_str()),
            (EventKind::Deny, "generic:CHG-1:deny")
        );
    }

    #[test]
    fn bad_approvals_are_refused_with_the_field_named() {
        let good = sample_body("r", "approve", WF, "a", None);
        for (field, value, workflow) in [
            ("decision", serde_json::json!("maybe"), false),
            ("decision", serde_json::json!(1), false),
            ("request_id", serde_json::json!(""), false),
            ("approver", serde_json::json!("a\nb"), false),
            ("workflow_id", serde_json::json!("../x"), true),
        ] {
            let mut body = good.clone();
            body[field] = value;
            let err = parse(body).unwrap_err();
            if workflow {
                assert!(matches!(err, EventError::InvalidWorkflowId(_)), "{field}");
            } else {
                assert!(err.to_string().contains(field), "{field}: {err}");
            }
        }
        assert!(parse(serde_json::json!({"decision": "approve"})).is_err());
        // A Sym log entry is not generic, even with a stray `decision`.
        assert!(!is_generic(
            &serde_json::json!({"event": {"type": "approve"}, "decision": "x"})
        ));
    }
}
