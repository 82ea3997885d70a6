//! `verify`: the deploy job's provenance check, in each of its outcomes.

use std::time::Duration;

use sym_circleci_approver::cli::verify::{check, Verdict, VerifyArgs};
use sym_circleci_approver::fake_circleci::Fault;
use uuid::Uuid;

use crate::audit::{spawn_audited, ADMIN};
use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(45);

fn args(app_url: &str, workflow: Uuid, token: &str) -> VerifyArgs {
    VerifyArgs {
        workflow_id: workflow.to_string(),
        url: app_url.to_owned(),
        admin_token: Some(token.to_owned()),
        admin_token_file: None,
        timeout: "5s".to_owned(),
        allow_insecure_http: false,
    }
}

#[tokio::test]
async fn verify_passes_for_a_hold_job_this_service_approved_and_names_the_approver() {
    let app = spawn_audited(&[]).await;
    let workflow = app.workflow("on_hold");
    let delivery = app.approve(workflow).await;
    app.finished_task(&delivery, WAIT).await;

    // The real binary, as the deploy job runs it (async: the service runs on this thread).
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_sym-circleci-approver"))
        .args(["verify", "--workflow-id", &workflow.to_string()])
        .env("APPROVER_URL", app.url(""))
        .env("ADMIN_TOKEN", ADMIN)
        .output()
        .await
        .unwrap();

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("alice@example.com"), "{stdout}");
    assert!(stdout.starts_with("verified:"));
}

#[tokio::test]
async fn verify_fails_for_a_workflow_this_service_never_approved() {
    let app = spawn_audited(&[]).await;

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_sym-circleci-approver"))
        .args(["verify", "--workflow-id", &Uuid::new_v4().to_string()])
        .args(["--url", &app.url(""), "--admin-token", ADMIN])
        .output()
        .await
        .unwrap();

    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("never approved"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one-line reason");
}

#[tokio::test]
async fn verify_reports_a_pending_approval() {
    let app = spawn_audited(&[]).await;
    let workflow = app.workflow("blocked");
    app.approve(workflow).await;

    let (verdict, line) = check(&args(&app.url(""), workflow, ADMIN)).await;

    assert_eq!(verdict, Verdict::Pending, "{line}");
    assert!(line.contains("pending"));
}

#[tokio::test]
async fn verify_fails_when_the_approval_failed() {
    let app = spawn_audited(&["--allowed-projects=gh/acme/other"]).await;
    let workflow = app.workflow("on_hold");
    let delivery = app.approve(workflow).await;
    app.finished_task(&delivery, WAIT).await;

    let (verdict, line) = check(&args(&app.url(""), workflow, ADMIN)).await;

    assert_eq!(verdict, Verdict::NotApproved, "{line}");
    assert!(line.contains("project_not_allowed"), "{line}");
}

#[tokio::test]
async fn verify_fails_when_someone_approved_the_hold_job_outside_sym() {
    let app = spawn_audited(&[]).await;
    // Approved in the CircleCI UI before the Sym event arrived.
    let workflow = app.workflow("success");
    let delivery = app.approve(workflow).await;
    app.finished_task(&delivery, WAIT).await;

    let (verdict, line) = check(&args(&app.url(""), workflow, ADMIN)).await;

    assert_eq!(verdict, Verdict::NotApproved, "{line}");
    assert!(line.contains("outside Sym"), "{line}");
}

#[tokio::test]
async fn verify_passes_when_our_approve_landed_but_its_answer_was_lost() {
    let app = spawn_audited(&[]).await;
    let workflow = app.workflow("on_hold");
    app.fake
        .push_fault(Fault::status(502).on("approve").after_effect());
    let delivery = app.approve(workflow).await;
    app.finished_task(&delivery, WAIT).await;

    let (verdict, line) = check(&args(&app.url(""), workflow, ADMIN)).await;

    assert_eq!(verdict, Verdict::Approved, "{line}");
}

#[tokio::test]
async fn verify_cannot_verify_with_a_wrong_token_an_unreachable_service_or_no_audit_api() {
    let app = spawn_audited(&[]).await;
    let plain = spawn_app().await;
    let workflow = Uuid::new_v4();
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };

    let wrong = check(&args(&app.url(""), workflow, "wrong-token-wrong-token")).await;
    let unreachable = check(&args(&format!("http://{closed}"), workflow, ADMIN)).await;
    let disabled = check(&args(&plain.url(""), workflow, ADMIN)).await;

    assert_eq!(wrong.0, Verdict::Unknown);
    assert!(wrong.1.contains("ADMIN_TOKEN"), "{}", wrong.1);
    assert_eq!(unreachable.0, Verdict::Unknown);
    assert!(unreachable.1.contains("cannot reach"), "{}", unreachable.1);
    assert_eq!(disabled.0, Verdict::Unknown);
    assert!(!wrong.1.contains(ADMIN));
    assert_eq!(
        Verdict::Unknown.exit_code(),
        std::process::ExitCode::from(3)
    );
}
