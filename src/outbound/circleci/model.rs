//! CircleCI's answers as this service reads them: the jobs of a workflow (and the hold job's
//! state, parsed here once so no other module reads CircleCI's status words), a workflow,
//! the token's user, and the record of each call.

use serde::Deserialize;

use crate::domain::ids::ApprovalRequestId;

/// A job of a workflow, as `GET /workflow/{id}/job` lists it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub(super) struct Job {
    #[serde(default)]
    id: Option<String>,
    name: String,
    #[serde(rename = "type")]
    job_type: String,
    status: String,
    #[serde(default)]
    approval_request_id: Option<String>,
    #[serde(default)]
    project_slug: Option<String>,
    #[serde(default)]
    job_number: Option<i64>,
    /// Approval jobs: the id of the user who approved it.
    #[serde(default)]
    approved_by: Option<String>,
}

impl Job {
    /// The id the approve endpoint expects: `approval_request_id`, else the job `id`.
    fn approval_id(&self) -> Option<&str> {
        fn present(v: &Option<String>) -> Option<&str> {
            v.as_deref().filter(|s| !s.trim().is_empty())
        }
        present(&self.approval_request_id).or_else(|| present(&self.id))
    }
}

/// Where a hold job (`type: approval`) is, in the worker's terms. CircleCI's status words are
/// read here and nowhere else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldJobState {
    /// Waiting for approval: the one state the approve call works on.
    OnHold,
    /// Approved (`success`), by whoever.
    Approved,
    /// Canceled; it can never be approved.
    Canceled,
    /// Another final state (failed, not_run, …); it can never be approved.
    Stopped(String),
    /// Not on hold yet (blocked behind earlier jobs, queued, …): worth waiting for.
    NotYet(String),
}

impl HoldJobState {
    pub fn from_status(status: &str) -> Self {
        match status {
            "on_hold" => Self::OnHold,
            "success" => Self::Approved,
            "canceled" => Self::Canceled,
            "failed"
            | "not_run"
            | "infrastructure_fail"
            | "timedout"
            | "terminated-unknown"
            | "unauthorized" => Self::Stopped(status.to_owned()),
            other => Self::NotYet(other.to_owned()),
        }
    }
}

impl std::fmt::Display for HoldJobState {
    /// CircleCI's own word for it (for details and logs).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::OnHold => "on_hold",
            Self::Approved => "success",
            Self::Canceled => "canceled",
            Self::Stopped(s) | Self::NotYet(s) => s,
        })
    }
}

/// The hold job of a workflow, as the worker needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldJob {
    pub state: HoldJobState,
    /// None when neither `approval_request_id` nor `id` is a UUID.
    pub approval_id: Option<ApprovalRequestId>,
    pub job_id: Option<String>,
    pub job_number: Option<i64>,
    pub project_slug: Option<String>,
    /// The user who approved it (CircleCI's `approved_by`), when it is approved.
    pub approved_by: Option<String>,
}

/// What one read of a workflow's jobs tells the worker.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WorkflowView {
    /// The approval job of the asked name, if the workflow has one.
    pub hold: Option<HoldJob>,
    /// The workflow's project (from the hold job, else any job).
    pub project_slug: Option<String>,
    /// False while CircleCI lists no jobs at all.
    pub has_jobs: bool,
}

impl WorkflowView {
    pub(super) fn from_jobs(jobs: &[Job], hold_job_name: &str) -> Self {
        let hold = jobs
            .iter()
            .find(|j| j.name == hold_job_name && j.job_type == "approval")
            .map(|j| HoldJob {
                state: HoldJobState::from_status(&j.status),
                approval_id: j
                    .approval_id()
                    .and_then(|id| id.parse::<ApprovalRequestId>().ok()),
                job_id: j.id.clone(),
                job_number: j.job_number,
                project_slug: j.project_slug.clone(),
                approved_by: j.approved_by.clone().filter(|s| !s.is_empty()),
            });
        let project_slug = hold
            .as_ref()
            .and_then(|h| h.project_slug.clone())
            .or_else(|| jobs.iter().find_map(|j| j.project_slug.clone()));
        Self {
            hold,
            project_slug,
            has_jobs: !jobs.is_empty(),
        }
    }
}

/// What a call was for (a metrics label and the audit trail's `operation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    ListJobs,
    GetWorkflow,
    Approve,
    Cancel,
    Me,
}

impl Operation {
    pub const ALL: &'static [Operation] = &[
        Self::ListJobs,
        Self::GetWorkflow,
        Self::Approve,
        Self::Cancel,
        Self::Me,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ListJobs => "list_jobs",
            Self::GetWorkflow => "get_workflow",
            Self::Approve => "approve",
            Self::Cancel => "cancel",
            Self::Me => "me",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|o| o.as_str() == text)
    }
}

/// A workflow, as `GET /workflow/{id}` describes it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct WorkflowInfo {
    pub id: String,
    /// The workflow's name in the config (`build-and-deploy`); reruns keep it.
    pub name: String,
    /// The pipeline it belongs to; a rerun is a new workflow in the same pipeline.
    pub pipeline_id: String,
    #[serde(default)]
    pub project_slug: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
}

/// The token's user, as `GET /me` describes it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Me {
    pub id: String,
    #[serde(default)]
    pub login: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn job(name: &str, job_type: &str, status: &str) -> Job {
        Job {
            id: Some("8d5b1c3a-1111-4222-8333-444455556666".into()),
            name: name.into(),
            job_type: job_type.into(),
            status: status.into(),
            approval_request_id: Some("0f9e8d7c-aaaa-4bbb-8ccc-ddddeeeeffff".into()),
            project_slug: Some("gh/acme/api".into()),
            job_number: None,
            approved_by: None,
        }
    }

    #[test]
    fn approval_id_prefers_the_approval_request_id() {
        let mut j = job("hold", "approval", "on_hold");
        j.id = Some("job".into());
        j.approval_request_id = Some("req".into());
        assert_eq!(j.approval_id(), Some("req"));
        j.approval_request_id = None;
        assert_eq!(j.approval_id(), Some("job"));
        j.approval_request_id = Some(String::new());
        assert_eq!(j.approval_id(), Some("job"));
    }

    #[test]
    fn the_view_finds_the_named_approval_job_and_types_its_state() {
        let jobs = [
            job("build", "build", "success"),
            job("hold", "build", "on_hold"),
            job("hold", "approval", "on_hold"),
        ];
        let view = WorkflowView::from_jobs(&jobs, "hold");
        let hold = view.hold.unwrap();
        assert_eq!(hold.state, HoldJobState::OnHold);
        assert_eq!(
            hold.approval_id.unwrap().to_string(),
            "0f9e8d7c-aaaa-4bbb-8ccc-ddddeeeeffff"
        );
        assert_eq!(view.project_slug.as_deref(), Some("gh/acme/api"));
        assert!(view.has_jobs);

        let none = WorkflowView::from_jobs(&jobs[..1], "hold");
        assert_eq!(none.hold, None);
        assert_eq!(none.project_slug.as_deref(), Some("gh/acme/api"));
        assert!(!WorkflowView::from_jobs(&[], "hold").has_jobs);
    }

    #[test]
    fn statuses_map_to_states_and_back() {
        for (word, state) in [
            ("on_hold", HoldJobState::OnHold),
            ("success", HoldJobState::Approved),
            ("canceled", HoldJobState::Canceled),
            ("failed", HoldJobState::Stopped("failed".into())),
            ("not_run", HoldJobState::Stopped("not_run".into())),
            ("blocked", HoldJobState::NotYet("blocked".into())),
        ] {
            assert_eq!(HoldJobState::from_status(word), state);
            assert_eq!(state.to_string(), word);
        }
    }

    #[test]
    fn a_hold_job_without_a_uuid_has_no_approval_id() {
        let mut j = job("hold", "approval", "on_hold");
        j.approval_request_id = Some("not-a-uuid".into());
        j.id = None;
        let view = WorkflowView::from_jobs(&[j], "hold");
        assert_eq!(view.hold.unwrap().approval_id, None);
    }
}
