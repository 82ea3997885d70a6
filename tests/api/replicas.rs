//! Several replicas on one PostgreSQL database: real service processes (the binary), one fake
//! CircleCI, one store.
//!
//! These run when `APPROVER_TEST_POSTGRES_URL` names a PostgreSQL server (an admin URL; each
//! test makes its own database). Without it they are skipped loudly (a `SKIPPED:` line on
//! stderr), and with `APPROVER_REQUIRE_POSTGRES=1` (CI) they fail instead. The tests that stop
//! and start the server also need `APPROVER_TEST_PG_CTL` (a `pg_ctl -D … -l …` command line, as
//! `.ci/postgres.sh` exports it): they restart the server under every other test's feet, so
//! run them alone: `.ci/postgres.sh` runs `cargo test --test api replicas:: -- --test-threads=1`
//! after the rest of the suite, and withholds the variable from the first run.
//!
//! No sleeps as synchronisation: every wait is for a condition (a log line, a row, a call at
//! the fake, an HTTP answer) with a deadline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use approver_test_support::fake_circleci::{FakeCircleCi, Fault, RecordedCall};
use approver_test_support::postgres::{self, PgCtl};
use secrecy::SecretString;
use sqlx::postgres::{PgPoolOptions, PgRow};
use sqlx::{PgPool, Row};
use sym_circleci_approver::domain::task::{DeliveryStatus, Outcome, TaskStatus};
use sym_circleci_approver::store::{Store, StoreOptions};
use tokio::task::JoinSet;
use tokio::time::Instant;
use uuid::Uuid;

use crate::harness::child::Reply;
use crate::harness::*;

/// Starts the server again if a test stops it and then fails before starting it.
struct RestartOnDrop<'a>(&'a PgCtl, bool);

impl Drop for RestartOnDrop<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.start_blocking();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Service processes
// ---------------------------------------------------------------------------------------------

/// The `serve` environment for replicas on `up`: quick retries and polls.
fn replica_env(up: &Upstreams) -> Env {
    up.env()
        .set("RETRY_INITIAL", "200ms")
        .set("RETRY_MAX", "1s")
        .set("POLL_MAX", "1s")
}

/// The replica's worker's lease owner, from its "approval worker started" line (waited for:
/// the worker starts just after the server listens).
async fn worker_owner(replica: &ServiceProcess) -> String {
    let started = replica
        .wait_log("approval worker started", Duration::from_secs(10))
        .await;
    started["owner"].as_str().expect("an owner").to_owned()
}

/// Waits until `/readyz` answers `status`.
async fn wait_ready_status(endpoint: &Endpoint, status: u16, timeout: Duration) {
    eventually(
        &format!("/readyz of {} to answer {status}", endpoint.url("")),
        timeout,
        || async { (endpoint.readyz().await == status).then_some(()) },
    )
    .await;
}

/// One delivery of a stream: its workflow, what was sent, and the answer.
type Sent = (Uuid, Delivery, Result<Reply, String>);

/// Approve calls the fake saw for one workflow (any answer).
fn approve_calls(calls: &[RecordedCall], workflow: Uuid) -> usize {
    let needle = format!("/workflow/{workflow}/approve/");
    calls
        .iter()
        .filter(|c| c.operation == "approve" && c.path.contains(&needle))
        .count()
}

// ---------------------------------------------------------------------------------------------
// The database, read from the test
// ---------------------------------------------------------------------------------------------

/// The test's own view of the database (reconnects by itself after a restart).
async fn db_pool(db: &TestDatabase) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&db.url)
        .await
        .expect("the test reaches its database")
}

/// A task row's status and outcome, as the product's enums.
fn ended(row: &PgRow) -> (TaskStatus, Option<Outcome>) {
    let status: String = row.get("status");
    let outcome: Option<String> = row.get("outcome");
    (
        TaskStatus::parse(&status).unwrap_or_else(|| panic!("an unknown status {status:?}")),
        outcome.map(|o| Outcome::parse(&o).unwrap_or_else(|| panic!("an unknown outcome {o:?}"))),
    )
}

/// Waits until no task is pending; returns the count of tasks.
async fn all_tasks_finished(pool: &PgPool, timeout: Duration) -> i64 {
    eventually("every task to finish", timeout, || async {
        let row = sqlx::query(
            "SELECT COUNT(*) AS total, COUNT(*) FILTER (WHERE status = $1) AS pending FROM tasks",
        )
        .bind(TaskStatus::Pending.as_str())
        .fetch_one(pool)
        .await
        .ok()?;
        let pending: i64 = row.get("pending");
        (pending == 0).then(|| row.get("total"))
    })
    .await
}

/// (status, outcome) of each task by workflow id.
async fn outcomes_by_workflow(pool: &PgPool) -> HashMap<Uuid, Vec<(TaskStatus, Option<Outcome>)>> {
    let rows = sqlx::query("SELECT workflow_id, status, outcome FROM tasks")
        .fetch_all(pool)
        .await
        .unwrap();
    let mut by_workflow: HashMap<Uuid, Vec<(TaskStatus, Option<Outcome>)>> = HashMap::new();
    for row in rows {
        let workflow: String = row.get("workflow_id");
        by_workflow
            .entry(Uuid::parse_str(&workflow).unwrap())
            .or_default()
            .push(ended(&row));
    }
    by_workflow
}

// ---------------------------------------------------------------------------------------------
// Startup
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn replicas_starting_at_once_on_a_fresh_database_migrate_it_once() {
    let Some(_) = postgres::admin_url_or_skip() else {
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
    let closed_port = closed_addr().port();
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
    let mut replica = ServiceProcess::spawn("replica A", &["serve"], &env);
    let status = replica.exited_within(Duration::from_secs(30)).await;

    // Assert: a bounded wait with a log line per try, then a clear refusal.
    let took = started.elapsed();
    assert!(!status.success(), "started without a database");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(20),
        "gave up after {took:?}"
    );
    let output = replica.output();
    assert!(
        !output.contains(password),
        "the password was logged:\n{output}"
    );
    let stderr = replica.stderr.text();
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "postgres://approver:***@127.0.0.1:{closed_port}/approver"
        )),
        "{stderr}"
    );
    let retries = replica
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
    assert!(replica.stdout.find("listening").is_none());
}

#[tokio::test]
async fn a_replica_started_before_postgresql_waits_for_it_then_serves() {
    let Some(_) = postgres::admin_url_or_skip() else {
        return;
    };
    let Some(ctl) = PgCtl::or_skip("stopping PostgreSQL under a replica") else {
        return;
    };
    let up = Upstreams::new().await;
    let fake = &up.fake;
    let env = replica_env(&up).set("DATABASE_CONNECT_TIMEOUT", "2s");

    // Arrange: PostgreSQL is down when the replica starts.
    ctl.stop().await;
    let mut restart_guard = RestartOnDrop(&ctl, true);
    let mut replica = ServiceProcess::spawn("replica A", &["serve"], &env);
    let retrying = replica
        .stdout
        .wait_for(Instant::now() + Duration::from_secs(20), |lines| {
            lines.text().contains("not reachable yet").then_some(())
        })
        .await;
    assert!(
        retrying.is_some(),
        "no retry line (or it gave up at once):\n{}",
        replica.output()
    );

    // Act: the database comes up.
    ctl.start().await;
    restart_guard.1 = false;

    // Assert: the replica starts by itself and works.
    replica.wait_listening(Duration::from_secs(30)).await;
    let endpoint = replica.endpoint();
    wait_ready_status(endpoint, 200, Duration::from_secs(10)).await;
    let workflow = workflow_on_hold(fake);
    let reply = endpoint
        .deliver(&Delivery::new_approve(&up.secret, workflow))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert!(
        fake.wait_for_calls(Duration::from_secs(20), |c| approve_calls(c, workflow) == 1)
            .await
    );
    assert!(replica.stdout.find("the store is reachable").is_some());
}

// ---------------------------------------------------------------------------------------------
// Two replicas, one database
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicate_deliveries_split_across_two_replicas_make_one_task_and_one_approve() {
    let Some(_) = postgres::admin_url_or_skip() else {
        return;
    };
    let up = Upstreams::new().await;
    let (fake, secret) = (&up.fake, &up.secret);
    let env = replica_env(&up);
    let a = ServiceProcess::start("replica A", &env).await;
    let b = ServiceProcess::start("replica B", &env).await;
    let (ea, eb) = (a.endpoint(), b.endpoint());

    // Arrange: 40 events, each a workflow on hold; every event is sent four times at once:
    // the same signed delivery to A and to B, and a re-signed copy (new webhook-id, same Sym
    // id, as a retrying hook does) to A and to B. A quarter of the workflows also get a second, distinct
    // approve event (another Sym id) for the same hold job: it finds the first one's live
    // approval (or the first finds its), so still one task and one approve call.
    const EVENTS: usize = 40;
    let mut events = Vec::new();
    for i in 0..EVENTS {
        let workflow = workflow_on_hold(fake);
        let sym_id = Uuid::new_v4().to_string();
        let first = Delivery::approve(secret, &sym_id, workflow);
        let resigned = Delivery::approve(secret, &sym_id, workflow);
        let second_event = (i % 4 == 0).then(|| Delivery::new_approve(secret, workflow));
        events.push((workflow, first, resigned, second_event));
    }

    // Act
    let mut sending = JoinSet::new();
    for (index, (_, first, resigned, second_event)) in events.iter().enumerate() {
        for (endpoint, delivery) in [(ea, first), (eb, first), (ea, resigned), (eb, resigned)] {
            let (endpoint, delivery) = (endpoint.clone(), delivery.clone());
            sending.spawn(async move { (index, endpoint.deliver(&delivery).await) });
        }
        if let Some(extra) = second_event {
            let (endpoint, extra) = (if index % 8 == 0 { ea } else { eb }.clone(), extra.clone());
            sending.spawn(async move { (index, endpoint.deliver(&extra).await) });
        }
    }
    // Every delivery is answered (a task that got none panicked).
    let mut replies: HashMap<usize, Vec<Answer>> = HashMap::new();
    while let Some(done) = sending.join_next().await {
        let (index, reply) = done.unwrap();
        replies.entry(index).or_default().push(reply);
    }

    // Assert: per workflow, one 202 and duplicates pointing at it.
    for (index, replies) in &replies {
        let queued: Vec<&Answer> = replies.iter().filter(|r| r.status == 202).collect();
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
    let pool = db_pool(&up.db).await;
    let tasks = all_tasks_finished(&pool, Duration::from_secs(60)).await;
    assert_eq!(tasks, EVENTS as i64);
    let calls = fake.calls();
    let outcomes = outcomes_by_workflow(&pool).await;
    for (workflow, _, _, _) in &events {
        assert_eq!(
            approve_calls(&calls, *workflow),
            1,
            "workflow {workflow}: {:?}",
            outcomes.get(workflow)
        );
        assert_eq!(fake.job_status(*workflow, HOLD).as_deref(), Some("success"));
        // One task per hold job, approved.
        assert_eq!(
            outcomes[workflow],
            vec![(TaskStatus::Succeeded, Some(Outcome::Approved))],
            "workflow {workflow}"
        );
    }
    assert_eq!(fake.successful_approvals(), EVENTS);
    let queued: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE outcome = $1")
        .bind(DeliveryStatus::Queued.as_str())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(queued, EVENTS as i64);
    let worked_by = |r: &ServiceProcess| {
        r.stdout
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
    let Some(_) = postgres::admin_url_or_skip() else {
        return;
    };
    // Arrange: CircleCI fails the first job listings; the third one hangs (its answer comes
    // after 5 s), so whoever makes it is mid-step, holding the lease, when it is killed. Then
    // the fault queue is empty: CircleCI has recovered.
    let up = Upstreams::new().await;
    let fake = &up.fake;
    fake.push_fault(Fault::status(503).on("list_jobs"));
    fake.push_fault(Fault::status(503).on("list_jobs"));
    fake.push_fault(
        Fault::status(503)
            .on("list_jobs")
            .delayed(Duration::from_secs(5)),
    );
    let workflow = workflow_on_hold(fake);
    let env = replica_env(&up).set("TASK_LEASE", "3s");
    let mut a = ServiceProcess::start("replica A", &env).await;
    let mut b = ServiceProcess::start("replica B", &env).await;
    let owners = [worker_owner(&a).await, worker_owner(&b).await];
    let delivery = Delivery::new_approve(&up.secret, workflow);
    let reply = a.endpoint().deliver(&delivery).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let delivery_id = reply.delivery_id();
    let pool = db_pool(&up.db).await;

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
    let task = eventually(
        "the survivor to finish the task",
        Duration::from_secs(30),
        || async {
            let row = sqlx::query("SELECT status, outcome FROM tasks WHERE delivery_id = $1")
                .bind(&delivery_id)
                .fetch_one(&pool)
                .await
                .unwrap();
            Some(ended(&row)).filter(|(status, _)| *status != TaskStatus::Pending)
        },
    )
    .await;
    assert_eq!(
        task,
        (TaskStatus::Succeeded, Some(Outcome::Approved)),
        "calls: {:?}",
        fake.calls()
    );
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
    assert!(!survivor.has_exited());
    // The log line follows the database write: wait for it rather than race it.
    survivor
        .wait_log("task succeeded", Duration::from_secs(10))
        .await;
    // The hook retrying the delivery at the survivor: a duplicate, nothing new.
    let again = survivor.endpoint().deliver(&delivery).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body["status"], "duplicate");
    assert_eq!(approve_calls(&fake.calls(), workflow), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgresql_restarted_under_a_stream_of_deliveries_loses_nothing_it_accepted() {
    let Some(_) = postgres::admin_url_or_skip() else {
        return;
    };
    let Some(ctl) = PgCtl::or_skip("restarting PostgreSQL under two replicas") else {
        return;
    };
    let up = Upstreams::new().await;
    let fake = &up.fake;
    let env = replica_env(&up)
        .set("DATABASE_CONNECT_TIMEOUT", "1s")
        .set("DATABASE_STATEMENT_TIMEOUT", "2s");
    let a = ServiceProcess::start("replica A", &env).await;
    let b = ServiceProcess::start("replica B", &env).await;
    let endpoints = [a.endpoint().clone(), b.endpoint().clone()];

    // A stream of deliveries: four senders, each a new event for a new workflow, alternating
    // between the replicas, until told to stop.
    let stop = tokio_util::sync::CancellationToken::new();
    let results: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let mut senders = JoinSet::new();
    for sender in 0..4 {
        let (endpoints, fake, secret, stop, results) = (
            endpoints.clone(),
            Arc::clone(fake),
            up.secret.clone(),
            stop.clone(),
            Arc::clone(&results),
        );
        senders.spawn(async move {
            let mut n = sender;
            while !stop.is_cancelled() {
                let workflow = workflow_on_hold(&fake);
                let delivery = Delivery::new_approve(&secret, workflow);
                let reply = endpoints[n % 2].try_deliver(&delivery).await;
                results.lock().unwrap().push((workflow, delivery, reply));
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }
    let count = |f: &dyn Fn(&Result<Reply, String>) -> bool| {
        results.lock().unwrap().iter().filter(|r| f(&r.2)).count()
    };
    let accepted: fn(&Result<Reply, String>) -> bool =
        |r| r.as_ref().is_ok_and(|r| r.status == 202);
    let refused: fn(&Result<Reply, String>) -> bool = |r| r.as_ref().is_ok_and(|r| r.status >= 500);
    // Waits until `at_least` answers so far pass `f`.
    let counted = |what: &'static str, f: fn(&Result<Reply, String>) -> bool, at_least: usize| {
        let count = &count;
        eventually(what, Duration::from_secs(30), move || async move {
            (count(&f) >= at_least).then_some(())
        })
    };
    // Act: some deliveries in, then PostgreSQL stops (fast shutdown) and comes back.
    counted("20 accepted deliveries", accepted, 20).await;
    ctl.stop().await;
    let mut restart_guard = RestartOnDrop(&ctl, true);
    for endpoint in &endpoints {
        wait_ready_status(endpoint, 503, Duration::from_secs(10)).await;
    }
    let refused_before = count(&refused);
    counted("deliveries refused while down", refused, refused_before + 4).await;
    ctl.start().await;
    restart_guard.1 = false;
    for endpoint in &endpoints {
        wait_ready_status(endpoint, 200, Duration::from_secs(30)).await;
    }
    let accepted_at_restart = count(&accepted);
    counted(
        "20 accepted after the restart",
        accepted,
        accepted_at_restart + 20,
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
    let pool = db_pool(&up.db).await;
    all_tasks_finished(&pool, Duration::from_secs(60)).await;
    let calls = fake.calls();
    let outcomes = outcomes_by_workflow(&pool).await;
    for (workflow, _, reply) in &results {
        let calls_for = approve_calls(&calls, *workflow);
        if reply.as_ref().unwrap().status == 202 {
            assert_eq!(calls_for, 1, "accepted workflow {workflow}");
            assert_eq!(
                outcomes.get(workflow),
                Some(&vec![(TaskStatus::Succeeded, Some(Outcome::Approved))]),
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
        let reply = endpoints[0].deliver(delivery).await;
        assert!(
            reply.status == 202 || reply.body["status"] == "duplicate",
            "retry of {workflow}: {} {}",
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
    let Some(_) = postgres::admin_url_or_skip() else {
        return;
    };
    let db = TestDatabase::new().await;
    let store = Store::connect(
        &SecretString::from(db.url.clone()),
        &StoreOptions::default(),
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
