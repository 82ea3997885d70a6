//! Exactly once under the faults that used to slip through: an approve cut off by the step's
//! own time limit, a second approval while the first task is pending, a shutdown with an
//! approve in flight, and a click in the UI while our approve went unanswered.

use std::time::Duration;

use approver_test_support::fake_circleci::Fault;
use serde_json::Value;
use sym_circleci_approver::domain::task::{Outcome, TaskStatus};
use uuid::Uuid;

use crate::harness::*;

#[tokio::test]
async fn an_approve_cut_off_by_the_steps_own_time_limit_ends_approved_confirmed_by_rereading() {
    // CircleCI applies the approve and never answers; CIRCLECI_TIMEOUT is longer than the
    // step's share of the lease, so the step's own time limit cuts the call off, after the
    // task's deadline has passed. The clock is the test's: no waiting.
    let app = TestApp::builder()
        .stepped()
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
