//! The chaos suite (issue 18): the real binary under faults, then a checker over the whole
//! history. SQLite with one process (`chaos_sqlite`), PostgreSQL with three replicas
//! (`chaos_postgres`, skipped with a printed line when `APPROVER_TEST_POSTGRES_URL` is unset, and
//! failed instead with `APPROVER_REQUIRE_POSTGRES=1`).
//!
//! - `plan`: the faults, deliveries and probes of a run, a pure function of the seed;
//! - `proxy`: the TCP proxy between the replicas and PostgreSQL (refuse, blackhole, reset);
//! - `supervisor`: the service's processes (SIGSTOP/SIGCONT, SIGKILL, SIGTERM, restart);
//! - `run`: one run (chaos, drain with the faults off, the history read back);
//! - `checker`: the four rules over the history, a pure function.
//!
//! CI runs a short fixed set of seeds; `CHAOS_SEEDS=3,4` and `CHAOS_SECONDS=60` change
//! them (`scripts/chaos --seconds N --seed S [--backend postgres|sqlite]` for a soak). Every
//! seed runs even when an earlier one fails; the test fails at the end, naming each failed
//! seed and the rules it broke. Each run prints its figures, the faults injected and the seed,
//! and leaves its logs and `report.txt` under `target/tmp/chaos/<backend>-seed-<seed>/`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod checker;
mod plan;
mod proxy;
mod run;
mod supervisor;

use std::io::Write as _;
use std::time::Instant;

use plan::Backend;

/// One run at a time in this binary: the runs measure leases and deadlines in seconds, and
/// two at once on two cores would blur them.
static ONE_RUN_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn seeds(backend: Backend) -> Vec<u64> {
    match std::env::var("CHAOS_SEEDS") {
        Ok(list) if !list.trim().is_empty() => list
            .split(',')
            .map(|s| {
                s.trim()
                    .parse()
                    .expect("CHAOS_SEEDS: comma-separated integers")
            })
            .collect(),
        _ => backend.ci_seeds().to_vec(),
    }
}

fn chaos_secs(backend: Backend) -> f64 {
    match std::env::var("CHAOS_SECONDS") {
        Ok(secs) if !secs.trim().is_empty() => {
            let secs: f64 = secs.trim().parse().expect("CHAOS_SECONDS: a number");
            assert!(secs >= 10.0, "CHAOS_SECONDS: at least 10");
            secs
        }
        _ => backend.ci_chaos_secs(),
    }
}

/// Straight to the process's stderr, past the test harness's capture: the figures and a
/// skipped backend show in a plain `cargo test` too.
fn loud(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

async fn run_seeds(backend: Backend) {
    let _turn = ONE_RUN_AT_A_TIME.lock().await;
    let mut summary = Vec::new();
    let mut failed = Vec::new();
    for seed in seeds(backend) {
        let started = Instant::now();
        let outcome = run::run(seed, backend, chaos_secs(backend)).await;
        let took = started.elapsed().as_secs_f64();
        loud(&format!("{}  (run took {took:.1} s)", outcome.text));
        let rules: Vec<&str> = outcome
            .report
            .rules_broken()
            .iter()
            .map(|r| r.describe())
            .collect();
        summary.push(format!(
            "seed {seed}: {} in {took:.1} s; {}{}",
            if outcome.report.passed() {
                "passed"
            } else {
                "FAILED"
            },
            outcome.report.figures,
            if rules.is_empty() {
                String::new()
            } else {
                format!("; broke: {}", rules.join("; "))
            }
        ));
        if !outcome.report.passed() {
            failed.push(seed);
        }
    }
    let summary = format!(
        "=== chaos on {}: {} seed(s), {} failed\n{}",
        backend.name(),
        summary.len(),
        failed.len(),
        summary.join("\n")
    );
    loud(&summary);
    let file = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("chaos")
        .join(format!("summary-{}.txt", backend.name()));
    let _ = std::fs::write(file, format!("{summary}\n"));
    assert!(
        failed.is_empty(),
        "chaos seeds failed on {}: {failed:?}\n{summary}",
        backend.name()
    );
}

// The runs take minutes: CI runs them on their own (`.ci/run`, `.ci/postgres.sh`), so the
// README's `cargo test` keeps its pace; the checker, plan and proxy tests above run in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a chaos run: cargo test --test chaos chaos_sqlite -- --ignored (CI runs it)"]
async fn chaos_sqlite() {
    run_seeds(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a chaos run: .ci/postgres.sh -- cargo test --test chaos chaos_postgres -- --ignored"]
async fn chaos_postgres() {
    // Without a server: a loud SKIPPED line (a failure with APPROVER_REQUIRE_POSTGRES=1); run it
    // with `bash .ci/postgres.sh -- cargo test --locked --test chaos chaos_postgres -- --ignored`.
    if approver_test_support::postgres::admin_url_or_skip().is_some() {
        run_seeds(Backend::Postgres).await;
    }
}
