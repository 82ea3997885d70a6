//! The service in-process: `TestApp::builder()…spawn()` starts it on a random loopback port,
//! wired to its own fake CircleCI (and, when asked, a fake Sym API) over real HTTP and to a
//! fresh store.
//!
//! ```text
//! TestApp::builder().spawn()                                  defaults
//! TestApp::builder().flags(["--on-deny=cancel"]).admin_token()  flags, the audit API
//! TestApp::builder().secrets("whsec_a whsec_b")               a rotation (signs with the first)
//! TestApp::builder().stepped()                                the test takes the worker's steps
//! TestApp::builder().stepped().gate_token().sym_api()         gates, a reconciler, a fake Sym
//! app.stop().await.restart().stepped().spawn()                same fake, store and secret
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use approver_test_support::fake_circleci::FakeCircleCi;
use approver_test_support::fake_sym::FakeSymApi;
use serde_json::Value;
use sym_circleci_approver::app::Application;
use sym_circleci_approver::cli::ServeArgs;
use sym_circleci_approver::clock::Clock;
use sym_circleci_approver::domain::gate::{ApprovalPath, GateProblem, GateStatus};
use sym_circleci_approver::domain::task::{TaskState, TaskStatus};
use sym_circleci_approver::inbound::signature::WebhookSecret;
use sym_circleci_approver::store::{GateView, Store};
use sym_circleci_approver::worker::reconciler::Reconciler;
use sym_circleci_approver::worker::ApprovalWorker;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::db::TestDatabase;
use super::wire::*;

/// How to start a [`TestApp`]; every setting is optional.
#[must_use = "a builder does nothing until .spawn()"]
#[derive(Default)]
pub struct AppBuilder {
    flags: Vec<String>,
    secrets: Option<String>,
    stepped: bool,
    /// The service's Sym API token, when it reads runs from a fake Sym API.
    sym_api_token: Option<String>,
    fake: Option<FakeCircleCi>,
    db: Option<TestDatabase>,
}

impl AppBuilder {
    /// Extra `serve` flags (e.g. `--allowed-projects=gh/acme/api`).
    pub fn flags<S: AsRef<str>>(mut self, flags: impl IntoIterator<Item = S>) -> Self {
        self.flags
            .extend(flags.into_iter().map(|f| f.as_ref().to_owned()));
        self
    }

    /// One extra `serve` flag.
    pub fn flag(mut self, flag: impl Into<String>) -> Self {
        self.flags.push(flag.into());
        self
    }

    /// The webhook secret(s), space-separated for a rotation (the test signs with the first);
    /// a new one by default.
    pub fn secrets(mut self, secrets: &str) -> Self {
        self.secrets = Some(secrets.to_owned());
        self
    }

    /// The worker is driven by the test: a manual clock that moves only on
    /// [`TestApp::advance`], worker steps taken only on [`TestApp::step`] (and the reconciler's
    /// reads on [`TestApp::reconcile`]). Retries due in seconds are then due after `advance`,
    /// with no waiting.
    pub fn stepped(mut self) -> Self {
        self.stepped = true;
        self
    }

    /// The audit API, behind [`ADMIN`].
    pub fn admin_token(self) -> Self {
        self.flag(format!("--admin-token={ADMIN}"))
    }

    /// The verdict API, behind [`VERDICT`].
    pub fn verdict_token(self) -> Self {
        self.flag(format!("--verdict-token={VERDICT}"))
    }

    /// Gate registration, behind [`GATE`].
    pub fn gate_token(self) -> Self {
        self.flag(format!("--gate-token={GATE}"))
    }

    /// A fake Sym API of the app's own ([`TestApp::sym`], accepting [`SYM_TOKEN`]) that the
    /// reconciler reads.
    pub fn sym_api(mut self) -> Self {
        self.sym_api_token
            .get_or_insert_with(|| SYM_TOKEN.to_owned());
        self
    }

    /// [`Self::sym_api`], with the service sending `token` instead of [`SYM_TOKEN`].
    pub fn sym_api_token(mut self, token: &str) -> Self {
        self.sym_api_token = Some(token.to_owned());
        self
    }

    /// Starts the service and waits until it listens.
    pub async fn spawn(self) -> TestApp {
        let fake = match self.fake {
            Some(fake) => fake,
            None => FakeCircleCi::start(TOKEN).await.expect("fake CircleCI"),
        };
        let db = match self.db {
            Some(db) => db,
            None => TestDatabase::new().await,
        };
        let secret_text = self.secrets.unwrap_or_else(WebhookSecret::generate);
        let mut flags = vec![
            format!("--sym-webhook-secret={secret_text}"),
            format!("--circleci-token={TOKEN}"),
            format!("--circleci-api-url={}", fake.base_url()),
            "--listen-addr=127.0.0.1:0".to_owned(),
            format!("--database-url={}", db.url),
            "--log-format=text".to_owned(),
        ];
        let sym = match &self.sym_api_token {
            Some(token) => {
                let sym = FakeSymApi::start(SYM_TOKEN).await.expect("fake Sym API");
                flags.push(format!("--sym-api-url={}", sym.base_url()));
                flags.push(format!("--sym-api-token={token}"));
                Some(sym)
            }
            None => None,
        };
        flags.extend(self.flags);
        let args = ServeArgs::from_flags(flags).expect("valid flags");
        let mut config = args.to_config().expect("valid config");
        if self.stepped {
            config.store.clock = Clock::manual(Clock::system().now_ms());
        }
        let mut app = Application::build(config).await.expect("service starts");
        let settled = app.worker().settled();
        let worker = self.stepped.then(|| app.worker());
        let reconciler = app.reconciler().filter(|_| self.stepped);
        if self.stepped {
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
            sym,
            // Tests sign with the first configured secret.
            secret: WebhookSecret::parse(secret_text.split(' ').next().unwrap()).unwrap(),
            secret_text,
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
}

/// A running service, its fakes and its store.
pub struct TestApp {
    pub addr: SocketAddr,
    pub fake: FakeCircleCi,
    sym: Option<FakeSymApi>,
    pub secret: WebhookSecret,
    pub secret_text: String,
    pub store: Store,
    pub client: reqwest::Client,
    pub db: TestDatabase,
    /// The service's clock: the system's, or a manual one for a stepped app.
    pub clock: Clock,
    /// Set for a stepped app: the test takes the worker's steps itself.
    worker: Option<Arc<ApprovalWorker>>,
    /// Set for a stepped app with a Sym API: the test runs the reconciler itself.
    reconciler: Option<Arc<Reconciler>>,
    /// Notified each time the worker stores a step's result.
    settled: Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
    /// Stops the service when the test ends, however it ends.
    _stop_on_drop: tokio_util::sync::DropGuard,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// What a stopped service leaves for the next one: its fake CircleCI, its store, its secret.
pub struct Stopped {
    fake: FakeCircleCi,
    db: TestDatabase,
    secret_text: String,
}

impl Stopped {
    /// A new service on the same fake, store and secret (a restart); more settings may follow.
    pub fn restart(self) -> AppBuilder {
        AppBuilder {
            fake: Some(self.fake),
            db: Some(self.db),
            secrets: Some(self.secret_text),
            ..AppBuilder::default()
        }
    }
}

/// A gate as stored, its words parsed into the product's enums.
#[derive(Debug)]
pub struct Gate {
    pub sym_run_id: String,
    pub status: GateStatus,
    pub released_by: Option<ApprovalPath>,
    pub problem: Option<GateProblem>,
    pub polling: bool,
    /// Sym signed that its run was requested for this gate's workflow and hold job.
    pub bound: bool,
}

impl From<GateView> for Gate {
    fn from(view: GateView) -> Self {
        let status = GateStatus::parse(&view.status)
            .unwrap_or_else(|| panic!("an unknown gate status: {view:?}"));
        let released_by = view.released_by.as_deref().map(|path| {
            ApprovalPath::parse(path).unwrap_or_else(|| panic!("an unknown path: {view:?}"))
        });
        let problem = view.problem.as_deref().map(|problem| {
            GateProblem::parse(problem).unwrap_or_else(|| panic!("an unknown problem: {view:?}"))
        });
        Self {
            sym_run_id: view.sym_run_id,
            status,
            released_by,
            problem,
            polling: view.polling,
            bound: view.bound,
        }
    }
}

impl TestApp {
    pub fn builder() -> AppBuilder {
        AppBuilder::default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The fake Sym API (an app built with `.sym_api()`).
    pub fn sym(&self) -> &FakeSymApi {
        self.sym
            .as_ref()
            .expect("an app with a Sym API (builder().sym_api())")
    }

    // -----------------------------------------------------------------------------------------
    // Deliveries
    // -----------------------------------------------------------------------------------------

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

    /// Sends a signed Sym event of `event_type` (a new event) for `workflow_id`.
    pub async fn send_event(&self, event_type: &str, workflow_id: Uuid) -> Answer {
        self.post_signed(
            event_of_type(
                &Uuid::new_v4().to_string(),
                event_type,
                &workflow_id.to_string(),
            ),
            &new_webhook_id(),
        )
        .await
    }

    /// Sends a signed approve event for `workflow_id`; asserts 202 and returns the delivery id.
    pub async fn approve(&self, workflow_id: Uuid) -> String {
        let answer = self.send_event("approve", workflow_id).await;
        assert_eq!(answer.status, 202, "{}", answer.body);
        answer.delivery_id()
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

    // -----------------------------------------------------------------------------------------
    // The worker and the reconciler
    // -----------------------------------------------------------------------------------------

    fn stepped_worker(&self) -> &Arc<ApprovalWorker> {
        self.worker
            .as_ref()
            .expect("a stepped app (builder().stepped())")
    }

    /// Stepped app: takes one step of every task due now; returns how many.
    pub async fn step(&self) -> usize {
        self.stepped_worker()
            .run_due()
            .await
            .expect("the store answers")
    }

    /// Stepped app: takes the due steps in a task of its own, so the test can move the clock
    /// while a step is waiting on CircleCI.
    pub fn step_in_background(&self) -> tokio::task::JoinHandle<usize> {
        let worker = Arc::clone(self.stepped_worker());
        tokio::spawn(async move { worker.run_due().await.expect("the store answers") })
    }

    /// Stepped app with a Sym API: reads every gate due now once; returns how many.
    pub async fn reconcile(&self) -> usize {
        let reconciler = self
            .reconciler
            .as_ref()
            .expect("a stepped app with a Sym API (builder().stepped().sym_api())");
        reconciler.run_due().await.expect("the store answers")
    }

    /// Stepped app: moves the service's clock forward.
    pub fn advance(&self, by: Duration) {
        assert!(
            self.clock.is_manual(),
            "a stepped app (builder().stepped())"
        );
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

    /// The task a delivery created, as stored now.
    pub async fn task_of(&self, delivery_id: &str) -> TaskState {
        task_of(&self.store, delivery_id).await
    }

    /// The gate of `workflow`'s default hold job, as stored.
    pub async fn gate(&self, workflow: Uuid) -> Gate {
        let gates = self.store.gates_of(&workflow.to_string()).await.unwrap();
        let gate = gates
            .into_iter()
            .find(|g| g.hold_job_name == HOLD)
            .unwrap_or_else(|| panic!("no gate for {workflow}"));
        gate.into()
    }

    // -----------------------------------------------------------------------------------------
    // The other APIs
    // -----------------------------------------------------------------------------------------

    /// `GET path` with the admin token.
    pub async fn admin_get(&self, path: &str) -> Answer {
        let request = self.client.get(self.url(path)).bearer_auth(ADMIN);
        answer(request.send().await.unwrap()).await
    }

    /// The audit API's records of `workflow` (newest first).
    pub async fn audit_of(&self, workflow: Uuid) -> Vec<Value> {
        let page = self
            .admin_get(&format!("/v1/approvals?workflow_id={workflow}"))
            .await;
        assert_eq!(page.status, 200, "{}", page.body);
        page.body["items"].as_array().unwrap().clone()
    }

    /// `POST /v1/gates` with `token`.
    pub async fn register_gate(&self, token: &str, body: Value) -> Answer {
        let request = self
            .client
            .post(self.url("/v1/gates"))
            .bearer_auth(token)
            .json(&body);
        answer(request.send().await.unwrap()).await
    }

    /// `GET /v1/verdicts/{workflow}` with the verdict token.
    pub async fn verdict(&self, workflow: Uuid) -> Answer {
        self.verdict_with(Some(VERDICT), workflow, None).await
    }

    /// `GET /v1/verdicts/{workflow}` with `token` (or none), about `hold_job` when given.
    pub async fn verdict_with(
        &self,
        token: Option<&str>,
        workflow: Uuid,
        hold_job: Option<&str>,
    ) -> Answer {
        let query = hold_job.map_or(String::new(), |h| format!("?hold_job={h}"));
        let mut request = self
            .client
            .get(self.url(&format!("/v1/verdicts/{workflow}{query}")));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        answer(request.send().await.unwrap()).await
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let response = self.client.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    }

    /// Stops the service gracefully and hands back its fake, store and secret for a restart.
    pub async fn stop(mut self) -> Stopped {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
        Stopped {
            fake: self.fake,
            db: self.db,
            secret_text: self.secret_text,
        }
    }
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
