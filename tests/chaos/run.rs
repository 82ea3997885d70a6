//! One chaos run: the plan of a seed played against the real binary (one process on SQLite,
//! three replicas on PostgreSQL behind the test's proxy), the fake CircleCI in this process,
//! then a drain with the faults off, then the history read back and checked.
//!
//! The phases:
//! 1. chaos (`plan.chaos_secs`): deliveries and their repeats, CircleCI faults, the process
//!    track and (PostgreSQL) the database track, the `ui_race` and `term_mid_approve` probes;
//! 2. drain: every process running, the network passing, the database up, no CircleCI fault
//!    left to inject; the `deadline_edge` and `second_approval` probes play out (their
//!    deadlines come after the chaos phase), and the run waits until no task is pending
//!    (bounded);
//! 3. the history: every delivery's answer, every approve call CircleCI received, each hold
//!    job and each verdict at the end, the tasks as the audit API lists them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use approver_test_support::fake_circleci::{FakeCircleCi, Fault, TOKEN_USER_ID};
use approver_test_support::postgres::PgCtl;
use serde_json::Value;
use sym_circleci_approver::inbound::signature::WebhookSecret;
use tokio::task::JoinSet;
use tokio::time::Instant;
use uuid::Uuid;

use crate::checker::{self, Answer, ApproveCall, ApprovedBy, DeliveryRecord, History, HoldRecord};
use crate::checker::{Report, TaskRecord, WorkflowRecord};
use crate::plan::{
    Backend, CircleFaultKind, DbFault, Plan, ProcessFault, RepeatKind, Rng, CIRCLECI_TIMEOUT_SECS,
    MAX_ATTEMPTS, TASK_LEASE_SECS,
};
use crate::proxy::Proxy;
use crate::supervisor::Supervisor;

const TOKEN: &str = "chaos-circleci-token-4e1f";
const HOLD: &str = sym_circleci_approver::domain::task::DEFAULT_HOLD_JOB_NAME;
const PROJECT: &str = "gh/acme/api";
const ADMIN_TOKEN: &str = "chaos-admin-token-7d3a9c51";
const VERDICT_TOKEN: &str = "chaos-verdict-token-52b8e0f4";
/// Who clicks Approve in the CircleCI UI.
const UI_USER: Uuid = Uuid::from_u128(0x0b5e_55ed_0000_4000_8000_0000_0000_0042);
/// One delivery attempt's time limit (a paused process never answers).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(4);
/// Longest the drain waits for every task to settle, after the probes' last moment.
const DRAIN_LIMIT: Duration = Duration::from_secs(45);

/// What a run ends with.
pub struct Outcome {
    pub report: Report,
    /// The figures and every violation with its workflow's story, as printed.
    pub text: String,
}

/// Everything the run's tasks share.
struct Ctx {
    plan: Plan,
    start: Instant,
    /// The start as unix milliseconds (the fake records calls with it).
    start_unix_ms: i64,
    fake: Arc<FakeCircleCi>,
    secret: WebhookSecret,
    addrs: Arc<RwLock<Vec<Option<SocketAddr>>>>,
    client: reqwest::Client,
    deliveries: Mutex<Vec<DeliveryRecord>>,
    faults: Mutex<BTreeMap<&'static str, usize>>,
    /// The probes' workflows and which probe each is.
    probes: Mutex<Vec<(Uuid, &'static str)>>,
    /// True once the drain has begun (every fault of the chaos phase cleared).
    draining: tokio::sync::watch::Sender<bool>,
    ids: Mutex<Rng>,
}

impl Ctx {
    fn at(&self, secs: f64) -> Instant {
        self.start + Duration::from_secs_f64(secs.max(0.0))
    }

    fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn count(&self, kind: &'static str) {
        *self.faults.lock().unwrap().entry(kind).or_default() += 1;
    }

    /// A new id drawn from the seed's own stream (workflows, Sym events, webhook-ids).
    fn new_id(&self) -> Uuid {
        let mut rng = self.ids.lock().unwrap();
        let bytes = (u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64())).to_be_bytes();
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }

    fn addr(&self, replica: usize) -> Option<SocketAddr> {
        self.addrs.read().unwrap()[replica]
    }
}

/// One approve event of one workflow, sent (and sent again) like Sym's hook does.
#[derive(Clone)]
struct Event {
    workflow: Uuid,
    sym_event_id: String,
    body: Vec<u8>,
}

impl Event {
    fn new(ctx: &Ctx, workflow: Uuid) -> Self {
        let sym_event_id = ctx.new_id().to_string();
        let body = sym_circleci_approver::cli::event_body(
            &sym_event_id,
            "approve",
            &workflow.to_string(),
            "alice@example.com",
        );
        Self {
            workflow,
            sym_event_id,
            body,
        }
    }
}

/// Sends `event` under `webhook_id` until it gets a 2xx (a fresh timestamp and signature
/// each time, as a retrying hook does), at most one attempt per entry of `replicas`.
/// Returns when the 2xx came (seconds from the start) and its body's `status`.
async fn deliver(
    ctx: &Ctx,
    event: &Event,
    webhook_id: &str,
    kind: &'static str,
    replicas: &[usize],
) -> Option<(f64, Option<String>)> {
    let mut backoff = Duration::from_millis(250);
    for replica in replicas {
        let at = ctx.now();
        let answer = post(ctx, event, webhook_id, *replica).await;
        let ok = answer.is_2xx();
        let status = match &answer {
            Answer::Http { status, .. } => status.clone(),
            Answer::None(_) => None,
        };
        ctx.deliveries.lock().unwrap().push(DeliveryRecord {
            workflow: event.workflow,
            kind,
            webhook_id: webhook_id.to_owned(),
            sym_event_id: event.sym_event_id.clone(),
            at,
            answer,
        });
        if ok {
            return Some((at, status));
        }
        // The hook's own retry delay.
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
    None
}

async fn post(ctx: &Ctx, event: &Event, webhook_id: &str, replica: usize) -> Answer {
    let Some(addr) = ctx.addr(replica) else {
        return Answer::None(format!("replica {replica} is down"));
    };
    let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let signature = ctx.secret.sign(webhook_id, timestamp, &event.body);
    let sent = ctx
        .client
        .post(format!("http://{addr}/webhooks/sym"))
        .timeout(DELIVERY_TIMEOUT)
        .header("content-type", "application/json")
        .header("webhook-id", webhook_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(event.body.clone())
        .send()
        .await;
    match sent {
        Ok(response) => {
            let code = response.status().as_u16();
            let body: Option<Value> = response.json().await.ok();
            Answer::Http {
                code,
                status: body.and_then(|b| b["status"].as_str().map(str::to_owned)),
            }
        }
        Err(e) if e.is_timeout() => Answer::None("timed out".to_owned()),
        Err(e) if e.is_connect() => Answer::None("connection refused".to_owned()),
        Err(_) => Answer::None("connection failed".to_owned()),
    }
}

fn webhook_id(ctx: &Ctx) -> String {
    format!("msg_{}", ctx.new_id().simple())
}

/// A normal workflow: its approve event, then its repeats at their moments.
async fn normal_workflow(ctx: Arc<Ctx>, index: usize, workflow: Uuid) {
    let plan = ctx.plan.workflows[index].clone();
    let event = Event::new(&ctx, workflow);
    let original_id = webhook_id(&ctx);
    tokio::time::sleep_until(ctx.at(plan.send_at)).await;
    let mut sending = JoinSet::new();
    for repeat in plan.repeats {
        let (ctx, event) = (Arc::clone(&ctx), event.clone());
        let (id, kind) = match repeat.kind {
            RepeatKind::SameWebhookId => (original_id.clone(), "same_webhook_id"),
            RepeatKind::SameSymEvent => (webhook_id(&ctx), "same_sym_event"),
        };
        ctx.count(kind);
        sending.spawn(async move {
            tokio::time::sleep_until(ctx.at(plan.send_at + repeat.after)).await;
            deliver(&ctx, &event, &id, kind, &repeat.replicas).await;
        });
    }
    deliver(&ctx, &event, &original_id, "original", &plan.replicas).await;
    while sending.join_next().await.is_some() {}
}

/// Replica picks for a probe's delivery: round the replicas.
fn round(replicas: usize) -> Vec<usize> {
    (0..MAX_ATTEMPTS).map(|k| k % replicas).collect()
}

/// When a probe's first approval was accepted (None: it was not, at once: the probe is void).
async fn first_approval(ctx: &Ctx, workflow: Uuid) -> Option<f64> {
    let event = Event::new(ctx, workflow);
    let replicas = round(ctx.plan.backend.replicas());
    match deliver(ctx, &event, &webhook_id(ctx), "original", &replicas[..1]).await {
        Some((at, Some(status))) if status == "queued" => Some(at),
        _ => None,
    }
}

/// The `deadline_edge` probe (see [`crate::plan::Probes`]). The fake holds the job back by
/// itself until its moment (no timer of this process to run late).
async fn deadline_edge(ctx: Arc<Ctx>, workflow: Uuid) {
    let Some(accepted) = first_approval(&ctx, workflow).await else {
        eprintln!("chaos: probe deadline_edge void (its first approval was not accepted)");
        ctx.fake.set_job_status(workflow, HOLD, "on_hold");
        return;
    };
    // `accepted` is when the delivery was sent: the task's deadline is no sooner.
    let on_hold = accepted + ctx.plan.approval_timeout_secs - DEADLINE_EDGE_LEAD_SECS;
    ctx.fake.hold_after(
        workflow,
        HOLD,
        ctx.at(on_hold).saturating_duration_since(Instant::now()),
    );
    // The approve's fault, once the drain has cleared the chaos phase's (the hold job goes
    // on hold well after that).
    let _ = ctx
        .draining
        .subscribe()
        .wait_for(|draining| *draining)
        .await;
    ctx.fake
        .push_fault(lost_approve(workflow, "probe_deadline_edge"));
    ctx.count("probe_deadline_edge");
}

/// How long before the deadline the `deadline_edge` hold job goes on hold: the step that
/// sees it (polls come every second or so) starts at least 2.8 s before the deadline and is
/// cut off 6.4 s after it starts, so after the deadline.
const DEADLINE_EDGE_LEAD_SECS: f64 = 4.0;
/// How long after the first approval's deadline the `second_approval` hold job goes on hold.
const SECOND_APPROVAL_LAG_SECS: f64 = 5.0;

/// The `second_approval` probe.
async fn second_approval(ctx: Arc<Ctx>, workflow: Uuid) {
    let Some(accepted) = first_approval(&ctx, workflow).await else {
        eprintln!("chaos: probe second_approval void (its first approval was not accepted)");
        ctx.fake.set_job_status(workflow, HOLD, "on_hold");
        return;
    };
    let timeout = ctx.plan.approval_timeout_secs;
    // The first approval was sent at `accepted`: its task's deadline comes no later than the
    // hold job goes on hold, less the lag, measured from when the delivery got its answer.
    ctx.fake.hold_after(
        workflow,
        HOLD,
        Duration::from_secs_f64(timeout + SECOND_APPROVAL_LAG_SECS),
    );
    tokio::time::sleep_until(ctx.at(accepted + timeout / 2.0)).await;
    let second = Event::new(&ctx, workflow);
    let replicas = round(ctx.plan.backend.replicas());
    deliver(
        &ctx,
        &second,
        &webhook_id(&ctx),
        "second_approval",
        &replicas,
    )
    .await;
    ctx.count("probe_second_approval");
    tokio::time::sleep_until(ctx.at(accepted + timeout + SECOND_APPROVAL_LAG_SECS)).await;
}

/// The `ui_race` probe: the approve gets a 503 (nothing done), and someone clicks Approve
/// in the UI before the service reads the job again.
async fn ui_race(ctx: Arc<Ctx>, workflow: Uuid, until: Instant) {
    ctx.fake.push_fault(
        Fault::status(503)
            .on("approve")
            .for_workflow(workflow)
            .labelled("probe_ui_race"),
    );
    tokio::time::sleep_until(ctx.at(ctx.plan.probes.ui_race_at)).await;
    let event = Event::new(&ctx, workflow);
    let replicas = round(ctx.plan.backend.replicas());
    let sending = {
        let ctx = Arc::clone(&ctx);
        tokio::spawn(async move {
            deliver(&ctx, &event, &webhook_id(&ctx), "original", &replicas).await;
        })
    };
    let wait = until.saturating_duration_since(Instant::now());
    let hit = ctx
        .fake
        .wait_for_calls(wait, |calls| {
            calls.iter().any(|c| c.fault == Some("probe_ui_race"))
        })
        .await;
    if hit && ctx.fake.approve_in_ui_if_on_hold(workflow, HOLD, UI_USER) {
        ctx.count("probe_ui_race");
    }
    let _ = sending.await;
}

fn lost_approve(workflow: Uuid, label: &'static str) -> Fault {
    Fault::status(504)
        .on("approve")
        .for_workflow(workflow)
        .after_effect()
        .delayed(Duration::from_secs(60))
        .labelled(label)
}

fn circle_fault(workflow: Uuid, operation: &'static str, kind: CircleFaultKind) -> Fault {
    let label = kind.label();
    let fault = match kind {
        CircleFaultKind::Slow { secs } => Fault::slow(Duration::from_secs_f64(secs)),
        CircleFaultKind::TooMany { retry_after } => Fault::status(429).retry_after(retry_after),
        CircleFaultKind::ServerError { status } => Fault::status(status),
        CircleFaultKind::LostApprove => return lost_approve(workflow, label),
    };
    fault.on(operation).for_workflow(workflow).labelled(label)
}

/// PostgreSQL pieces of a run.
struct Postgres {
    proxy: Proxy,
    ctl: Option<PgCtl>,
    /// The run's database, straight (not through the proxy): the probe reads leases here.
    pool: sqlx::PgPool,
    admin: String,
    database: String,
}

impl Postgres {
    /// Drops the run's database (best effort: a soak against a long-lived server).
    async fn drop_database(&self) {
        self.pool.close().await;
        if let Ok(mut conn) = <sqlx::PgConnection as sqlx::Connection>::connect(&self.admin).await {
            let drop = format!("DROP DATABASE IF EXISTS {}", self.database);
            let _ = sqlx::Executor::execute(&mut conn, drop.as_str()).await;
        }
    }
}

/// The process track: one episode at a time.
async fn process_track(ctx: Arc<Ctx>, supervisor: Arc<Supervisor>, pg: Option<Arc<Postgres>>) {
    for episode in ctx.plan.processes.clone() {
        tokio::time::sleep_until(ctx.at(episode.at)).await;
        let label = episode.kind.label();
        match episode.kind {
            ProcessFault::Pause { replica, secs } => {
                if supervisor.pause(replica).await {
                    ctx.count(label);
                    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                    supervisor.resume(replica).await;
                }
            }
            ProcessFault::Kill { replica, down_secs } => {
                supervisor.kill_9(replica).await;
                ctx.count(label);
                tokio::time::sleep(Duration::from_secs_f64(down_secs)).await;
                supervisor.restart(replica).await;
            }
            ProcessFault::Term { replica, down_secs } => {
                supervisor.terminate(replica).await;
                ctx.count(label);
                tokio::time::sleep(Duration::from_secs_f64(down_secs)).await;
                supervisor.restart(replica).await;
            }
            ProcessFault::TermMidApprove => {
                if let Some(pg) = &pg {
                    term_mid_approve(&ctx, &supervisor, pg).await;
                }
            }
        }
    }
}

/// The `term_mid_approve` probe: CircleCI processes this workflow's approve slowly (carried
/// out 6 s after it arrives, answered then: inside CIRCLECI_TIMEOUT and the step's limit);
/// the replica that sent it gets SIGTERM as its step begins, so its 5 s shutdown grace ends
/// while the approve is still being processed.
async fn term_mid_approve(ctx: &Arc<Ctx>, supervisor: &Supervisor, pg: &Postgres) {
    let workflow = ctx.new_id();
    ctx.fake
        .add_standard_workflow(workflow, PROJECT, HOLD, "on_hold");
    ctx.probes
        .lock()
        .unwrap()
        .push((workflow, "term_mid_approve"));
    ctx.fake.push_fault(
        Fault::slow(Duration::from_millis(100))
            .on("list_jobs")
            .for_workflow(workflow)
            .labelled("probe_term_list"),
    );
    ctx.fake.push_fault(
        Fault::status(0)
            .on("approve")
            .for_workflow(workflow)
            .effect_after(Duration::from_secs(6))
            .labelled("probe_term_slow_approve"),
    );
    let event = Event::new(ctx, workflow);
    let replicas = round(supervisor.count());
    if deliver(ctx, &event, &webhook_id(ctx), "original", &replicas)
        .await
        .is_none()
    {
        eprintln!("chaos: probe term_mid_approve void (not delivered)");
        return;
    }
    let started = ctx
        .fake
        .wait_for_calls(Duration::from_secs(5), |calls| {
            calls.iter().any(|c| c.fault == Some("probe_term_list"))
        })
        .await;
    let holder: Option<String> = sqlx::query_scalar(
        "SELECT lease_owner FROM tasks WHERE workflow_id = $1 AND status = 'pending'",
    )
    .bind(workflow.to_string())
    .fetch_optional(&pg.pool)
    .await
    .ok()
    .flatten()
    .flatten();
    let owners = supervisor.owners().await;
    let replica = holder.as_deref().and_then(|holder| {
        owners.iter().position(|o| {
            o.as_deref()
                .is_some_and(|o| holder == o || holder.starts_with(&format!("{o}/")))
        })
    });
    let (true, Some(replica)) = (started, replica) else {
        eprintln!("chaos: probe term_mid_approve void (no step seen, or no lease holder found)");
        return;
    };
    supervisor.terminate(replica).await;
    ctx.count("probe_term_mid_approve");
    tokio::time::sleep(Duration::from_millis(300)).await;
    supervisor.restart(replica).await;
}

/// The database track (PostgreSQL): one episode at a time.
async fn database_track(ctx: Arc<Ctx>, pg: Arc<Postgres>) {
    for episode in ctx.plan.database.clone() {
        tokio::time::sleep_until(ctx.at(episode.at)).await;
        let label = episode.kind.label();
        match episode.kind {
            DbFault::Restart { down_secs } => {
                let Some(ctl) = &pg.ctl else {
                    eprintln!(
                        "chaos: db_restart SKIPPED: APPROVER_TEST_PG_CTL is not set \
                         (.ci/postgres.sh sets it)"
                    );
                    continue;
                };
                if ctl.run("stop -m fast").await.is_ok() {
                    ctx.count(label);
                    tokio::time::sleep(Duration::from_secs_f64(down_secs)).await;
                }
                if let Err(failed) = ctl.run("start").await {
                    panic!("{failed}");
                }
            }
            DbFault::Cut { mode, secs } => {
                pg.proxy.cut(mode);
                ctx.count(label);
                tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                pg.proxy.restore();
            }
        }
    }
}

/// The service's environment for a run.
fn service_env(
    plan: &Plan,
    fake: &FakeCircleCi,
    database_url: &str,
    secret: &str,
) -> Vec<(String, String)> {
    let secs = |s: f64| format!("{}ms", (s * 1000.0).round() as u64);
    [
        ("SYM_WEBHOOK_SECRET", secret.to_owned()),
        ("CIRCLECI_TOKEN", TOKEN.to_owned()),
        ("CIRCLECI_API_URL", fake.base_url()),
        ("DATABASE_URL", database_url.to_owned()),
        ("LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ("LOG_FORMAT", "json".to_owned()),
        ("RUST_LOG", "info".to_owned()),
        ("TASK_LEASE", secs(TASK_LEASE_SECS)),
        ("CIRCLECI_TIMEOUT", secs(CIRCLECI_TIMEOUT_SECS)),
        ("RETRY_INITIAL", "250ms".to_owned()),
        ("RETRY_MAX", "1s".to_owned()),
        ("POLL_MAX", "1s".to_owned()),
        ("APPROVAL_TIMEOUT", secs(plan.approval_timeout_secs)),
        ("DATABASE_CONNECT_TIMEOUT", "1s".to_owned()),
        ("DATABASE_STATEMENT_TIMEOUT", "2s".to_owned()),
        ("SHUTDOWN_GRACE", "5s".to_owned()),
        ("ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
        ("VERDICT_TOKEN", VERDICT_TOKEN.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// A fresh database on the test's PostgreSQL, the proxy in front of it, and the URL the
/// replicas use (through the proxy).
async fn postgres(admin: &str, seed: u64) -> (Postgres, String) {
    let name = format!("chaos_{seed}_{}", &Uuid::new_v4().simple().to_string()[..8]);
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(admin)
        .await
        .expect("APPROVER_TEST_POSTGRES_URL reachable");
    sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("create the run's database");
    let mut direct = url::Url::parse(admin).expect("APPROVER_TEST_POSTGRES_URL is a URL");
    direct.set_path(&format!("/{name}"));
    let host = direct.host_str().expect("a host").to_owned();
    let port = direct.port().unwrap_or(5432);
    let upstream = tokio::net::lookup_host((host.as_str(), port))
        .await
        .expect("the PostgreSQL host resolves")
        .next()
        .expect("an address");
    let proxy = Proxy::start(upstream).await.expect("the proxy starts");
    let mut through = direct.clone();
    through.set_host(Some("127.0.0.1")).expect("a host");
    through.set_port(Some(proxy.addr().port())).expect("a port");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect(direct.as_str())
        .await
        .expect("the test reaches the run's database");
    let ctl = PgCtl::or_skip("the chaos suite's PostgreSQL restarts");
    let pg = Postgres {
        proxy,
        ctl,
        pool,
        admin: admin.to_owned(),
        database: name,
    };
    (pg, through.to_string())
}

/// The tasks, as the audit API lists them (every page).
async fn audit_tasks(
    client: &reqwest::Client,
    addr: SocketAddr,
) -> Result<Vec<TaskRecord>, String> {
    let mut tasks = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("http://{addr}/v1/approvals?limit=200");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = client
            .get(url)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        for item in page["items"].as_array().into_iter().flatten() {
            if item["action"] != "approve" {
                continue;
            }
            let text = |k: &str| item[k].as_str().map(str::to_owned);
            tasks.push(TaskRecord {
                workflow: text("workflow_id").and_then(|w| w.parse().ok()),
                status: text("status").unwrap_or_default(),
                outcome: text("outcome"),
                detail: text("detail"),
            });
        }
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            return Ok(tasks);
        }
    }
}

async fn verdict(
    client: &reqwest::Client,
    addr: SocketAddr,
    workflow: Uuid,
) -> Result<String, String> {
    let mut last = String::new();
    for _ in 0..3 {
        let answer = client
            .get(format!("http://{addr}/v1/verdicts/{workflow}"))
            .bearer_auth(VERDICT_TOKEN)
            .send()
            .await;
        match answer {
            Ok(r) if r.status().is_success() => {
                let body: Value = r.json().await.map_err(|e| e.to_string())?;
                return body["verdict"]
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("no verdict in {body}"));
            }
            Ok(r) => last = format!("HTTP {}", r.status()),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

/// Plays the plan of `seed` on `backend`; `chaos_secs` long chaos phase.
pub async fn run(seed: u64, backend: Backend, chaos_secs: f64) -> Outcome {
    let plan = Plan::new(seed, backend, chaos_secs);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("chaos")
        .join(format!("{}-seed-{seed}", backend.name()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("the run's folder");

    let fake = Arc::new(FakeCircleCi::start(TOKEN).await.expect("fake CircleCI"));
    let secret_text = WebhookSecret::generate();
    let secret = WebhookSecret::parse(&secret_text).expect("a secret");
    let (pg, database_url) = match backend {
        Backend::Sqlite => (None, format!("sqlite://{}/approver.db", dir.display())),
        Backend::Postgres => {
            let admin = std::env::var("APPROVER_TEST_POSTGRES_URL")
                .expect("APPROVER_TEST_POSTGRES_URL for a PostgreSQL run");
            let (pg, url) = postgres(&admin, seed).await;
            (Some(Arc::new(pg)), url)
        }
    };
    let env = service_env(&plan, &fake, &database_url, &secret_text);
    let supervisor = Arc::new(Supervisor::start(backend.replicas(), env, &dir).await);
    let started_unix_ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    let ctx = Arc::new(Ctx {
        start: Instant::now(),
        start_unix_ms: i64::try_from(started_unix_ms).unwrap_or_default(),
        fake: Arc::clone(&fake),
        secret,
        addrs: supervisor.addrs(),
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap(),
        deliveries: Mutex::default(),
        faults: Mutex::default(),
        probes: Mutex::default(),
        draining: tokio::sync::watch::Sender::new(false),
        ids: Mutex::new(Rng::new(seed ^ 0x1d5_1d5)),
        plan: plan.clone(),
    });

    // The workflows: the normal ones on hold, and the probes'.
    let normal: Vec<Uuid> = plan.workflows.iter().map(|_| ctx.new_id()).collect();
    for id in &normal {
        fake.add_standard_workflow(*id, PROJECT, HOLD, "on_hold");
    }
    let deadline_id = ctx.new_id();
    let second_id = ctx.new_id();
    let ui_id = ctx.new_id();
    fake.add_standard_workflow(deadline_id, PROJECT, HOLD, "blocked");
    fake.add_standard_workflow(second_id, PROJECT, HOLD, "blocked");
    fake.add_standard_workflow(ui_id, PROJECT, HOLD, "on_hold");
    ctx.probes.lock().unwrap().extend([
        (deadline_id, "deadline_edge"),
        (second_id, "second_approval"),
        (ui_id, "ui_race"),
    ]);

    // Phase 1: chaos.
    let chaos_end = ctx.at(plan.chaos_secs);
    let mut senders = JoinSet::new();
    for (index, id) in normal.iter().enumerate() {
        senders.spawn(normal_workflow(Arc::clone(&ctx), index, *id));
    }
    let mut probes = JoinSet::new();
    probes.spawn(deadline_edge(Arc::clone(&ctx), deadline_id));
    probes.spawn(second_approval(Arc::clone(&ctx), second_id));
    probes.spawn(ui_race(Arc::clone(&ctx), ui_id, chaos_end));
    let mut tracks = JoinSet::new();
    {
        let ctx = Arc::clone(&ctx);
        let normal = normal.clone();
        tracks.spawn(async move {
            for f in ctx.plan.circleci.clone() {
                tokio::time::sleep_until(ctx.at(f.at)).await;
                ctx.fake
                    .push_fault(circle_fault(normal[f.workflow], f.operation, f.kind));
            }
        });
    }
    {
        let ctx = Arc::clone(&ctx);
        let normal = normal.clone();
        tracks.spawn(async move {
            for click in ctx.plan.ui_clicks.clone() {
                tokio::time::sleep_until(ctx.at(click.at)).await;
                if ctx
                    .fake
                    .approve_in_ui_if_on_hold(normal[click.workflow], HOLD, UI_USER)
                {
                    ctx.count("ui_click");
                }
            }
        });
    }
    tracks.spawn(process_track(
        Arc::clone(&ctx),
        Arc::clone(&supervisor),
        pg.clone(),
    ));
    if let Some(pg) = &pg {
        tracks.spawn(database_track(Arc::clone(&ctx), Arc::clone(pg)));
    }
    // Every track ends inside the chaos phase by plan; a SIGTERM or a start that takes long
    // may run over, and is waited for.
    while let Some(done) = tracks.join_next().await {
        done.expect("a fault track");
    }
    tokio::time::sleep_until(chaos_end).await;

    // Phase 2: drain, the faults off.
    fake.clear_faults();
    ctx.draining.send_replace(true);
    supervisor.restore_all().await;
    if let Some(pg) = &pg {
        pg.proxy.restore();
        if let Some(ctl) = &pg.ctl {
            // Up already, unless a track failed halfway.
            if ctl.run("status").await.is_err() {
                if let Err(failed) = ctl.run("start").await {
                    panic!("{failed}");
                }
            }
        }
    }
    let drain_started = ctx.now();
    while let Some(done) = senders.join_next().await {
        done.expect("a sender");
    }
    while let Some(done) = probes.join_next().await {
        done.expect("a probe");
    }
    let settle_deadline = Instant::now() + DRAIN_LIMIT;
    let tasks = loop {
        let addr = (0..supervisor.count()).find_map(|i| supervisor.addr(i));
        let tasks = match addr {
            Some(addr) => audit_tasks(&ctx.client, addr).await,
            None => Err("no replica up".to_owned()),
        };
        let settled = tasks
            .as_ref()
            .is_ok_and(|t| t.iter().all(|t| t.status != "pending"));
        if settled || Instant::now() > settle_deadline {
            break tasks.unwrap_or_default();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let drained_at = ctx.now();

    // Phase 3: the history.
    let calls = fake.calls();
    let mut faults = std::mem::take(&mut *ctx.faults.lock().unwrap());
    for call in &calls {
        if let Some(label) = call.fault {
            if !label.starts_with("probe_") {
                *faults.entry(label).or_default() += 1;
            }
        }
    }
    let approve_calls: Vec<ApproveCall> = calls
        .iter()
        .filter(|c| c.operation == "approve")
        .filter_map(|c| {
            let workflow = c.path.split('/').nth(4)?.parse().ok()?;
            Some(ApproveCall {
                workflow,
                at: (c.unix_ms - ctx.start_unix_ms) as f64 / 1000.0,
                status: c.status,
                fault: c.fault,
                found_approved: c.found_approved_by.map(|by| {
                    if by == TOKEN_USER_ID {
                        ApprovedBy::Service
                    } else {
                        ApprovedBy::Other
                    }
                }),
            })
        })
        .collect();
    let mut roles: Vec<(Uuid, &'static str)> = normal.iter().map(|id| (*id, "normal")).collect();
    roles.extend(ctx.probes.lock().unwrap().iter().copied());
    let reader = (0..supervisor.count())
        .find_map(|i| supervisor.addr(i))
        .expect("a replica up after the drain");
    let mut workflows = Vec::new();
    for (id, role) in roles {
        let job = fake.job(id, HOLD).expect("the workflow's hold job");
        workflows.push(WorkflowRecord {
            id,
            role,
            hold: HoldRecord {
                status: job.status.clone(),
                approved_by_us: job.approved_by == Some(TOKEN_USER_ID),
            },
            verdict: verdict(&ctx.client, reader, id).await,
        });
    }
    let history = History {
        workflows,
        deliveries: std::mem::take(&mut *ctx.deliveries.lock().unwrap()),
        approve_calls,
        tasks,
        faults,
    };
    let clean_exits = supervisor.stop_all().await;
    let report = checker::check(&history);
    let text = describe(
        &plan,
        &history,
        &report,
        &Timings {
            drain_started,
            drained_at,
            clean_exits,
        },
        &dir,
    );
    let _ = std::fs::write(dir.join("report.txt"), &text);
    if let Some(pg) = pg {
        pg.drop_database().await;
    }
    Outcome { report, text }
}

struct Timings {
    drain_started: f64,
    drained_at: f64,
    clean_exits: usize,
}

/// The figures, the faults, each violation with its workflow's story, and how to replay.
fn describe(
    plan: &Plan,
    h: &History,
    report: &Report,
    t: &Timings,
    dir: &std::path::Path,
) -> String {
    use std::fmt::Write as _;
    let f = &report.figures;
    let mut out = String::new();
    let verdict = if report.passed() { "passed" } else { "FAILED" };
    let _ = writeln!(
        out,
        "=== chaos seed {} on {} ({} replica(s)): {verdict}",
        plan.seed,
        plan.backend.name(),
        plan.backend.replicas()
    );
    let _ = writeln!(
        out,
        "  chaos {:.0} s, drain from {:.1} s, settled at {:.1} s; APPROVAL_TIMEOUT {:.0} s, \
         TASK_LEASE {TASK_LEASE_SECS} s; {} of {} replicas exited 0 on the final SIGTERM",
        plan.chaos_secs,
        t.drain_started,
        t.drained_at,
        plan.approval_timeout_secs,
        t.clean_exits,
        plan.backend.replicas()
    );
    let _ = writeln!(out, "  {f}");
    for line in plan.to_string().lines() {
        let _ = writeln!(out, "  {line}");
    }
    let mut other: BTreeMap<String, usize> = BTreeMap::new();
    for d in h.deliveries.iter().filter(|d| !d.answer.is_2xx()) {
        let key = match &d.answer {
            Answer::Http { code, .. } => code.to_string(),
            Answer::None(why) => why.clone(),
        };
        *other.entry(key).or_default() += 1;
    }
    let _ = writeln!(out, "  deliveries other than 2xx: {other:?}");
    let faults: Vec<String> = report
        .faults
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let _ = writeln!(out, "  faults injected: {}", faults.join(", "));
    let mut by_role: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for v in &report.violations {
        *by_role.entry((v.role, v.rule.describe())).or_default() += 1;
    }
    for ((role, rule), n) in &by_role {
        let _ = writeln!(out, "  broken: {n} x \"{rule}\" on {role} workflow(s)");
    }
    for v in &report.violations {
        let _ = writeln!(
            out,
            "  - [{}] {} workflow {}: {}",
            v.rule.describe(),
            v.role,
            v.workflow.map_or("?".to_owned(), |w| w.to_string()),
            v.detail
        );
        if let Some(w) = v.workflow {
            out.push_str(&checker::story(h, w));
        }
    }
    let _ = writeln!(
        out,
        "  replay: scripts/chaos --seconds {:.0} --seed {} --backend {} (logs: {})",
        plan.chaos_secs,
        plan.seed,
        plan.backend.name(),
        dir.display()
    );
    out
}
