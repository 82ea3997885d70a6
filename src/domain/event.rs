//! What a signed delivery says, in the service's words: the event kind and the facts the
//! rules act on. `inbound` parses Sym's log entries and generic approval events into it.

use uuid::Uuid;

/// What the event asks of this service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Approve the workflow's hold job.
    Approve,
    /// The request was made (the flow's `after_request` hook): binds the Sym run to the
    /// workflow and hold job it was requested for.
    Request,
    /// The request was denied: optionally cancel the workflow.
    Deny,
    /// The request expired unanswered: optionally cancel the workflow.
    Expire,
    /// Anything else: acknowledged, recorded, ignored.
    Other,
}

/// A parsed, validated event of a signed delivery: a Sym log entry or a generic approval
/// event (`inbound`), in the terms the service decides by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The event's id, stable across redeliveries (Sym's log-entry id, or
    /// `generic:<request id>:<decision>`).
    pub id: String,
    /// `event.type` as sent (e.g. `approve`).
    pub event_type: String,
    pub kind: EventKind,
    /// Present and valid for approve events; best-effort for the others.
    pub workflow_id: Option<Uuid>,
    pub workflow_url: Option<String>,
    pub merging_user: Option<String>,
    pub approver_username: Option<String>,
    pub approver_name: Option<String>,
    pub run_srn: Option<String>,
    /// The Sym run's id: the identifier component of `run.srn` (`inbound::sym_event::run_id_from_srn`).
    pub run_id: Option<String>,
    /// `fields.hold_job_name`: which approval job to release (the flow's optional field);
    /// None for the service's default.
    pub hold_job_name: Option<String>,
}
