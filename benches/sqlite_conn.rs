//! What a SQLite transaction costs through sqlx's pool of one connection, against the same
//! transaction on a connection its user holds, as the store's write turn holds its two
//! (docs/writes.md, "No pool on SQLite"). sqlx pings a pooled connection each time it goes
//! back to the pool: a round trip to the connection's thread that the next user waits for.
//!
//! And what the round trips themselves cost: the same five inserts sent as ONE command (one
//! multi-statement string, its values written into it: constants of this program), so SQLite's
//! thread runs the whole transaction without waiting for the runtime between statements, as a
//! driver that runs a transaction in one call would. Timed back to back (busy threads), one
//! transaction every 2 ms (both sides asleep between) and one every 33 ms (the latency row's
//! pace, scripts/bench: long enough for the CPUs to halt, as on an idle service).
//!
//! `cargo bench --bench sqlite_conn`; see benches/README.md. A plain program, not criterion:
//! the point is transactions back to back, as a busy writer runs them, timed as a run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::Instant;

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyConnection, Connection, Executor};

/// `synchronous = OFF`: the figure is the round trips to SQLite's thread, not the disk.
const SETUP: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF; \
                     CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)";
const TRANSACTIONS: u32 = 300;
const ROUNDS: usize = 7;
/// Fewer at the latency row's pace, so a pass stays under two seconds.
const PACED_TRANSACTIONS: u32 = 50;

/// Five inserts in a transaction: seven round trips with `BEGIN` and `COMMIT`.
async fn five_inserts(conn: &mut AnyConnection) {
    let mut tx = conn.begin().await.unwrap();
    for v in ["a", "b", "c", "d", "e"] {
        sqlx::query("INSERT INTO t (v) VALUES (?)")
            .bind(v)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
}

/// The same transaction in one command: one round trip to SQLite's thread.
async fn five_inserts_one_call(conn: &mut AnyConnection) {
    sqlx::raw_sql(
        "BEGIN; INSERT INTO t (v) VALUES ('a'); INSERT INTO t (v) VALUES ('b'); \
         INSERT INTO t (v) VALUES ('c'); INSERT INTO t (v) VALUES ('d'); \
         INSERT INTO t (v) VALUES ('e'); COMMIT",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
}

/// One pass of `TRANSACTIONS` transactions on `conn` (as seven commands, or as one), `gap`
/// asleep before each: the median µs of one transaction.
fn pass(
    runtime: &tokio::runtime::Runtime,
    gap: Option<std::time::Duration>,
    conn: &mut AnyConnection,
    one_call: bool,
    transactions: u32,
) -> f64 {
    median(runtime.block_on(async {
        let mut each = Vec::new();
        for _ in 0..transactions {
            if let Some(gap) = gap {
                tokio::time::sleep(gap).await;
            }
            let started = Instant::now();
            if one_call {
                five_inserts_one_call(conn).await;
            } else {
                five_inserts(conn).await;
            }
            each.push(started.elapsed().as_secs_f64() * 1e6);
        }
        each
    }))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    sqlx::any::install_default_drivers();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("bench.db").display()
    );
    let (pool, mut held) = runtime.block_on(async {
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute(SETUP).await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .unwrap();
        let mut held = AnyConnection::connect(&url).await.unwrap();
        held.execute(SETUP).await.unwrap();
        (pool, held)
    });
    let (mut pooled, mut own) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let started = Instant::now();
        runtime.block_on(async {
            for _ in 0..TRANSACTIONS {
                let mut conn = pool.acquire().await.unwrap();
                five_inserts(&mut conn).await;
            }
        });
        pooled.push(started.elapsed().as_secs_f64() * 1e6 / f64::from(TRANSACTIONS));
        let started = Instant::now();
        runtime.block_on(async {
            for _ in 0..TRANSACTIONS {
                five_inserts(&mut held).await;
            }
        });
        own.push(started.elapsed().as_secs_f64() * 1e6 / f64::from(TRANSACTIONS));
    }
    println!(
        "a transaction of five inserts, back to back (median of {ROUNDS} runs of {TRANSACTIONS}):\n  \
         pool of one connection: {:.0} µs\n  held connection:        {:.0} µs",
        median(pooled),
        median(own)
    );
    // The four alternate within each round, so a change in the machine's state over the run
    // (where the scheduler puts the two threads) falls on all four alike.
    let gap = Some(std::time::Duration::from_millis(2));
    // The latency row's pace (30 deliveries a second): long enough for both CPUs to sleep.
    let paced = Some(std::time::Duration::from_millis(33));
    let mut passes: [Vec<f64>; 6] = Default::default();
    for _ in 0..ROUNDS {
        passes[0].push(pass(&runtime, None, &mut held, false, TRANSACTIONS));
        passes[1].push(pass(&runtime, None, &mut held, true, TRANSACTIONS));
        passes[2].push(pass(&runtime, gap, &mut held, false, TRANSACTIONS));
        passes[3].push(pass(&runtime, gap, &mut held, true, TRANSACTIONS));
        passes[4].push(pass(&runtime, paced, &mut held, false, PACED_TRANSACTIONS));
        passes[5].push(pass(&runtime, paced, &mut held, true, PACED_TRANSACTIONS));
    }
    let [busy_seven, busy_one, idle_seven, idle_one, paced_seven, paced_one] = passes.map(median);
    println!(
        "on the held connection, seven statements as seven commands or as one \
         (median transaction, median of {ROUNDS} alternating passes of {TRANSACTIONS}):\n  \
         back to back:   {busy_seven:.0} µs as seven, {busy_one:.0} µs as one\n  \
         one every 2 ms: {idle_seven:.0} µs as seven, {idle_one:.0} µs as one\n  \
         one every 33 ms: {paced_seven:.0} µs as seven, {paced_one:.0} µs as one \
         ({PACED_TRANSACTIONS} a pass)"
    );
}
