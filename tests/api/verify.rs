//! The deploy job's provenance check: the verdict API (`GET /v1/verdicts/{workflow_id}`,
//! behind VERDICT_TOKEN) and the `verify` command that asks it, in each of their outcomes.

use std::time::Duration;

use approver_test_support::fake_circleci::{Fault, TOKEN_USER_ID};
use sym_circleci_approver::cli::verify::{check, Verdict, VerifyArgs};
use uuid::Uuid;

use crate::harness::*;

const WAIT: Duration = Duration::from_secs(45);
/// These tests' service: the verdict API, and the audit API with its own token.
fn with_verdicts() -> AppBuilder {
    TestApp::builder().verdict_token().admin_token()
}

fn args(app_url: &str, workflow: Uuid, token: &str) -> VerifyArgs {
    VerifyArgs {
        workflow_id: workflow.to_string(),
        url: app_url.to_owned(),
        verdict_token: Some(token.to_owned()),
        verdict_token_file: None,
        hold_job: None,
        wait: "0s".to_owned(),
        timeout: "5s".to_owned(),
        allow_insecure_http: false,
        oidc_token: None,
    }
}

#[tokio::test]
async fn a_hold_job_released_for_a_sym_approval_is_approved_via_sym() {
    let app = with_verdicts().spawn().await;
    let workflow = app.workflow("on_hold");
    let delivery = app.approve(workflow).await;
    app.finished_task(&delivery, WAIT).await;

    let answer = app.verdict(workflow).await;

    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["verdict"], "approved");
    assert_eq!(answer.body["via"], "sym");
    assert_eq!(answer.body["approver"], "alice@example.com");

    // The command, as a deploy job runs it.
    let (status, verify) = ServiceProcess::run_to_end(
        &["verify", "--workflow-id", &workflow.to_string()],
        &Env::default()
            .set("APPROVER_URL", app.url(""))
            .set("APPROVER_VERDICT_TOKEN", VERDICT),
    )
    .await;
    let stdout = verify.stdout.text();
    assert_eq!(status.code(), Some(0), "{}", verify.output());
    assert!(
        stdout.starts_with("verified:") && stdout.contains("alice@example.com"),
        "{stdout}"
    );
}

#[tokio::test]
async fn a_rerun_from_failed_of_an_approved_workflow_is_approved_via_rerun() {
    let app = with_verdicts().spawn().await;
    let workflow = app.workflow("on_hold");
    let delivery = app.approve(workflow).await;
    app.finished_task(&delivery, WAIT).await;

    let rerun = app.fake.rerun_from_failed(workflow).unwrap();
    let answer = app.verdict(rerun).await;

    assert_eq!(answer.body["verdict"], "approved", "{}", answer.body);
    assert_eq!(answer.body["via"], "rerun");
    assert_eq!(answer.body["approved_workflow_id"], workflow.to_string());
    assert!(
        app.fake.calls_of("approve").len() == 1,
        "no new approve for the rerun"
    );
}

#[tokio::test]
async fn a_rerun_from_start_released_by_a_click_in_the_ui_is_not_approved() {
    let app = with_verdicts().spawn().await;
    let workflow = app.workflow("on_hold");
    let delivery = app.approve(workflow).await;
    app.finished_task(&delivery, WAIT).await;

    let rerun = app.fake.rerun_from_start(workflow).unwrap();
    app.fake.approve_in_ui(rerun, HOLD, Uuid::new_v4());
    let clicked = app.verdict(rerun).await;

    assert_eq!(clicked.body["verdict"], "not_approved", "{}", clicked.body);
    assert!(
        clicked.body["detail"]
            .as_str()
            .unwrap()
            .contains("not the one this service approved"),
        "{}",
        clicked.body
    );
}

#[tokio::test]
async fn a_rerun_from_start_clicked_by_the_services_own_circleci_user_is_not_approved() {
    // The CircleCI token's user (whoever holds the token, or its owner in the UI) approves the
    // rerun's new hold job: `approved_by` matches this service's user, but it is not the job
    // this service approved for Sym. That never counts.
    let app = with_verdicts().spawn().await;
    let workflow = app.workflow("on_hold");
    let delivery = app.approve(workflow).await;
    app.finished_task(&delivery, WAIT).await;

    let rerun = app.fake.rerun_from_start(workflow).unwrap();
    app.fake.approve_in_ui(rerun, HOLD, TOKEN_USER_ID);
    let answer = app.verdict(rerun).await;

    assert_eq!(answer.body["verdict"], "not_approved", "{}", answer.body);
    assert_eq!(answer.body["via"], serde_json::Value::Null);
}

#[tokio::test]
async fn a_hold_job_released_in_the_ui_before_sym_is_not_approved() {
    let app = with_verdicts().spawn().await;
    let workflow = app.workflow("success");
    let delivery = app.approve(workflow).await;
    app.finished_task(&delivery, WAIT).await;

    let answer = app.verdict(workflow).await;
    let (verdict, line) = check(&args(&app.url(""), workflow, VERDICT)).await;

    assert_eq!(answer.body["verdict"], "not_approved");
    assert!(answer.body["detail"]
        .as_str()
        .unwrap()
        .contains("outside Sym"));
    assert_eq!(verdict, Verdict::NotApproved, "{line}");
}

#[tokio::test]
async fn a_workflow_released_without_any_sym_approval_is_not_approved() {
    let app = with_verdicts().spawn().await;
    let workflow = app.workflow("on_hold");
    app.fake.approve_in_ui(workflow, HOLD, Uuid::new_v4());

    let answer = app.verdict(workflow).await;
    let unknown = app.verdict(Uuid::new_v4()).await;

    assert_eq!(answer.body["verdict"], "not_approved", "{}", answer.body);
    assert!(answer.body["detail"]
        .as_str()
        .unwrap()
        .contains("never approved"));
    assert_eq!(unknown.body["verdict"], "not_approved");
}

#[tokio::test]
async fn a_pending_approval_is_pending_and_verify_waits_then_fails() {
    let app = with_verdicts().spawn().await;
    let workflow = app.workflow("blocked");
    app.approve(workflow).await;

    let answer = app.verdict(workflow).await;
    assert_eq!(answer.body["verdict"], "pending", "{}", answer.body);

    let started = std::time::Instant::now();
    let (verdict, line) = check(&VerifyArgs {
        wait: "6s".into(),
        ..args(&app.url(""), workflow, VERDICT)
    })
    .await;
    assert_eq!(verdict, Verdict::Pending, "{line}");
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "asked again while pending"
    );
    assert_eq!(
        Verdict::Pending.exit_code(),
        std::process::ExitCode::from(2)
    );
}

#[tokio::test]
async fn an_approve_whose_answer_was_lost_is_still_approved() {
    let app = with_verdicts().spawn().await;
    let workflow = app.workflow("on_hold");
    app.fake
        .push_fault(Fault::status(502).on("approve").after_effect());
    let delivery = app.approve(workflow).await;
    app.finished_task(&delivery, WAIT).await;

    assert_eq!(app.verdict(workflow).await.body["verdict"], "approved");
}

#[tokio::test]
async fn the_verdict_token_reads_verdicts_only_and_the_route_needs_it() {
    let app = with_verdicts().spawn().await;
    let plain = TestApp::builder().spawn().await;
    let workflow = Uuid::new_v4();
    let get = |url: String, token: &'static str| {
        let client = app.client.clone();
        async move { answer(client.get(url).bearer_auth(token).send().await.unwrap()).await }
    };

    let approvals = get(app.url("/v1/approvals"), VERDICT).await;
    let one = get(app.url(&format!("/v1/approvals/{workflow}")), VERDICT).await;
    let admin_on_verdicts = get(app.url(&format!("/v1/verdicts/{workflow}")), ADMIN).await;
    let wrong = get(
        app.url(&format!("/v1/verdicts/{workflow}")),
        "wrong-token-wrong",
    )
    .await;
    let disabled = get(plain.url(&format!("/v1/verdicts/{workflow}")), VERDICT).await;
    let bad_id = get(app.url("/v1/verdicts/not-a-uuid"), VERDICT).await;

    assert_eq!(
        approvals.status, 401,
        "the verdict token cannot list approvals"
    );
    assert_eq!(one.status, 401);
    assert_eq!(
        admin_on_verdicts.status, 401,
        "each route family takes its own token"
    );
    assert_eq!(
        (wrong.status, wrong.body["error"].as_str()),
        (401, Some("unauthorized"))
    );
    assert_eq!(
        (disabled.status, disabled.body["error"].as_str()),
        (404, Some("not_found"))
    );
    assert_eq!(bad_id.status, 400);
}

#[tokio::test]
async fn verify_cannot_verify_with_a_wrong_token_an_unreachable_service_or_no_verdict_api() {
    let app = with_verdicts().spawn().await;
    let plain = TestApp::builder().spawn().await;
    let workflow = Uuid::new_v4();
    let closed = closed_addr();

    let wrong = check(&args(&app.url(""), workflow, "wrong-token-wrong-token")).await;
    let unreachable = check(&args(&format!("http://{closed}"), workflow, VERDICT)).await;
    let disabled = check(&args(&plain.url(""), workflow, VERDICT)).await;

    assert_eq!(wrong.0, Verdict::Unknown);
    assert!(wrong.1.contains("APPROVER_VERDICT_TOKEN"), "{}", wrong.1);
    assert_eq!(unreachable.0, Verdict::Unknown);
    assert!(unreachable.1.contains("cannot reach"), "{}", unreachable.1);
    assert_eq!(disabled.0, Verdict::Unknown);
    assert!(disabled.1.contains("VERDICT_TOKEN"), "{}", disabled.1);
    assert!(!wrong.1.contains(VERDICT));
    assert_eq!(
        Verdict::Unknown.exit_code(),
        std::process::ExitCode::from(3)
    );
}

#[tokio::test]
async fn the_same_token_for_admin_and_verdicts_is_refused_at_startup() {
    let same = "the-same-token-for-both-0001";
    let args = sym_circleci_approver::cli::ServeArgs::from_flags([
        format!(
            "--sym-webhook-secret={}",
            sym_circleci_approver::inbound::signature::WebhookSecret::generate()
        ),
        "--circleci-token=t".to_owned(),
        format!("--admin-token={same}"),
        format!("--verdict-token={same}"),
    ])
    .unwrap();
    let error = args.to_config().map(drop).unwrap_err().to_string();
    assert!(error.starts_with("VERDICT_TOKEN"), "{error}");
    assert!(!error.contains(same));
}

#[tokio::test]
async fn a_circleci_failure_during_a_rerun_lookup_is_a_retryable_502_not_a_verdict() {
    let app = with_verdicts().spawn().await;
    let workflow = app.workflow("on_hold");
    app.fake.push_fault(Fault::status(503).on("get_workflow"));

    let failed = app.verdict(workflow).await;
    let (verdict, line) = check(&args(&app.url(""), workflow, VERDICT)).await;

    assert_eq!(failed.status, 502, "{}", failed.body);
    assert_eq!(failed.body["error"], "upstream_unavailable");
    assert!(failed.headers.contains_key("retry-after"));
    // Asked again at once: the failure is remembered for a few seconds, so a verdict loop
    // cannot spend CircleCI's rate limit; the command reports it as unknown (retryable).
    assert_eq!(verdict, Verdict::Unknown, "{line}");
    assert_eq!(app.fake.calls_of("get_workflow").len(), 1);
}

#[test]
fn the_store_pool_is_the_backends_own_unless_set_and_never_empty() {
    let config_with = |extra: &[&str]| {
        let mut flags = vec![
            format!(
                "--sym-webhook-secret={}",
                sym_circleci_approver::inbound::signature::WebhookSecret::generate()
            ),
            "--circleci-token=t".to_owned(),
        ];
        flags.extend(extra.iter().map(|f| (*f).to_owned()));
        sym_circleci_approver::cli::ServeArgs::from_flags(flags)
            .unwrap()
            .to_config()
    };
    use sym_circleci_approver::store::Backend;

    // Unset: the backend decides (one SQLite connection, ten PostgreSQL ones).
    assert_eq!(config_with(&[]).unwrap().store.max_connections, None);
    assert_eq!(Backend::Sqlite.default_pool_size(), 1);
    assert_eq!(Backend::Postgres.default_pool_size(), 10);
    // Set: as given, on either backend.
    let four = config_with(&["--database-max-connections=4"]).unwrap();
    assert_eq!(four.store.max_connections, Some(4));
    let error = config_with(&["--database-max-connections=0"])
        .map(drop)
        .unwrap_err()
        .to_string();
    assert!(error.starts_with("DATABASE_MAX_CONNECTIONS"), "{error}");
}
