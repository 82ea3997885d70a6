//! `demo`: the whole approval flow on this machine, no credentials needed.
//!
//! Starts the built-in fake CircleCI (a workflow whose hold job is on the second page and goes
//! on hold two seconds in), starts the real service on a random port with a throwaway SQLite
//! store, sends a signed approve event, and narrates what happens: the approval, a duplicate
//! redelivery, and a forged signature. Then the second path: a gate registered as the
//! CircleCI kit does, a Sym approval whose hook delivery is lost, and the reconciler finding
//! it in Sym's run status (a built-in fake Sym API) and releasing the hold job once.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use approver_test_support::fake_circleci::FakeCircleCi;
use approver_test_support::fake_sym::FakeSymApi;
use sym_circleci_approver::app::Application;
use sym_circleci_approver::cli::send_event::{event_body, post_signed};
use sym_circleci_approver::cli::serve::ServeArgs;
use sym_circleci_approver::config::LogFormat;
use sym_circleci_approver::domain::task::TaskStatus;
use sym_circleci_approver::domain::task::DEFAULT_HOLD_JOB_NAME;
use sym_circleci_approver::inbound::signature::WebhookSecret;
use sym_circleci_approver::telemetry::{self, LogTarget};

const TOKEN: &str = "demo-circleci-token";
const SYM_TOKEN: &str = "demo-sym-bot-token";
const GATE_TOKEN: &str = "demo-gate-token-0123456789";

pub async fn run() -> ExitCode {
    // The service's own log lines go to a file: the narrative on stdout stays readable.
    let log = std::env::temp_dir().join(format!("sym-approver-demo-{}.log", Uuid::new_v4()));
    let _logs = match std::fs::File::create(&log) {
        Ok(file) => telemetry::init(LogFormat::Text, "info", LogTarget::File(file)),
        Err(_) => telemetry::init(LogFormat::Text, "error", LogTarget::Stderr),
    };
    let result = demo().await;
    if log.exists() {
        println!("the service's log of this run: {}", log.display());
    }
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn demo() -> anyhow::Result<bool> {
    let started = Instant::now();
    let step = |text: String| println!("[{:>5.1}s] {text}", started.elapsed().as_secs_f64());

    let fake = FakeCircleCi::start(TOKEN).await?;
    let workflow_id = Uuid::new_v4();
    fake.add_standard_workflow(workflow_id, "gh/acme/api", DEFAULT_HOLD_JOB_NAME, "on_hold");
    fake.hold_after(workflow_id, DEFAULT_HOLD_JOB_NAME, Duration::from_secs(2));
    step(format!(
        "fake CircleCI at {}: workflow {workflow_id} with 5 jobs, 2 a page; \
         hold job `{DEFAULT_HOLD_JOB_NAME}` on page 2, blocked for 2 s, then on hold",
        fake.base_url()
    ));

    let sym = FakeSymApi::start(SYM_TOKEN).await?;
    let dir = std::env::temp_dir().join(format!("sym-approver-demo-{}", Uuid::new_v4()));
    let secret_text = WebhookSecret::generate();
    let secret = WebhookSecret::parse(&secret_text)?;
    let args = ServeArgs::from_flags([
        format!("--sym-webhook-secret={secret_text}"),
        format!("--circleci-token={TOKEN}"),
        format!("--circleci-api-url={}", fake.base_url()),
        "--listen-addr=127.0.0.1:0".to_owned(),
        format!("--database-url=sqlite://{}/approver.db", dir.display()),
        format!("--hold-job-name={DEFAULT_HOLD_JOB_NAME}"),
        "--approval-timeout=2m".to_owned(),
        format!("--gate-token={GATE_TOKEN}"),
        format!("--sym-api-url={}", sym.base_url()),
        format!("--sym-api-token={SYM_TOKEN}"),
        "--log-format=text".to_owned(),
    ])?;
    let config = args.to_config()?;
    let app = Application::build(config).await?;
    let url = format!("http://{}/webhooks/sym", app.local_addr()?);
    let store = app.store().clone();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    step(format!(
        "service listening at {url} (SQLite store in {})",
        dir.display()
    ));

    let client = reqwest::Client::new();
    let event_id = Uuid::new_v4().to_string();
    let body = event_body(
        &event_id,
        "approve",
        &workflow_id.to_string(),
        "alice@example.com",
    );
    let webhook_id = format!("msg_{}", Uuid::new_v4().simple());
    let first = post_signed(&client, &url, &secret, &webhook_id, &body).await?;
    step(format!(
        "Sym → service: signed approve event {event_id} by alice@example.com → HTTP {} {}",
        first.status, first.body
    ));

    let approved = fake
        .wait_for_calls(Duration::from_secs(60), |calls| {
            calls
                .iter()
                .any(|c| c.operation == "approve" && c.status == 202)
        })
        .await;
    for call in fake.calls() {
        let query = call.query.map(|q| format!("?{q}")).unwrap_or_default();
        let at = call
            .at
            .map_or(0.0, |at| at.duration_since(started).as_secs_f64());
        println!(
            "[{at:>5.1}s] service → CircleCI: {} {}{query} → HTTP {}",
            call.method, call.path, call.status
        );
    }
    let status = fake.job_status(workflow_id, DEFAULT_HOLD_JOB_NAME);
    step(format!(
        "CircleCI: hold job is now {}",
        status.as_deref().unwrap_or("missing")
    ));

    let again = post_signed(&client, &url, &secret, &webhook_id, &body).await?;
    step(format!(
        "The hook retries the same delivery → HTTP {} {} (nothing new done)",
        again.status, again.body
    ));
    let forged = WebhookSecret::parse(&WebhookSecret::generate())?;
    let refused = post_signed(&client, &url, &forged, "msg_forged", &body).await?;
    step(format!(
        "a caller without the secret → HTTP {} {}",
        refused.status, refused.body
    ));

    // Let the worker record its result before reading it back.
    let mut outcome = None;
    for _ in 0..50 {
        let task = match serde_json::from_str::<serde_json::Value>(&first.body)?
            .get("delivery_id")
            .and_then(|v| v.as_str())
            .and_then(|v| v.parse().ok())
        {
            Some(delivery) => store.task_for_delivery(delivery).await?,
            None => None,
        };
        if let Some(task) = task {
            if let Some(s) = store.task_state(task).await? {
                if s.status != TaskStatus::Pending {
                    outcome = Some(s);
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some(s) = &outcome {
        step(format!(
            "store: task {} / {} after {} step(s): {}",
            s.status,
            s.outcome.map_or("-", |o| o.as_str()),
            s.attempts,
            s.detail.as_deref().unwrap_or("")
        ));
    }

    let recovered = recovery(&fake, &sym, &client, &url, &secret, &step).await?;

    shutdown.cancel();
    server.await??;
    let _ = std::fs::remove_dir_all(&dir);
    let approvals = fake.successful_approvals();
    let ok = approved
        && recovered
        && approvals == 2
        && first.status == 202
        && again.status == 200
        && refused.status == 401;
    if ok {
        step(
            "done: each hold job was approved exactly once, one by the hook and one by the \
             reconciler; the deploys would continue now"
                .into(),
        );
    } else {
        step(format!(
            "unexpected result: {approvals} approve call(s) accepted"
        ));
    }
    Ok(ok)
}

/// The second path: the hook's delivery never arrives, the reconciler finds the approval.
async fn recovery(
    fake: &FakeCircleCi,
    sym: &FakeSymApi,
    client: &reqwest::Client,
    webhook_url: &str,
    secret: &WebhookSecret,
    step: &impl Fn(String),
) -> anyhow::Result<bool> {
    let workflow_id = Uuid::new_v4();
    fake.add_standard_workflow(workflow_id, "gh/acme/api", DEFAULT_HOLD_JOB_NAME, "on_hold");
    // What `sym/request` does: ask Sym for an approval, keep the run id.
    let request: serde_json::Value = client
        .post(format!("{}/events/request", sym.base_url()))
        .bearer_auth(SYM_TOKEN)
        .json(&serde_json::json!({
            "flow_srn": "acme:flow:ci-approval:latest",
            "flow_inputs": {"workflow_id": workflow_id.to_string()},
        }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let run_id = request["run_id"].as_str().unwrap_or_default().to_owned();
    step(format!(
        "CircleCI → Sym: sym/request for workflow {workflow_id} → run {run_id} (pending)"
    ));
    // What the flow's after_request hook does: a signed `request` event binds the run to the
    // workflow (the reconciler releases a gate only for a run bound to it).
    let mut request_event: serde_json::Value = serde_json::from_slice(&event_body(
        &Uuid::new_v4().to_string(),
        "request",
        &workflow_id.to_string(),
        "ci-bot@example.com",
    ))?;
    request_event["run"]["srn"] = format!("acme:run:ci-approval:1.0.0:{run_id}").into();
    let bound = post_signed(
        client,
        webhook_url,
        secret,
        &format!("msg_{}", Uuid::new_v4().simple()),
        request_event.to_string().as_bytes(),
    )
    .await?;
    step(format!(
        "Sym → service: the flow's after_request hook sends the signed request event (run → \
         workflow) → HTTP {} {}",
        bound.status, bound.body
    ));
    // What the kit's next step does: register the gate (with the job's OIDC token in CircleCI;
    // the demo has no CircleCI, so it uses a static gate token).
    let gates_url = webhook_url.replace("/webhooks/sym", "/v1/gates");
    let registered = client
        .post(&gates_url)
        .bearer_auth(GATE_TOKEN)
        .json(&serde_json::json!({"workflow_id": workflow_id, "sym_run_id": run_id}))
        .send()
        .await?;
    step(format!(
        "CircleCI → service: POST /v1/gates → HTTP {}",
        registered.status().as_u16()
    ));
    sym.set_run(&run_id, "approved");
    step(
        "Sym: bob@example.com approves in Slack, but the hook's delivery is lost (the service \
         was being redeployed)"
            .into(),
    );
    let released = fake
        .wait_for_calls(Duration::from_secs(60), |calls| {
            calls.iter().any(|c| {
                c.operation == "approve"
                    && c.status == 202
                    && c.path.contains(&workflow_id.to_string())
            })
        })
        .await;
    let reads = sym.run_status_calls(&run_id).len();
    step(format!(
        "service → Sym: read run {run_id} {reads} time(s); approved → service → CircleCI: hold \
         job of {workflow_id} {}",
        if released { "approved" } else { "NOT approved" }
    ));
    let approves = fake
        .calls_of("approve")
        .iter()
        .filter(|c| c.path.contains(&workflow_id.to_string()))
        .count();
    Ok(released && approves == 1 && registered.status().as_u16() == 201 && bound.status == 200)
}
