//! Tasks: what a delivery asks of CircleCI, the states a task goes through, and the rule that
//! turns a Sym event into a task.
//!
//! Every state is an enum here and text in the database; `as_str` / `parse` are the one
//! conversion each way.

use std::time::Duration;

use crate::clock::duration_ms;
use crate::domain::binding::{run_key, BindingSource, RunBinding};
use crate::domain::event::{Event, EventKind};
use crate::domain::ids::WorkflowId;
use crate::domain::upstream::Operation;

/// The approval job this service releases unless told another (`HOLD_JOB_NAMES`' default).
pub const DEFAULT_HOLD_JOB_NAME: &str = "wait_for_sym_approval";

/// What a task does at CircleCI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskAction {
    /// Approve the workflow's hold job.
    Approve,
    /// Cancel the workflow (a denied or expired request, with `ON_DENY=cancel`).
    Cancel,
}
text_enum!(TaskAction { Approve => "approve", Cancel => "cancel" });

impl TaskAction {
    /// The CircleCI call that carries the task out.
    pub fn operation(self) -> Operation {
        match self {
            Self::Approve => Operation::Approve,
            Self::Cancel => Operation::Cancel,
        }
    }
}

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
    /// Another approval of a hold job whose approve task is live: kept, attached to that
    /// task (it extends the task's deadline, and gets a task of its own if that one fails).
    Attached,
    /// A `request` event: its run is now bound to its workflow and hold job.
    Bound,
}
text_enum!(DeliveryStatus {
    Queued => "queued",
    Ignored => "ignored",
    Duplicate => "duplicate",
    Attached => "attached",
    Bound => "bound",
});

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
    /// The approval job this task is about (one of `HOLD_JOB_NAMES`).
    pub hold_job_name: String,
    pub deadline_at: i64,
}

/// The settings the event-to-task rule depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRules {
    pub on_deny: OnDeny,
    pub approval_timeout: Duration,
    /// The approval jobs this service may release; the first is the default.
    pub hold_job_names: Vec<String>,
}

/// An event asked for a hold job this service is not allowed to release.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("hold job {requested:?} is not in HOLD_JOB_NAMES ({allowed})")]
pub struct HoldJobNotAllowed {
    pub requested: String,
    pub allowed: String,
}

impl TaskRules {
    /// The default hold job (the first of `HOLD_JOB_NAMES`).
    pub fn default_hold_job(&self) -> &str {
        self.hold_job_names
            .first()
            .map_or(DEFAULT_HOLD_JOB_NAME, String::as_str)
    }

    /// The hold job an event names: its `hold_job_name` if listed, else the default.
    fn hold_job_of(&self, event: &Event) -> Result<String, HoldJobNotAllowed> {
        match &event.hold_job_name {
            Some(name) if self.hold_job_names.iter().any(|n| n == name) => Ok(name.clone()),
            Some(name) => Err(HoldJobNotAllowed {
                requested: name.clone(),
                allowed: self.hold_job_names.join(", "),
            }),
            None => Ok(self.default_hold_job().to_owned()),
        }
    }

    /// The binding an event signs: its run to its workflow and hold job. Request, approve,
    /// deny and expire events carry one when they name both a run and a workflow; a request
    /// event naming an unlisted hold job is refused like an approve event, the others then
    /// bind nothing.
    pub fn binding_for(&self, event: &Event) -> Result<Option<RunBinding>, HoldJobNotAllowed> {
        let source = match event.kind {
            EventKind::Request => BindingSource::Request,
            EventKind::Approve => BindingSource::Approve,
            EventKind::Deny => BindingSource::Deny,
            EventKind::Expire => BindingSource::Expire,
            EventKind::Other => return Ok(None),
        };
        let (Some(workflow_id), Some(run_id)) = (event.workflow_id, event.run_id.as_deref()) else {
            return Ok(None);
        };
        let hold_job_name = match self.hold_job_of(event) {
            Ok(name) => name,
            Err(refused) if source == BindingSource::Request => return Err(refused),
            Err(_) => return Ok(None),
        };
        Ok(Some(RunBinding {
            run_key: run_key(run_id),
            workflow_id: WorkflowId(workflow_id),
            hold_job_name,
            source,
        }))
    }

    /// The rule: an approve event approves its workflow's hold job; a deny or expire cancels
    /// the workflow only with `ON_DENY=cancel`; anything else (or no workflow id) is only
    /// recorded. The hold job is the event's `hold_job_name` if it names one, which must be
    /// listed, else the default. The task has until `received_at + approval_timeout`.
    pub fn task_for(
        &self,
        event: &Event,
        received_at: i64,
    ) -> Result<Option<NewTask>, HoldJobNotAllowed> {
        let action = match (event.kind, self.on_deny) {
            (EventKind::Approve, _) => TaskAction::Approve,
            (EventKind::Deny | EventKind::Expire, OnDeny::Cancel) => TaskAction::Cancel,
            _ => return Ok(None),
        };
        let Some(workflow_id) = event.workflow_id else {
            return Ok(None);
        };
        let hold_job_name = self.hold_job_of(event)?;
        Ok(Some(NewTask {
            action,
            workflow_id: WorkflowId(workflow_id),
            hold_job_name,
            deadline_at: received_at.saturating_add(duration_ms(self.approval_timeout)),
        }))
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

    fn event(kind: &str, workflow: Option<&str>) -> Event {
        Event {
            id: "e1".into(),
            event_type: kind.into(),
            kind: match kind {
                "approve" => EventKind::Approve,
                "request" => EventKind::Request,
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
            run_id: Some("run-1".into()),
            hold_job_name: None,
        }
    }

    const WF: &str = "7b2d6c1e-8f3a-4b5c-9d0e-1f2a3b4c5d6e";

    fn rules(on_deny: OnDeny) -> TaskRules {
        TaskRules {
            on_deny,
            approval_timeout: Duration::from_secs(60),
            hold_job_names: vec!["wait_for_sym_approval".into(), "prod_gate".into()],
        }
    }

    #[test]
    fn approve_events_make_approve_tasks_with_the_deadline_and_default_hold_job() {
        let task = rules(OnDeny::Ignore)
            .task_for(&event("approve", Some(WF)), 1_000)
            .unwrap()
            .unwrap();
        assert_eq!(task.action, TaskAction::Approve);
        assert_eq!(task.workflow_id.to_string(), WF);
        assert_eq!(task.deadline_at, 61_000);
        assert_eq!(task.hold_job_name, "wait_for_sym_approval");
    }

    #[test]
    fn a_requested_hold_job_is_used_only_when_listed() {
        let mut e = event("approve", Some(WF));
        e.hold_job_name = Some("prod_gate".into());
        let task = rules(OnDeny::Ignore).task_for(&e, 0).unwrap().unwrap();
        assert_eq!(task.hold_job_name, "prod_gate");
        e.hold_job_name = Some("deploy".into());
        let refused = rules(OnDeny::Ignore).task_for(&e, 0).unwrap_err();
        assert_eq!(refused.requested, "deploy");
    }

    #[test]
    fn deny_and_expire_cancel_only_with_on_deny_cancel() {
        for kind in ["deny", "expire"] {
            let e = event(kind, Some(WF));
            assert_eq!(rules(OnDeny::Ignore).task_for(&e, 0), Ok(None));
            let task = rules(OnDeny::Cancel).task_for(&e, 0).unwrap().unwrap();
            assert_eq!(task.action, TaskAction::Cancel);
        }
    }

    #[test]
    fn other_events_and_events_without_a_workflow_make_no_task() {
        let request = event("request", Some(WF));
        assert_eq!(rules(OnDeny::Cancel).task_for(&request, 0), Ok(None));
        let no_workflow = event("deny", None);
        assert_eq!(rules(OnDeny::Cancel).task_for(&no_workflow, 0), Ok(None));
    }

    #[test]
    fn events_bind_their_run_to_their_workflow_and_hold_job() {
        let r = rules(OnDeny::Ignore);
        let binding = r.binding_for(&event("request", Some(WF))).unwrap().unwrap();
        assert_eq!(binding.run_key, "run-1");
        assert_eq!(binding.workflow_id.to_string(), WF);
        assert_eq!(binding.hold_job_name, "wait_for_sym_approval");
        assert_eq!(binding.source, BindingSource::Request);
        let approve = r.binding_for(&event("approve", Some(WF))).unwrap().unwrap();
        assert_eq!(approve.source, BindingSource::Approve);

        let mut unlisted = event("request", Some(WF));
        unlisted.hold_job_name = Some("deploy".into());
        assert!(r.binding_for(&unlisted).is_err());
        unlisted.kind = EventKind::Deny;
        assert_eq!(r.binding_for(&unlisted), Ok(None));

        let mut no_run = event("request", Some(WF));
        no_run.run_id = None;
        assert_eq!(r.binding_for(&no_run), Ok(None));
        assert_eq!(r.binding_for(&event("escalate", Some(WF))), Ok(None));
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
