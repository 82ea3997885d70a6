//! Approvals beyond Sym: the generic approval event (`docs/approval-event.schema.json`), sent by
//! the shell example (`deploy/generic/send-approval.sh`, openssl and curl) and by
//! `send-event --generic`, approves exactly once, is deduplicated, audited and verdicted.

use std::time::Duration;

use crate::harness::*;

/// Runs the shell example against `app`; returns (exit code, stdout + stderr).
async fn send_approval(app: &TestApp, args: &[&str]) -> (Option<i32>, String) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/generic/send-approval.sh"
    );
    let output = tokio::process::Command::new("bash")
        .arg(script)
        .args(args)
        .env("APPROVER_URL", app.url(""))
        .env("APPROVER_WEBHOOK_SECRET", &app.secret_text)
        .output()
        .await
        .expect("bash runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

#[tokio::test]
async fn the_shell_example_approves_a_hold_job_end_to_end_once_and_the_verdict_names_the_approver()
{
    let app = TestApp::builder().verdict_token().spawn().await;
    let workflow = app.workflow("on_hold");
    let wf = workflow.to_string();

    let (code, first) =
        send_approval(&app, &[&wf, "approve", "carol@example.com", "", "CHG-1042"]).await;
    let (again_code, again) =
        send_approval(&app, &[&wf, "approve", "carol@example.com", "", "CHG-1042"]).await;

    assert_eq!(code, Some(0), "{first}");
    assert!(first.contains("\"status\":\"queued\""), "{first}");
    assert_eq!(again_code, Some(0), "{again}");
    assert!(again.contains("\"status\":\"duplicate\""), "{again}");
    assert!(
        app.fake
            .wait_for_calls(Duration::from_secs(30), |c| accepted(c, "approve") >= 1)
            .await
    );
    let verdict = app.verdict(workflow).await;
    assert_eq!(verdict.body["verdict"], "approved", "{}", verdict.body);
    assert_eq!(verdict.body["approver"], "carol@example.com");
    assert_eq!(app.fake.successful_approvals(), 1);
}

#[tokio::test]
async fn a_generic_event_with_a_bad_signature_or_shape_is_refused_like_any_delivery() {
    let app = TestApp::builder().spawn().await;
    let workflow = app.workflow("on_hold").to_string();
    let good = sym_circleci_approver::inbound::generic_event::sample_body(
        "r-1", "approve", &workflow, "a", None,
    );

    let (_, other) = new_secret();
    let forged = app
        .post_signed_with(
            &other,
            good.to_string().into_bytes(),
            &new_webhook_id(),
            now_secs(),
        )
        .await;
    let mut maybe = good.clone();
    maybe["decision"] = "maybe".into();
    let bad_decision = app
        .post_signed(maybe.to_string().into_bytes(), &new_webhook_id())
        .await;
    let mut unlisted = good.clone();
    unlisted["hold_job_name"] = "deploy".into();
    let bad_hold = app
        .post_signed(unlisted.to_string().into_bytes(), &new_webhook_id())
        .await;
    let mut nowhere = good;
    nowhere["workflow_id"] = "../x".into();
    let bad_workflow = app
        .post_signed(nowhere.to_string().into_bytes(), &new_webhook_id())
        .await;

    assert_eq!(forged.status, 401);
    assert_eq!(
        (bad_decision.status, bad_decision.body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    assert_eq!(bad_hold.status, 422, "{}", bad_hold.body);
    assert_eq!(bad_workflow.status, 422, "{}", bad_workflow.body);
    assert!(app.fake.calls().is_empty(), "nothing may reach CircleCI");
}

#[tokio::test]
async fn send_event_generic_denies_and_on_deny_cancel_cancels_the_workflow() {
    let app = TestApp::builder().flags(["--on-deny=cancel"]).spawn().await;
    let workflow = app.workflow("on_hold");

    let (status, sent) = ServiceProcess::run_to_end(
        &[
            "send-event",
            "--generic",
            "--type",
            "deny",
            "--request-id",
            "CHG-7",
            "--workflow-id",
            &workflow.to_string(),
            "--url",
            &app.url("/webhooks/approval"),
        ],
        &Env::default().set("SYM_WEBHOOK_SECRET", app.secret_text.clone()),
    )
    .await;

    let stdout = sent.stdout.text();
    assert_eq!(status.code(), Some(0), "{}", sent.output());
    assert!(stdout.contains("HTTP 202"), "{stdout}");
    assert!(
        app.fake
            .wait_for_calls(Duration::from_secs(30), |c| accepted(c, "cancel") >= 1)
            .await
    );
}
