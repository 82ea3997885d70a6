//! The inbound contract of `POST /webhooks/sym`: signatures, payloads, status codes, dedup.

use std::time::Duration;

use sym_circleci_approver::domain::task::{DeliveryStatus, Outcome, TaskStatus};
use sym_circleci_approver::inbound::signature::WebhookSecret;
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use crate::harness::*;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn signed_approve_event_is_queued_and_approves_the_hold_job_on_a_later_page() {
    // Arrange
    let app = TestApp::builder().spawn().await;
    let workflow = app.workflow("on_hold");
    let event_id = Uuid::new_v4().to_string();

    // Act
    let answer = app
        .post_signed(
            approve_event(&event_id, &workflow.to_string()),
            &new_webhook_id(),
        )
        .await;

    // Assert
    assert_eq!(answer.status, 202);
    assert_eq!(answer.body["status"], "queued");
    let delivery_id = answer.delivery_id();
    let task = app.finished_task(&delivery_id, WAIT).await;
    assert_eq!(task.status, TaskStatus::Succeeded);
    assert_eq!(task.outcome, Some(Outcome::Approved));
    let lists = app.fake.calls_of("list_jobs");
    assert!(
        lists
            .iter()
            .any(|c| c.query.as_deref() == Some("page-token=2")),
        "the hold job is on page 2, so the page token must be followed: {lists:?}"
    );
    assert_eq!(app.fake.successful_approvals(), 1);
    assert_eq!(
        app.fake.job_status(workflow, HOLD).as_deref(),
        Some("success")
    );
    assert!(
        app.fake.calls().iter().all(|c| c.token_ok),
        "Circle-Token sent on every call"
    );
}

#[tokio::test]
async fn the_approve_call_uses_the_approval_request_id_not_the_job_id() {
    let app = TestApp::builder().spawn().await;
    let workflow = Uuid::new_v4();
    let hold = app
        .fake
        .add_standard_workflow(workflow, PROJECT, HOLD, "on_hold");

    let delivery = app.approve(workflow).await;
    app.finished_task(&delivery, WAIT).await;

    let approves = app.fake.calls_of("approve");
    assert_eq!(approves.len(), 1);
    let request_id = hold.approval_request_id.unwrap();
    assert_eq!(
        approves[0].path,
        format!("/api/v2/workflow/{workflow}/approve/{request_id}")
    );
    assert_ne!(request_id, hold.id);
}

#[tokio::test]
async fn the_job_id_is_used_when_the_hold_job_has_no_approval_request_id() {
    use approver_test_support::fake_circleci::FakeJob;
    let app = TestApp::builder().spawn().await;
    let workflow = Uuid::new_v4();
    let mut hold = FakeJob::approval(HOLD, "on_hold");
    hold.approval_request_id = None;
    app.fake.add_workflow(workflow, PROJECT, vec![hold.clone()]);

    let delivery = app.approve(workflow).await;
    let task = app.finished_task(&delivery, WAIT).await;

    assert_eq!(task.outcome, Some(Outcome::Approved));
    let approves = app.fake.calls_of("approve");
    assert_eq!(
        approves[0].path,
        format!("/api/v2/workflow/{workflow}/approve/{}", hold.id)
    );
}

#[tokio::test]
async fn an_identical_redelivery_is_a_duplicate_and_approves_only_once() {
    let app = TestApp::builder().spawn().await;
    let workflow = app.workflow("on_hold");
    let body = approve_event(&Uuid::new_v4().to_string(), &workflow.to_string());
    let webhook_id = new_webhook_id();
    let timestamp = now_secs();

    let first = app
        .post_signed_with(&app.secret, body.clone(), &webhook_id, timestamp)
        .await;
    let second = app
        .post_signed_with(&app.secret, body, &webhook_id, timestamp)
        .await;

    assert_eq!(first.status, 202);
    assert_eq!(second.status, 200);
    assert_eq!(second.body["status"], "duplicate");
    assert_eq!(second.body["delivery_id"], first.body["delivery_id"]);
    app.finished_task(&first.delivery_id(), WAIT).await;
    assert_eq!(app.fake.calls_of("approve").len(), 1);
    assert_eq!(
        app.store
            .delivery_count(DeliveryStatus::Queued)
            .await
            .unwrap(),
        1
    );
    // The replay added no row: it is counted on the original.
    assert_eq!(
        app.store
            .delivery_count(DeliveryStatus::Duplicate)
            .await
            .unwrap(),
        0
    );
    let original = first.body["delivery_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(app.store.redeliveries(original).await.unwrap(), 1);
}

#[tokio::test]
async fn the_same_sym_event_resigned_under_a_new_webhook_id_is_a_duplicate() {
    let app = TestApp::builder().spawn().await;
    let workflow = app.workflow("on_hold");
    let event_id = Uuid::new_v4().to_string();

    let first = app
        .post_signed(
            approve_event(&event_id, &workflow.to_string()),
            &new_webhook_id(),
        )
        .await;
    let again = app
        .post_signed(
            approve_event(&event_id, &workflow.to_string()),
            &new_webhook_id(),
        )
        .await;

    assert_eq!(first.status, 202);
    assert_eq!(
        (again.status, again.body["status"].as_str()),
        (200, Some("duplicate"))
    );
    app.finished_task(&first.delivery_id(), WAIT).await;
    assert_eq!(app.fake.calls_of("approve").len(), 1);
}

#[tokio::test]
async fn a_reused_webhook_id_with_another_event_is_a_duplicate() {
    let app = TestApp::builder().spawn().await;
    let workflow = app.workflow("on_hold");
    let webhook_id = new_webhook_id();

    let first = app
        .post_signed(approve_event("event-a", &workflow.to_string()), &webhook_id)
        .await;
    let again = app
        .post_signed(approve_event("event-b", &workflow.to_string()), &webhook_id)
        .await;

    assert_eq!(first.status, 202);
    assert_eq!(
        (again.status, again.body["status"].as_str()),
        (200, Some("duplicate"))
    );
}

#[tokio::test]
async fn every_signature_problem_gets_the_same_401_and_nothing_is_stored() {
    let app = TestApp::builder().spawn().await;
    let workflow = app.workflow("on_hold");
    let body = approve_event(&Uuid::new_v4().to_string(), &workflow.to_string());
    let id = new_webhook_id();
    let now = now_secs();
    let good = app.secret.sign(&id, now, &body);
    let other_secret = WebhookSecret::parse(&WebhookSecret::generate()).unwrap();
    let h = |id: &str, ts: String, sig: String| {
        vec![
            ("webhook-id", id.to_owned()),
            ("webhook-timestamp", ts),
            ("webhook-signature", sig),
        ]
    };
    type Case<'a> = (&'a str, Vec<u8>, Vec<(&'a str, String)>);
    let cases: Vec<Case> = vec![
        ("no headers", body.clone(), vec![]),
        (
            "missing signature",
            body.clone(),
            vec![
                ("webhook-id", id.clone()),
                ("webhook-timestamp", now.to_string()),
            ],
        ),
        (
            "missing id",
            body.clone(),
            vec![
                ("webhook-timestamp", now.to_string()),
                ("webhook-signature", good.clone()),
            ],
        ),
        (
            "missing timestamp",
            body.clone(),
            vec![
                ("webhook-id", id.clone()),
                ("webhook-signature", good.clone()),
            ],
        ),
        (
            "wrong secret",
            body.clone(),
            h(&id, now.to_string(), other_secret.sign(&id, now, &body)),
        ),
        (
            "tampered body",
            b"{\"id\":\"x\"}".to_vec(),
            h(&id, now.to_string(), good.clone()),
        ),
        (
            "tampered id",
            body.clone(),
            h("msg_other", now.to_string(), good.clone()),
        ),
        (
            "stale timestamp",
            body.clone(),
            h(
                &id,
                (now - 301).to_string(),
                app.secret.sign(&id, now - 301, &body),
            ),
        ),
        (
            "future timestamp",
            body.clone(),
            h(
                &id,
                (now + 400).to_string(),
                app.secret.sign(&id, now + 400, &body),
            ),
        ),
        (
            "non-numeric timestamp",
            body.clone(),
            h(&id, "yesterday".into(), good.clone()),
        ),
        (
            "garbage signature",
            body.clone(),
            h(&id, now.to_string(), "v1,%%%".into()),
        ),
        (
            "empty signature",
            body.clone(),
            h(&id, now.to_string(), "v1,".into()),
        ),
        (
            "truncated signature",
            body.clone(),
            h(&id, now.to_string(), good[..12].to_owned()),
        ),
        (
            "other version",
            body.clone(),
            h(&id, now.to_string(), good.replace("v1,", "v2,")),
        ),
    ];

    let mut bodies = Vec::new();
    for (name, body, headers) in cases {
        let answer = app.post_raw(body, &headers).await;
        assert_eq!(answer.status, 401, "{name}: {}", answer.body);
        bodies.push(answer.body);
    }

    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "all 401s look alike"
    );
    assert_eq!(bodies[0]["error"], "invalid_signature");
    assert_eq!(
        app.store
            .delivery_count(DeliveryStatus::Queued)
            .await
            .unwrap(),
        0
    );
    assert!(app.fake.calls().is_empty(), "CircleCI must not be called");
}

#[tokio::test]
async fn a_timestamp_exactly_at_the_tolerance_edge_is_accepted() {
    let app = TestApp::builder().spawn().await;
    let workflow = app.workflow("on_hold");
    let body = approve_event(&Uuid::new_v4().to_string(), &workflow.to_string());

    // A few seconds inside the edge: the request itself takes time.
    let answer = app
        .post_signed_with(&app.secret, body, &new_webhook_id(), now_secs() - 295)
        .await;

    assert_eq!(answer.status, 202, "{}", answer.body);
}

#[tokio::test]
async fn any_configured_secret_is_accepted_during_rotation() {
    let old = WebhookSecret::generate();
    let new = WebhookSecret::generate();
    let app = TestApp::builder()
        .secrets(&format!("{old} {new}"))
        .spawn()
        .await;
    let workflow = app.workflow("on_hold");

    for (i, secret) in [&old, &new].into_iter().enumerate() {
        let secret = WebhookSecret::parse(secret).unwrap();
        let body = approve_event(&format!("rotation-{i}"), &workflow.to_string());
        let answer = app
            .post_signed_with(&secret, body, &new_webhook_id(), now_secs())
            .await;
        assert!(
            answer.status == 202 || answer.status == 200,
            "{}",
            answer.body
        );
    }
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_with_413() {
    let app = TestApp::builder().spawn().await;
    let mut body = approve_event("big", &Uuid::new_v4().to_string());
    body.extend(std::iter::repeat_n(b' ', 70 * 1024));

    let answer = app.post_signed(body, &new_webhook_id()).await;

    assert_eq!(answer.status, 413);
    assert_eq!(answer.body["error"], "payload_too_large");
}

#[tokio::test]
async fn signed_bodies_that_are_not_json_or_not_log_entries_get_400() {
    let app = TestApp::builder().spawn().await;

    for body in [
        &b"{not json"[..],
        b"[1,2,3]",
        br#"{"id":"x","fields":{}}"#,
        b"",
    ] {
        let answer = app.post_signed(body.to_vec(), &new_webhook_id()).await;
        assert_eq!(
            answer.status,
            400,
            "{:?}: {}",
            String::from_utf8_lossy(body),
            answer.body
        );
        assert_eq!(answer.body["error"], "invalid_request");
        assert!(answer.body["detail"].as_str().is_some());
    }
    assert!(app.fake.calls().is_empty());
}

#[tokio::test]
async fn an_approve_event_without_a_uuid_workflow_id_gets_422_and_never_reaches_circleci() {
    let app = TestApp::builder().spawn().await;

    for workflow_id in ["../../project/x", "not-a-uuid", ""] {
        let body = approve_event(&Uuid::new_v4().to_string(), workflow_id);
        let answer = app.post_signed(body, &new_webhook_id()).await;
        assert_eq!(answer.status, 422, "{workflow_id:?}: {}", answer.body);
        assert_eq!(answer.body["error"], "invalid_workflow_id");
    }
    let missing = br#"{"id":"x","event":{"type":"approve"},"fields":{}}"#.to_vec();
    assert_eq!(
        app.post_signed(missing, &new_webhook_id()).await.status,
        422
    );
    let number = br#"{"id":"y","event":{"type":"approve"},"fields":{"workflow_id":7}}"#.to_vec();
    assert_eq!(app.post_signed(number, &new_webhook_id()).await.status, 422);
    assert!(app.fake.calls().is_empty(), "nothing may reach CircleCI");
}

#[tokio::test]
async fn other_event_types_are_acknowledged_recorded_and_ignored() {
    let app = TestApp::builder().spawn().await;
    let workflow = app.workflow("on_hold");

    let answer = app.send_event("escalate", workflow).await;
    let deny = app.send_event("deny", workflow).await;

    assert_eq!(
        (answer.status, answer.body["status"].as_str()),
        (200, Some("ignored"))
    );
    assert_eq!(
        (deny.status, deny.body["status"].as_str()),
        (200, Some("ignored"))
    );
    assert_eq!(
        app.store
            .delivery_count(DeliveryStatus::Ignored)
            .await
            .unwrap(),
        2
    );
    assert!(app.fake.calls().is_empty());
}

#[tokio::test]
async fn a_request_event_binds_its_run_and_is_answered_bound_once() {
    let app = TestApp::builder().spawn().await;
    let workflow = app.workflow("on_hold");
    let body = run_event("request", "run-42", workflow, None);
    let webhook_id = new_webhook_id();

    let first = app.post_signed(body.clone(), &webhook_id).await;
    let again = app.post_signed(body, &webhook_id).await;
    let no_run = app
        .post_signed(
            br#"{"id":"r","event":{"type":"request"},"fields":{"workflow_id":"7b2d6c1e-8f3a-4b5c-9d0e-1f2a3b4c5d6e"}}"#.to_vec(),
            &new_webhook_id(),
        )
        .await;
    let unlisted = app
        .post_signed(
            run_event("request", "run-43", workflow, Some("deploy")),
            &new_webhook_id(),
        )
        .await;

    assert_eq!(
        (first.status, first.body["status"].as_str()),
        (200, Some("bound"))
    );
    assert_eq!(
        (again.status, again.body["status"].as_str()),
        (200, Some("duplicate"))
    );
    assert_eq!(no_run.status, 400, "{}", no_run.body);
    assert_eq!(unlisted.status, 422, "{}", unlisted.body);
    assert_eq!(
        app.store
            .delivery_count(DeliveryStatus::Bound)
            .await
            .unwrap(),
        1
    );
    assert!(app.fake.calls().is_empty(), "a binding calls nothing");
}

#[tokio::test]
async fn the_reference_sample_event_from_sym_is_accepted() {
    let app = TestApp::builder().spawn().await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let sample = std::fs::read(dir.join("sym-approve-event.json")).unwrap();
    let workflow: Uuid = "7b2d6c1e-8f3a-4b5c-9d0e-1f2a3b4c5d6e".parse().unwrap();
    app.fake
        .add_standard_workflow(workflow, PROJECT, HOLD, "on_hold");

    let answer = app.post_signed(sample, &new_webhook_id()).await;

    assert_eq!(answer.status, 202, "{}", answer.body);
    let task = app.finished_task(&answer.delivery_id(), WAIT).await;
    assert_eq!(task.outcome, Some(Outcome::Approved));
}

#[tokio::test]
async fn health_and_readiness_answer_json_and_unknown_routes_get_json_404() {
    let app = TestApp::builder().spawn().await;

    let health = answer(app.client.get(app.url("/healthz")).send().await.unwrap()).await;
    let ready = answer(app.client.get(app.url("/readyz")).send().await.unwrap()).await;
    let missing = answer(app.client.get(app.url("/nope")).send().await.unwrap()).await;
    let wrong_method = answer(
        app.client
            .get(app.url("/webhooks/sym"))
            .send()
            .await
            .unwrap(),
    )
    .await;

    assert_eq!(
        (health.status, health.body["status"].as_str()),
        (200, Some("ok"))
    );
    assert_eq!(
        (ready.status, ready.body["status"].as_str()),
        (200, Some("ready"))
    );
    assert_eq!(
        (missing.status, missing.body["error"].as_str()),
        (404, Some("not_found"))
    );
    assert_eq!(wrong_method.status, 405);
    assert!(health.headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn slow_unsigned_bodies_do_not_take_the_slots_signed_deliveries_need() {
    let app = TestApp::builder()
        .flags(["--max-concurrent-requests=1"])
        .spawn()
        .await;
    // Twenty requests whose bodies never finish arriving.
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        stream
            .write_all(
                b"POST /webhooks/sym HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
                  content-length: 1000\r\n\r\n{",
            )
            .await
            .unwrap();
        slow.push(stream);
    }

    let workflow = app.workflow("on_hold");
    let delivery = app.approve(workflow).await;

    let task = app.finished_task(&delivery, WAIT).await;
    assert_eq!(task.outcome, Some(Outcome::Approved));
    drop(slow);
}

#[tokio::test]
async fn signed_deliveries_over_the_store_write_cap_get_429_with_retry_after_then_go_through() {
    let app = TestApp::builder()
        .flags(["--max-concurrent-requests=1"])
        .spawn()
        .await;
    if app
        .db
        .skip_on_postgres("the slot is held here by SQLite's write lock")
    {
        return;
    }
    // Another process holds SQLite's write lock: the first signed delivery waits in the store,
    // holding the only store-write slot.
    let locker = SqliteLock::hold(&app.db).await;

    let first_workflow = app.workflow("on_hold");
    let first_body = approve_event(&Uuid::new_v4().to_string(), &first_workflow.to_string());
    let first = {
        let app_url = app.url("/webhooks/sym");
        let secret = app.secret.clone();
        let client = app.client.clone();
        tokio::spawn(async move {
            sym_circleci_approver::cli::post_signed(
                &client,
                &app_url,
                &secret,
                "msg_first",
                &first_body,
            )
            .await
            .unwrap()
        })
    };
    let second_workflow = app.workflow("on_hold");
    let second_body = approve_event(&Uuid::new_v4().to_string(), &second_workflow.to_string());
    let second_id = new_webhook_id();
    // Sent again until the first holds the slot (it is answered 429 from then on).
    let shed = eventually("a 429 while the slot is held", WAIT, || async {
        let answer = app.post_signed(second_body.clone(), &second_id).await;
        (answer.status == 429).then_some(answer)
    })
    .await;
    assert_eq!(shed.body["error"], "overloaded");
    assert!(shed.headers.contains_key("retry-after"));
    // Health checks never wait for a slot.
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    // The lock goes: the first is accepted, the retried second too, each approved once.
    locker.release().await;
    assert_eq!(first.await.unwrap().status, 202);
    let again = app.post_signed(second_body, &second_id).await;
    assert_eq!(again.status, 202, "{}", again.body);
    app.finished_task(&again.delivery_id(), WAIT).await;
    assert!(
        app.fake
            .wait_for_calls(WAIT, |c| accepted(c, "approve") == 2)
            .await
    );
    assert_eq!(app.fake.successful_approvals(), 2);
}

#[tokio::test]
async fn a_store_that_cannot_take_the_event_gets_503_and_a_retry_then_succeeds() {
    let app = TestApp::builder()
        .flags(["--database-statement-timeout=1s"])
        .spawn()
        .await;
    if app
        .db
        .skip_on_postgres("about SQLite's lock (the PostgreSQL outage is a replica test)")
    {
        return;
    }
    let workflow = app.workflow("on_hold");
    let body = approve_event(&Uuid::new_v4().to_string(), &workflow.to_string());
    let webhook_id = new_webhook_id();
    // Another process holds SQLite's write lock longer than the busy timeout, until told to
    // let go (a line on its stdin).
    let locker = SqliteLock::hold(&app.db).await;

    let refused = app.post_signed(body.clone(), &webhook_id).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.body["error"], "store_unavailable");
    assert!(refused.headers.contains_key("retry-after"));

    // The lock goes; the sender's retry is accepted and approved once.
    locker.release().await;
    let accepted = app.post_signed(body.clone(), &webhook_id).await;
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    app.finished_task(&accepted.delivery_id(), WAIT).await;
    assert_eq!(app.fake.successful_approvals(), 1);
}

/// A second connection to the SQLite file holding its write lock until released, so a test
/// can make the store wait longer than its busy timeout. (In this process: SQLite's own
/// per-file lock table makes connections of one process wait for each other, with no timing
/// of another program's start-up involved.)
struct SqliteLock(sqlx::SqliteConnection);

impl SqliteLock {
    async fn hold(db: &TestDatabase) -> Self {
        use sqlx::{Connection as _, Executor as _};
        let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
        conn.execute("BEGIN IMMEDIATE").await.unwrap();
        Self(conn)
    }

    async fn release(mut self) {
        use sqlx::Executor as _;
        self.0.execute("COMMIT").await.unwrap();
    }
}

#[tokio::test]
async fn a_sender_that_hangs_up_right_after_sending_still_gets_its_delivery_counted_and_approved() {
    let app = TestApp::builder().spawn().await;
    let workflow = app.workflow("on_hold");
    let body = approve_event(&Uuid::new_v4().to_string(), &workflow.to_string());
    let webhook_id = new_webhook_id();
    let timestamp = now_secs();
    let signature = app.secret.sign(&webhook_id, timestamp, &body);
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /webhooks/sym HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nwebhook-id: {webhook_id}\r\nwebhook-timestamp: {timestamp}\r\n\
         webhook-signature: {signature}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    // Gone before the answer: the handler may be cancelled mid-commit.
    drop(stream);

    assert!(
        app.fake
            .wait_for_calls(WAIT, |c| accepted(c, "approve") >= 1)
            .await
    );
    // Counted before the worker was woken, so already there.
    let metrics = app.metrics().await;
    let queued = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sym_approver_deliveries_total{outcome=\"queued\"}"))
        .map(str::trim);
    assert_eq!(queued, Some("1"), "{metrics}");
}
