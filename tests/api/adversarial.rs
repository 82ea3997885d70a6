//! The attacks a public port sees, against the real binary on loopback: slow bodies,
//! unfinished headers, idle keep-alive connections during SIGTERM, a burst of signed
//! deliveries over the cap, a forged-signature flood, and an approve whose answer is lost at
//! the deadline. Each test bounds its own time; none sleeps to synchronise (they await the
//! condition they check).

use std::time::Duration;

use approver_test_support::fake_circleci::Fault;
use sym_circleci_approver::domain::task::{Outcome, TaskStatus};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;
use uuid::Uuid;

use crate::harness::*;

const LABEL: &str = "the binary";

/// The value of `series` at `service` now.
async fn metric(service: &ServiceProcess, series: &str) -> f64 {
    sample(&service.endpoint().metrics().await, series)
}

/// Waits until `series` at `service` reaches `at_least`; returns its value then.
async fn metric_reaches(service: &ServiceProcess, series: &str, at_least: f64) -> f64 {
    eventually(
        &format!("{series} to reach {at_least}"),
        Duration::from_secs(10),
        || async {
            let value = metric(service, series).await;
            (value >= at_least).then_some(value)
        },
    )
    .await
}

/// Waits for `n` accepted approve calls at the fake.
async fn approved(up: &Upstreams, n: usize) -> bool {
    up.fake
        .wait_for_calls(Duration::from_secs(60), |c| accepted(c, "approve") >= n)
        .await
}

/// Opens a connection and sends `head` (then nothing more).
async fn stalled(addr: std::net::SocketAddr, head: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head).await.unwrap();
    stream.flush().await.unwrap();
    stream
}

/// Waits until the server closes `stream` (EOF or reset); returns how long that took.
async fn closed_by_server(mut stream: TcpStream, timeout: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // a 408 answer, then the close
            }
        }
    };
    tokio::time::timeout(timeout, read).await.ok()?;
    Some(started.elapsed())
}

const SLOW_BODY: &[u8] = b"POST /webhooks/sym HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{";
const HALF_HEADERS: &[u8] = b"POST /webhooks/sym HTTP/1.1\r\nHost: x\r\n";

#[tokio::test]
async fn three_hundred_slow_bodies_do_not_stop_a_signed_delivery_and_are_cut_off() {
    let up = Upstreams::new().await;
    let service = ServiceProcess::start(LABEL, &up.env().set("BODY_READ_TIMEOUT", "2s")).await;
    let mut slow = Vec::new();
    for _ in 0..300 {
        slow.push(stalled(service.addr(), SLOW_BODY).await);
    }

    let workflow = workflow_on_hold(&up.fake);
    let answer = service
        .endpoint()
        .deliver(&Delivery::new_approve(&up.secret, workflow))
        .await;

    assert_eq!(
        answer.status, 202,
        "a signed delivery gets through the slow bodies"
    );
    assert!(approved(&up, 1).await);
    // Every slow body is answered 408 and its connection closed.
    let closes = futures_close_all(slow, Duration::from_secs(20)).await;
    assert_eq!(closes.iter().filter(|c| c.is_some()).count(), 300);
    assert_eq!(
        metric_reaches(
            &service,
            "sym_approver_connections_closed_total{reason=\"body_timeout\"}",
            300.0
        )
        .await,
        300.0
    );
}

/// Waits for the server to close every stream, concurrently.
async fn futures_close_all(streams: Vec<TcpStream>, timeout: Duration) -> Vec<Option<Duration>> {
    let handles: Vec<_> = streams
        .into_iter()
        .map(|s| tokio::spawn(closed_by_server(s, timeout)))
        .collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

#[tokio::test]
async fn unfinished_headers_are_closed_after_the_header_read_timeout() {
    let up = Upstreams::new().await;
    let service = ServiceProcess::start(LABEL, &up.env().set("HEADER_READ_TIMEOUT", "2s")).await;
    let mut half = Vec::new();
    for _ in 0..50 {
        half.push(stalled(service.addr(), HALF_HEADERS).await);
    }

    let closes = futures_close_all(half, Duration::from_secs(20)).await;

    assert!(
        closes.iter().all(Option::is_some),
        "every connection closed: {closes:?}"
    );
    let slowest = closes.iter().flatten().max().copied().unwrap_or_default();
    assert!(
        slowest < Duration::from_secs(10),
        "closed after {slowest:?}"
    );
    assert_eq!(
        metric_reaches(
            &service,
            "sym_approver_connections_closed_total{reason=\"header_timeout\"}",
            50.0
        )
        .await,
        50.0
    );
}

#[tokio::test]
async fn sigterm_with_idle_keep_alive_and_half_open_connections_exits_0_promptly() {
    // Defaults, but for a short grace so a stuck drain would show.
    let up = Upstreams::new().await;
    let mut service = ServiceProcess::start(LABEL, &up.env().set("SHUTDOWN_GRACE", "3s")).await;
    // Idle keep-alive connections: one request answered each, then silence.
    let mut idle = Vec::new();
    for _ in 0..20 {
        let mut stream = TcpStream::connect(service.addr()).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        idle.push(stream);
    }
    let mut half = Vec::new();
    for _ in 0..20 {
        half.push(stalled(service.addr(), HALF_HEADERS).await);
    }
    // A pending task stays in the store for the next start.
    up.fake
        .add_standard_workflow(Uuid::new_v4(), PROJECT, HOLD, "blocked");

    let started = Instant::now();
    let status = service.stop().await;
    let took = started.elapsed();

    assert_eq!(status.code(), Some(0), "{}", service.output());
    // Nothing was in flight: no need to wait out the grace period.
    assert!(took < Duration::from_secs(3), "exited after {took:?}");
    eprintln!("sigterm: exited 0 after {took:?} with 40 idle/half-open connections");
    drop((idle, half));
}

#[tokio::test]
async fn a_burst_over_the_store_write_cap_is_refused_retryably_and_each_event_is_approved_once() {
    let up = Upstreams::new().await;
    let service = ServiceProcess::start(LABEL, &up.env().set("MAX_CONCURRENT_REQUESTS", "1")).await;
    let deliveries: Vec<Delivery> = (0..60)
        .map(|_| Delivery::new_approve(&up.secret, workflow_on_hold(&up.fake)))
        .collect();

    let mut refused = 0;
    let mut pending: Vec<Delivery> = deliveries.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pending.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} never accepted",
            pending.len()
        );
        let answers = futures_send_all(&service, &pending).await;
        let mut again = Vec::new();
        for (delivery, (status, retry_after)) in pending.iter().zip(answers) {
            match status {
                200 | 202 => {}
                429 | 503 => {
                    refused += 1;
                    assert!(retry_after.is_some(), "a {status} says when to retry");
                    again.push(delivery.clone());
                }
                other => panic!("a signed delivery got {other}"),
            }
        }
        pending = again;
    }

    assert!(approved(&up, 60).await);
    let calls = up.fake.calls_of("approve");
    let mut per_workflow = std::collections::HashMap::new();
    for call in calls.iter().filter(|c| c.status == 202) {
        *per_workflow.entry(call.path.clone()).or_insert(0) += 1;
    }
    assert_eq!(per_workflow.len(), 60);
    assert!(per_workflow.values().all(|n| *n == 1), "exactly once each");
    eprintln!("burst: {refused} refusals, all retried to acceptance");
}

async fn futures_send_all(
    service: &ServiceProcess,
    deliveries: &[Delivery],
) -> Vec<(u16, Option<String>)> {
    let handles: Vec<_> = deliveries
        .iter()
        .map(|d| {
            let (endpoint, delivery) = (service.endpoint().clone(), d.clone());
            tokio::spawn(async move {
                let answer = endpoint.deliver(&delivery).await;
                let retry_after = answer
                    .headers
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                (answer.status, retry_after)
            })
        })
        .collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

#[tokio::test]
async fn signed_deliveries_go_through_a_forged_flood_which_is_counted_but_barely_logged() {
    let up = Upstreams::new().await;
    let service = ServiceProcess::start(LABEL, &up.env()).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let (_, forger) = new_secret();
    let mut flooders = Vec::new();
    for _ in 0..8 {
        let client = reqwest::Client::new();
        let url = service.url("/webhooks/sym");
        let stop = stop.clone();
        let forger = forger.clone();
        flooders.push(tokio::spawn(async move {
            let mut sent = 0u64;
            while !stop.is_cancelled() {
                let forged = Delivery::new_approve(&forger, Uuid::new_v4());
                let status = forged.post(&client, &url).send().await.unwrap().status();
                assert_eq!(status, 401);
                sent += 1;
            }
            sent
        }));
    }

    let started = Instant::now();
    for _ in 0..20 {
        let workflow = workflow_on_hold(&up.fake);
        let answer = service
            .endpoint()
            .deliver(&Delivery::new_approve(&up.secret, workflow))
            .await;
        assert_eq!(
            answer.status, 202,
            "signed deliveries are accepted during the flood"
        );
    }
    let flood_secs = started.elapsed().as_secs_f64().max(1.0);
    stop.cancel();
    let mut forged = 0;
    for flooder in flooders {
        forged += flooder.await.unwrap();
    }

    assert!(approved(&up, 20).await);
    let counted = metric(
        &service,
        "sym_approver_deliveries_total{outcome=\"rejected_signature\"}",
    )
    .await;
    assert_eq!(counted as u64, forged, "every forgery is counted");
    let logged = service
        .stdout
        .events()
        .iter()
        .filter(|e| e["message"] == "webhook signature check failed")
        .count();
    assert!(
        (logged as f64) <= 5.0 * (flood_secs + 2.0),
        "{logged} log lines for {forged} forgeries in {flood_secs:.1} s"
    );
    eprintln!(
        "flood: {forged} forged in {flood_secs:.1} s, {logged} logged, 20/20 signed accepted"
    );
}

#[tokio::test]
async fn an_approve_whose_answer_is_lost_at_the_deadline_is_re_read_and_recorded_approved() {
    // The task's deadline passes while its approve call is in flight; CircleCI carries it out
    // but the answer never arrives in time.
    let app = TestApp::builder()
        .stepped()
        .flags(["--approval-timeout=30s", "--circleci-timeout=300ms"])
        .spawn()
        .await;
    let workflow = app.workflow("blocked");
    let delivery = app.approve(workflow).await;
    assert_eq!(app.step().await, 1, "blocked: polled");

    app.fake.set_job_status(workflow, HOLD, "on_hold");
    app.fake.push_fault(
        Fault::status(202)
            .on("approve")
            .after_effect()
            .delayed(Duration::from_secs(1)),
    );
    app.advance(Duration::from_secs(30));
    assert_eq!(
        app.step().await,
        1,
        "the approve at the deadline, then the one re-read"
    );

    let task = app.task_of(&delivery).await;
    assert_eq!(
        (task.status, task.outcome),
        (TaskStatus::Succeeded, Some(Outcome::Approved)),
        "{task:?}"
    );
    assert_eq!(app.fake.calls_of("approve").len(), 1);
}

#[tokio::test]
async fn concurrent_deliveries_share_commits_and_every_one_answered_2xx_is_stored() {
    let up = Upstreams::new().await;
    let service = ServiceProcess::start(LABEL, &up.env()).await;
    let deliveries: Vec<Delivery> = (0..100)
        .map(|_| Delivery::new_approve(&up.secret, workflow_on_hold(&up.fake)))
        .collect();

    let answers = futures_send_all(&service, &deliveries).await;

    assert!(
        answers.iter().all(|(status, _)| *status == 202),
        "{answers:?}"
    );
    assert!(approved(&up, 100).await);
    if up
        .db
        .skip_on_postgres("its group-commit half (PostgreSQL commits each delivery on its own)")
    {
        return;
    }
    let batches = metric(&service, "sym_approver_intake_batch_size_count").await;
    let stored = metric(&service, "sym_approver_intake_batch_size_sum").await;
    assert_eq!(stored, 100.0);
    assert!(
        batches < stored,
        "{stored} deliveries in {batches} transactions"
    );
    eprintln!("group commit: {stored} deliveries in {batches} transactions");
}
