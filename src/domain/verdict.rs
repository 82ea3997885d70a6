//! The provenance verdict the deploy job asks for: did this service release this workflow's
//! hold job because Sym approved it? Pure functions over what the store and CircleCI say.
//!
//! A verdict is always about one hold job (the service's default unless asked for another).
//!
//! - approved: a task of this workflow approved the hold job (`via: sym`), or this workflow
//!   is a "rerun from failed" of one that was (same pipeline and workflow name) and its hold
//!   job is the very job this service approved, carried over with the same job id
//!   (`via: rerun`);
//! - pending: a task of this workflow is still being worked on;
//! - not_approved: anything else, a click in the CircleCI UI included.

use serde::Serialize;

use crate::domain::task::{Outcome, TaskStatus};
use crate::domain::workflow::{HoldJob, HoldJobState};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictKind {
    Approved,
    Pending,
    NotApproved,
}

/// How an approval reached the workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// A Sym approval of this very workflow.
    Sym,
    /// A rerun of a workflow approved through Sym.
    Rerun,
}

/// One approve task of a workflow, as the verdict needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRecord {
    pub workflow_id: String,
    pub status: TaskStatus,
    pub outcome: Option<Outcome>,
    pub detail: Option<String>,
    pub hold_job_name: Option<String>,
    /// The hold job this task approved (its CircleCI job id).
    pub job_id: Option<String>,
    pub approver: Option<String>,
    pub sym_event_id: String,
    pub received_at: String,
    pub finished_at: Option<String>,
}

impl ApprovalRecord {
    fn approved(&self) -> bool {
        self.status == TaskStatus::Succeeded && self.outcome == Some(Outcome::Approved)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub verdict: VerdictKind,
    pub detail: String,
    pub via: Option<Via>,
    /// The workflow whose Sym approval counts (this one, or the one that was rerun).
    pub approved_workflow_id: Option<String>,
    pub approver: Option<String>,
}

impl Verdict {
    fn not_approved(detail: String) -> Self {
        Self {
            verdict: VerdictKind::NotApproved,
            detail,
            via: None,
            approved_workflow_id: None,
            approver: None,
        }
    }

    fn approved(record: &ApprovalRecord, via: Via, detail: String) -> Self {
        Self {
            verdict: VerdictKind::Approved,
            detail,
            via: Some(via),
            approved_workflow_id: Some(record.workflow_id.clone()),
            approver: record.approver.clone(),
        }
    }
}

/// The verdict from this workflow's own approve tasks (newest first); None when it has
/// none, so a rerun must be looked at.
pub fn from_own_records(workflow: &str, records: &[ApprovalRecord]) -> Option<Verdict> {
    if let Some(ok) = records.iter().find(|r| r.approved()) {
        let who = ok.approver.as_deref().unwrap_or("an unnamed Sym user");
        return Some(Verdict::approved(
            ok,
            Via::Sym,
            format!(
                "workflow {workflow} was approved through Sym by {who} at {} (Sym event {}, \
                 hold job released at {})",
                ok.received_at,
                ok.sym_event_id,
                ok.finished_at.as_deref().unwrap_or("?")
            ),
        ));
    }
    if let Some(pending) = records.iter().find(|r| r.status == TaskStatus::Pending) {
        return Some(Verdict {
            verdict: VerdictKind::Pending,
            detail: format!(
                "the Sym approval of workflow {workflow} is still being worked on: {}",
                pending.detail.as_deref().unwrap_or("not worked on yet")
            ),
            via: None,
            approved_workflow_id: None,
            approver: None,
        });
    }
    let last = records.first()?;
    let why = match last.outcome {
        Some(Outcome::AlreadyApproved) => {
            "the hold job was approved outside Sym (a click in the CircleCI UI?) before this \
             service could"
                .to_owned()
        }
        Some(outcome) => format!("{outcome}: {}", last.detail.as_deref().unwrap_or("")),
        None => "unknown".to_owned(),
    };
    Some(Verdict::not_approved(format!(
        "the Sym approval of workflow {workflow} did not release its hold job: {why}"
    )))
}

/// A workflow with no approve task of its own: is it a rerun of an approved one?
///
/// `original` is the approved task of the same pipeline and workflow name, if any; `hold` is
/// this workflow's hold job. It counts only when the hold job is the very job the original
/// task approved, carried over with the same job id ("rerun from failed" keeps a succeeded
/// job). Who CircleCI says approved it never counts on its own: a click in the UI by this
/// service's CircleCI user, or a call with its token, shows the same `approved_by` as an
/// approval of ours.
pub fn for_rerun(
    workflow: &str,
    original: Option<&ApprovalRecord>,
    hold: Option<&HoldJob>,
) -> Verdict {
    let Some(original) = original else {
        return Verdict::not_approved(format!(
            "this service never approved workflow {workflow} (nor an earlier run of it) for a \
             Sym approval"
        ));
    };
    let Some(hold) = hold else {
        return Verdict::not_approved(format!(
            "workflow {workflow} reruns {} but has no hold job {:?}",
            original.workflow_id,
            original.hold_job_name.as_deref().unwrap_or("?")
        ));
    };
    if hold.state != HoldJobState::Approved {
        return Verdict::not_approved(format!(
            "workflow {workflow} reruns {} but its hold job is {}, not approved",
            original.workflow_id, hold.state
        ));
    }
    if hold.job_id.is_some() && hold.job_id == original.job_id {
        return Verdict::approved(
            original,
            Via::Rerun,
            format!(
                "workflow {workflow} reruns {} of the same pipeline, which was approved through \
                 Sym by {} at {}; its hold job carried over approved",
                original.workflow_id,
                original
                    .approver
                    .as_deref()
                    .unwrap_or("an unnamed Sym user"),
                original.received_at
            ),
        );
    }
    Verdict::not_approved(format!(
        "workflow {workflow} reruns {} but its hold job is not the one this service approved \
         (it was approved again, by user {}, not through Sym)",
        original.workflow_id,
        hold.approved_by.as_deref().unwrap_or("unknown")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(status: TaskStatus, outcome: Option<Outcome>) -> ApprovalRecord {
        ApprovalRecord {
            workflow_id: "wf-1".into(),
            status,
            outcome,
            detail: Some("detail".into()),
            hold_job_name: Some("wait_for_sym_approval".into()),
            job_id: Some("job-1".into()),
            approver: Some("alice@example.com".into()),
            sym_event_id: "e1".into(),
            received_at: "2026-11-25T12:00:00Z".into(),
            finished_at: Some("2026-11-25T12:00:01Z".into()),
        }
    }

    fn hold(state: HoldJobState, job_id: &str, approved_by: Option<&str>) -> HoldJob {
        HoldJob {
            state,
            approval_id: None,
            job_id: Some(job_id.into()),
            job_number: None,
            project_slug: None,
            approved_by: approved_by.map(Into::into),
        }
    }

    fn kind(v: &Option<Verdict>) -> Option<VerdictKind> {
        v.as_ref().map(|v| v.verdict)
    }

    #[test]
    fn an_approved_task_wins_then_pending_then_the_last_failure() {
        let ok = record(TaskStatus::Succeeded, Some(Outcome::Approved));
        let pending = record(TaskStatus::Pending, None);
        let ui = record(TaskStatus::Succeeded, Some(Outcome::AlreadyApproved));
        assert_eq!(
            kind(&from_own_records("wf", &[ui.clone(), ok])),
            Some(VerdictKind::Approved)
        );
        assert_eq!(
            kind(&from_own_records("wf", &[ui.clone(), pending])),
            Some(VerdictKind::Pending)
        );
        let refused = from_own_records("wf", &[ui]);
        assert_eq!(kind(&refused), Some(VerdictKind::NotApproved));
        assert!(refused
            .map(|v| v.detail)
            .unwrap_or_default()
            .contains("outside Sym"));
        assert_eq!(from_own_records("wf", &[]), None);
    }

    #[test]
    fn a_rerun_passes_only_with_its_hold_job_approved_by_this_service() {
        let original = record(TaskStatus::Succeeded, Some(Outcome::Approved));
        let carried = hold(HoldJobState::Approved, "job-1", Some("bot"));
        let v = for_rerun("wf-2", Some(&original), Some(&carried));
        assert_eq!(
            (v.verdict, v.via),
            (VerdictKind::Approved, Some(Via::Rerun))
        );
        assert_eq!(v.approved_workflow_id.as_deref(), Some("wf-1"));

        // Approved by this service's own CircleCI user, but another job: a UI click (or a call
        // with the token) on a rerun from start. Never counts.
        let by_token_user = hold(HoldJobState::Approved, "job-9", Some("bot"));
        let v = for_rerun("wf-2", Some(&original), Some(&by_token_user));
        assert_eq!(v.verdict, VerdictKind::NotApproved);
        assert!(v.detail.contains("not the one"), "{}", v.detail);

        let waiting = hold(HoldJobState::OnHold, "job-9", None);
        let v = for_rerun("wf-2", Some(&original), Some(&waiting));
        assert_eq!(v.verdict, VerdictKind::NotApproved);
        assert_eq!(
            for_rerun("wf-2", Some(&original), None).verdict,
            VerdictKind::NotApproved
        );
        assert_eq!(
            for_rerun("wf-2", None, Some(&carried)).verdict,
            VerdictKind::NotApproved
        );
    }
}
