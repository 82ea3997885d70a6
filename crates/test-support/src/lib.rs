//! Test doubles of the systems sym-circleci-approver calls, each a real HTTP server on
//! loopback that tests (and the demo, and load runs) drive and read back: [`fake_circleci`]
//! (the CircleCI API v2 calls the service makes, with faults, pages, reruns and UI clicks) and
//! [`fake_sym`] (Sym's `GET /runs/{id}` and `POST /events/request`); and [`postgres`], the
//! PostgreSQL server a test run may have and the rule for the tests that need it.
//!
//! This crate knows nothing of the service: it serves the upstreams' wire formats and reads the
//! test run's environment. The service's release binary never links it (only the
//! `approver-dev` binary and the tests do).
#![forbid(unsafe_code)]

pub mod fake_circleci;
pub mod fake_sym;
pub mod postgres;

/// The approval job the service releases by default (its `HOLD_JOB_NAMES` default).
pub const DEFAULT_HOLD_JOB_NAME: &str = "wait_for_sym_approval";

/// Serves a test double's `app` on `listener` in a task of its own, until the returned guard is
/// dropped (the double then stops accepting and winds down its connections).
pub fn serve_until_dropped(
    listener: tokio::net::TcpListener,
    app: axum::Router,
) -> tokio_util::sync::DropGuard {
    let stop = tokio_util::sync::CancellationToken::new();
    let stopped = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(stopped.cancelled_owned())
            .await;
    });
    stop.drop_guard()
}

/// Unix milliseconds of a system time (0 before the epoch).
pub(crate) fn unix_ms(at: std::time::SystemTime) -> i64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
