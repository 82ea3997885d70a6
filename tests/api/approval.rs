//! The CircleCI side: what the worker does with each state and fault of the API.

use std::time::Duration;

use approver_test_support::fake_circleci::Fault;
use sym_circleci_approver::domain::task::{Outcome, TaskStatus};
use sym_circleci_approver::domain::upstream::Operation;
use sym_circleci_approver::store::Backend;
use uuid::Uuid;

use crate::harness::*;

const WAIT: Duration = Duration::from_secs(45);

#[tokio::test]
async fn a_hold_job_that_goes_on_hold_after_the_event_is_approved_once_it_is() {
    let app = TestApp::builder().stepped().spawn().await;
    let workflow = app.workflow("blocked");
    let delivery = app.approve(workflow).await;

    assert_eq!(app.step().await, 1);
    let polled = app.task_of(&delivery).await;
    assert_eq!(polled.status, TaskStatus::Pending, "{polled:?}");
    assert!(
        app.fake.calls_of("approve").is_empty(),
        "no approve while blocked"
    );

    app.fake.set_job_status(workflow, HOLD, "on_hold");
    app.advance(Duration::from_secs(2));
    assert_eq!(app.step().await, 1);

    let task = app.task_of(&delivery).await;
    assert_eq!(task.outcome, Some(Outcome::Approved));
    assert_eq!(task.attempts, 2);
    let approves = app.fake.calls_of("approve");
    assert_eq!(approves.len(), 1);
    assert_eq!(approves[0].status, 202);
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff_until_circleci_recovers() {
    let app = TestApp::builder().stepped().spawn().await;
    let workflow = app.workflow("on_hold");
    app.fake.push_fault(Fault::status(503).on("list_jobs"));
    app.fake.push_fault(Fault::status(502).on("list_jobs"));
    let delivery = app.approve(workflow).await;

    assert_eq!(app.step().await, 1, "the 503");
    // The first retry is about 1 s later (±20 % jitter), the second about 2 s after that.
    app.advance(Duration::from_millis(700));
    assert_eq!(app.step().await, 0, "not due before 0.8 s");
    app.advance(Duration::from_millis(600));
    assert_eq!(app.step().await, 1, "the 502, due by 1.2 s");
    app.advance(Duration::from_millis(1_500));
    assert_eq!(app.step().await, 0, "not due before 1.6 s");
    app.advance(Duration::from_millis(1_000));
    assert_eq!(app.step().await, 1, "due by 2.4 s");

    let task = app.task_of(&delivery).await;
    assert_eq!(task.outcome, Some(Outcome::Approved));
    assert_eq!(task.attempts, 3);
    let lists = app.fake.calls_of("list_jobs");
    assert_eq!((lists[0].status, lists[1].status), (503, 502));
    assert_eq!(app.fake.successful_approvals(), 1);
}

#[tokio::test]
async fn a_429_with_retry_after_is_honoured() {
    let app = TestApp::builder().stepped().spawn().await;
    let workflow = app.workflow("on_hold");
    app.fake
        .push_fault(Fault::status(429).on("list_jobs").retry_after(3));
    let delivery = app.approve(workflow).await;

    assert_eq!(app.step().await, 1);
    app.advance(Duration::from_millis(2_900));
    assert_eq!(app.step().await, 0, "Retry-After asked for 3 s");
    app.advance(Duration::from_millis(200));
    assert_eq!(app.step().await, 1);

    let task = app.task_of(&delivery).await;
    assert_eq!(task.outcome, Some(Outcome::Approved));
    assert_eq!(app.fake.calls_of("list_jobs")[0].status, 429);
}

#[tokio::test]
async fn an_approve_whose_response_is_lost_is_followed_by_a_reread_not_a_second_approve() {
    let app = TestApp::builder().stepped().spawn().await;
    let workflow = app.workflow("on_hold");
    // CircleCI approves, but the answer is a 500: the outcome is unknown to the service.
    app.fake
        .push_fault(Fault::status(500).on("approve").after_effect());
    let delivery = app.approve(workflow).await;

    assert_eq!(app.step().await, 1, "the approve, answered 500");
    app.advance(Duration::from_secs(2));
    assert_eq!(app.step().await, 1, "the re-read");

    let task = app.task_of(&delivery).await;
    assert_eq!(task.status, TaskStatus::Succeeded);
    assert_eq!(task.outcome, Some(Outcome::Approved));
    assert!(task.detail.unwrap().contains("confirmed by re-reading"));
    assert_eq!(
        app.fake.calls_of("approve").len(),
        1,
        "never a blind second approve"
    );
    assert_eq!(
        app.fake.job_status(workflow, HOLD).as_deref(),
        Some("success")
    );
}

#[tokio::test]
async fn an_approve_that_times_out_is_followed_by_a_reread() {
    let app = TestApp::builder()
        .stepped()
        .flags(["--circleci-timeout=300ms"])
        .spawn()
        .await;
    let workflow = app.workflow("on_hold");
    app.fake.push_fault(
        Fault::status(202)
            .on("approve")
            .after_effect()
            .delayed(Duration::from_secs(1)),
    );
    let delivery = app.approve(workflow).await;

    assert_eq!(app.step().await, 1, "the approve times out");
    assert_eq!(app.task_of(&delivery).await.status, TaskStatus::Pending);
    app.advance(Duration::from_secs(2));
    assert_eq!(app.step().await, 1, "the re-read");

    let task = app.task_of(&delivery).await;
    assert_eq!(task.outcome, Some(Outcome::Approved));
    assert!(task.detail.unwrap().contains("confirmed by re-reading"));
    assert_eq!(app.fake.calls_of("approve").len(), 1);
}

#[tokio::test]
async fn an_already_approved_hold_job_is_done_without_an_approve_call() {
    let app = TestApp::builder().spawn().await;
    let workflow = app.workflow("success");

    let delivery = app.approve(workflow).await;
    let task = app.finished_task(&delivery, WAIT).await;

    assert_eq!(
        (task.status, task.outcome),
        (TaskStatus::Succeeded, Some(Outcome::AlreadyApproved))
    );
    assert!(app.fake.calls_of("approve").is_empty());
}

#[tokio::test]
async fn allowed_projects_refuses_a_hold_job_of_a_foreign_project() {
    let app = TestApp::builder()
        .flags(["--allowed-projects=gh/acme/web, gh/acme/other"])
        .spawn()
        .await;
    let workflow = app.workflow("on_hold"); // project gh/acme/api

    let delivery = app.approve(workflow).await;
    let task = app.finished_task(&delivery, WAIT).await;

    assert_eq!(
        (task.status, task.outcome),
        (TaskStatus::Failed, Some(Outcome::ProjectNotAllowed))
    );
    assert!(app.fake.calls_of("approve").is_empty());
    assert_eq!(
        app.fake.job_status(workflow, HOLD).as_deref(),
        Some("on_hold")
    );
}

#[tokio::test]
async fn allowed_projects_lets_a_listed_project_through() {
    let app = TestApp::builder()
        .flags(["--allowed-projects=gh/acme/web,gh/acme/api"])
        .spawn()
        .await;
    let workflow = app.workflow("on_hold");

    let delivery = app.approve(workflow).await;
    let task = app.finished_task(&delivery, WAIT).await;

    assert_eq!(task.outcome, Some(Outcome::Approved));
}

#[tokio::test]
async fn a_canceled_hold_job_is_given_up_with_the_reason() {
    let app = TestApp::builder().spawn().await;
    let workflow = app.workflow("canceled");

    let delivery = app.approve(workflow).await;
    let task = app.finished_task(&delivery, WAIT).await;

    assert_eq!(
        (task.status, task.outcome),
        (TaskStatus::Failed, Some(Outcome::HoldJobCanceled))
    );
    assert!(app.fake.calls_of("approve").is_empty());
}

#[tokio::test]
async fn a_refused_token_is_given_up_at_once_without_retrying() {
    let app = TestApp::builder().spawn().await;
    let workflow = app.workflow("on_hold");
    app.fake.push_fault(Fault::status(401).on("list_jobs"));

    let delivery = app.approve(workflow).await;
    let task = app.finished_task(&delivery, WAIT).await;

    assert_eq!(
        (task.status, task.outcome),
        (TaskStatus::Failed, Some(Outcome::CircleciUnauthorized))
    );
    // One read of the jobs (the workflow's own record is read beside it), never again, and
    // no approve.
    assert_eq!(app.fake.calls_of("list_jobs").len(), 1);
    assert!(app.fake.calls_of("approve").is_empty());
}

#[tokio::test]
async fn a_workflow_not_found_at_first_is_retried_and_approved_when_it_appears() {
    let app = TestApp::builder().stepped().spawn().await;
    let workflow = Uuid::new_v4();
    let delivery = app.approve(workflow).await;

    assert_eq!(app.step().await, 1);
    assert_eq!(app.fake.calls_of("list_jobs")[0].status, 404);
    app.fake
        .add_standard_workflow(workflow, PROJECT, HOLD, "on_hold");
    app.advance(Duration::from_secs(2));
    assert_eq!(app.step().await, 1);

    let task = app.task_of(&delivery).await;
    assert_eq!(task.outcome, Some(Outcome::Approved));
}

#[tokio::test]
async fn an_approvals_first_step_reads_the_workflow_beside_its_jobs_and_a_poll_only_the_jobs() {
    let app = TestApp::builder().stepped().spawn().await;
    let workflow = app.workflow("blocked");
    let delivery = app.approve(workflow).await;
    // (pages of the job list read, reads of the workflow's own record)
    let reads = || {
        (
            app.fake.calls_of("list_jobs").len(),
            app.fake.calls_of("get_workflow").len(),
        )
    };

    // The first step reads both; the hold job is not on hold yet: no approve.
    assert_eq!(app.step().await, 1);
    let (first_pages, records) = reads();
    assert!(first_pages > 0);
    assert_eq!(records, 1);
    // A poll reads only the jobs.
    app.advance(Duration::from_secs(2));
    assert_eq!(app.step().await, 1);
    assert_eq!(reads(), (2 * first_pages, 1));
    // The step that approves reads the workflow's record again (for a later rerun's verdict).
    app.fake.set_job_status(workflow, HOLD, "on_hold");
    app.advance(Duration::from_secs(5));
    assert_eq!(app.step().await, 1);
    assert_eq!(reads(), (3 * first_pages, 2));

    let task = app.task_of(&delivery).await;
    assert_eq!(task.outcome, Some(Outcome::Approved));
    assert_eq!(app.fake.successful_approvals(), 1);
}

#[tokio::test]
async fn a_failed_read_of_the_workflows_record_beside_its_jobs_does_not_hold_up_the_approve() {
    let app = TestApp::builder().spawn().await;
    let workflow = app.workflow("on_hold");
    app.fake.push_fault(Fault::status(503).on("get_workflow"));

    let delivery = app.approve(workflow).await;
    let task = app.finished_task(&delivery, WAIT).await;

    // Best effort: the record only helps recognise a later rerun.
    assert_eq!(task.outcome, Some(Outcome::Approved));
    assert_eq!(app.fake.calls_of("get_workflow")[0].status, 503);
    assert_eq!(app.fake.successful_approvals(), 1);
}

#[tokio::test]
async fn a_hold_job_that_never_goes_on_hold_fails_after_the_approval_timeout() {
    let app = TestApp::builder()
        .stepped()
        .flags(["--approval-timeout=30s"])
        .spawn()
        .await;
    let workflow = app.workflow("blocked");
    let delivery = app.approve(workflow).await;

    for _ in 0..20 {
        app.step().await;
        app.advance(Duration::from_secs(5));
    }

    let task = app.task_of(&delivery).await;
    assert_eq!(
        (task.status, task.outcome),
        (TaskStatus::Failed, Some(Outcome::TimedOut))
    );
    assert!(task.detail.unwrap().contains("blocked"));
    assert!(app.fake.calls_of("approve").is_empty());
}

#[tokio::test]
async fn a_custom_hold_job_name_is_the_one_approved() {
    let app = TestApp::builder()
        .flags(["--hold-job-name=gate"])
        .spawn()
        .await;
    let workflow = Uuid::new_v4();
    app.fake
        .add_standard_workflow(workflow, PROJECT, "gate", "on_hold");

    let delivery = app.approve(workflow).await;
    let task = app.finished_task(&delivery, WAIT).await;

    assert_eq!(task.outcome, Some(Outcome::Approved));
    assert_eq!(
        app.fake.job_status(workflow, "gate").as_deref(),
        Some("success")
    );
}

#[tokio::test]
async fn a_stopped_service_resumes_its_pending_task_on_restart_and_approves_once() {
    let app = TestApp::builder().stepped().spawn().await;
    let workflow = app.workflow("on_hold");
    app.fake.push_fault(Fault::status(503).on("list_jobs"));
    let delivery = app.approve(workflow).await;
    assert_eq!(app.step().await, 1, "the 503");

    let app = app.stop().await.restart().stepped().spawn().await;
    app.advance(Duration::from_secs(2));
    assert_eq!(app.step().await, 1);

    let task = app.task_of(&delivery).await;
    assert_eq!(task.outcome, Some(Outcome::Approved));
    assert_eq!(app.fake.successful_approvals(), 1);
}

#[tokio::test]
async fn a_second_process_on_the_same_sqlite_file_is_refused() {
    let app = TestApp::builder().spawn().await;
    if app
        .db
        .skip_on_postgres("several replicas share PostgreSQL by design")
    {
        return;
    }
    let args = sym_circleci_approver::cli::ServeArgs::from_flags([
        format!("--sym-webhook-secret={}", app.secret_text),
        format!("--circleci-token={TOKEN}"),
        format!("--circleci-api-url={}", app.fake.base_url()),
        "--listen-addr=127.0.0.1:0".to_owned(),
        format!("--database-url={}", app.db.url),
    ])
    .unwrap();
    let config = args.to_config().unwrap();

    let second = sym_circleci_approver::app::Application::build(config).await;

    let error = format!("{:#}", second.err().expect("refused"));
    assert!(error.contains("DATABASE_URL"), "{error}");
    assert!(error.contains("another process"), "{error}");
}

#[tokio::test]
async fn an_approve_in_flight_when_the_process_died_still_counts_as_ours() {
    let app = TestApp::builder().spawn().await;
    let workflow = app.workflow("blocked");
    let delivery = app.approve(workflow).await;
    let task = app
        .store
        .task_for_delivery(delivery.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    // What a process that died mid-call leaves behind: the approve noted, no answer stored.
    app.store
        .begin_attempt(
            task,
            Operation::Approve,
            "POST",
            &format!("/workflow/{workflow}/approve/x"),
        )
        .await
        .unwrap();
    // ...and CircleCI had carried it out.
    app.fake.set_job_status(workflow, HOLD, "success");

    let outcome = app.finished_task(&delivery, WAIT).await;

    assert_eq!(outcome.outcome, Some(Outcome::Approved));
    assert!(outcome.detail.unwrap().contains("confirmed by re-reading"));
    assert!(app.fake.calls_of("approve").is_empty(), "no second approve");
}

/// An approve event naming `hold_job` in `fields.hold_job_name`.
fn approve_event_for_hold_job(workflow: Uuid, hold_job: &str) -> Vec<u8> {
    let mut event: serde_json::Value = serde_json::from_slice(&approve_event(
        &Uuid::new_v4().to_string(),
        &workflow.to_string(),
    ))
    .unwrap();
    event["fields"]["hold_job_name"] = hold_job.into();
    serde_json::to_vec(&event).unwrap()
}

#[tokio::test]
async fn an_event_naming_a_listed_hold_job_releases_that_one_and_leaves_the_other_gate() {
    let app = TestApp::builder()
        .flags(["--hold-job-names=wait_for_sym_approval,prod_gate"])
        .spawn()
        .await;
    let workflow = Uuid::new_v4();
    app.fake.add_workflow(
        workflow,
        PROJECT,
        vec![
            approver_test_support::fake_circleci::FakeJob::approval(HOLD, "on_hold"),
            approver_test_support::fake_circleci::FakeJob::approval("prod_gate", "on_hold"),
        ],
    );

    let answer = app
        .post_signed(
            approve_event_for_hold_job(workflow, "prod_gate"),
            &new_webhook_id(),
        )
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let task = app.finished_task(&answer.delivery_id(), WAIT).await;

    assert_eq!(task.outcome, Some(Outcome::Approved));
    assert_eq!(
        app.fake.job_status(workflow, "prod_gate").as_deref(),
        Some("success")
    );
    assert_eq!(
        app.fake.job_status(workflow, HOLD).as_deref(),
        Some("on_hold")
    );
}

#[tokio::test]
async fn an_event_naming_an_unlisted_hold_job_is_refused_with_422_and_nothing_is_approved() {
    let app = TestApp::builder().spawn().await;
    let workflow = app.workflow("on_hold");

    let answer = app
        .post_signed(
            approve_event_for_hold_job(workflow, "deploy"),
            &new_webhook_id(),
        )
        .await;

    assert_eq!(answer.status, 422, "{}", answer.body);
    assert_eq!(answer.body["error"], "hold_job_not_allowed");
    assert!(answer.body["detail"]
        .as_str()
        .unwrap()
        .contains("HOLD_JOB_NAMES"));
    assert!(app.fake.calls().is_empty());
}

#[tokio::test]
async fn hold_job_name_is_still_accepted_as_the_older_form_of_hold_job_names() {
    let app = TestApp::builder()
        .flags(["--hold-job-name=gate"])
        .spawn()
        .await;
    let workflow = Uuid::new_v4();
    app.fake
        .add_standard_workflow(workflow, PROJECT, "gate", "on_hold");
    let answer = app
        .post_signed(
            approve_event_for_hold_job(workflow, "gate"),
            &new_webhook_id(),
        )
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
}

/// The value of one sample in a Prometheus text exposition.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
}

#[tokio::test]
async fn a_new_task_goes_straight_to_an_idle_worker_and_a_busy_one_claims_the_rest() {
    let app = TestApp::builder().spawn().await;
    // On SQLite the hand-off waits for a claim in progress (both take the write turn); on
    // PostgreSQL the intake does not wait for the claims' lock and leaves the task to them, so
    // a task that arrives during one of the worker's claims (its first, at startup, say) is
    // claimed, not handed over: there only the number of steps is exact.
    let strict = app.store.backend() == Backend::Sqlite;

    // Idle worker: the intake leases the task to it in the delivery's own transaction.
    let workflow = app.workflow("on_hold");
    let delivery = app.approve(workflow).await;
    let task = app.finished_task(&delivery, WAIT).await;
    assert_eq!(task.outcome, Some(Outcome::Approved));
    let (handed, claimed) = steps_started(&app).await;
    assert_eq!(
        handed + claimed,
        1.0,
        "{handed} hand-offs, {claimed} claims"
    );
    if strict {
        assert_eq!((handed, claimed), (1.0, 0.0));
    }

    // A task that needs a second step (blocked at first) is claimed for it: a retry is never
    // handed over, and it is approved exactly once.
    let blocked = app.workflow("on_hold");
    app.fake
        .hold_after(blocked, HOLD, Duration::from_millis(200));
    let delivery = app.approve(blocked).await;
    let task = app.finished_task(&delivery, WAIT).await;
    assert_eq!(task.outcome, Some(Outcome::Approved));
    let (handed_now, claimed_now) = steps_started(&app).await;
    assert!(handed_now - handed <= 1.0, "a retry was handed over");
    assert!(claimed_now - claimed >= 1.0, "the retry was not claimed");
    assert!(handed_now + claimed_now - handed - claimed >= 2.0);
    if strict {
        assert_eq!(handed_now, 2.0);
    }
    let approves: Vec<_> = app
        .fake
        .calls_of("approve")
        .into_iter()
        .filter(|c| c.path.contains(&blocked.to_string()))
        .collect();
    assert_eq!(approves.len(), 1, "{approves:?}");
}

/// Steps the worker started so far: (handed over by the intake, claimed from the store).
async fn steps_started(app: &TestApp) -> (f64, f64) {
    let metrics = app.metrics().await;
    let via = |how: &str| {
        sample(
            &metrics,
            &format!("sym_approver_worker_steps_started_total{{via=\"{how}\"}}"),
        )
    };
    (via("handoff"), via("claim"))
}
