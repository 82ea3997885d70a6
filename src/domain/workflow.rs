//! A CircleCI workflow as the decisions see it: its hold job and where that job is. The
//! adapter (`outbound::circleci`) reads CircleCI's job lists and status words into these.

use crate::domain::ids::ApprovalRequestId;

/// Where a hold job (`type: approval`) is, in the worker's terms.
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

/// A workflow, as `GET /workflow/{id}` describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
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
