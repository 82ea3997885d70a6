//! `verify`: the provenance check for the deploy job that follows the hold job.
//!
//! Asks this service's audit API whether it approved the workflow's hold job for a Sym approve
//! event. Exit 0 and who/when only for outcome `approved`: a hold job approved by someone
//! clicking in the CircleCI UI shows up as `already_approved` (or not at all) and fails the
//! check, so the Sym gate cannot be bypassed.

use std::process::ExitCode;

use serde::Deserialize;
use uuid::Uuid;

use std::path::PathBuf;

use clap::Args;
use secrecy::SecretString;

use crate::config::{parse_duration, read_secret, secure_base_url, ConfigError};

#[derive(Args)]
pub struct VerifyArgs {
    /// The workflow to check (in CircleCI: "$CIRCLE_WORKFLOW_ID").
    #[arg(long, env = "CIRCLE_WORKFLOW_ID")]
    pub workflow_id: String,
    /// Base URL of this service, e.g. https://approver.example.com.
    #[arg(long, env = "APPROVER_URL")]
    pub url: String,
    /// The service's audit API token.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// File holding the admin token instead.
    #[arg(long, env = "ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Time limit for the check.
    #[arg(long, default_value = "15s")]
    pub timeout: String,
    /// Allow a plain-http APPROVER_URL on a non-loopback host (the token travels in clear).
    #[arg(long, env = "APPROVER_ALLOW_INSECURE_HTTP", default_value_t = false)]
    pub allow_insecure_http: bool,
}

impl VerifyArgs {
    pub fn admin_token(&self) -> Result<SecretString, ConfigError> {
        read_secret(
            "ADMIN_TOKEN",
            self.admin_token.as_deref(),
            self.admin_token_file.as_deref(),
        )
    }
}

/// Exit codes: 0 approved by us; 1 not approved (never, failed, refused); 2 still pending;
/// 3 the check could not be made (service unreachable, auth, configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Approved,
    NotApproved,
    Pending,
    Unknown,
}

impl Verdict {
    pub fn exit_code(self) -> ExitCode {
        ExitCode::from(match self {
            Self::Approved => 0,
            Self::NotApproved => 1,
            Self::Pending => 2,
            Self::Unknown => 3,
        })
    }
}

#[derive(Debug, Deserialize)]
struct Page {
    items: Vec<Item>,
}

#[derive(Debug, Deserialize)]
struct Item {
    id: String,
    event_type: String,
    sym_event_id: String,
    status: String,
    outcome: Option<String>,
    detail: Option<String>,
    finished_at: Option<String>,
    received_at: String,
    approver: Approver,
}

#[derive(Debug, Deserialize)]
struct Approver {
    username: Option<String>,
    name: Option<String>,
}

pub async fn run(args: &VerifyArgs) -> ExitCode {
    let (verdict, line) = check(args).await;
    if verdict == Verdict::Approved {
        println!("{line}");
    } else {
        eprintln!("{line}");
    }
    verdict.exit_code()
}

/// The verdict and the one line that explains it.
pub async fn check(args: &VerifyArgs) -> (Verdict, String) {
    let Ok(workflow_id) = Uuid::try_parse(args.workflow_id.trim()) else {
        return (
            Verdict::Unknown,
            format!(
                "not verified: workflow id {:?} is not a UUID",
                args.workflow_id
            ),
        );
    };
    let token = match args.admin_token() {
        Ok(token) => token,
        Err(e) => return (Verdict::Unknown, format!("not verified: {e}")),
    };
    let timeout = match parse_duration("timeout", &args.timeout) {
        Ok(t) => t,
        Err(e) => return (Verdict::Unknown, format!("not verified: {e}")),
    };
    let base = match secure_base_url(
        "APPROVER_URL",
        "APPROVER_ALLOW_INSECURE_HTTP",
        &args.url,
        args.allow_insecure_http,
    ) {
        Ok(url) => url.as_str().trim_end_matches('/').to_owned(),
        Err(e) => return (Verdict::Unknown, format!("not verified: {e}")),
    };
    let url = format!("{base}/v1/approvals?workflow_id={workflow_id}&limit=200");
    let result = async {
        let client = reqwest::Client::builder().timeout(timeout).build()?;
        let response = client
            .get(&url)
            .bearer_auth(secrecy::ExposeSecret::expose_secret(&token))
            .send()
            .await?;
        let status = response.status();
        let body = response.text().await?;
        Ok::<_, reqwest::Error>((status, body))
    }
    .await;
    let (status, body) = match result {
        Ok(answer) => answer,
        Err(e) => {
            return (
                Verdict::Unknown,
                format!(
                    "not verified: cannot reach the approver service at {base}: {}",
                    e.without_url()
                ),
            )
        }
    };
    match status.as_u16() {
        200 => {}
        401 => {
            return (
                Verdict::Unknown,
                "not verified: the approver service refused ADMIN_TOKEN".into(),
            )
        }
        404 => {
            return (
                Verdict::Unknown,
                format!(
                    "not verified: {base} has no audit API (is ADMIN_TOKEN set on the service?)"
                ),
            )
        }
        code => {
            return (
                Verdict::Unknown,
                format!("not verified: the approver service answered HTTP {code}"),
            )
        }
    }
    let page: Page = match serde_json::from_str(&body) {
        Ok(page) => page,
        Err(e) => {
            return (
                Verdict::Unknown,
                format!("not verified: unexpected answer from the approver service: {e}"),
            )
        }
    };
    verdict_for(workflow_id, &page.items)
}

fn verdict_for(workflow_id: Uuid, items: &[Item]) -> (Verdict, String) {
    let approvals: Vec<&Item> = items.iter().filter(|i| i.event_type == "approve").collect();
    if let Some(ok) = approvals
        .iter()
        .find(|i| i.status == "succeeded" && i.outcome.as_deref() == Some("approved"))
    {
        let who = match (&ok.approver.name, &ok.approver.username) {
            (Some(name), Some(user)) => format!("{name} <{user}>"),
            (Some(one), None) | (None, Some(one)) => one.clone(),
            (None, None) => "an unnamed Sym user".into(),
        };
        return (
            Verdict::Approved,
            format!(
                "verified: workflow {workflow_id} was approved through Sym by {who} at {} \
                 (Sym event {}, hold job approved at {}, approval {})",
                ok.received_at,
                ok.sym_event_id,
                ok.finished_at.as_deref().unwrap_or("?"),
                ok.id
            ),
        );
    }
    if let Some(pending) = approvals.iter().find(|i| i.status == "pending") {
        return (
            Verdict::Pending,
            format!(
                "not verified: the Sym approval of workflow {workflow_id} is still pending: {}",
                pending.detail.as_deref().unwrap_or("not worked on yet")
            ),
        );
    }
    if let Some(last) = approvals.first() {
        let outcome = last.outcome.as_deref().unwrap_or("unknown");
        let why = if outcome == "already_approved" {
            "the hold job was approved outside Sym before this service could".to_owned()
        } else {
            format!("{outcome}: {}", last.detail.as_deref().unwrap_or(""))
        };
        return (
            Verdict::NotApproved,
            format!("not verified: the Sym approval of workflow {workflow_id} failed: {why}"),
        );
    }
    (
        Verdict::NotApproved,
        format!("not verified: this service never approved workflow {workflow_id} for a Sym approve event"),
    )
}
