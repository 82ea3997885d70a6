//! `send-event`: signs a Sym-shaped event as Sym would and posts it (a smoke test), or with
//! `--generic` a generic approval event (`docs/generic-approvals.md`); also the signing client
//! the demo and tests use.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use uuid::Uuid;

use super::{SecretArgs, EXIT_CONFIG};
use crate::clock::Clock;
use crate::inbound::signature::{WebhookSecret, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP};

#[derive(Args)]
pub struct SendEventArgs {
    #[command(flatten)]
    pub secrets: SecretArgs,
    /// The service's webhook URL.
    #[arg(long, default_value = "http://127.0.0.1:8080/webhooks/sym")]
    pub url: String,
    /// Sym event type: approve, deny, expire, request, … (with --generic: the decision,
    /// approve or deny)
    #[arg(long = "type", default_value = "approve")]
    pub event_type: String,
    /// The CircleCI workflow id (a UUID) the event is about.
    #[arg(long)]
    pub workflow_id: String,
    /// Sym event id (default: random); reuse one to test deduplication.
    #[arg(long)]
    pub event_id: Option<String>,
    /// webhook-id header (default: random).
    #[arg(long)]
    pub webhook_id: Option<String>,
    /// Approver's username.
    #[arg(long, default_value = "send-event@example.com")]
    pub approver: String,
    /// Send a generic approval event (another approval system's) instead of a Sym log entry.
    #[arg(long)]
    pub generic: bool,
    /// With --generic: the request's id in the approval system (default: random); the same
    /// id and decision again is a duplicate.
    #[arg(long, requires = "generic")]
    pub request_id: Option<String>,
    /// The approval job to release (one of the service's HOLD_JOB_NAMES; default: its default).
    #[arg(long)]
    pub hold_job_name: Option<String>,
}

/// The answer to a signed delivery.
#[derive(Debug)]
pub struct Delivered {
    pub status: u16,
    pub body: String,
}

/// Signs `body` as Sym would (Standard Webhooks) and posts it.
pub async fn post_signed(
    client: &reqwest::Client,
    url: &str,
    secret: &WebhookSecret,
    webhook_id: &str,
    body: &[u8],
) -> anyhow::Result<Delivered> {
    let timestamp = Clock::system().unix_secs();
    let signature = secret.sign(webhook_id, timestamp, body);
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .header(HEADER_ID, webhook_id)
        .header(HEADER_TIMESTAMP, timestamp.to_string())
        .header(HEADER_SIGNATURE, signature)
        .body(body.to_vec())
        .send()
        .await?;
    Ok(Delivered {
        status: response.status().as_u16(),
        body: response.text().await?,
    })
}

/// A Sym-shaped event body for `send-event` and the demo.
pub fn event_body(event_id: &str, event_type: &str, workflow_id: &str, approver: &str) -> Vec<u8> {
    let timestamp = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    crate::inbound::sym_event::sample_body(event_id, event_type, workflow_id, approver, &timestamp)
        .to_string()
        .into_bytes()
}

pub async fn run(args: &SendEventArgs) -> ExitCode {
    // Signs with the first configured secret (`load` never returns an empty list).
    let secret = match args.secrets.load().map(|all| all.into_iter().next()) {
        Ok(Some(secret)) => secret,
        Ok(None) => return ExitCode::from(EXIT_CONFIG),
        Err(e) => {
            eprintln!("configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let event_id = args
        .event_id
        .clone()
        .unwrap_or_else(|| Uuid::new_v4().to_string());
    let webhook_id = args
        .webhook_id
        .clone()
        .unwrap_or_else(|| format!("msg_{}", Uuid::new_v4().simple()));
    let body = if args.generic {
        let decision = match args.event_type.as_str() {
            "approve" | "deny" => args.event_type.as_str(),
            other => {
                eprintln!("--generic: --type must be approve or deny, not {other:?}");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        let request_id = args.request_id.clone().unwrap_or(event_id);
        crate::inbound::generic_event::sample_body(
            &request_id,
            decision,
            &args.workflow_id,
            &args.approver,
            args.hold_job_name.as_deref(),
        )
        .to_string()
        .into_bytes()
    } else {
        let mut body = event_body(
            &event_id,
            &args.event_type,
            &args.workflow_id,
            &args.approver,
        );
        if let Some(hold) = &args.hold_job_name {
            if let Ok(mut entry) = serde_json::from_slice::<serde_json::Value>(&body) {
                entry["fields"]["hold_job_name"] = hold.as_str().into();
                body = entry.to_string().into_bytes();
            }
        }
        body
    };
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            eprintln!("cannot build an HTTP client: {e}");
            return ExitCode::FAILURE;
        }
    };
    match post_signed(&client, &args.url, &secret, &webhook_id, &body).await {
        Ok(delivered) => {
            println!("HTTP {} {}", delivered.status, delivered.body);
            if (200..300).contains(&delivered.status) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("could not deliver to {}: {e}", args.url);
            ExitCode::FAILURE
        }
    }
}
