//! `verify`: the provenance check for the deploy job that follows the hold job, as a
//! command (the CircleCI kit does the same with curl).
//!
//! Asks this service's verdict API (`GET /v1/verdicts/{workflow_id}`) whether the workflow's
//! hold job was released because Sym approved it. It authenticates with the job's CircleCI
//! OIDC token (`$CIRCLE_OIDC_TOKEN_V2`, read from the environment as CircleCI sets it), or with
//! a static verdict token when one is given (CircleCI server without OIDC). Exit 0 only for `approved`: a hold job approved by a click in the CircleCI UI
//! fails the check, so the Sym gate cannot be bypassed. While the verdict is pending it asks
//! again, up to `--wait`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use uuid::Uuid;

use crate::config::{parse_duration, read_secret, secure_url_setting, ConfigError};

#[derive(Args)]
pub struct VerifyArgs {
    /// The workflow to check (in CircleCI: "$CIRCLE_WORKFLOW_ID").
    #[arg(long, env = "CIRCLE_WORKFLOW_ID")]
    pub workflow_id: String,
    /// Base URL of this service, e.g. https://approver.example.com.
    #[arg(long, env = "APPROVER_URL")]
    pub url: String,
    /// A bearer token for the verdict API: the service's static VERDICT_TOKEN, or an OIDC
    /// token (e.g. one from `circleci run oidc get` with a custom audience). Default: the
    /// job's own OIDC token, CIRCLE_OIDC_TOKEN_V2.
    #[arg(long, env = "APPROVER_VERDICT_TOKEN", hide_env_values = true)]
    pub verdict_token: Option<String>,
    /// File holding the verdict token instead.
    #[arg(long, env = "APPROVER_VERDICT_TOKEN_FILE")]
    pub verdict_token_file: Option<PathBuf>,
    /// The hold job to ask about (one of the service's HOLD_JOB_NAMES; default: its default).
    #[arg(long)]
    pub hold_job: Option<String>,
    /// How long to keep asking while the verdict is pending or the service is unavailable.
    #[arg(long, default_value = "0s")]
    pub wait: String,
    /// Time limit for each request.
    #[arg(long, default_value = "15s")]
    pub timeout: String,
    /// Allow a plain-http APPROVER_URL on a non-loopback host (the token travels in clear).
    #[arg(long, env = "APPROVER_ALLOW_INSECURE_HTTP", default_value_t = false)]
    pub allow_insecure_http: bool,
    /// The job's CircleCI OIDC token, used when no verdict token is given.
    #[arg(long, env = "CIRCLE_OIDC_TOKEN_V2", hide_env_values = true)]
    pub oidc_token: Option<String>,
}

impl VerifyArgs {
    /// The bearer token to send: an explicit verdict token, else the job's OIDC token.
    pub fn verdict_token(&self) -> Result<SecretString, ConfigError> {
        let explicit = self.verdict_token.as_deref().is_some_and(|t| !t.is_empty())
            || self.verdict_token_file.is_some();
        match self.oidc_token.as_deref().filter(|t| !t.trim().is_empty()) {
            Some(oidc) if !explicit => Ok(SecretString::from(oidc.trim().to_owned())),
            _ => read_secret(
                "APPROVER_VERDICT_TOKEN",
                self.verdict_token.as_deref(),
                self.verdict_token_file.as_deref(),
            )
            .map_err(|mut e| {
                e.message = format!(
                    "{} (or run inside a CircleCI job, where CIRCLE_OIDC_TOKEN_V2 is set)",
                    e.message
                );
                e
            }),
        }
    }
}

/// The `detail` of the service's error body, else the body (short, without control
/// characters).
fn error_detail(body: &str) -> String {
    let detail = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(str::to_owned))
        .unwrap_or_else(|| body.to_owned());
    detail
        .chars()
        .filter(|c| !c.is_control())
        .take(300)
        .collect()
}

/// Exit codes: 0 approved through Sym; 1 not approved; 2 still pending; 3 the check could not
/// be made (service unreachable, auth, configuration).
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
struct Answer {
    verdict: String,
    detail: String,
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

/// The verdict and the one line that explains it, asking again while it is pending (or the
/// service is unavailable) until `--wait` has passed.
pub async fn check(args: &VerifyArgs) -> (Verdict, String) {
    let wait = match args.wait.trim() {
        "0" | "0s" | "" => Duration::ZERO,
        other => match parse_duration("wait", other) {
            Ok(d) => d,
            Err(e) => return (Verdict::Unknown, format!("not verified: {e}")),
        },
    };
    let give_up = tokio::time::Instant::now() + wait;
    loop {
        let (verdict, line, retryable) = check_once(args).await;
        let retry = verdict == Verdict::Pending || retryable;
        if !retry || tokio::time::Instant::now() + Duration::from_secs(5) > give_up {
            return (verdict, line);
        }
        eprintln!("{line}; asking again in 5 s");
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// One question: the verdict, its line, and whether asking again could help.
async fn check_once(args: &VerifyArgs) -> (Verdict, String, bool) {
    let unknown = |line: String| (Verdict::Unknown, format!("not verified: {line}"), false);
    let Ok(workflow_id) = Uuid::try_parse(args.workflow_id.trim()) else {
        return unknown(format!("workflow id {:?} is not a UUID", args.workflow_id));
    };
    let token = match args.verdict_token() {
        Ok(token) => token,
        Err(e) => return unknown(e.to_string()),
    };
    let timeout = match parse_duration("timeout", &args.timeout) {
        Ok(t) => t,
        Err(e) => return unknown(e.to_string()),
    };
    let base = match secure_url_setting(
        "APPROVER_URL",
        "APPROVER_ALLOW_INSECURE_HTTP",
        &args.url,
        args.allow_insecure_http,
    ) {
        Ok(url) => url.as_str().trim_end_matches('/').to_owned(),
        Err(e) => return unknown(e.to_string()),
    };
    let mut url = format!("{base}/v1/verdicts/{workflow_id}");
    if let Some(hold_job) = args.hold_job.as_deref().filter(|h| !h.trim().is_empty()) {
        url = match reqwest::Url::parse_with_params(&url, [("hold_job", hold_job.trim())]) {
            Ok(with_query) => with_query.to_string(),
            Err(e) => return unknown(format!("hold job {hold_job:?}: {e}")),
        };
    }
    let result = async {
        // A redirect could carry the token elsewhere: none is followed.
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let response = client
            .get(&url)
            .bearer_auth(token.expose_secret())
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
                true,
            )
        }
    };
    match status.as_u16() {
        200 => {}
        401 => {
            return unknown(format!(
                "the approver service refused the token (APPROVER_VERDICT_TOKEN, or the job's \
                 CIRCLE_OIDC_TOKEN_V2): {}",
                error_detail(&body)
            ))
        }
        403 => {
            return unknown(format!(
                "the approver service refused this job: {}",
                error_detail(&body)
            ))
        }
        404 => {
            return unknown(format!(
                "{base} has no verdict API (is CIRCLECI_OIDC_ORG_ID or VERDICT_TOKEN set on the \
                 service?)"
            ))
        }
        code @ (429 | 500..=599) => {
            return (
                Verdict::Unknown,
                format!("not verified: the approver service answered HTTP {code}"),
                true,
            )
        }
        code => return unknown(format!("the approver service answered HTTP {code}: {body}")),
    }
    let answer: Answer = match serde_json::from_str(&body) {
        Ok(answer) => answer,
        Err(e) => return unknown(format!("unexpected answer from the approver service: {e}")),
    };
    match answer.verdict.as_str() {
        "approved" => (
            Verdict::Approved,
            format!("verified: {}", answer.detail),
            false,
        ),
        "pending" => (
            Verdict::Pending,
            format!("not verified yet: {}", answer.detail),
            false,
        ),
        _ => (
            Verdict::NotApproved,
            format!("not verified: {}", answer.detail),
            false,
        ),
    }
}
