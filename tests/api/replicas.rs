//! Several replicas on one PostgreSQL database: real service processes (the binary), one fake
//! CircleCI, one store.
//!
//! These run when `APPROVER_TEST_POSTGRES_URL` names a PostgreSQL server (an admin URL; each
//! test makes its own database) and return at once otherwise. The tests that stop and start
//! the server also need `APPROVER_TEST_PG_CTL` (a `pg_ctl -D … -l …` command line, as
//! `.ci/postgres.sh` exports it): they restart the server under every other test's feet, so
//! run them alone: `.ci/postgres.sh` runs `cargo test --test api replicas:: -- --test-threads=1`
//! after the rest of the suite, and withholds the variable from the first run.
//!
//! No sleeps as synchronisation: every wait is for a condition (a log line, a row, a call at
//! the fake, an HTTP answer) with a deadline.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use approver_test_support::fake_circleci::{FakeCircleCi, Fault, RecordedCall};
use secrecy::SecretString;
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};
use sym_circleci_approver::domain::task::DeliveryStatus;
use sym_circleci_approver::store::{Store, StoreOptions};
use tokio::task::JoinSet;
use tokio::time::Instant;
use uuid::Uuid;

use crate::binary::{binary, serve_env, Delivery, Env, Running, POLL};
use crate::helpers::{new_secret, workflow_on_hold, TestDatabase, HOLD, TOKEN};

const STARTUP: Duration = Duration::from_secs(30);

/// The PostgreSQL admin URL, or None (with a notice) when the tests run on SQLite only.
fn postgres(test: &str) -> Option<String> {
    match std::env::var("APPROVER_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("{test}: skipped (APPROVER_TEST_POSTGRES_URL is not set)");
            None
        }
    }
}

/// Stops and starts the test's PostgreSQL server (`APPROVER_TEST_PG_CTL`), when allowed.
struct PgCtl(String);

impl PgCtl {
    fn from_env(test: &str) -> Option<Self> {
        match std::env::var("APPROVER_TEST_PG_CTL") {
            Ok(ctl) if !ctl.trim().is_empty() => Some(Self(ctl)),
            _ => {
                eprintln!(
                    "{test}: skipped (needs APPROVER_TEST_PG_CTL to restart PostgreSQL; \
                     .ci/postgres.sh sets it for the replica tests)"
                );
                None
            }
        }
    }

    async fn run(&self, args: &str) {
        let status = tokio::process::Command::new("bash")
            .arg("-c")
            .arg(format!("{} {args}", self.0))
            .stdout(Stdio::null())
            .status()
            .await
            .expect("pg_ctl runs");
        assert!(status.success(), "pg_ctl {args} failed: {status}");
    }

    /// Fast shutdown: open sessions are terminated, as in a failover or a restart.
    async fn stop(&self) {
        self.run("stop -m fast").await;
    }

    async fn start(&self) {
        self.run("start").await;
    }
}

/// Starts the server again if a test stops it and then fails before starting it.
struct RestartOnDrop<'a>(&'a PgCtl, bool);

impl Drop for RestartOnDrop<'_> {
    fn drop(&mut self) {
        if self.1 {
            let _ = Command::new("bash")
                .arg("-c")
                .arg(format!("{} start", self.0 .0))
                .stdout(Stdio::null())
                .status();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Service processes
// ---------------------------------------------------------------------------------------------

/// One `serve` process.
struct Replica {
    process: Running,
    addr: Option<SocketAddr>,
    client: reqwest::Client,
}

impl Replica {
    /// Starts `serve` with exactly `env` (plus `PATH`).
    fn spawn(name: &'static str, env: &Env) -> Self {
        Self {
            process: Running::start(binary(&["serve"], env), format!("replica {name}")),
            addr: None,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    /// Starts `serve` and waits for its `listening` line.
    async fn start(name: &'static str, env: &Env) -> Self {
        let mut replica = Self::spawn(name, env);
        replica.wait_listening(STARTUP).await;
        replica
    }

    async fn wait_listening(&mut self, timeout: Duration) {
        self.addr = Some(self.process.wait_listening(timeout).await);
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint {
            addr: self.addr.expect("listening"),
            client: self.client.clone(),
        }
    }

    /// This process's lease owner id (from its `approval worker started` line).
    /// The worker's lease owner, from its "approval worker started" line (waited for: the
    /// worker starts just after the server listens).
    async fn worker_owner(&self) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let owner = self
                .process
                .stdout
                .find("approval worker started")
                .and_then(|e| e["owner"].as_str().map(str::to_owned));
            if owner.is_some() || Instant::now() > deadline {
                return owner;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// kill -9: no chance to clean up or give a lease back.
    async fn kill_9(&mut self) {
        self.process.kill_9();
        self.process.exited_within(Duration::from_secs(10)).await;
    }
}

/// Where to send requests to one replica (cheap to clone into tasks).
#[derive(Clone)]
struct Endpoint {
    addr: SocketAddr,
    client: reqwest::Client,
}

/// An HTTP answer, or what went wrong before one arrived.
#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    body: Value,
    took: Duration,
}

impl Endpoint {
    async fn deliver(&self, delivery: &Delivery) -> Result<Reply, String> {
        let started = Instant::now();
        let response = delivery
            .post(&self.client, &format!("http://{}/webhooks/sym", self.addr))
            .send()
            .await
            .map_err(|e| format!("no answer: {e}"))?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| e.to_string())?;
        let body = serde_json::from_str(&text).map_err(|_| format!("HTTP {status}: {text:?}"))?;
        Ok(Reply {
            status,
            body,
            took: started.elapsed(),
        })
    }

    async fn readyz(&self) -> u16 {
        match self
            .client
            .get(format!("http://{}/readyz", self.addr))
            .send()
            .await
        {
            Ok(response) => response.status().as_u16(),
            Err(_) => 0,
        }
    }

    /// Waits until `/readyz` answers `status`.
    async fn wait_ready_status(&self, status: u16, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.readyz().await;
            if now == status {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz of {} still {now} after {timeout:?}, expected {status}",
                self.addr
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

/// One delivery of a stream: its workflow, what was sent, and the answer.
type Sent = (Uuid, Delivery, Result<Reply, String>);

/// The `serve` environment for one replica on `fake` and `db`: quick retries and polls.
fn replica_env(fake: &FakeCircleCi, db: &TestDatabase, secret_text: &str) -> Env {
    serve_env(fake, db, secret_text)
        .set("RETRY_INITIAL", "200ms")
        .set("RETRY_MAX", "1s")
        .set("POLL_MAX", "1s")
}

/// Approve calls the fake saw for one workflow (any answer).
fn approve_calls(calls: &[RecordedCall], workflow: Uuid) -> usize {
    let needle = format!("/workflow/{workflow}/approve/");
    calls
        .iter()
        .filter(|c| c.operation == "approve" && c.path.contains(&needle))
        .count()
}

/// The test's own view of the database (reconnects by itself after a restart).
async fn db_pool(db: &TestDatabase) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&db.url)
        .await
        .expect("the test reaches its database")
}

/// Waits until no task is pending; returns the count of tasks.
async fn all_tasks_finished(pool: &PgPool, timeout: Duration) -> i64 {
    let deadline = Instant::now() + timeout;
    loop {
        let row = sqlx::query(
            "SELECT COUNT(*) AS total, COUNT(*) FILTER (WHERE status = 'pending') AS pending \
             FROM tasks",
        )
        .fetch_one(pool)
        .await;
        if let Ok(row) = row {
            let total: i64 = row.get("total");
            let pending: i64 = row.get("pending");
            if pending == 0 {
                return total;
            }
            assert!(
                Instant::now() < deadline,
                "{pending} of {total} tasks still pending after {timeout:?}"
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until `done()` holds.
async fn wait_for(what: &str, timeout: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// (status, outcome) of each task by workflow id.
async fn outcomes_by_workflow(pool: &PgPool) -> HashMap<Uuid, Vec<(String, Option<String>)>> {
    let rows = sqlx::query("SELECT workflow_id, status, outcome FROM tasks")
        .fetch_all(pool)
        .await
        .unwrap();
    let mut by_workflow: HashMap<Uuid, Vec<(String, Option<String>)>> = HashMap::new();
    for row in rows {
        let workflow: String = row.get("workflow_id");
        by_workflow
            .entry(Uuid::parse_str(&workflow).unwrap())
            .or_default()
            .push((row.get("status"), row.get("outcome")));
    }
    by_workflow
}

// ---------------------------------------------------------------------------------------------
// Startup
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn replicas_starting_at_once_on_a_fresh_database_migrate_it_once() {
    let Some(_) = postgres("replicas_starting_at_once_on_a_fresh_database_migrate_it_once") else {
        return;
    };
    let db = TestDatabase::new().await;
    let url = SecretString::from(db.url.clone());

    // Act: four stores connect (and migrate) at the same moment.
    let mut starting = JoinSet::new();
    for _ in 0..4 {
        let url = url.clone();
        starting.spawn(async move { Store::connect(&url, &StoreOptions::default()).await });
    }
    let mut stores = Vec::new();
    while let Some(result) = starting.join_next().await {
        stores.push(result.unwrap().expect("every replica starts"));
    }

    // Assert: each migration applied once, successfully; the schema is usable by all.
    let pool = db_pool(&db).await;
    let rows = sqlx::query("SELECT version, success FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&pool)
        .await
        .unwrap();
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))
        .unwrap()
        .count();
    assert_eq!(rows.len(), migrations);
    assert!(rows.iter().all(|r| r.get::<bool, _>("success")));
    for store in &stores {
        store.ping().await.unwrap();
        assert_eq!(
            store.delivery_count(DeliveryStatus::Queued).await.unwrap(),
            0
        );
        store.close().await;
    }
}

#[tokio::test]
async fn startup_gives_up_on_an_unreachable_database_naming_database_url_without_the_password() {
    // Needs no server: nothing listens on the port. DATABASE_CONNECT_TIMEOUT=250ms bounds the
    // wait to 12 × 250 ms.
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let password = "Pg-Pa55word-never-logged";
    let fake = FakeCircleCi::start(TOKEN).await.unwrap();
    let (secret_text, _) = new_secret();
    let env = Env::default()
        .set("SYM_WEBHOOK_SECRET", secret_text)
        .set("CIRCLECI_TOKEN", TOKEN)
        .set("CIRCLECI_API_URL", fake.base_url())
        .set(
            "DATABASE_URL",
            format!("postgres://approver:{password}@127.0.0.1:{closed_port}/approver"),
        )
        .set("DATABASE_CONNECT_TIMEOUT", "250ms")
        .set("LISTEN_ADDR", "127.0.0.1:0")
        .set("LOG_FORMAT", "json")
        .set("RUST_LOG", "debug");
    let started = Instant::now();

    // Act
    let mut replica = Replica::spawn("A", &env);
    let status = replica.process.exited_within(Duration::from_secs(30)).await;

    // Assert: a bounded wait with a log line per try, then a clear refusal.
    let took = started.elapsed();
    assert!(!status.success(), "started without a database");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(20),
        "gave up after {took:?}"
    );
    let output = replica.process.output();
    assert!(
        !output.contains(password),
        "the password was logged:\n{output}"
    );
    let stderr = replica.process.stderr.text();
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "postgres://approver:***@127.0.0.1:{closed_port}/approver"
        )),
        "{stderr}"
    );
    let retries = replica
        .process
        .stdout
        .events()
        .into_iter()
        .filter(|e| {
            e["level"] == "WARN"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("not reachable yet"))
        })
        .count();
    assert!(retries >= 2, "no retry lines:\n{output}");
    assert!(replica.process.stdout.find("listening").is_none());
}

#[tokio::test]
async fn a_replica_started_before_postgresql_waits_for_it_then_serves() {
    let test = "a_replica_started_before_postgresql_waits_for_it_then_serves";
    let (Some(_), Some(ctl)) = (postgres(test), PgCtl::from_env(test)) else {
        return;
    };
    let fake = FakeCircleCi::start(TOKEN).await.unwrap();
    let db = TestDatabase::new().await;
    let (secret_text, secret) = new_secret();
    let env = replica_env(&fake, &db, &secret_text).set("DATABASE_CONNECT_TIMEOUT", "2s");

    // Arrange: PostgreSQL is down when the replica starts.
    ctl.stop().await;
    let mut restart_guard = RestartOnDrop(&ctl, true);
    let mut replica = Replica::spawn("A", &env);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !replica.process.stdout.text().contains("not reachable yet") {
        assert!(
            !replica.process.has_exited(),
            "gave up at once:\n{}",
            replica.process.output()
        );
        assert!(
            Instant::now() < deadline,
            "no retry line:\n{}",
            replica.process.output()
        );
        tokio::time::sleep(POLL).await;
    }

    // Act: the database comes up.
    ctl.start().await;
    restart_guard.1 = false;

    // Assert: the replica starts by itself and works.
    replica.wait_listening(Duration::from_secs(30)).await;
    let endpoint = replica.endpoint();
    endpoint
        .wait_ready_status(200, Duration::from_secs(10))
        .await;
    let workflow = workflow_on_hold(&fake);
    let reply = endpoint
        .deliver(&Delivery::new_approve(&secret, workflow))
        .await
        .unwrap();
    assert_eq!(reply.status, 202, "{:?}", reply.body);
    assert!(
        fake.wait_for_calls(Duration::from_secs(20), |c| approve_calls(c, workflow) == 1)
            .await
    );
    assert!(replica
        .process
        .stdout
        .find("the store is reachable")
        .is_some());
}

// ---------------------------------------------------------------------------------------------
// Two replicas, one database
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicate_deliveries_split_across_two_replicas_make_one_task_and_one_approve() {
    let Some(_) =
        postgres("duplicate_deliveries_split_across_two_replicas_make_one_task_and_one_approve")
    else {
        return;
    };
    let fake = FakeCircleCi::start(TOKEN).await.unwrap();
    let db = TestDatabase::new().await;
    let (secret_text, secret) = new_secret();
    let env = replica_env(&fake, &db, &secret_text);
    let a = Replica::start("A", &env).await;
    let b = Replica::start("B", &env).await;
    let (ea, eb) = (a.endpoint(), b.endpoint());

    // Arrange: 40 events, each a workflow on hold; every event is sent four times at once:
    // the same signed delivery to A and to B, and a re-signed copy (new webhook-id, same Sym
    // id, as a retrying hook does) to A and to B. A quarter of the workflows also get a second, distinct
    // approve event (another Sym id) for the same hold job: it finds the first one's live
    // approval (or the first finds its), so still one task and one approve call.
    const EVENTS: usize = 40;
    let mut events = Vec::new();
    for i in 0..EVENTS {
        let workflow = workflow_on_hold(&fake);
        let sym_id = Uuid::new_v4().to_string();
        let first = Delivery::approve(&secret, &sym_id, workflow);
        let resigned = Delivery::approve(&secret, &sym_id, workflow);
        let second_event = (i % 4 == 0).then(|| Delivery::new_approve(&secret, workflow));
        events.push((workflow, first, resigned, second_event));
    }

    // Act
    let mut sending = JoinSet::new();
    for (index, (_, first, resigned, second_event)) in events.iter().enumerate() {
        for (endpoint, delivery) in [(&ea, first), (&eb, first), (&ea, resigned), (&eb, resigned)] {
            let (endpoint, delivery) = (endpoint.clone(), delivery.clone());
            sending.spawn(async move { (index, false, endpoint.deliver(&delivery).await) });
        }
        if let Some(extra) = second_event {
            let (endpoint, extra) = (
                if index % 8 == 0 { &ea } else { &eb }.clone(),
                extra.clone(),
            );
            sending.spawn(async move { (index, true, endpoint.deliver(&extra).await) });
        }
    }
    let mut replies: HashMap<usize, Vec<Reply>> = HashMap::new();
    while let Some(done) = sending.join_next().await {
        let (index, _extra, reply) = done.unwrap();
        let reply = reply.expect("every delivery is answered");
        replies.entry(index).or_default().push(reply);
    }

    // Assert: per workflow, one 202 and duplicates pointing at it.
    for (index, replies) in &replies {
        let queued: Vec<&Reply> = replies.iter().filter(|r| r.status == 202).collect();
        assert_eq!(queued.len(), 1, "event {index}: {replies:?}");
        let original = &queued[0].body["delivery_id"];
        for reply in replies.iter().filter(|r| r.status != 202) {
            assert_eq!(reply.status, 200, "event {index}: {replies:?}");
            assert_eq!(reply.body["status"], "duplicate");
            assert_eq!(&reply.body["delivery_id"], original);
        }
    }
    assert_eq!(replies.len(), EVENTS);

    // Every task finishes; one approve call per hold job, whichever replica worked it.
    let pool = db_pool(&db).await;
    let tasks = all_tasks_finished(&pool, Duration::from_secs(60)).await;
    assert_eq!(tasks, EVENTS as i64);
    let calls = fake.calls();
    let outcomes = outcomes_by_workflow(&pool).await;
    for (workflow, _, _, second_event) in &events {
        assert_eq!(
            approve_calls(&calls, *workflow),
            1,
            "workflow {workflow}: {:?}",
            outcomes.get(workflow)
        );
        assert_eq!(fake.job_status(*workflow, HOLD).as_deref(), Some("success"));
        let mut got: Vec<Option<String>> = outcomes[workflow]
            .iter()
            .map(|(status, outcome)| {
                assert_eq!(status, "succeeded", "{workflow}");
                outcome.clone()
            })
            .collect();
        got.sort();
        let _ = second_event;
        assert_eq!(
            got,
            vec![Some("approved".to_owned())],
            "workflow {workflow}"
        );
    }
    assert_eq!(fake.successful_approvals(), EVENTS);
    let queued: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE outcome = 'queued'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(queued, EVENTS as i64);
    let worked_by = |r: &Replica| {
        r.process
            .stdout
            .events()
            .iter()
            .filter(|e| e["message"] == "task succeeded")
            .count()
    };
    eprintln!(
        "tasks finished by A: {}, by B: {}",
        worked_by(&a),
        worked_by(&b)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_replica_holding_a_task_the_other_finishes_it_once_after_the_lease() {
    let Some(_) =
        postgres("kill_9_of_the_replica_holding_a_task_the_other_finishes_it_once_after_the_lease")
    else {
        return;
    };
    // Arrange: CircleCI fails the first job listings; the third one hangs (its answer comes
    // after 5 s), so whoever makes it is mid-step, holding the lease, when it is killed. Then
    // the fault queue is empty: CircleCI has recovered.
    let fake = FakeCircleCi::start(TOKEN).await.unwrap();
    fake.push_fault(Fault::status(503).on("list_jobs"));
    fake.push_fault(Fault::status(503).on("list_jobs"));
    fake.push_fault(
        Fault::status(503)
            .on("list_jobs")
            .delayed(Duration::from_secs(5)),
    );
    let workflow = workflow_on_hold(&fake);
    let db = TestDatabase::new().await;
    let (secret_text, secret) = new_secret();
    let env = replica_env(&fake, &db, &secret_text).set("TASK_LEASE", "3s");
    let mut a = Replica::start("A", &env).await;
    let mut b = Replica::start("B", &env).await;
    let owners = [
        a.worker_owner().await.unwrap(),
        b.worker_owner().await.unwrap(),
    ];
    let delivery = Delivery::new_approve(&secret, workflow);
    let reply = a.endpoint().deliver(&delivery).await.unwrap();
    assert_eq!(reply.status, 202, "{:?}", reply.body);
    let delivery_id = reply.body["delivery_id"].as_str().unwrap().to_owned();
    let pool = db_pool(&db).await;

    // Wait for the hanging call, and find who holds the task.
    assert!(
        fake.wait_for_calls(Duration::from_secs(20), |c| c
            .iter()
            .filter(|c| c.operation == "list_jobs")
            .count()
            >= 3)
            .await,
        "calls: {:?}",
        fake.calls()
    );
    let row = sqlx::query("SELECT lease_owner, lease_expires_at FROM tasks WHERE delivery_id = $1")
        .bind(&delivery_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    let holder: Option<String> = row.get("lease_owner");
    let lease_expires_at: Option<i64> = row.get("lease_expires_at");
    let holder = holder.expect("the task is leased mid-step");
    let lease_expires_at = lease_expires_at.unwrap();
    // A lease is held by "<worker owner>" or, per claim, "<worker owner>/<claim token>".
    let holds = |owner: &str| holder == owner || holder.starts_with(&format!("{owner}/"));
    let (victim, survivor) = if holds(&owners[0]) {
        (&mut a, &mut b)
    } else {
        assert!(
            holds(&owners[1]),
            "the lease {holder} belongs to neither {owners:?}"
        );
        (&mut b, &mut a)
    };
    let calls_before_kill = fake.calls().len();

    // Act: kill -9 the holder mid-step.
    victim.kill_9().await;

    // Assert: the survivor finishes the task once the lease has run out, with one approve.
    let deadline = Instant::now() + Duration::from_secs(30);
    let task = loop {
        let row =
            sqlx::query("SELECT status, outcome, lease_owner FROM tasks WHERE delivery_id = $1")
                .bind(&delivery_id)
                .fetch_one(&pool)
                .await
                .unwrap();
        let status: String = row.get("status");
        if status != "pending" {
            break (status, row.get::<Option<String>, _>("outcome"));
        }
        assert!(
            Instant::now() < deadline,
            "still pending; calls: {:?}",
            fake.calls()
        );
        tokio::time::sleep(POLL).await;
    };
    assert_eq!(task, ("succeeded".to_owned(), Some("approved".to_owned())));
    let calls = fake.calls();
    let after_kill = &calls[calls_before_kill..];
    let first_after = after_kill.first().expect("calls after the kill");
    assert!(
        first_after.unix_ms >= lease_expires_at,
        "the survivor called CircleCI {} ms before the lease ran out",
        lease_expires_at - first_after.unix_ms
    );
    assert_eq!(approve_calls(&calls, workflow), 1, "{calls:?}");
    assert_eq!(fake.successful_approvals(), 1);
    assert!(!survivor.process.has_exited());
    // The log line follows the database write: wait for it rather than race it.
    wait_for(
        "the survivor's \"task succeeded\" line",
        Duration::from_secs(10),
        || {
            survivor
                .process
                .stdout
                .events()
                .iter()
                .any(|e| e["message"] == "task succeeded")
        },
    )
    .await;
    // The hook retrying the delivery at the survivor: a duplicate, nothing new.
    let again = survivor.endpoint().deliver(&delivery).await.unwrap();
    assert_eq!(again.status, 200);
    assert_eq!(again.body["status"], "duplicate");
    assert_eq!(approve_calls(&fake.calls(), workflow), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgresql_restarted_under_a_stream_of_deliveries_loses_nothing_it_accepted() {
    let test = "postgresql_restarted_under_a_stream_of_deliveries_loses_nothing_it_accepted";
    let (Some(_), Some(ctl)) = (postgres(test), PgCtl::from_env(test)) else {
        return;
    };
    let fake = Arc::new(FakeCircleCi::start(TOKEN).await.unwrap());
    let db = TestDatabase::new().await;
    let (secret_text, secret) = new_secret();
    let env = replica_env(&fake, &db, &secret_text)
        .set("DATABASE_CONNECT_TIMEOUT", "1s")
        .set("DATABASE_STATEMENT_TIMEOUT", "2s");
    let a = Replica::start("A", &env).await;
    let b = Replica::start("B", &env).await;
    let endpoints = [a.endpoint(), b.endpoint()];

    // A stream of deliveries: four senders, each a new event for a new workflow, alternating
    // between the replicas, until told to stop.
    let stop = tokio_util::sync::CancellationToken::new();
    let results: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let mut senders = JoinSet::new();
    for sender in 0..4 {
        let (endpoints, fake, secret, stop, results) = (
            endpoints.clone(),
            Arc::clone(&fake),
            secret.clone(),
            stop.clone(),
            Arc::clone(&results),
        );
        senders.spawn(async move {
            let mut n = sender;
            while !stop.is_cancelled() {
                let workflow = workflow_on_hold(&fake);
                let delivery = Delivery::new_approve(&secret, workflow);
                let reply = endpoints[n % 2].deliver(&delivery).await;
                results.lock().unwrap().push((workflow, delivery, reply));
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }
    let count = |f: &dyn Fn(&Result<Reply, String>) -> bool| {
        results.lock().unwrap().iter().filter(|r| f(&r.2)).count()
    };
    let accepted = |r: &Result<Reply, String>| r.as_ref().is_ok_and(|r| r.status == 202);
    let refused = |r: &Result<Reply, String>| r.as_ref().is_ok_and(|r| r.status >= 500);
    // Act: some deliveries in, then PostgreSQL stops (fast shutdown) and comes back.
    wait_for("20 accepted deliveries", Duration::from_secs(30), || {
        count(&accepted) >= 20
    })
    .await;
    ctl.stop().await;
    let mut restart_guard = RestartOnDrop(&ctl, true);
    for endpoint in &endpoints {
        endpoint
            .wait_ready_status(503, Duration::from_secs(10))
            .await;
    }
    let refused_before = count(&refused);
    wait_for(
        "deliveries refused while down",
        Duration::from_secs(30),
        || count(&refused) >= refused_before + 4,
    )
    .await;
    ctl.start().await;
    restart_guard.1 = false;
    for endpoint in &endpoints {
        endpoint
            .wait_ready_status(200, Duration::from_secs(30))
            .await;
    }
    let accepted_at_restart = count(&accepted);
    wait_for(
        "20 accepted after the restart",
        Duration::from_secs(30),
        || count(&accepted) >= accepted_at_restart + 20,
    )
    .await;
    stop.cancel();
    while let Some(done) = senders.join_next().await {
        done.unwrap();
    }

    // Assert: every delivery was answered 202 or 5xx, each 5xx quickly (bounded by the
    // store's time limits, well inside REQUEST_TIMEOUT).
    let results = std::mem::take(&mut *results.lock().unwrap());
    let mut refused_deliveries = Vec::new();
    for (workflow, delivery, reply) in &results {
        let reply = reply.as_ref().expect("the replicas stay up and answer");
        match reply.status {
            202 => {}
            500..=599 => {
                assert!(
                    reply.took < Duration::from_secs(10),
                    "a 5xx took {:?}",
                    reply.took
                );
                refused_deliveries.push((*workflow, delivery.clone()));
            }
            other => panic!("HTTP {other}: {:?}", reply.body),
        }
    }
    assert!(!refused_deliveries.is_empty());
    let slowest_refusal = results
        .iter()
        .filter_map(|(_, _, r)| r.as_ref().ok().filter(|r| r.status >= 500).map(|r| r.took))
        .max()
        .unwrap_or_default();
    eprintln!(
        "{} deliveries: {} accepted, {} refused while PostgreSQL was down (slowest 5xx: {:?})",
        results.len(),
        results.len() - refused_deliveries.len(),
        refused_deliveries.len(),
        slowest_refusal
    );

    // Every accepted delivery is approved exactly once, recorded as approved.
    let pool = db_pool(&db).await;
    all_tasks_finished(&pool, Duration::from_secs(60)).await;
    let calls = fake.calls();
    let outcomes = outcomes_by_workflow(&pool).await;
    for (workflow, _, reply) in &results {
        let calls_for = approve_calls(&calls, *workflow);
        if reply.as_ref().unwrap().status == 202 {
            assert_eq!(calls_for, 1, "accepted workflow {workflow}");
            assert_eq!(
                outcomes.get(workflow),
                Some(&vec![("succeeded".to_owned(), Some("approved".to_owned()))]),
                "accepted workflow {workflow}"
            );
        } else {
            // Refused: it may still have been committed (the answer was lost), never twice.
            assert!(
                calls_for <= 1,
                "refused workflow {workflow}: {calls_for} approves"
            );
        }
    }

    // The hook retries the refused ones: each is now taken (or recognised) and approved once.
    for (workflow, delivery) in &refused_deliveries {
        let reply = endpoints[0].deliver(delivery).await.unwrap();
        assert!(
            reply.status == 202 || reply.body["status"] == "duplicate",
            "retry of {workflow}: {} {:?}",
            reply.status,
            reply.body
        );
    }
    all_tasks_finished(&pool, Duration::from_secs(60)).await;
    let calls = fake.calls();
    for (workflow, _, _) in &results {
        assert_eq!(approve_calls(&calls, *workflow), 1, "workflow {workflow}");
    }
    assert_eq!(fake.successful_approvals(), results.len());
}

#[tokio::test]
async fn replicas_measure_leases_on_the_database_clock_not_their_own() {
    if postgres("replicas_measure_leases_on_the_database_clock_not_their_own").is_none() {
        return;
    }
    let db = TestDatabase::new().await;
    let store = sym_circleci_approver::store::Store::connect(
        &secrecy::SecretString::from(db.url.clone()),
        &sym_circleci_approver::store::StoreOptions::default(),
    )
    .await
    .unwrap();
    // A replica whose clock reads an hour behind the database's...
    store.clock().set_offset(-3_600_000);
    let behind = store.clock().now_ms();

    let offset = store.sync_clock().await.unwrap();

    // ...follows the database's clock after a sync (here on the same machine, so the offset
    // to its own clock is the round trip at most), so its leases run out when the others'
    // do.
    assert!(offset.abs() < 1_000, "offset {offset} ms");
    let caught_up = store.clock().now_ms() - behind;
    assert!(
        (3_599_000..3_601_000).contains(&caught_up),
        "moved {caught_up} ms"
    );
    store.close().await;
}
