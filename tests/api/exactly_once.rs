//! Exactly once under the faults that used to slip through: an approve cut off by the step's
//! own time limit, a second approval while the first task is pending, a shutdown with an
//! approve in flight, and a click in the UI while our approve went unanswered. And the
//! intake's note (docs/writes.md): a task handed to the worker is noted with its call in the
//! delivery's own transaction, so its first step calls without a commit first; a note it
//! made no call under never counts as a call.

use std::time::Duration;

use approver_test_support::fake_circleci::{Fault, TOKEN_USER_ID};
use serde_json::Value;
use sym_circleci_approver::domain::task::{Outcome, TaskStatus};
use sym_circleci_approver::store::Backend;
use uuid::Uuid;

use crate::harness::*;

/// How long a task may take to finish.
const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn an_approve_cut_off_by_the_steps_own_time_limit_ends_approved_confirmed_by_rereading() {
    // CircleCI applies the approve and never answers; CIRCLECI_TIMEOUT is longer than the
    // step's share of the lease, so the step's own time limit cuts the call off, after the
    // task's deadline has passed. The clock is the test's: no waiting.
    let app = TestApp::builder()
        .stepped()
        .admin_token()
        .flags([
            "--task-lease=30s",
            "--approval-timeout=20s",
            "--circleci-timeout=10m",
        ])
        .spawn()
        .await;
    let workflow = app.workflow("on_hold");
    app.fake.push_fault(
        Fault::status(500)
            .on("approve")
            .after_effect()
            .delayed(Duration::from_secs(600)),
    );
    let delivery = app.approve(workflow).await;

    let stepping = app.step_in_background();
    assert!(
        app.fake
            .wait_for_calls(Duration::from_secs(10), |calls| calls
                .iter()
                .any(|c| c.operation == "approve"))
            .await,
        "the worker never called approve"
    );
    // Past the call's share of the lease (24 s) and the task's deadline (20 s).
    app.advance(Duration::from_secs(25));
    stepping.await.unwrap();

    let task = app.task_of(&delivery).await;
    assert_eq!(task.outcome, Some(Outcome::Approved), "{task:?}");
    assert_eq!(task.status, TaskStatus::Succeeded);
    let detail = task.detail.unwrap_or_default();
    assert!(detail.contains("confirmed by re-reading"), "{detail}");
    assert_eq!(app.fake.calls_of("approve").len(), 1, "one approve call");
    // The audit trail keeps the cut-off approve as a call with no answer, and the last
    // look's read as a read of its own (it once took the approve's row).
    let attempts = attempts_of(&app, &delivery).await;
    let posts = posts_of(&attempts);
    assert_eq!(posts.len(), 1, "{attempts:#?}");
    assert!(posts[0]["status"].is_null(), "{attempts:#?}");
    assert!(
        posts[0]["endpoint"]
            .as_str()
            .is_some_and(|e| e.contains("/approve/")),
        "{attempts:#?}"
    );
    assert!(
        posts[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("no answer")),
        "{attempts:#?}"
    );
    let reads = attempts.iter().filter(|a| a["method"] == "GET").count();
    assert!(
        reads >= 2,
        "the first reads and the last look: {attempts:#?}"
    );
}

#[tokio::test]
async fn a_second_approval_while_the_first_task_is_pending_extends_it_and_is_worked_after_it_fails()
{
    let app = TestApp::builder()
        .stepped()
        .admin_token()
        .flags(["--approval-timeout=60s"])
        .spawn()
        .await;
    // The hold job is not on hold yet: the first task polls until its deadline.
    let workflow = app.workflow("blocked");
    let first = app.approve(workflow).await;
    assert_eq!(app.step().await, 1);

    // Half-way, a second Sym approval of the same hold job: attached to the pending task, which
    // gets its deadline extended; the sender is answered as before.
    app.advance(Duration::from_secs(30));
    let second = app.send_event("approve", workflow).await;
    assert_eq!(
        (second.status, second.body["status"].as_str()),
        (200, Some("duplicate"))
    );
    assert_eq!(second.body["delivery_id"].as_str(), Some(first.as_str()));

    // Past the first approval's own deadline, the task is still pending (extended)...
    app.advance(Duration::from_secs(31));
    app.step().await;
    assert_eq!(app.task_of(&first).await.status, TaskStatus::Pending);
    // ...until the second's passes: it fails, and the second approval gets a task of its own.
    app.advance(Duration::from_secs(30));
    app.step().await;
    let failed = app.task_of(&first).await;
    assert_eq!(failed.outcome, Some(Outcome::TimedOut), "{failed:?}");

    app.fake.set_job_status(workflow, HOLD, "on_hold");
    app.advance(Duration::from_secs(5));
    app.step().await;

    assert_eq!(app.fake.successful_approvals(), 1);
    let audit = app.audit_of(workflow).await;
    let by_status =
        |status: &str| -> Vec<&Value> { audit.iter().filter(|i| i["status"] == status).collect() };
    assert_eq!(by_status("failed").len(), 1, "{audit:?}");
    let released = by_status("succeeded");
    assert_eq!(released.len(), 1, "{audit:?}");
    assert_eq!(released[0]["outcome"], "approved");
    assert_ne!(released[0]["id"].as_str(), Some(first.as_str()));
}

#[tokio::test]
async fn shutdown_keeps_the_lease_of_a_task_whose_approve_is_in_flight() {
    // The approve reaches CircleCI, which applies it but answers only much later; the service
    // is stopped meanwhile.
    let app = TestApp::builder()
        .flags(["--task-lease=20s", "--circleci-timeout=60s"])
        .spawn()
        .await;
    let workflow = app.workflow("on_hold");
    app.fake.push_fault(
        Fault::status(500)
            .on("approve")
            .after_effect()
            .delayed(Duration::from_secs(60)),
    );
    let delivery = app.approve(workflow).await;
    assert!(
        app.fake
            .wait_for_calls(Duration::from_secs(10), |calls| calls
                .iter()
                .any(|c| c.operation == "approve"))
            .await,
        "the worker never called approve"
    );
    let stopped = app.stop().await;

    // A new process on the same store (on SQLite it forgets the leases of a dead process,
    // but not this one's): it cannot take the task while the lease runs.
    let next = stopped.restart().stepped().spawn().await;
    assert_eq!(
        next.step().await,
        0,
        "the task was taken while its call was in flight"
    );
    next.advance(Duration::from_secs(21));
    assert_eq!(next.step().await, 1);

    let task = next.task_of(&delivery).await;
    assert_eq!(task.outcome, Some(Outcome::Approved), "{task:?}");
    assert_eq!(next.fake.calls_of("approve").len(), 1, "one approve call");
}

#[tokio::test]
async fn a_ui_click_while_our_approve_went_unanswered_is_recorded_as_already_approved() {
    let app = TestApp::builder().stepped().spawn().await;
    let workflow = app.workflow("on_hold");
    // Our approve gets a 500 (it may have landed; it did not) ...
    app.fake.push_fault(Fault::status(500).on("approve"));
    let delivery = app.approve(workflow).await;
    app.step().await;
    assert_eq!(app.task_of(&delivery).await.status, TaskStatus::Pending);

    // ... and before the next step someone approves the hold job in the CircleCI UI.
    app.fake
        .approve_in_ui(workflow, HOLD, Uuid::from_u128(0x006d_616c_6c6f_7279));
    app.advance(Duration::from_secs(5));
    app.step().await;

    let task = app.task_of(&delivery).await;
    assert_eq!(task.outcome, Some(Outcome::AlreadyApproved), "{task:?}");
    assert!(
        task.detail.unwrap_or_default().contains("another user"),
        "the detail names the click"
    );
}

// ---------------------------------------------------------------------------------------------
// The intake's note
// ---------------------------------------------------------------------------------------------

/// Steps the worker started that the intake handed over (rather than claimed).
async fn handed_steps(app: &TestApp) -> f64 {
    sample(
        &app.metrics().await,
        "sym_approver_worker_steps_started_total{via=\"handoff\"}",
    )
}

/// The calls among `attempts` that change something at CircleCI (approve, cancel).
fn posts_of(attempts: &[Value]) -> Vec<&Value> {
    attempts.iter().filter(|a| a["method"] == "POST").collect()
}

/// The audit trail's calls of one approval.
async fn attempts_of(app: &TestApp, delivery: &str) -> Vec<Value> {
    let story = app.admin_get(&format!("/v1/approvals/{delivery}")).await;
    assert_eq!(story.status, 200, "{}", story.body);
    story.body["attempts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn a_handed_approval_of_a_hold_job_the_tokens_own_user_approved_first_is_not_ours() {
    // The intake notes the approve before the step reads the hold job. The hold job turns out
    // approved already, by the very user whose token the service holds (someone clicked in
    // the UI with that account): the step's own note is no earlier call of ours, so this is
    // `already_approved`, never `approved`.
    let app = TestApp::builder().admin_token().spawn().await;
    let workflow = app.workflow("on_hold");
    app.fake.approve_in_ui(workflow, HOLD, TOKEN_USER_ID);

    let delivery = app.approve(workflow).await;
    let task = app.finished_task(&delivery, WAIT).await;

    assert_eq!(
        (task.status, task.outcome),
        (TaskStatus::Succeeded, Some(Outcome::AlreadyApproved)),
        "{task:?}"
    );
    assert!(app.fake.calls_of("approve").is_empty());
    if app.store.backend() == Backend::Sqlite {
        assert_eq!(handed_steps(&app).await, 1.0, "the task was handed over");
    }
    // The note of a call never made is taken back: the trail holds only the reads.
    let attempts = attempts_of(&app, &delivery).await;
    assert!(!attempts.is_empty());
    assert!(
        attempts.iter().all(|a| a["method"] == "GET"),
        "{attempts:#?}"
    );
}

#[tokio::test]
async fn a_handed_approval_stores_its_call_with_the_real_path_after_its_reads() {
    let app = TestApp::builder().admin_token().spawn().await;
    let workflow = app.workflow("on_hold");

    let delivery = app.approve(workflow).await;
    let task = app.finished_task(&delivery, WAIT).await;

    assert_eq!(task.outcome, Some(Outcome::Approved), "{task:?}");
    assert_eq!(app.fake.calls_of("approve").len(), 1);
    if app.store.backend() == Backend::Sqlite {
        assert_eq!(handed_steps(&app).await, 1.0, "the task was handed over");
    }
    let attempts = attempts_of(&app, &delivery).await;
    let methods: Vec<&str> = attempts
        .iter()
        .map(|a| a["method"].as_str().unwrap_or_default())
        .collect();
    // The reads (the jobs, page by page, and the workflow's record), then the approve: in
    // the order they happened, though the approve was noted before any of them.
    assert!(methods.len() >= 3, "{attempts:#?}");
    let (last, reads) = methods.split_last().unwrap_or((&"", &[]));
    assert!(reads.iter().all(|m| *m == "GET"), "{attempts:#?}");
    assert_eq!(*last, "POST", "{attempts:#?}");
    let approve = &attempts[methods.len() - 1];
    assert_eq!(approve["status"], 202, "{approve:#}");
    assert!(approve["error"].is_null(), "{approve:#}");
    let called = app.fake.calls_of("approve")[0].path.clone();
    assert_eq!(
        approve["endpoint"].as_str().map(|e| format!("/api/v2{e}")),
        Some(called),
        "the path the call took, not the one noted before the reads"
    );
    assert!(
        !approve["endpoint"]
            .as_str()
            .unwrap_or_default()
            .contains('{'),
        "{approve:#}"
    );
}

#[tokio::test]
async fn a_handed_task_whose_hold_job_is_not_on_hold_yet_takes_its_note_back() {
    let app = TestApp::builder().admin_token().spawn().await;
    let workflow = app.workflow("on_hold");
    app.fake
        .hold_after(workflow, HOLD, Duration::from_millis(300));

    let delivery = app.approve(workflow).await;
    let task = app.finished_task(&delivery, WAIT).await;

    assert_eq!(task.outcome, Some(Outcome::Approved), "{task:?}");
    assert_eq!(app.fake.calls_of("approve").len(), 1);
    // One approve in the trail (the second step's), answered: the first step's note, under
    // which no call was made, is gone.
    let attempts = attempts_of(&app, &delivery).await;
    let posts = posts_of(&attempts);
    assert_eq!(posts.len(), 1, "{attempts:#?}");
    assert_eq!(posts[0]["status"], 202, "{attempts:#?}");
}

#[tokio::test]
async fn shutdown_gives_back_a_handed_task_whose_step_never_reached_its_call() {
    // The intake marks a handed task's call as in flight before the step reads anything. The
    // step hangs on its first read; shutdown cuts it off. It never called, so its lease is
    // given back and the intake's note taken back: the next process takes it at once.
    let app = TestApp::builder()
        .admin_token()
        .flags(["--task-lease=60s", "--circleci-timeout=60s"])
        .spawn()
        .await;
    let workflow = app.workflow("on_hold");
    app.fake.push_fault(
        Fault::status(503)
            .on("list_jobs")
            .delayed(Duration::from_secs(60)),
    );
    let delivery = app.approve(workflow).await;
    assert!(
        app.fake
            .wait_for_calls(Duration::from_secs(10), |calls| calls
                .iter()
                .any(|c| c.operation == "list_jobs"))
            .await,
        "the worker never read the workflow"
    );
    let stopped = app.stop().await;

    let next = stopped.restart().stepped().admin_token().spawn().await;
    assert_eq!(next.step().await, 1, "the task was not given back");
    let task = next.task_of(&delivery).await;
    assert_eq!(task.outcome, Some(Outcome::Approved), "{task:?}");
    assert_eq!(next.fake.calls_of("approve").len(), 1);
    let attempts = attempts_of(&next, &delivery).await;
    let posts = posts_of(&attempts);
    assert_eq!(posts.len(), 1, "the intake's note is gone: {attempts:#?}");
    assert_eq!(posts[0]["status"], 202, "{attempts:#?}");
}
