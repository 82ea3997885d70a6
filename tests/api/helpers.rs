//! `spawn_app()` and friends: a running service wired to its own fake CircleCI and store.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use approver_test_support::fake_circleci::FakeCircleCi;
use serde_json::Value;
use sym_circleci_approver::app::Application;
use sym_circleci_approver::cli::ServeArgs;
use sym_circleci_approver::clock::Clock;
use sym_circleci_approver::domain::task::DEFAULT_HOLD_JOB_NAME;
use sym_circleci_approver::domain::task::{TaskState, TaskStatus};
use sym_circleci_approver::inbound::signature::WebhookSecret;
use sym_circleci_approver::store::Store;
use sym_circleci_approver::worker::reconciler::Reconciler;
use sym_circleci_approver::worker::ApprovalWorker;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const TOKEN: &str = "test-circleci-token-5f1d2c";
pub const HOLD: &str = DEFAULT_HOLD_JOB_NAME;
pub const PROJECT: &str = "gh/acme/api";

/// Where a test's store lives: a fresh SQLite file, or a fresh PostgreSQL database when
/// `APPROVER_TEST_POSTGRES_URL` names a server (a throwaway cluster: CI deletes it after the run).
pub struct TestDatabase {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    pub async fn new() -> Self {
        match std::env::var("APPROVER_TEST_POSTGRES_URL") {
            Ok(admin) if !admin.is_empty() => {
                let name = format!("approver_test_{}", Uuid::new_v4().simple());
                let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
                    .await
                    .expect("APPROVER_TEST_POSTGRES_URL reachable");
                sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
                    .await
                    .expect("create test database");
                let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
                Self {
                    url: format!("{base}/{name}"),
                    _dir: None,
                }
            }
            _ => {
                let dir = tempfile::tempdir().expect("temp dir");
                Self {
                    url: format!("sqlite://{}/approver.db", dir.path().display()),
                    _dir: Some(dir),
                }
            }
        }
    }

    pub fn is_postgres(&self) -> bool {
        self.url.starts_with("postgres")
    }
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub fake: FakeCircleCi,
    pub secret: WebhookSecret,
    pub secret_text: String,
    pub store: Store,
    pub client: reqwest::Client,
    pub db: TestDatabase,
    /// The service's clock: the system's, or a manual one for a stepped app.
    pub clock: Clock,
    /// Set for a stepped app: the test takes the worker's steps itself.
    worker: Option<Arc<ApprovalWorker>>,
    /// Set for a stepped app with SYM_API_TOKEN: the test runs the reconciler itself.
    reconciler: Option<Arc<Reconciler>>,
    /// Notified each time the worker stores a step's result.
    settled: Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
    /// Stops the service when the test ends, however it ends.
    _stop_on_drop: tokio_util::sync::DropGuard,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// The service with default settings.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// The service with extra `serve` flags (e.g. `--allowed-projects=gh/acme/api`).
pub async fn spawn_app_with(flags: &[&str]) -> TestApp {
    let fake = FakeCircleCi::start(TOKEN).await.expect("fake CircleCI");
    let db = TestDatabase::new().await;
    let secret_text = WebhookSecret::generate();
    spawn_app_on(fake, db, &secret_text, flags).await
}

/// The service with these webhook secret(s) (space-separated for rotation).
pub async fn spawn_app_with_secrets(secret_text: &str, flags: &[&str]) -> TestApp {
    let fake = FakeCircleCi::start(TOKEN).await.expect("fake CircleCI");
    spawn_app_on(fake, TestDatabase::new().await, secret_text, flags).await
}

/// The service with its worker driven by the test: a manual clock that moves only on
/// [`TestApp::advance`], and worker steps taken only on [`TestApp::step`]. Retries due in
/// seconds are then due after `advance`, with no waiting.
#[allow(dead_code)]
pub async fn spawn_stepped_app(flags: &[&str]) -> TestApp {
    let fake = FakeCircleCi::start(TOKEN).await.expect("fake CircleCI");
    let secret_text = WebhookSecret::generate();
    spawn_stepped_app_on(fake, TestDatabase::new().await, &secret_text, flags).await
}

/// [`spawn_stepped_app`] on a given fake and store (restarts reuse both).
#[allow(dead_code)]
pub async fn spawn_stepped_app_on(
    fake: FakeCircleCi,
    db: TestDatabase,
    secret_text: &str,
    flags: &[&str],
) -> TestApp {
    let clock = Clock::manual(Clock::system().now_ms());
    start(fake, db, secret_text, flags, Some(clock)).await
}

/// The service on a given fake and store (restarts reuse both).
pub async fn spawn_app_on(
    fake: FakeCircleCi,
    db: TestDatabase,
    secret_text: &str,
    flags: &[&str],
) -> TestApp {
    start(fake, db, secret_text, flags, None).await
}

async fn start(
    fake: FakeCircleCi,
    db: TestDatabase,
    secret_text: &str,
    flags: &[&str],
    manual_clock: Option<Clock>,
) -> TestApp {
    let mut all = vec![
        format!("--sym-webhook-secret={secret_text}"),
        format!("--circleci-token={TOKEN}"),
        format!("--circleci-api-url={}", fake.base_url()),
        "--listen-addr=127.0.0.1:0".to_owned(),
        format!("--database-url={}", db.url),
        "--log-format=text".to_owned(),
    ];
    all.extend(flags.iter().map(|f| (*f).to_owned()));
    let args = ServeArgs::from_flags(all).expect("valid flags");
    let mut config = args.to_config().expect("valid config");
    let stepped = manual_clock.is_some();
    if let Some(clock) = manual_clock {
        config.store.clock = clock;
    }
    let mut app = Application::build(config).await.expect("service starts");
    let settled = app.worker().settled();
    let worker = stepped.then(|| app.worker());
    let reconciler = app.reconciler().filter(|_| stepped);
    if stepped {
        app = app.without_background_worker();
    }
    let clock = app.store().clock().clone();
    let addr = app.local_addr().unwrap();
    let store = app.store().clone();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    TestApp {
        addr,
        fake,
        // Tests sign with the first configured secret.
        secret: WebhookSecret::parse(secret_text.split(' ').next().unwrap()).unwrap(),
        secret_text: secret_text.to_owned(),
        store,
        client: reqwest::Client::new(),
        db,
        clock,
        worker,
        reconciler,
        settled,
        _stop_on_drop: shutdown.clone().drop_guard(),
        shutdown,
        server: Some(server),
    }
}

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A Sym approve log entry (schema_version 4) for `workflow_id`.
pub fn approve_event(event_id: &str, workflow_id: &str) -> Vec<u8> {
    event_of_type(event_id, "approve", workflow_id)
}

pub fn event_of_type(event_id: &str, event_type: &str, workflow_id: &str) -> Vec<u8> {
    sym_circleci_approver::cli::event_body(event_id, event_type, workflow_id, "alice@example.com")
}

/// A Sym log entry of `event_type` for the run `run_id` (its SRN names it), requested for
/// `workflow_id` and, when given, `hold_job_name`.
pub fn run_event(
    event_type: &str,
    run_id: &str,
    workflow_id: Uuid,
    hold_job_name: Option<&str>,
) -> Vec<u8> {
    let body = event_of_type(
        &Uuid::new_v4().to_string(),
        event_type,
        &workflow_id.to_string(),
    );
    let mut entry: Value = serde_json::from_slice(&body).unwrap();
    entry["run"]["srn"] = format!("acme:run:ci-approval:1.0.0:{run_id}").into();
    if let Some(hold) = hold_job_name {
        entry["fields"]["hold_job_name"] = hold.into();
    }
    entry.to_string().into_bytes()
}

pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Posts `body` with exactly these headers (no signing).
    pub async fn post_raw(&self, body: Vec<u8>, headers: &[(&str, String)]) -> Answer {
        let mut request = self
            .client
            .post(self.url("/webhooks/sym"))
            .header("content-type", "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        answer(request.send().await.expect("service reachable")).await
    }

    /// Posts `body` signed with the configured secret, now, under `webhook_id`.
    pub async fn post_signed(&self, body: Vec<u8>, webhook_id: &str) -> Answer {
        // Signed at the service's time: a stepped app's clock is the one its check reads.
        self.post_signed_with(&self.secret, body, webhook_id, self.clock.unix_secs())
            .await
    }

    pub async fn post_signed_with(
        &self,
        secret: &WebhookSecret,
        body: Vec<u8>,
        webhook_id: &str,
        timestamp: i64,
    ) -> Answer {
        let signature = secret.sign(webhook_id, timestamp, &body);
        self.post_raw(
            body,
            &[
                ("webhook-id", webhook_id.to_owned()),
                ("webhook-timestamp", timestamp.to_string()),
                ("webhook-signature", signature),
            ],
        )
        .await
    }

    /// Sends the flow's signed `request` event for `run_id` (its `after_request` hook): it binds
    /// the run to `workflow_id` and the hold job; asserts 200 `bound`.
    pub async fn bind_run(&self, run_id: &str, workflow_id: Uuid, hold_job_name: Option<&str>) {
        let answer = self
            .post_signed(
                run_event("request", run_id, workflow_id, hold_job_name),
                &new_webhook_id(),
            )
            .await;
        assert_eq!(
            (answer.status, answer.body["status"].as_str()),
            (200, Some("bound")),
            "{}",
            answer.body
        );
    }

    /// A new workflow with the standard jobs (hold job on page 2) in `hold_status`.
    pub fn workflow(&self, hold_status: &str) -> Uuid {
        let id = Uuid::new_v4();
        self.fake
            .add_standard_workflow(id, PROJECT, HOLD, hold_status);
        id
    }

    /// Sends a signed approve event for `workflow_id`; asserts 202 and returns the delivery id.
    pub async fn approve(&self, workflow_id: Uuid) -> String {
        let answer = self
            .post_signed(
                approve_event(&Uuid::new_v4().to_string(), &workflow_id.to_string()),
                &new_webhook_id(),
            )
            .await;
        assert_eq!(answer.status, 202, "{}", answer.body);
        answer.body["delivery_id"].as_str().unwrap().to_owned()
    }

    /// Stepped app: takes one step of every task due now; returns how many.
    #[allow(dead_code)]
    pub async fn step(&self) -> usize {
        let worker = self
            .worker
            .as_ref()
            .expect("a stepped app (spawn_stepped_app)");
        worker.run_due().await.expect("the store answers")
    }

    /// Stepped app: takes the due steps in a task of its own, so the test can move the clock
    /// while a step is waiting on CircleCI.
    #[allow(dead_code)]
    pub fn step_in_background(&self) -> tokio::task::JoinHandle<usize> {
        let worker = Arc::clone(
            self.worker
                .as_ref()
                .expect("a stepped app (spawn_stepped_app)"),
        );
        tokio::spawn(async move { worker.run_due().await.expect("the store answers") })
    }

    /// Stepped app: reads every gate due now once; returns how many.
    #[allow(dead_code)]
    pub async fn reconcile(&self) -> usize {
        let reconciler = self
            .reconciler
            .as_ref()
            .expect("a stepped app with --sym-api-token");
        reconciler.run_due().await.expect("the store answers")
    }

    /// Stepped app: moves the service's clock forward.
    #[allow(dead_code)]
    pub fn advance(&self, by: Duration) {
        assert!(self.clock.is_manual(), "a stepped app (spawn_stepped_app)");
        self.clock.advance(by);
    }

    /// Waits until the delivery's task is no longer pending and returns it: woken by the
    /// worker each time it stores a step's result, no polling.
    pub async fn finished_task(&self, delivery_id: &str, timeout: Duration) -> TaskState {
        let deadline = tokio::time::Instant::now() + timeout;
        let delivery = delivery_id.parse().expect("a delivery id");
        loop {
            let settled = self.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            if let Some(task) = self.store.task_for_delivery(delivery).await.unwrap() {
                let state = self.store.task_state(task).await.unwrap().unwrap();
                if state.status != TaskStatus::Pending {
                    return state;
                }
                if tokio::time::timeout_at(deadline, settled).await.is_err() {
                    panic!("task still pending after {timeout:?}: {state:?}");
                }
            } else if tokio::time::timeout_at(deadline, settled).await.is_err() {
                panic!("no task for delivery {delivery_id} after {timeout:?}");
            }
        }
    }

    #[allow(dead_code)]
    pub async fn task_of(&self, delivery_id: &str) -> TaskState {
        task_of(&self.store, delivery_id).await
    }

    /// Stops the service gracefully and hands back its fake and store for a restart.
    pub async fn stop(mut self) -> (FakeCircleCi, TestDatabase, String) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
        (self.fake, self.db, self.secret_text)
    }
}

pub async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("HTTP {status}: body is not JSON: {text:?}"));
    Answer {
        status,
        body,
        headers,
    }
}

pub fn new_webhook_id() -> String {
    format!("msg_{}", Uuid::new_v4().simple())
}

/// A fresh webhook secret, as text and parsed.
pub fn new_secret() -> (String, WebhookSecret) {
    let text = WebhookSecret::generate();
    let secret = WebhookSecret::parse(&text).unwrap();
    (text, secret)
}

/// A workflow whose hold job is on hold, at `fake`.
pub fn workflow_on_hold(fake: &FakeCircleCi) -> Uuid {
    let id = Uuid::new_v4();
    fake.add_standard_workflow(id, PROJECT, HOLD, "on_hold");
    id
}

/// The task a delivery created, as stored.
pub async fn task_of(store: &Store, delivery_id: &str) -> TaskState {
    let task = store
        .task_for_delivery(delivery_id.parse().expect("a delivery id"))
        .await
        .unwrap()
        .expect("a task for the delivery");
    store.task_state(task).await.unwrap().unwrap()
}

/// Waits until the delivery's task is no longer pending (a worker running in the background
/// settles it) and returns it.
pub async fn finished_task(store: &Store, delivery_id: &str, timeout: Duration) -> TaskState {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let delivery = delivery_id.parse().expect("a delivery id");
        if let Some(task) = store.task_for_delivery(delivery).await.unwrap() {
            let state = store.task_state(task).await.unwrap().unwrap();
            if state.status != TaskStatus::Pending {
                return state;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "task still pending after {timeout:?}: {state:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
