//! A typed client for the few CircleCI API v2 calls this service makes: its endpoints and
//! wire types only; sending, classifying and recording are the shared core's
//! (`outbound::http_client`).

use std::time::Duration;

use reqwest::header::HeaderName;
use reqwest::Url;
use secrecy::SecretString;
use serde::Deserialize;

use super::http_client::{ClientSettings, UpstreamClient};
use crate::clock::Clock;
use crate::domain::ids::{ApprovalRequestId, WorkflowId};
use crate::domain::task::TaskAction;
use crate::domain::upstream::{CallRecord, Failure, Operation, Upstream, UpstreamError};
use crate::domain::workflow::{WorkflowInfo, WorkflowView};

pub mod lookups;
mod model;
use model::Job;
pub use model::Me;

/// Stop following `next_page_token` after this many pages: a loop guard, not a real limit.
const MAX_PAGES: usize = 100;
/// Largest answer read (a page of jobs is a few kilobytes).
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Where CircleCI is and how this service authenticates to it.
#[derive(Debug, Clone)]
pub struct CircleCiSettings {
    pub api_url: Url,
    pub token: SecretString,
    pub timeout: Duration,
}

#[derive(Debug, Deserialize)]
struct JobPage {
    items: Vec<Job>,
    #[serde(default)]
    next_page_token: Option<String>,
}

#[derive(Clone, Debug)]
pub struct CircleCiClient {
    core: UpstreamClient,
}

impl CircleCiClient {
    pub fn new(settings: &CircleCiSettings, clock: Clock) -> anyhow::Result<Self> {
        let core = UpstreamClient::new(
            ClientSettings {
                upstream: Upstream::CircleCi,
                base: settings.api_url.clone(),
                token_header: HeaderName::from_static("circle-token"),
                token: &settings.token,
                bearer: false,
                timeout: settings.timeout,
                max_body_bytes: MAX_BODY_BYTES,
            },
            clock,
        )?;
        Ok(Self { core })
    }

    /// Reads the workflow's jobs and picks out the approval job named `hold_job_name`.
    pub async fn workflow_view(
        &self,
        workflow_id: WorkflowId,
        hold_job_name: &str,
        calls: &mut Vec<CallRecord>,
    ) -> Result<WorkflowView, UpstreamError> {
        let jobs = self.workflow_jobs(workflow_id, calls).await?;
        Ok(model::view_of(&jobs, hold_job_name))
    }

    /// Every job of the workflow, following `next_page_token` to the end.
    async fn workflow_jobs(
        &self,
        workflow_id: WorkflowId,
        calls: &mut Vec<CallRecord>,
    ) -> Result<Vec<Job>, UpstreamError> {
        let path = format!("/workflow/{workflow_id}/job");
        let mut jobs = Vec::new();
        let mut page_token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut url = self.core.url(&path)?;
            if let Some(token) = &page_token {
                url.query_pairs_mut().append_pair("page-token", token);
            }
            let body = self
                .core
                .send(self.core.get(url), Operation::ListJobs, "GET", &path, calls)
                .await?;
            let page: JobPage = serde_json::from_slice(&body).map_err(|e| {
                self.core
                    .fail(Failure::InvalidResponse(format!("job list: {e}")))
            })?;
            jobs.extend(page.items);
            match page.next_page_token.filter(|t| !t.is_empty()) {
                Some(next) if Some(&next) == page_token.as_ref() => {
                    return Err(self
                        .core
                        .fail(Failure::InvalidResponse("next_page_token repeats".into())))
                }
                Some(next) => page_token = Some(next),
                None => return Ok(jobs),
            }
        }
        Err(self.core.fail(Failure::InvalidResponse(format!(
            "more than {MAX_PAGES} pages of jobs"
        ))))
    }

    /// `GET /workflow/{id}`: the workflow's pipeline and name.
    pub async fn workflow_info(
        &self,
        workflow_id: WorkflowId,
        calls: &mut Vec<CallRecord>,
    ) -> Result<WorkflowInfo, UpstreamError> {
        let path = format!("/workflow/{workflow_id}");
        let url = self.core.url(&path)?;
        let body = self
            .core
            .send(
                self.core.get(url),
                Operation::GetWorkflow,
                "GET",
                &path,
                calls,
            )
            .await?;
        serde_json::from_slice(&body).map_err(|e| {
            self.core
                .fail(Failure::InvalidResponse(format!("workflow: {e}")))
        })
    }

    /// `GET /me`: whose token this is.
    pub async fn me(&self, calls: &mut Vec<CallRecord>) -> Result<Me, UpstreamError> {
        let url = self.core.url("/me")?;
        let body = self
            .core
            .send(self.core.get(url), Operation::Me, "GET", "/me", calls)
            .await?;
        serde_json::from_slice(&body)
            .map_err(|e| self.core.fail(Failure::InvalidResponse(format!("me: {e}"))))
    }

    /// The path of the approve call (also what the audit trail notes before making it).
    pub fn approve_path(workflow_id: WorkflowId, approval_request_id: ApprovalRequestId) -> String {
        format!("/workflow/{workflow_id}/approve/{approval_request_id}")
    }

    /// The path of the cancel call.
    pub fn cancel_path(workflow_id: WorkflowId) -> String {
        format!("/workflow/{workflow_id}/cancel")
    }

    /// The path of a task's call before its workflow is read (the intake notes it): an
    /// approve's `approval_request_id` is not known yet, so the path shows where it goes.
    /// The step's result replaces the note with the record of the call made under it.
    pub fn noted_path(action: TaskAction, workflow_id: WorkflowId) -> String {
        match action {
            TaskAction::Approve => {
                format!("/workflow/{workflow_id}/approve/{{approval_request_id}}")
            }
            TaskAction::Cancel => Self::cancel_path(workflow_id),
        }
    }

    /// `POST /workflow/{id}/approve/{approval_request_id}`; Ok on 2xx (CircleCI answers 202).
    pub async fn approve_job(
        &self,
        workflow_id: WorkflowId,
        approval_request_id: ApprovalRequestId,
        calls: &mut Vec<CallRecord>,
    ) -> Result<(), UpstreamError> {
        let path = Self::approve_path(workflow_id, approval_request_id);
        let url = self.core.url(&path)?;
        self.core
            .send(
                self.core.post(url),
                Operation::Approve,
                "POST",
                &path,
                calls,
            )
            .await
            .map(drop)
    }

    /// `POST /workflow/{id}/cancel`; Ok on 2xx.
    pub async fn cancel_workflow(
        &self,
        workflow_id: WorkflowId,
        calls: &mut Vec<CallRecord>,
    ) -> Result<(), UpstreamError> {
        let path = Self::cancel_path(workflow_id);
        let url = self.core.url(&path)?;
        self.core
            .send(self.core.post(url), Operation::Cancel, "POST", &path, calls)
            .await
            .map(drop)
    }
}
