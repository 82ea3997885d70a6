//! Tests that run the real binary as a child process: signals, restarts, refusals at startup,
//! what the logs hold, and the helper subcommands.
//!
//! The child process (a cleared environment, JSON log lines on stdout, the port from the
//! `listening` line, signals) is `crate::harness::child`. The fake CircleCI runs inside the test
//! process, so waits here are always async (never a blocking wait that would starve it).

use std::net::SocketAddr;
use std::time::Duration;

use uuid::Uuid;

use approver_test_support::fake_circleci::{Fault, RecordedCall};
use sym_circleci_approver::domain::task::{Outcome, TaskStatus};
use sym_circleci_approver::inbound::signature::WebhookSecret;

use crate::harness::app::task_of;
use crate::harness::*;

/// How failure messages and the output dump on a failed test name the child.
const LABEL: &str = "the binary";
/// How long a task may take to finish.
const WAIT: Duration = Duration::from_secs(20);

fn failed_list_calls(calls: &[RecordedCall]) -> usize {
    calls
        .iter()
        .filter(|c| c.operation == "list_jobs" && c.status >= 500)
        .count()
}

// ---------------------------------------------------------------------------------------------
// Shutdown and restart
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sigterm_stops_the_service_with_exit_code_0_and_keeps_pending_tasks() {
    // Arrange: CircleCI answers every job listing with 503, so the task cannot finish.
    let up = Upstreams::new().await;
    for _ in 0..50 {
        up.fake.push_fault(Fault::status(503).on("list_jobs"));
    }
    let workflow = workflow_on_hold(&up.fake);
    let mut service = ServiceProcess::start(LABEL, &up.env()).await;
    let (_, delivery_id) = service.approve(&up.secret, workflow).await;
    assert!(
        up.fake
            .wait_for_calls(Duration::from_secs(10), |c| failed_list_calls(c) >= 1)
            .await,
        "the worker never tried CircleCI"
    );

    // Act
    let status = service.stop().await;

    // Assert
    assert_eq!(status.code(), Some(0), "{}", service.output());
    // Log lines are written by a thread of their own: what was queued at the end is written
    // out before the process exits, down to its last line.
    assert_eq!(
        service.stdout.events().last().map(|e| e["message"].clone()),
        Some(serde_json::json!("stopped")),
        "{}",
        service.output()
    );
    let store = up.store().await;
    let task = task_of(&store, &delivery_id).await;
    assert_eq!(task.status, TaskStatus::Pending, "{task:?}");
    assert_eq!(up.fake.calls_of("approve").len(), 0);
    store.close().await;
}

#[tokio::test]
async fn a_stdout_nobody_reads_any_more_neither_stops_the_service_nor_its_shutdown() {
    // Arrange: the service runs; then its log collector goes away.
    let up = Upstreams::new().await;
    let mut service = ServiceProcess::start(LABEL, &up.env()).await;
    service.close_stdout().await;

    // Act: more log lines than the log writer queues (each approval logs several), while
    // every write to stdout fails.
    let workflows: Vec<Uuid> = (0..300).map(|_| workflow_on_hold(&up.fake)).collect();
    for workflow in &workflows {
        service.approve(&up.secret, *workflow).await;
    }

    // Assert: every one approved once, and SIGTERM still ends the process.
    assert!(
        up.fake
            .wait_for_calls(WAIT, |c| c
                .iter()
                .filter(|c| c.operation == "approve" && c.status == 202)
                .count()
                >= workflows.len())
            .await,
        "{}",
        service.output()
    );
    assert_eq!(up.fake.calls_of("approve").len(), workflows.len());
    let status = service.stop().await;
    assert_eq!(status.code(), Some(0), "{}", service.output());
}

#[tokio::test]
async fn a_task_interrupted_by_kill_9_resumes_after_restart_and_approves_exactly_once() {
    // Arrange: the first job listings fail; the rest succeed.
    let up = Upstreams::new().await;
    let fake = &up.fake;
    for _ in 0..3 {
        fake.push_fault(Fault::status(503).on("list_jobs"));
    }
    let workflow = workflow_on_hold(fake);
    // A short lease so that PostgreSQL (which keeps leases across restarts) resumes quickly
    // too; the first process waits long enough after its first failure to be killed before
    // its second try, the restarted one retries quickly.
    let env = up.env().set("TASK_LEASE", "3s");
    let mut first = ServiceProcess::start(LABEL, &env.clone().set("RETRY_INITIAL", "2s")).await;
    let (delivery, delivery_id) = first.approve(&up.secret, workflow).await;
    assert!(
        fake.wait_for_calls(Duration::from_secs(10), |c| failed_list_calls(c) >= 1)
            .await,
        "the worker never tried CircleCI"
    );

    // Act: kill -9 mid-task, then start again on the same store and CircleCI.
    first.kill_9().await;
    assert_eq!(
        fake.calls_of("approve").len(),
        0,
        "approved before the kill"
    );
    let second = ServiceProcess::start(
        LABEL,
        &env.set("RETRY_INITIAL", "100ms").set("RETRY_MAX", "500ms"),
    )
    .await;

    // Assert: the restarted process finishes the task, with exactly one approve.
    assert!(
        fake.wait_for_calls(Duration::from_secs(30), |c| accepted(c, "approve") >= 1)
            .await,
        "the restarted service never approved; calls: {:?}",
        fake.calls()
    );
    let store = up.store().await;
    let task = second.finished_task(&store, &delivery_id, WAIT).await;
    assert_eq!(
        (task.status, task.outcome),
        (TaskStatus::Succeeded, Some(Outcome::Approved)),
        "{task:?}"
    );
    assert_eq!(fake.successful_approvals(), 1);
    assert_eq!(fake.calls_of("approve").len(), 1, "{:?}", fake.calls());
    assert_eq!(fake.job_status(workflow, HOLD).as_deref(), Some("success"));

    // The same signed delivery again (the hook retrying) is recognised, not worked again.
    let again = second.endpoint().deliver(&delivery).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["status"], "duplicate");
    assert_eq!(again.body["delivery_id"], delivery_id.as_str());
    assert_eq!(fake.calls_of("approve").len(), 1);
    store.close().await;
}

#[tokio::test]
async fn kill_9_while_a_handed_approve_is_unanswered_keeps_the_task_until_its_lease_ends() {
    // The intake hands the task to the worker with its approve noted in the delivery's own
    // transaction; CircleCI applies the approve and answers only much later; the process is
    // killed meanwhile, its result never stored.
    let up = Upstreams::new().await;
    let fake = &up.fake;
    fake.push_fault(
        Fault::status(500)
            .on("approve")
            .after_effect()
            .delayed(Duration::from_secs(60)),
    );
    let workflow = workflow_on_hold(fake);
    let env = up
        .env()
        .set("TASK_LEASE", "3s")
        .set("CIRCLECI_TIMEOUT", "60s");
    let mut first = ServiceProcess::start(LABEL, &env).await;
    // The lease is taken after this, so it runs out 3 s after it at the earliest.
    let sent = std::time::Instant::now();
    let (_, delivery_id) = first.approve(&up.secret, workflow).await;
    assert!(
        fake.wait_for_calls(Duration::from_secs(10), |c| c
            .iter()
            .any(|c| c.operation == "approve"))
            .await,
        "the worker never called approve"
    );
    first.kill_9().await;
    let before_restart = fake.calls().len();

    // The restarted process keeps off the task until the lease runs out (the call may land),
    // then reads the hold job approved by its own token's user: the intake's note says that
    // was this task's call, so the approval is recorded as this service's, with one call.
    let second = ServiceProcess::start(LABEL, &env).await;
    let store = up.store().await;
    let task = second.finished_task(&store, &delivery_id, WAIT).await;
    assert_eq!(
        (task.status, task.outcome),
        (TaskStatus::Succeeded, Some(Outcome::Approved)),
        "{task:?}"
    );
    assert_eq!(fake.calls_of("approve").len(), 1, "{:?}", fake.calls());
    let first_read_after = fake.calls()[before_restart..]
        .iter()
        .filter(|c| c.operation == "list_jobs")
        .filter_map(|c| c.at)
        .min()
        .expect("the restarted process read the hold job");
    assert!(
        first_read_after >= sent + Duration::from_secs(3),
        "the task was read again {:?} after the delivery, inside its lease",
        first_read_after - sent
    );
    store.close().await;
}

// ---------------------------------------------------------------------------------------------
// Refusals at startup
// ---------------------------------------------------------------------------------------------

/// A complete, valid `serve` environment without a CircleCI fake or a store in use.
fn standalone_env(dir: &tempfile::TempDir) -> Env {
    Env::default()
        .set("SYM_WEBHOOK_SECRET", WebhookSecret::generate())
        .set("CIRCLECI_TOKEN", TOKEN)
        .set("CIRCLECI_API_URL", "http://127.0.0.1:9/api/v2")
        .set(
            "DATABASE_URL",
            format!("sqlite://{}/approver.db", dir.path().display()),
        )
        .set("LISTEN_ADDR", "127.0.0.1:0")
        .set("LOG_FORMAT", "json")
        .set("RUST_LOG", "info")
}

#[tokio::test]
async fn startup_without_a_circleci_token_fails_naming_circleci_token() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let env = standalone_env(&dir)
        .unset("CIRCLECI_TOKEN")
        .unset("CIRCLECI_TOKEN_FILE");

    // Act
    let (status, process) = ServiceProcess::run_to_end(&["serve"], &env).await;

    // Assert
    assert!(!status.success(), "started without a token: {status}");
    let stderr = process.stderr.text();
    assert!(stderr.contains("CIRCLECI_TOKEN"), "{stderr}");
    assert!(!process.stdout.text().contains("listening"));
}

#[tokio::test]
async fn a_short_webhook_secret_is_refused_at_startup() {
    // Arrange: "c2hvcnQ=" is base64 for "short" (5 bytes; 24 are required).
    let dir = tempfile::tempdir().unwrap();
    let env = standalone_env(&dir).set("SYM_WEBHOOK_SECRET", "whsec_c2hvcnQ=");

    // Act
    let (status, process) = ServiceProcess::run_to_end(&["serve"], &env).await;

    // Assert
    assert!(!status.success(), "started with a short secret: {status}");
    let stderr = process.stderr.text();
    assert!(stderr.contains("SYM_WEBHOOK_SECRET"), "{stderr}");
    assert!(
        !process.output().contains("c2hvcnQ"),
        "the secret was echoed: {}",
        process.output()
    );
}

#[tokio::test]
async fn a_plain_http_circleci_url_on_a_remote_host_is_refused() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let env = standalone_env(&dir).set("CIRCLECI_API_URL", "http://circleci.example.com/api/v2");

    // Act
    let (status, process) = ServiceProcess::run_to_end(&["serve"], &env).await;

    // Assert
    assert!(
        !status.success(),
        "started with a plain-http remote URL: {status}"
    );
    let stderr = process.stderr.text();
    assert!(stderr.contains("CIRCLECI_API_URL"), "{stderr}");
    assert!(!process.stdout.text().contains("listening"));
}

// ---------------------------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn secrets_never_appear_in_logs() {
    // Arrange: debug logs from every crate; the token comes from a file (CIRCLECI_TOKEN_FILE).
    let up = Upstreams::new().await;
    let fake = &up.fake;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("circleci-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let env = up
        .env()
        .unset("CIRCLECI_TOKEN")
        .set("CIRCLECI_TOKEN_FILE", token_file.display().to_string())
        .set("RUST_LOG", "debug");
    let mut service = ServiceProcess::start(LABEL, &env).await;
    let store = up.store().await;

    // Act 1: a valid approve, approved at CircleCI (so the token from the file works).
    let approved_workflow = workflow_on_hold(fake);
    let (_, approved) = service.approve(&up.secret, approved_workflow).await;
    let task = service.finished_task(&store, &approved, WAIT).await;
    assert_eq!(task.outcome, Some(Outcome::Approved), "{task:?}");

    // Act 2: a delivery signed with another secret.
    let (_, wrong_secret) = new_secret();
    let forged = service
        .endpoint()
        .deliver(&Delivery::new_approve(
            &wrong_secret,
            workflow_on_hold(fake),
        ))
        .await;
    assert_eq!(forged.status, 401, "{}", forged.body);

    // Act 3: CircleCI refuses the token for a second workflow.
    fake.push_fault(Fault::status(401).on("list_jobs"));
    let (_, refused) = service.approve(&up.secret, workflow_on_hold(fake)).await;
    let task = service.finished_task(&store, &refused, WAIT).await;
    assert_eq!(
        (task.status, task.outcome),
        (TaskStatus::Failed, Some(Outcome::CircleciUnauthorized)),
        "{task:?}"
    );
    store.close().await;

    let status = service.stop().await;
    assert_eq!(status.code(), Some(0));

    // Assert: the logs tell the story, but hold no secret.
    let logs = service.output();
    let encoded_key = up.secret_text.strip_prefix("whsec_").unwrap();
    assert!(!logs.contains(TOKEN), "the CircleCI token is in the logs");
    assert!(
        !logs.contains(&up.secret_text),
        "the webhook secret is in the logs"
    );
    assert!(
        !logs.contains(encoded_key),
        "the webhook key is in the logs"
    );
    let events = service.stdout.events();
    assert!(
        events
            .iter()
            .any(|e| e["message"] == "delivery" && e["delivery_id"] == approved.as_str()),
        "no delivery line for {approved}"
    );
    assert!(
        events.iter().any(|e| e["message"] == "circleci call"),
        "no circleci call line"
    );
    assert!(
        events
            .iter()
            .any(|e| e["message"] == "circleci call" && e["status"] == 401),
        "no line for CircleCI's 401"
    );
    assert!(
        events.iter().any(|e| e["level"] == "DEBUG"),
        "RUST_LOG=debug did not enable debug logs"
    );
}

// ---------------------------------------------------------------------------------------------
// Probes and subcommands
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn readyz_and_healthz_answer_json_on_the_running_binary() {
    // Arrange
    let up = Upstreams::new().await;
    let service = ServiceProcess::start(LABEL, &up.env()).await;
    let closed_port = closed_addr();

    // Act
    let healthz = service.endpoint().get("/healthz").await;
    let readyz = service.endpoint().get("/readyz").await;
    let check = |addr: SocketAddr| Env::default().set("LISTEN_ADDR", addr.to_string());
    let (healthy, _) = ServiceProcess::run_to_end(&["healthcheck"], &check(service.addr())).await;
    let (unhealthy, unhealthy_run) =
        ServiceProcess::run_to_end(&["healthcheck"], &check(closed_port)).await;

    // Assert
    assert_eq!(healthz.status, 200);
    assert_eq!(healthz.body, serde_json::json!({ "status": "ok" }));
    assert_eq!(readyz.status, 200);
    assert_eq!(readyz.body["status"], "ready", "{}", readyz.body);
    let backend = if up.db.is_postgres() {
        "postgres"
    } else {
        "sqlite"
    };
    assert_eq!(readyz.body["store"], backend, "{}", readyz.body);
    assert_eq!(healthy.code(), Some(0));
    assert_eq!(unhealthy.code(), Some(1), "{}", unhealthy_run.output());
}

#[tokio::test]
async fn send_event_subcommand_posts_a_signed_event_that_gets_approved() {
    // Arrange
    let up = Upstreams::new().await;
    let workflow = workflow_on_hold(&up.fake);
    let service = ServiceProcess::start(LABEL, &up.env()).await;
    let url = service.url("/webhooks/sym");
    let workflow_text = workflow.to_string();
    let event_id = Uuid::new_v4().to_string();
    let args = [
        "send-event",
        "--url",
        &url,
        "--type",
        "approve",
        "--workflow-id",
        &workflow_text,
        "--event-id",
        &event_id,
        "--approver",
        "alice@example.com",
    ];

    // Act
    let (status, sent) = ServiceProcess::run_to_end(
        &args,
        &Env::default().set("SYM_WEBHOOK_SECRET", up.secret_text.clone()),
    )
    .await;

    // Assert
    assert_eq!(status.code(), Some(0), "{}", sent.output());
    assert!(sent.stdout.text().contains("202"), "{}", sent.output());
    assert!(
        up.fake
            .wait_for_calls(WAIT, |c| accepted(c, "approve") >= 1)
            .await,
        "no approve at CircleCI; calls: {:?}",
        up.fake.calls()
    );
    assert_eq!(up.fake.successful_approvals(), 1);
    assert_eq!(
        up.fake.job_status(workflow, HOLD).as_deref(),
        Some("success")
    );
    // The step's log lines name the Sym event and its approver (read with the task's lease).
    let done = service.wait_log("task succeeded", WAIT).await;
    assert_eq!(done["span"]["sym_event_id"], event_id.as_str(), "{done}");
    assert_eq!(done["span"]["approver"], "alice@example.com", "{done}");
}

#[tokio::test]
async fn a_token_circleci_refuses_at_startup_is_an_error_naming_circleci_token_and_a_gauge() {
    // A project token on API v2: GET /me answers 404 (401 for an unknown token).
    let up = Upstreams::new().await;
    up.fake.push_fault(Fault::status(404).on("me"));
    let service = ServiceProcess::start(LABEL, &up.env()).await;

    let event = service
        .wait_log(
            "CircleCI refused CIRCLECI_TOKEN (GET /me answered HTTP 404): API v2 needs a \
             personal API token (CircleCI → User Settings → Personal API Tokens); project \
             tokens are not accepted. No hold job can be approved until it is replaced.",
            WAIT,
        )
        .await;
    assert_eq!(event["level"], "ERROR");

    // Readiness does not wait on CircleCI; the gauge tells the token's state.
    assert_eq!(service.endpoint().get("/readyz").await.status, 200);
    let metrics = service.endpoint().metrics().await;
    assert!(
        metrics.contains("sym_approver_circleci_token{state=\"refused\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("sym_approver_circleci_token{state=\"valid\"} 0"));
}

#[tokio::test]
async fn a_valid_token_is_checked_once_and_every_counter_exists_from_startup_at_zero() {
    let up = Upstreams::new().await;
    let service = ServiceProcess::start(LABEL, &up.env()).await;

    service.wait_log("CIRCLECI_TOKEN is valid", WAIT).await;
    assert_eq!(up.fake.token_checks().len(), 1);
    let metrics = service.endpoint().metrics().await;
    assert!(
        metrics.contains("sym_approver_circleci_token{state=\"valid\"} 1"),
        "{metrics}"
    );
    // Nothing has happened yet, and every outcome an alert watches is already a series.
    for series in [
        "sym_approver_deliveries_total{outcome=\"rejected_signature\"} 0",
        "sym_approver_deliveries_total{outcome=\"store_unavailable\"} 0",
        "sym_approver_deliveries_total{outcome=\"rejected_overloaded\"} 0",
        "sym_approver_tasks_finished_total{action=\"approve\",outcome=\"timed_out\"} 0",
        "sym_approver_tasks_finished_total{action=\"approve\",outcome=\"already_approved\"} 0",
        "sym_approver_tasks_finished_total{action=\"approve\",outcome=\"circleci_unauthorized\"} 0",
        "sym_approver_tasks_finished_total{action=\"cancel\",outcome=\"canceled\"} 0",
    ] {
        assert!(metrics.contains(series), "missing {series}:\n{metrics}");
    }
}
