//! What travels between a test and the service: Sym events, signatures, HTTP answers, the
//! Prometheus text, and the tokens and names the tests share.

use std::time::{SystemTime, UNIX_EPOCH};

use approver_test_support::fake_circleci::{FakeCircleCi, RecordedCall};
use serde_json::Value;
use sym_circleci_approver::domain::task::DEFAULT_HOLD_JOB_NAME;
use sym_circleci_approver::inbound::signature::WebhookSecret;
use uuid::Uuid;

/// The CircleCI token the fakes accept and the services send.
pub const TOKEN: &str = "test-circleci-token-5f1d2c";
/// The default hold job.
pub const HOLD: &str = DEFAULT_HOLD_JOB_NAME;
pub const PROJECT: &str = "gh/acme/api";
/// `ADMIN_TOKEN` of a service built with `.admin_token()`.
pub const ADMIN: &str = "admin-token-for-tests-0123456789";
/// `VERDICT_TOKEN` of a service built with `.verdict_token()`.
pub const VERDICT: &str = "verdict-token-3c9e1f2a7b";
/// `GATE_TOKEN` of a service built with `.gate_token()`.
pub const GATE: &str = "gate-token-7d41c0a9e2";
/// The token the fake Sym API of `.sym_api()` accepts (and the service sends, by default).
pub const SYM_TOKEN: &str = "sym-bot-token-5b2e";

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A Sym approve log entry (schema_version 4) for `workflow_id`.
pub fn approve_event(event_id: &str, workflow_id: &str) -> Vec<u8> {
    event_of_type(event_id, "approve", workflow_id)
}

pub fn event_of_type(event_id: &str, event_type: &str, workflow_id: &str) -> Vec<u8> {
    sym_circleci_approver::cli::event_body(event_id, event_type, workflow_id, "alice@example.com")
}

/// A Sym log entry of `event_type` for the run `run_id` (its SRN names it), requested for
/// `workflow_id` and, when given, `hold_job_name`.
pub fn run_event(
    event_type: &str,
    run_id: &str,
    workflow_id: Uuid,
    hold_job_name: Option<&str>,
) -> Vec<u8> {
    let body = event_of_type(
        &Uuid::new_v4().to_string(),
        event_type,
        &workflow_id.to_string(),
    );
    let mut entry: Value = serde_json::from_slice(&body).unwrap();
    entry["run"]["srn"] = format!("acme:run:ci-approval:1.0.0:{run_id}").into();
    if let Some(hold) = hold_job_name {
        entry["fields"]["hold_job_name"] = hold.into();
    }
    entry.to_string().into_bytes()
}

pub fn new_webhook_id() -> String {
    format!("msg_{}", Uuid::new_v4().simple())
}

/// A fresh webhook secret, as text and parsed.
pub fn new_secret() -> (String, WebhookSecret) {
    let text = WebhookSecret::generate();
    let secret = WebhookSecret::parse(&text).unwrap();
    (text, secret)
}

/// A workflow whose hold job is on hold, at `fake`.
pub fn workflow_on_hold(fake: &FakeCircleCi) -> Uuid {
    let id = Uuid::new_v4();
    fake.add_standard_workflow(id, PROJECT, HOLD, "on_hold");
    id
}

/// A loopback address nothing listens on (a port just freed).
pub fn closed_addr() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// How many of the fake CircleCI's `calls` were of `operation` and accepted (202).
pub fn accepted(calls: &[RecordedCall], operation: &str) -> usize {
    calls
        .iter()
        .filter(|c| c.operation == operation && c.status == 202)
        .count()
}

/// An HTTP answer whose body is JSON (every answer of the service is).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Answer {
    /// The `delivery_id` of an accepted (or recognised) delivery.
    pub fn delivery_id(&self) -> String {
        self.body["delivery_id"]
            .as_str()
            .unwrap_or_else(|| panic!("HTTP {} without a delivery_id: {}", self.status, self.body))
            .to_owned()
    }
}

pub async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("HTTP {status}: body is not JSON: {text:?}"));
    Answer {
        status,
        body,
        headers,
    }
}

/// The value of one sample line of the Prometheus text, 0 when absent.
pub fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}
