//! CircleCI's answers as this service reads them: the jobs of a workflow, read into the
//! domain's view of it (CircleCI's status words are read here and nowhere else), and the
//! token's user.

use serde::Deserialize;

use crate::domain::ids::ApprovalRequestId;
use crate::domain::workflow::{HoldJob, HoldJobState, WorkflowView};

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

/// A hold job's state from CircleCI's status word.
pub(super) fn state_of(status: &str) -> HoldJobState {
    match status {
        "on_hold" => HoldJobState::OnHold,
        "success" => HoldJobState::Approved,
        "canceled" => HoldJobState::Canceled,
        "failed"
        | "not_run"
        | "infrastructure_fail"
        | "timedout"
        | "terminated-unknown"
        | "unauthorized" => HoldJobState::Stopped(status.to_owned()),
        other => HoldJobState::NotYet(other.to_owned()),
    }
}

/// What the jobs say about the approval job named `hold_job_name`.
pub(super) fn view_of(jobs: &[Job], hold_job_name: &str) -> WorkflowView {
    let hold = jobs
        .iter()
        .find(|j| j.name == hold_job_name && j.job_type == "approval")
        .map(|j| HoldJob {
            state: state_of(&j.status),
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
    WorkflowView {
        hold,
        project_slug,
        has_jobs: !jobs.is_empty(),
    }
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
        let view = view_of(&jobs, "hold");
        let hold = view.hold.unwrap();
        assert_eq!(hold.state, HoldJobState::OnHold);
        assert_eq!(
            hold.approval_id.unwrap().to_string(),
            "0f9e8d7c-aaaa-4bbb-8ccc-ddddeeeeffff"
        );
        assert_eq!(view.project_slug.as_deref(), Some("gh/acme/api"));
        assert!(view.has_jobs);

        let none = view_of(&jobs[..1], "hold");
        assert_eq!(none.hold, None);
        assert_eq!(none.project_slug.as_deref(), Some("gh/acme/api"));
        assert!(!view_of(&[], "hold").has_jobs);
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
            assert_eq!(state_of(word), state);
            assert_eq!(state.to_string(), word);
        }
    }

    #[test]
    fn a_hold_job_without_a_uuid_has_no_approval_id() {
        let mut j = job("hold", "approval", "on_hold");
        j.approval_request_id = Some("not-a-uuid".into());
        j.id = None;
        let view = view_of(&[j], "hold");
        assert_eq!(view.hold.unwrap().approval_id, None);
    }
}
