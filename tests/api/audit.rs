//! Operating it: the audit API, metrics, deny handling and retention.

use std::time::Duration;

use approver_test_support::fake_circleci::Fault;
use serde_json::Value;
use sym_circleci_approver::domain::task::{Outcome, TaskStatus};
use uuid::Uuid;

use crate::harness::*;

const WAIT: Duration = Duration::from_secs(45);

#[tokio::test]
async fn the_audit_api_answers_404_when_no_admin_token_is_configured() {
    let app = TestApp::builder().spawn().await;

    let list = app.admin_get("/v1/approvals").await;
    let one = app
        .admin_get(&format!("/v1/approvals/{}", Uuid::new_v4()))
        .await;

    assert_eq!((list.status, one.status), (404, 404));
    assert_eq!(list.body["error"], "not_found");
}

#[tokio::test]
async fn a_missing_or_wrong_admin_token_gets_401() {
    let app = TestApp::builder().admin_token().spawn().await;

    let missing = answer(
        app.client
            .get(app.url("/v1/approvals"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let wrong = answer(
        app.client
            .get(app.url("/v1/approvals"))
            .bearer_auth("admin-token-for-tests-012345678X")
            .send()
            .await
            .unwrap(),
    )
    .await;
    let basic = answer(
        app.client
            .get(app.url("/v1/approvals"))
            .basic_auth("admin", Some(ADMIN))
            .send()
            .await
            .unwrap(),
    )
    .await;

    for answer in [&missing, &wrong, &basic] {
        assert_eq!(answer.status, 401, "{}", answer.body);
        assert_eq!(answer.body["error"], "unauthorized");
    }
    assert_eq!(missing.headers["www-authenticate"], "Bearer");
}

#[tokio::test]
async fn approvals_are_listed_newest_first_with_a_cursor_and_a_workflow_filter() {
    let app = TestApp::builder().admin_token().spawn().await;
    let workflows: Vec<Uuid> = (0..3).map(|_| app.workflow("on_hold")).collect();
    let mut deliveries = Vec::new();
    for workflow in &workflows {
        deliveries.push(app.approve(*workflow).await);
    }

    let first = app.admin_get("/v1/approvals?limit=2").await;
    let cursor = first.body["next_cursor"].as_str().unwrap().to_owned();
    let second = app
        .admin_get(&format!("/v1/approvals?limit=2&cursor={cursor}"))
        .await;
    let filtered = app
        .admin_get(&format!("/v1/approvals?workflow_id={}", workflows[1]))
        .await;

    assert_eq!(first.status, 200);
    let ids = |page: &Answer| -> Vec<String> {
        page.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        ids(&first),
        vec![deliveries[2].clone(), deliveries[1].clone()]
    );
    assert_eq!(ids(&second), vec![deliveries[0].clone()]);
    assert_eq!(second.body["next_cursor"], Value::Null);
    assert_eq!(ids(&filtered), vec![deliveries[1].clone()]);
    let item = &filtered.body["items"][0];
    assert_eq!(item["approver"]["username"], "alice@example.com");
    assert_eq!(item["workflow_id"], workflows[1].to_string());
}

#[tokio::test]
async fn bad_query_parameters_get_400_with_a_clear_error() {
    let app = TestApp::builder().admin_token().spawn().await;

    for query in [
        "limit=0",
        "limit=abc",
        "limit=100000",
        "workflow_id=../../x",
        "cursor=garbage",
        "colour=blue",
    ] {
        let answer = app.admin_get(&format!("/v1/approvals?{query}")).await;
        assert_eq!(answer.status, 400, "{query}: {}", answer.body);
        assert_eq!(answer.body["error"], "invalid_request");
        assert!(!answer.body["detail"].as_str().unwrap().is_empty());
    }
}

#[tokio::test]
async fn one_approval_tells_its_whole_story_and_unknown_ids_get_404() {
    let app = TestApp::builder().admin_token().spawn().await;
    let workflow = app.workflow("on_hold");
    app.fake.push_fault(Fault::status(503).on("list_jobs"));
    let event_id = Uuid::new_v4().to_string();
    let webhook_id = new_webhook_id();
    let body = approve_event(&event_id, &workflow.to_string());
    let accepted = app.post_signed(body.clone(), &webhook_id).await;
    let delivery = accepted.delivery_id();
    app.finished_task(&delivery, WAIT).await;
    app.post_signed(body, &webhook_id).await; // a duplicate

    let story = app.admin_get(&format!("/v1/approvals/{delivery}")).await;
    let unknown = app
        .admin_get(&format!("/v1/approvals/{}", Uuid::new_v4()))
        .await;
    let garbage = app.admin_get("/v1/approvals/not-an-id").await;

    assert_eq!(story.status, 200, "{}", story.body);
    let b = &story.body;
    assert_eq!(b["status"], "succeeded");
    assert_eq!(b["outcome"], "approved");
    assert_eq!(b["delivery"]["sym_event_id"], event_id.as_str());
    assert_eq!(b["delivery"]["webhook_id"], webhook_id.as_str());
    assert_eq!(b["delivery"]["approver"]["username"], "alice@example.com");
    assert!(b["delivery"]["workflow_url"]
        .as_str()
        .unwrap()
        .contains(&workflow.to_string()));
    assert_eq!(b["delivery"]["merging_user"], "send-event");
    assert_eq!(b["delivery"]["duplicates"], 1);
    assert_eq!(b["hold_job"]["project_slug"], PROJECT);
    assert!(b["finished_at"].as_str().is_some());
    let attempts = b["attempts"].as_array().unwrap();
    assert_eq!(attempts[0]["status"], 503);
    assert!(attempts[0]["error"].as_str().unwrap().contains("503"));
    let last = attempts.last().unwrap();
    assert_eq!(
        (last["method"].as_str(), last["status"].as_i64()),
        (Some("POST"), Some(202))
    );
    assert!(last["endpoint"].as_str().unwrap().contains("/approve/"));
    assert!(last["duration_ms"].as_i64().is_some());
    assert_eq!((unknown.status, garbage.status), (404, 404));
}

#[tokio::test]
async fn a_deny_with_on_deny_cancel_cancels_the_workflow_once_despite_a_fault() {
    let app = TestApp::builder()
        .admin_token()
        .flags(["--on-deny=cancel"])
        .spawn()
        .await;
    let workflow = app.workflow("on_hold");
    app.fake.push_fault(Fault::status(503).on("cancel"));

    let answer = app.send_event("deny", workflow).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let delivery = answer.delivery_id();
    let task = app.finished_task(&delivery, WAIT).await;

    assert_eq!(
        (task.status, task.outcome),
        (TaskStatus::Succeeded, Some(Outcome::Canceled))
    );
    let cancels = app.fake.calls_of("cancel");
    assert_eq!(
        cancels.iter().map(|c| c.status).collect::<Vec<_>>(),
        vec![503, 202]
    );
    assert!(app.fake.calls_of("approve").is_empty());
    assert_eq!(
        app.fake.job_status(workflow, HOLD).as_deref(),
        Some("canceled")
    );
    let story = app.admin_get(&format!("/v1/approvals/{delivery}")).await;
    assert_eq!(story.body["action"], "cancel");
    assert_eq!(story.body["delivery"]["event_type"], "deny");
}

#[tokio::test]
async fn an_expire_with_on_deny_cancel_cancels_and_with_ignore_is_only_recorded() {
    let cancel = TestApp::builder()
        .admin_token()
        .flags(["--on-deny=cancel"])
        .spawn()
        .await;
    let ignore = TestApp::builder().admin_token().spawn().await;

    let mut outcomes = Vec::new();
    for app in [&cancel, &ignore] {
        let workflow = app.workflow("on_hold");
        let answer = app.send_event("expire", workflow).await;
        outcomes.push((answer.status, answer.body["status"].clone()));
        assert_eq!(app.audit_of(workflow).await[0]["event_type"], "expire");
    }

    assert_eq!(outcomes[0], (202, Value::from("queued")));
    assert_eq!(outcomes[1], (200, Value::from("ignored")));
    assert!(
        cancel
            .fake
            .wait_for_calls(WAIT, |c| accepted(c, "cancel") >= 1)
            .await
    );
    assert!(ignore.fake.calls_of("cancel").is_empty());
    let listed = ignore.admin_get("/v1/approvals").await;
    assert_eq!(listed.body["items"][0]["status"], "ignored");
}

#[tokio::test]
async fn metrics_move_as_deliveries_and_faults_happen() {
    let app = TestApp::builder().spawn().await;
    let before = app.metrics().await;
    let workflow = app.workflow("on_hold");
    app.fake.push_fault(Fault::status(503).on("list_jobs"));
    let blocked = app.workflow("blocked");

    let delivery = app.approve(workflow).await;
    app.approve(blocked).await;
    app.post_raw(b"{}".to_vec(), &[]).await; // unsigned: 401
    app.finished_task(&delivery, WAIT).await;
    let after = app.metrics().await;

    assert_eq!(
        sample(&before, "sym_approver_deliveries_total{outcome=\"queued\"}"),
        0.0
    );
    assert_eq!(
        sample(&after, "sym_approver_deliveries_total{outcome=\"queued\"}"),
        2.0
    );
    assert_eq!(
        sample(
            &after,
            "sym_approver_deliveries_total{outcome=\"rejected_signature\"}"
        ),
        1.0
    );
    assert!(
        sample(
            &after,
            "sym_approver_circleci_requests_total{endpoint=\"list_jobs\",status=\"503\"}"
        ) >= 1.0
    );
    assert_eq!(
        sample(
            &after,
            "sym_approver_circleci_requests_total{endpoint=\"approve\",status=\"202\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &after,
            "sym_approver_tasks_finished_total{action=\"approve\",outcome=\"approved\"}"
        ),
        1.0
    );
    assert!(after.contains("sym_approver_circleci_request_duration_seconds_bucket"));
    assert_eq!(sample(&after, "sym_approver_pending_tasks"), 1.0);
    assert!(sample(&after, "sym_approver_oldest_pending_task_age_seconds") > 0.0);
}

#[tokio::test]
async fn pruning_removes_old_finished_records_and_keeps_pending_tasks() {
    let app = TestApp::builder().admin_token().spawn().await;
    let done = app.workflow("on_hold");
    let waiting = app.workflow("blocked");
    let finished = app.approve(done).await;
    let pending = app.approve(waiting).await;
    app.finished_task(&finished, WAIT).await;

    // Everything received before "tomorrow" is past retention.
    let tomorrow = sym_circleci_approver::clock::Clock::system().now_ms() + 86_400_000;
    let pruned = app.store.prune(tomorrow).await.unwrap();

    assert_eq!(pruned, 1);
    assert_eq!(
        app.admin_get(&format!("/v1/approvals/{finished}"))
            .await
            .status,
        404
    );
    let kept = app.admin_get(&format!("/v1/approvals/{pending}")).await;
    assert_eq!(
        (kept.status, kept.body["status"].as_str()),
        (200, Some("pending"))
    );
}

#[tokio::test]
async fn the_service_prunes_at_startup_with_retention_days() {
    // A record from 100 days ago, stored through the same path the service uses.
    let app = TestApp::builder().spawn().await;
    let workflow = app.workflow("success");
    let old_event = sym_circleci_approver::inbound::sym_event::parse(&event_of_type(
        "old-event",
        "approve",
        &workflow.to_string(),
    ))
    .unwrap();
    let long_ago = sym_circleci_approver::clock::Clock::system().now_ms() - 100 * 86_400_000;
    app.store
        .record_delivery("msg_old", &old_event, long_ago, None, None)
        .await
        .unwrap();
    let stopped = app.stop().await;

    let app = stopped
        .restart()
        .admin_token()
        .flags(["--retention-days=90"])
        .spawn()
        .await;

    // The pruner runs in the background from the start: the record goes soon after.
    eventually(
        "the 100-day-old record to be pruned",
        Duration::from_secs(5),
        || async {
            let listed = app.admin_get("/v1/approvals").await;
            listed.body["items"]
                .as_array()
                .unwrap()
                .is_empty()
                .then_some(())
        },
    )
    .await;
}
