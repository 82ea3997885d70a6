//! Tasks: what a delivery asks of CircleCI, the states a task goes through, and the rule that
//! turns a Sym event into a task.
//!
//! Every state is an enum here and text in the database; `as_str` / `parse` are the one
//! conversion each way.

use std::time::Duration;

use crate::clock::duration_ms;
use crate::domain::ids::WorkflowId;
use crate::inbound::sym_event::{EventKind, SymEvent};

/// Implements `as_str`, `parse` and `Display` for a unit enum stored as text.
macro_rules! text_enum {
    ($name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// The stored text back to the value; None for text this version does not know.
            pub fn parse(text: &str) -> Option<Self> {
                match text {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// What a task does at CircleCI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskAction {
    /// Approve the workflow's hold job.
    Approve,
    /// Cancel the workflow (a denied or expired request, with `ON_DENY=cancel`).
    Cancel,
}
text_enum!(TaskAction { Approve => "approve", Cancel => "cancel" });

/// Where a task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskStatus {
    Pending,
    Succeeded,
    Failed,
}
text_enum!(TaskStatus { Pending => "pending", Succeeded => "succeeded", Failed => "failed" });

/// How a task ended (also a metrics label and what `verify` reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// This service approved the hold job.
    Approved,
    /// The hold job was approved before this service could, by other means (the UI).
    AlreadyApproved,
    HoldJobCanceled,
    HoldJobFailed,
    ProjectNotAllowed,
    /// The hold job has no usable approval id.
    InvalidJob,
    /// CircleCI refused the token (401/403).
    CircleciUnauthorized,
    /// `APPROVAL_TIMEOUT` passed.
    TimedOut,
    /// The workflow was canceled (`ON_DENY=cancel`).
    Canceled,
    CancelRefused,
    /// The workflow had already stopped; nothing to cancel.
    AlreadyStopped,
}
text_enum!(Outcome {
    Approved => "approved",
    AlreadyApproved => "already_approved",
    HoldJobCanceled => "hold_job_canceled",
    HoldJobFailed => "hold_job_failed",
    ProjectNotAllowed => "project_not_allowed",
    InvalidJob => "invalid_job",
    CircleciUnauthorized => "circleci_unauthorized",
    TimedOut => "timed_out",
    Canceled => "canceled",
    CancelRefused => "cancel_refused",
    AlreadyStopped => "already_stopped",
});

impl Outcome {
    /// The outcomes a task of `action` can end with (metrics pre-create these at 0).
    pub fn possible_for(action: TaskAction) -> &'static [Outcome] {
        match action {
            TaskAction::Approve => &[
                Self::Approved,
                Self::AlreadyApproved,
                Self::HoldJobCanceled,
                Self::HoldJobFailed,
                Self::ProjectNotAllowed,
                Self::InvalidJob,
                Self::CircleciUnauthorized,
                Self::TimedOut,
            ],
            TaskAction::Cancel => &[
                Self::Canceled,
                Self::AlreadyApproved,
                Self::AlreadyStopped,
                Self::CancelRefused,
                Self::ProjectNotAllowed,
                Self::CircleciUnauthorized,
                Self::TimedOut,
            ],
        }
    }
}

/// What became of a delivery when it arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryStatus {
    /// New, with a task to work on.
    Queued,
    /// New, asking nothing of us (an event type we do not act on).
    Ignored,
    /// Seen before (same Sym id or webhook-id).
    Duplicate,
}
text_enum!(DeliveryStatus { Queued => "queued", Ignored => "ignored", Duplicate => "duplicate" });

/// What a denied or expired Sym request does to its workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnDeny {
    /// Record the event; the workflow stays on hold until CircleCI expires it.
    Ignore,
    /// Cancel the workflow (`POST /workflow/{id}/cancel`), with the approval retry rules.
    Cancel,
}

/// A task to create along with its delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTask {
    pub action: TaskAction,
    pub workflow_id: WorkflowId,
    pub deadline_at: i64,
}

impl NewTask {
    /// The rule: an approve event approves its workflow's hold job; a deny or expire cancels
    /// the workflow only with `ON_DENY=cancel`; anything else (or no workflow id) is only
    /// recorded. The task has until `received_at + approval_timeout`.
    pub fn for_event(
        event: &SymEvent,
        on_deny: OnDeny,
        received_at: i64,
        approval_timeout: Duration,
    ) -> Option<Self> {
        let action = match (event.kind, on_deny) {
            (EventKind::Approve, _) => TaskAction::Approve,
            (EventKind::Deny | EventKind::Expire, OnDeny::Cancel) => TaskAction::Cancel,
            _ => return None,
        };
        Some(Self {
            action,
            workflow_id: WorkflowId(event.workflow_id?),
            deadline_at: received_at.saturating_add(duration_ms(approval_timeout)),
        })
    }
}

/// A task's state as stored (tests, `demo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskState {
    pub status: TaskStatus,
    pub outcome: Option<Outcome>,
    pub detail: Option<String>,
    /// Steps taken.
    pub attempts: i64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn event(kind: &str, workflow: Option<&str>) -> SymEvent {
        SymEvent {
            id: "e1".into(),
            event_type: kind.into(),
            kind: match kind {
                "approve" => EventKind::Approve,
                "deny" => EventKind::Deny,
                "expire" => EventKind::Expire,
                _ => EventKind::Other,
            },
            workflow_id: workflow.map(|w| w.parse().unwrap()),
            workflow_url: None,
            merging_user: None,
            approver_username: Some("alice@example.com".into()),
            approver_name: None,
            run_srn: None,
        }
    }

    const WF: &str = "7b2d6c1e-8f3a-4b5c-9d0e-1f2a3b4c5d6e";

    #[test]
    fn approve_events_make_approve_tasks_with_the_deadline() {
        let task = NewTask::for_event(
            &event("approve", Some(WF)),
            OnDeny::Ignore,
            1_000,
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(task.action, TaskAction::Approve);
        assert_eq!(task.workflow_id.to_string(), WF);
        assert_eq!(task.deadline_at, 61_000);
    }

    #[test]
    fn deny_and_expire_cancel_only_with_on_deny_cancel() {
        for kind in ["deny", "expire"] {
            let e = event(kind, Some(WF));
            assert_eq!(
                NewTask::for_event(&e, OnDeny::Ignore, 0, Duration::from_secs(1)),
                None
            );
            let task = NewTask::for_event(&e, OnDeny::Cancel, 0, Duration::from_secs(1)).unwrap();
            assert_eq!(task.action, TaskAction::Cancel);
        }
    }

    #[test]
    fn other_events_and_events_without_a_workflow_make_no_task() {
        let request = event("request", Some(WF));
        assert_eq!(
            NewTask::for_event(&request, OnDeny::Cancel, 0, Duration::from_secs(1)),
            None
        );
        let no_workflow = event("deny", None);
        assert_eq!(
            NewTask::for_event(&no_workflow, OnDeny::Cancel, 0, Duration::from_secs(1)),
            None
        );
    }

    #[test]
    fn every_state_round_trips_through_its_text() {
        for o in Outcome::ALL {
            assert_eq!(Outcome::parse(o.as_str()), Some(*o));
        }
        for s in TaskStatus::ALL {
            assert_eq!(TaskStatus::parse(s.as_str()), Some(*s));
        }
        for d in DeliveryStatus::ALL {
            assert_eq!(DeliveryStatus::parse(d.as_str()), Some(*d));
        }
        for a in TaskAction::ALL {
            assert_eq!(TaskAction::parse(a.as_str()), Some(*a));
        }
        assert_eq!(Outcome::parse("nonsense"), None);
    }
}
