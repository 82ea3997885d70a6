//! What a SQLite transaction costs through sqlx's pool of one connection, against the same
//! transaction on a connection its user holds, as the store's write turn holds its two
//! (docs/writes.md, "No pool on SQLite"). sqlx pings a pooled connection each time it goes
//! back to the pool: a round trip to the connection's thread that the next user waits for.
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
}
