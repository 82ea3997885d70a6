//! A typed client for the few CircleCI API v2 calls this service makes.
//!
//! Built once with the base URL, the token (a secret, sent as a sensitive `Circle-Token`
//! header), a timeout and a User-Agent. Every HTTP exchange is returned as a [`CallRecord`]
//! so the worker can store it in the task's audit trail, and is logged on one line.
//! Errors are classified for the retry policy, not interpreted here.

use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use secrecy::ExposeSecret;
use serde::Deserialize;

use crate::config::CircleCiConfig;
use crate::domain::ids::{ApprovalRequestId, WorkflowId};

pub mod lookups;
mod model;
pub mod token;
use model::Job;
pub use model::{HoldJob, HoldJobState, Me, Operation, WorkflowInfo, WorkflowView};

/// Stop following `next_page_token` after this many pages: a loop guard, not a real limit.
const MAX_PAGES: usize = 100;

#[derive(Debug, Deserialize)]
struct JobPage {
    items: Vec<Job>,
    #[serde(default)]
    next_page_token: Option<String>,
}

/// One HTTP exchange with CircleCI, for the audit trail.
#[derive(Debug, Clone)]
pub struct CallRecord {
    pub started_at: std::time::SystemTime,
    pub operation: Operation,
    pub method: &'static str,
    /// The path with ids filled in (never the token or query secrets).
    pub endpoint: String,
    pub status: Option<u16>,
    pub duration: Duration,
    pub error: Option<String>,
}

/// How a CircleCI call failed, as the retry policy needs to know it.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CircleError {
    /// 401/403: the token is wrong or lacks access; retrying will not help.
    #[error("CircleCI refused the token (HTTP {0})")]
    Unauthorized(u16),
    #[error("CircleCI answered 404 Not Found")]
    NotFound,
    #[error("CircleCI is rate limiting (HTTP 429)")]
    RateLimited { retry_after: Option<Duration> },
    #[error("CircleCI server error (HTTP {status})")]
    Server {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("CircleCI refused the request (HTTP {status}): {message}")]
    Client { status: u16, message: String },
    #[error("CircleCI request timed out")]
    Timeout,
    #[error("cannot reach CircleCI: {0}")]
    Connect(String),
    #[error("unexpected CircleCI response: {0}")]
    InvalidResponse(String),
}

impl CircleError {
    /// The server's requested delay, when it gave one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after } | Self::Server { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct CircleCiClient {
    http: reqwest::Client,
    base: Url,
}

impl std::fmt::Debug for CircleCiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircleCiClient")
            .field("base", &self.base.as_str())
            .field("token", &"[REDACTED]")
            .finish()
    }
}

impl CircleCiClient {
    pub fn new(config: &CircleCiConfig) -> Result<Self, anyhow::Error> {
        let mut token = HeaderValue::from_str(config.token.expose_secret())
            .map_err(|_| anyhow::anyhow!("CIRCLECI_TOKEN is not a valid HTTP header value"))?;
        // Sensitive values are redacted from reqwest/hyper debug output.
        token.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert("Circle-Token", token);
        headers.insert("Accept", HeaderValue::from_static("application/json"));
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(concat!(
                env!("CARGO_PKG_NAME"),
                "/",
                env!("CARGO_PKG_VERSION")
            ))
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            // A redirect could carry the token elsewhere; CircleCI's API does not redirect.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            http,
            base: config.api_url.clone(),
        })
    }

    fn url(&self, path: &str) -> Result<Url, CircleError> {
        let base = self.base.as_str().trim_end_matches('/');
        Url::parse(&format!("{base}{path}"))
            .map_err(|e| CircleError::InvalidResponse(e.to_string()))
    }

    /// Reads the workflow's jobs and picks out the approval job named `hold_job_name`.
    pub async fn workflow_view(
        &self,
        workflow_id: WorkflowId,
        hold_job_name: &str,
        calls: &mut Vec<CallRecord>,
    ) -> Result<WorkflowView, CircleError> {
        let jobs = self.workflow_jobs(workflow_id, calls).await?;
        Ok(WorkflowView::from_jobs(&jobs, hold_job_name))
    }

    /// Every job of the workflow, following `next_page_token` to the end.
    async fn workflow_jobs(
        &self,
        workflow_id: WorkflowId,
        calls: &mut Vec<CallRecord>,
    ) -> Result<Vec<Job>, CircleError> {
        let path = format!("/workflow/{workflow_id}/job");
        let mut jobs = Vec::new();
        let mut page_token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut url = self.url(&path)?;
            if let Some(token) = &page_token {
                url.query_pairs_mut().append_pair("page-token", token);
            }
            let body = self
                .send(self.http.get(url), Operation::ListJobs, "GET", &path, calls)
                .await?;
            let page: JobPage = serde_json::from_slice(&body)
                .map_err(|e| CircleError::InvalidResponse(format!("job list: {e}")))?;
            jobs.extend(page.items);
            match page.next_page_token.filter(|t| !t.is_empty()) {
                Some(next) if Some(&next) == page_token.as_ref() => {
                    return Err(CircleError::InvalidResponse(
                        "next_page_token repeats".into(),
                    ))
                }
                Some(next) => page_token = Some(next),
                None => return Ok(jobs),
            }
        }
        Err(CircleError::InvalidResponse(format!(
            "more than {MAX_PAGES} pages of jobs"
        )))
    }

    /// `GET /workflow/{id}`: the workflow's pipeline and name.
    pub async fn workflow_info(
        &self,
        workflow_id: WorkflowId,
        calls: &mut Vec<CallRecord>,
    ) -> Result<WorkflowInfo, CircleError> {
        let path = format!("/workflow/{workflow_id}");
        let url = self.url(&path)?;
        let body = self
            .send(
                self.http.get(url),
                Operation::GetWorkflow,
                "GET",
                &path,
                calls,
            )
            .await?;
        serde_json::from_slice(&body)
            .map_err(|e| CircleError::InvalidResponse(format!("workflow: {e}")))
    }

    /// `GET /me`: whose token this is (checked once at startup).
    pub async fn me(&self, calls: &mut Vec<CallRecord>) -> Result<Me, CircleError> {
        let url = self.url("/me")?;
        let body = self
            .send(self.http.get(url), Operation::Me, "GET", "/me", calls)
            .await?;
        serde_json::from_slice(&body).map_err(|e| CircleError::InvalidResponse(format!("me: {e}")))
    }

    /// `POST /workflow/{id}/approve/{approval_request_id}`; Ok on 2xx (CircleCI answers 202).
    pub async fn approve_job(
        &self,
        workflow_id: WorkflowId,
        approval_request_id: ApprovalRequestId,
        calls: &mut Vec<CallRecord>,
    ) -> Result<(), CircleError> {
        let path = format!("/workflow/{workflow_id}/approve/{approval_request_id}");
        let url = self.url(&path)?;
        self.send(
            self.http.post(url),
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
    ) -> Result<(), CircleError> {
        let path = format!("/workflow/{workflow_id}/cancel");
        let url = self.url(&path)?;
        self.send(self.http.post(url), Operation::Cancel, "POST", &path, calls)
            .await
            .map(drop)
    }

    /// Sends one request, records and logs it, and classifies the outcome.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        operation: Operation,
        method: &'static str,
        endpoint: &str,
        calls: &mut Vec<CallRecord>,
    ) -> Result<bytes::Bytes, CircleError> {
        let started_at = std::time::SystemTime::now();
        let started = Instant::now();
        let result = async {
            let response = request.send().await.map_err(classify_transport)?;
            let status = response.status();
            let retry_after = parse_retry_after(response.headers());
            let body = response.bytes().await.map_err(classify_transport)?;
            Ok::<_, CircleError>((status, retry_after, body))
        }
        .await;
        let duration = started.elapsed();

        let (status, outcome) = match result {
            Ok((status, retry_after, body)) => (
                Some(status.as_u16()),
                classify_status(status, retry_after, body),
            ),
            Err(e) => (None, Err(e)),
        };
        let error = outcome.as_ref().err().map(ToString::to_string);
        tracing::info!(
            target: "circleci",
            method,
            endpoint,
            status,
            latency_ms = duration.as_millis() as u64,
            error = error.as_deref(),
            "circleci call"
        );
        calls.push(CallRecord {
            started_at,
            operation,
            method,
            endpoint: endpoint.to_owned(),
            status,
            duration,
            error,
        });
        outcome
    }
}

fn classify_transport(e: reqwest::Error) -> CircleError {
    if e.is_timeout() {
        CircleError::Timeout
    } else if e.is_connect() || e.is_request() || e.is_body() {
        // Strip the URL: it is ours and adds noise; the cause is what matters.
        CircleError::Connect(e.without_url().to_string())
    } else {
        CircleError::InvalidResponse(e.without_url().to_string())
    }
}

fn classify_status(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: bytes::Bytes,
) -> Result<bytes::Bytes, CircleError> {
    match status.as_u16() {
        200..=299 => Ok(body),
        401 | 403 => Err(CircleError::Unauthorized(status.as_u16())),
        404 => Err(CircleError::NotFound),
        429 => Err(CircleError::RateLimited { retry_after }),
        500..=599 => Err(CircleError::Server {
            status: status.as_u16(),
            retry_after,
        }),
        code => Err(CircleError::Client {
            status: code,
            message: error_message(&body),
        }),
    }
}

/// CircleCI errors look like `{"message": "..."}`; keep it short for logs.
fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        message: String,
    }
    let text = serde_json::from_slice::<ErrorBody>(body)
        .map(|b| b.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned());
    text.chars().take(200).collect()
}

/// `Retry-After` as seconds or an HTTP date, capped at an hour.
pub fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let delay = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    };
    Some(delay.min(Duration::from_secs(3600)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(parse_retry_after(&headers), Some(Duration::from_secs(7)));
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_str(&httpdate::fmt_http_date(later)).unwrap(),
        );
        let parsed = parse_retry_after(&headers).unwrap();
        assert!(parsed > Duration::from_secs(100) && parsed <= Duration::from_secs(120));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(parse_retry_after(&headers), None);
    }
}
