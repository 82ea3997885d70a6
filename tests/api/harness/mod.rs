//! The integration harness, one thing: every test of this binary reaches the service through
//! it.
//!
//! - [`app`]: the service in-process, on a real port, with its own fake CircleCI and store:
//!   `TestApp::builder()…spawn()` (flags, tokens, secrets, a stepped worker, a fake Sym API,
//!   a restart on the same fake and store), and what a test asks of it (signed deliveries,
//!   the audit, gate and verdict APIs, the stored task and gate as the product's enums);
//! - [`child`]: the real binary as a child process ([`ServiceProcess`]): its environment, its
//!   output, waits for a log line, for listening and for the exit, signals, signed deliveries;
//! - [`db`]: each test's store (SQLite, or PostgreSQL when `APPROVER_TEST_POSTGRES_URL` is
//!   set) and the rule for tests that need PostgreSQL: skipped loudly without it, failed when
//!   `APPROVER_REQUIRE_POSTGRES=1`;
//! - [`wire`]: what travels: events, signatures, answers, metrics samples, shared tokens.
//!
//! Waits are for a condition (the worker's notification, a log line, an exit, a call at the
//! fake), each with a deadline; none sleeps a fixed time to let something happen.

pub mod app;
pub mod child;
pub mod db;
pub mod wire;

use std::future::Future;
use std::time::Duration;

pub use app::{AppBuilder, Gate, TestApp};
pub use child::{Delivery, Endpoint, Env, ServiceProcess, Upstreams};
pub use db::TestDatabase;
pub use wire::*;

/// How often [`eventually`] looks again.
const POLL: Duration = Duration::from_millis(50);

/// Waits until `check` gives a value, and returns it; for what only a look can tell (a row
/// another process writes, a metric, an HTTP status): looked at again every 50 ms, and a panic
/// naming `what` at `timeout`.
pub async fn eventually<T, F: Future<Output = Option<T>>>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}
