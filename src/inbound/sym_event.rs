//! The Sym log entry (schema_version 4) that Sym's HTTP strategy and hooks deliver.
//!
//! Only the parts this service acts on are modelled; unknown fields are tolerated so Sym can
//! add to the schema without breaking deliveries. Parsing happens only after the signature check.

use serde::Deserialize;
use uuid::Uuid;

use crate::domain::event::{Event, EventKind};

/// The schema version this service understands.
pub const SCHEMA_VERSION: i64 = 4;

#[derive(Debug, Deserialize)]
struct RawLogEntry {
    id: String,
    #[serde(default)]
    meta: Option<RawMeta>,
    #[serde(default)]
    run: Option<RawRun>,
    event: RawEvent,
    #[serde(default)]
    actor: Option<RawActor>,
    #[serde(default)]
    fields: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Deserialize)]
struct RawMeta {
    #[serde(default)]
    schema_version: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct RawRun {
    #[serde(default)]
    srn: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawEvent {
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, Deserialize)]
struct RawActor {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    username: Option<String>,
}

/// Sym's `event.type` to what it asks of this service.
fn kind_of(kind: &str) -> EventKind {
    match kind {
        "approve" => EventKind::Approve,
        "request" => EventKind::Request,
        "deny" => EventKind::Deny,
        "expire" => EventKind::Expire,
        _ => EventKind::Other,
    }
}

/// The run id in a run's SRN: its identifier component.
///
/// Sym's SDK (`sym-sdk` 0.61.0, `sym/sdk/resource.py`, `SRN.parse`) defines an SRN as
/// `<ORG>:<MODEL>[:<TYPE>]:<SLUG>:<VERSION>[:<IDENTIFIER>]`, where only the models it lists
/// (`access_strategy`, `access_target`, `user`, `secret`, `secrets`, `integration`,
/// `log_destination`) have the TYPE component; components are lowercased and match
/// `[a-zA-Z0-9-_]+`. A run (`acme:run:ci-approval:1.0.0:<uuid>`) has no TYPE, so its
/// identifier is the fifth component. That this identifier is the `run_id` Sym's API answers
/// `POST /events/request` with (and serves at `GET /runs/{run_id}`) is an assumption,
/// written down in `docs/gates.md`. None for an SRN without an identifier or that does not
/// parse.
pub fn run_id_from_srn(srn: &str) -> Option<String> {
    const MODELS_WITH_TYPES: &[&str] = &[
        "access_strategy",
        "access_target",
        "user",
        "secret",
        "secrets",
        "integration",
        "log_destination",
    ];
    let srn = srn.trim().to_ascii_lowercase();
    if srn.ends_with(':') {
        return None;
    }
    let parts: Vec<&str> = srn.split(':').collect();
    let slug_like = |p: &str| {
        !p.is_empty()
            && p.len() <= 128
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    let model = *parts.get(1)?;
    let identifier_at = if MODELS_WITH_TYPES.contains(&model) {
        5
    } else {
        4
    };
    if parts.len() != identifier_at + 1 {
        return None;
    }
    // VERSION: "latest" or a semver of at most three digits a part (the SDK's pattern).
    let version_like = |p: &str| {
        p == "latest"
            || (p.split('.').count() == 3
                && p.split('.')
                    .all(|n| (1..=3).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_digit())))
    };
    if !parts[..identifier_at - 1].iter().all(|p| slug_like(p))
        || !version_like(parts[identifier_at - 1])
    {
        return None;
    }
    let identifier = parts[identifier_at];
    slug_like(identifier).then(|| identifier.to_owned())
}

/// Why a body was refused, mapped to 400 or 422 by the HTTP layer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    #[error("body is not a Sym log entry: {0}")]
    NotLogEntry(String),
    #[error("unsupported schema_version {0}; this service understands {SCHEMA_VERSION}")]
    UnsupportedSchema(i64),
    /// An approve event whose `fields.workflow_id` is missing or not a UUID (422).
    #[error("{0}")]
    InvalidWorkflowId(String),
}

/// Longest Sym id we store; Sym ids are UUIDs.
const MAX_ID_LEN: usize = 256;

/// A signed body that is a Sym log entry.
pub fn parse(body: &[u8]) -> Result<Event, EventError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| EventError::NotJson(e.to_string()))?;
    from_log_entry(value)
}

/// A Sym log entry, already read as JSON.
pub fn from_log_entry(value: serde_json::Value) -> Result<Event, EventError> {
    let raw: RawLogEntry =
        serde_json::from_value(value).map_err(|e| EventError::NotLogEntry(e.to_string()))?;

    if raw.id.trim().is_empty() || raw.id.len() > MAX_ID_LEN {
        return Err(EventError::NotLogEntry(
            "`id` must be a non-empty string of at most 256 characters".into(),
        ));
    }
    if raw.event.kind.is_empty() {
        return Err(EventError::NotLogEntry("`event.type` is empty".into()));
    }
    if let Some(version) = raw.meta.as_ref().and_then(|m| m.schema_version) {
        if version != SCHEMA_VERSION {
            return Err(EventError::UnsupportedSchema(version));
        }
    }

    let kind = kind_of(&raw.event.kind);
    let fields = raw.fields.unwrap_or_default();
    let text_field = |name: &str| {
        fields
            .get(name)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let workflow_id = match fields.get("workflow_id") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => match Uuid::try_parse(s) {
            Ok(id) => Some(id),
            Err(_) if matches!(kind, EventKind::Approve | EventKind::Request) => {
                return Err(EventError::InvalidWorkflowId(
                    "fields.workflow_id is not a UUID".into(),
                ))
            }
            Err(_) => None,
        },
        Some(_) if matches!(kind, EventKind::Approve | EventKind::Request) => {
            return Err(EventError::InvalidWorkflowId(
                "fields.workflow_id must be a UUID string".into(),
            ))
        }
        Some(_) => None,
    };
    if kind == EventKind::Approve && workflow_id.is_none() {
        return Err(EventError::InvalidWorkflowId(
            "approve event has no fields.workflow_id".into(),
        ));
    }
    let run_srn = raw.run.and_then(|r| r.srn);
    let run_id = run_srn.as_deref().and_then(run_id_from_srn);
    if kind == EventKind::Request {
        // A request event exists to bind its run to its workflow: both must be there.
        if workflow_id.is_none() {
            return Err(EventError::InvalidWorkflowId(
                "request event has no UUID fields.workflow_id".into(),
            ));
        }
        if run_id.is_none() {
            return Err(EventError::NotLogEntry(
                "request event has no run.srn with a run id \
                 (<org>:run:<slug>:<version>:<run id>)"
                    .into(),
            ));
        }
    }

    let hold_job_name = match fields.get("hold_job_name") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) if s.trim().is_empty() => None,
        Some(serde_json::Value::String(s))
            if s.trim().len() <= MAX_ID_LEN && !s.chars().any(char::is_control) =>
        {
            Some(s.trim().to_owned())
        }
        Some(_) => {
            return Err(EventError::NotLogEntry(
                "fields.hold_job_name must be a job name (text, at most 256 characters)".into(),
            ))
        }
    };
    let actor = raw.actor;
    Ok(Event {
        id: raw.id,
        event_type: raw.event.kind,
        kind,
        workflow_id,
        workflow_url: text_field("workflow_url"),
        merging_user: text_field("merging_user"),
        approver_username: actor.as_ref().and_then(|a| a.username.clone()),
        approver_name: actor.and_then(|a| a.name),
        run_srn,
        run_id,
        hold_job_name,
    })
}

/// A Sym-shaped log entry for `send-event` and the demo: the same shape Sym sends.
pub fn sample_body(
    id: &str,
    event_type: &str,
    workflow_id: &str,
    approver: &str,
    timestamp: &str,
) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "meta": {"schema_version": SCHEMA_VERSION},
        "state": {"status": "completed", "errors": []},
        "run": {
            "srn": format!("acme:run:ci-approval:1.0.0:{}", Uuid::new_v4()),
            "flow": "acme:flow:ci-approval:1.0.0"
        },
        "event": {
            "srn": format!("sym:event-spec:approval:1.0.0:{event_type}"),
            "type": event_type,
            "template": "sym:template:approval:1.0.0",
            "timestamp": timestamp,
            "channel": "slack"
        },
        "actor": {
            "user": format!("acme:user:{}:latest", Uuid::new_v4()),
            "name": approver,
            "username": approver,
            "identity": {"service": "slack", "external_id": "T000000", "user_id": "U000000"}
        },
        "fields": {
            "workflow_id": workflow_id,
            "workflow_url": format!("https://app.circleci.com/pipelines/workflows/{workflow_id}"),
            "merging_user": "send-event"
        },
        "type": "event"
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn sample() -> Vec<u8> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        std::fs::read(dir.join("sym-approve-event.json")).expect("reference sample present")
    }

    #[test]
    fn the_reference_approve_event_parses_with_every_field_we_use() {
        let event = parse(&sample()).unwrap();
        assert_eq!(event.id, "0b5f6f7c-3c1e-4d7a-9a3e-6c0f2f8e1a22");
        assert_eq!(event.kind, EventKind::Approve);
        assert_eq!(
            event.workflow_id.unwrap().to_string(),
            "7b2d6c1e-8f3a-4b5c-9d0e-1f2a3b4c5d6e"
        );
        assert_eq!(
            event.approver_username.as_deref(),
            Some("alice@example.com")
        );
        assert_eq!(event.approver_name.as_deref(), Some("Alice Approver"));
        assert_eq!(event.merging_user.as_deref(), Some("bob"));
        assert!(event
            .workflow_url
            .unwrap()
            .starts_with("https://app.circleci.com/"));
        assert!(event.run_srn.unwrap().starts_with("acme:run:ci-approval"));
    }

    #[test]
    fn the_run_id_is_the_identifier_component_of_the_runs_srn() {
        let id = "4e41814e-34b2-418c-9582-2d8bc610ea2a";
        assert_eq!(
            run_id_from_srn(&format!("acme:run:ci-approval:1.0.0:{id}")).as_deref(),
            Some(id)
        );
        assert_eq!(
            run_id_from_srn("ACME:run:ci-approval:latest:ABC-1").as_deref(),
            Some("abc-1"),
            "lowercased, as the SDK does"
        );
        // Models with a TYPE component have the identifier one further.
        assert_eq!(
            run_id_from_srn("acme:integration:slack:main:latest:xyz").as_deref(),
            Some("xyz")
        );
        for bad in [
            "acme:run:ci-approval:1.0.0",
            "acme:run:ci-approval:1.0.0:",
            "acme:run:ci-approval:1.0.0:a:b",
            "acme:run:ci-approval:1.0.0:a/b",
            "acme:run::1.0.0:x",
            "acme:run:flow:1.0:x",
            "acme:run:flow:newest:x",
            "nonsense",
            "",
        ] {
            assert_eq!(run_id_from_srn(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_request_event_needs_its_workflow_and_run() {
        let ok = br#"{"id":"x","event":{"type":"request"},"run":{"srn":"acme:run:f:1.0.0:r1"},
            "fields":{"workflow_id":"7b2d6c1e-8f3a-4b5c-9d0e-1f2a3b4c5d6e"}}"#;
        let event = parse(ok).unwrap();
        assert_eq!(event.kind, EventKind::Request);
        assert_eq!(event.run_id.as_deref(), Some("r1"));
        let no_run = br#"{"id":"x","event":{"type":"request"},
            "fields":{"workflow_id":"7b2d6c1e-8f3a-4b5c-9d0e-1f2a3b4c5d6e"}}"#;
        assert!(matches!(parse(no_run), Err(EventError::NotLogEntry(_))));
        let no_workflow =
            br#"{"id":"x","event":{"type":"request"},"run":{"srn":"acme:run:f:1.0.0:r1"}}"#;
        assert!(matches!(
            parse(no_workflow),
            Err(EventError::InvalidWorkflowId(_))
        ));
    }

    #[test]
    fn a_path_traversal_workflow_id_is_refused_as_invalid() {
        let body =
            br#"{"id":"x","event":{"type":"approve"},"fields":{"workflow_id":"../../project/x"}}"#;
        assert!(matches!(parse(body), Err(EventError::InvalidWorkflowId(_))));
    }

    #[test]
    fn other_event_types_parse_without_a_workflow_id() {
        let body = br#"{"id":"x","event":{"type":"escalate"},"fields":{},"extra":1}"#;
        let event = parse(body).unwrap();
        assert_eq!(event.kind, EventKind::Other);
        assert_eq!(event.event_type, "escalate");
    }

    #[test]
    fn non_json_and_non_log_entries_are_told_apart() {
        assert!(matches!(parse(b"{nope"), Err(EventError::NotJson(_))));
        assert!(matches!(parse(b"[1,2]"), Err(EventError::NotLogEntry(_))));
        assert!(matches!(
            parse(br#"{"id":"x"}"#),
            Err(EventError::NotLogEntry(_))
        ));
        assert_eq!(
            parse(br#"{"id":"x","meta":{"schema_version":3},"event":{"type":"approve"}}"#),
            Err(EventError::UnsupportedSchema(3))
        );
    }
}
