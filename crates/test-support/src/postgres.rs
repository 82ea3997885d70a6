//! The PostgreSQL server a test run may have (`.ci/postgres.sh` starts a throwaway one), as
//! the environment names it, and the rule for the tests that need it:
//!
//! - `APPROVER_TEST_POSTGRES_URL`: an admin URL (each test makes a database of its own);
//! - `APPROVER_TEST_PG_CTL`: a `pg_ctl -D … -l …` command line, for the tests that stop and
//!   start the server;
//! - `APPROVER_REQUIRE_POSTGRES=1` (CI's PostgreSQL run): a test that needs one of them fails
//!   when it is missing, instead of being skipped.
//!
//! Without them such a test is skipped, loudly: libtest knows no skipped state (the test
//! passes), so it writes `SKIPPED: <test>: …` straight to stderr, past the test harness's
//! capture, where a plain `cargo test` shows it.

use std::io::Write as _;
use std::process::Stdio;

pub const URL_VAR: &str = "APPROVER_TEST_POSTGRES_URL";
pub const CTL_VAR: &str = "APPROVER_TEST_PG_CTL";
pub const REQUIRE_VAR: &str = "APPROVER_REQUIRE_POSTGRES";

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// `APPROVER_REQUIRE_POSTGRES=1`: the tests that need PostgreSQL must run.
pub fn required() -> bool {
    std::env::var(REQUIRE_VAR).is_ok_and(|v| v.trim() == "1")
}

/// The test running on this thread (libtest names each test's thread after it).
pub fn current_test() -> String {
    std::thread::current().name().unwrap_or("a test").to_owned()
}

/// Says on stderr, past the test harness's capture, that `test` did not run and why.
pub fn skipped(test: &str, why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED: {test}: {why}");
}

/// `var`, or None when it is unset; with `APPROVER_REQUIRE_POSTGRES=1`, a panic naming `test`.
fn needed(test: &str, var_name: &str, what: &str) -> Option<String> {
    let value = var(var_name);
    if value.is_none() && required() {
        panic!(
            "{test}: {REQUIRE_VAR}=1, but {var_name} is not set: {what} must run here \
             (bash .ci/postgres.sh sets it)"
        );
    }
    value
}

/// The admin URL when the run has a PostgreSQL server, for a test that runs on either
/// backend: None means SQLite (and is a panic with `APPROVER_REQUIRE_POSTGRES=1`).
pub fn admin_url() -> Option<String> {
    needed(&current_test(), URL_VAR, "the suite on PostgreSQL")
}

/// The admin URL for a test that runs only on PostgreSQL; None after a loud `SKIPPED` line
/// (a panic with `APPROVER_REQUIRE_POSTGRES=1`).
pub fn admin_url_or_skip() -> Option<String> {
    let test = current_test();
    let url = needed(&test, URL_VAR, "the PostgreSQL tests");
    if url.is_none() {
        skipped(
            &test,
            &format!(
                "needs {URL_VAR} (a PostgreSQL admin URL; bash .ci/postgres.sh sets it, and CI \
                 fails without it)"
            ),
        );
    }
    url
}

/// Stops and starts the test run's PostgreSQL server (`APPROVER_TEST_PG_CTL`).
pub struct PgCtl(String);

impl PgCtl {
    /// The server's control for a test that restarts it; None after a loud `SKIPPED` line
    /// naming `what` (a panic with `APPROVER_REQUIRE_POSTGRES=1`).
    pub fn or_skip(what: &str) -> Option<Self> {
        let test = current_test();
        let ctl = needed(&test, CTL_VAR, what);
        if ctl.is_none() {
            skipped(
                &test,
                &format!(
                    "{what} needs {CTL_VAR} to restart PostgreSQL (.ci/postgres.sh sets it for \
                     the replica and chaos runs)"
                ),
            );
        }
        ctl.map(Self)
    }

    /// Runs `pg_ctl … args`; Err with its output when it fails. (The output goes through a
    /// file, not a pipe: a server that `pg_ctl start` leaves running must not hold the pipe.)
    pub async fn run(&self, args: &str) -> Result<(), String> {
        let log = std::env::temp_dir().join(format!("pg_ctl-{}.out", uuid::Uuid::new_v4()));
        let status = tokio::process::Command::new("bash")
            .arg("-c")
            .arg(format!("{} {args} >{} 2>&1", self.0, log.display()))
            .stdin(Stdio::null())
            .status()
            .await;
        let output = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        match status {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(format!("pg_ctl {args} failed ({status}): {output}")),
            Err(e) => Err(format!("pg_ctl {args}: {e}")),
        }
    }

    /// Fast shutdown: open sessions are terminated, as in a failover or a restart.
    pub async fn stop(&self) {
        if let Err(failed) = self.run("stop -m fast").await {
            panic!("{failed}");
        }
    }

    pub async fn start(&self) {
        if let Err(failed) = self.run("start").await {
            panic!("{failed}");
        }
    }

    /// Starts the server without a runtime (from a `Drop`, after a test failed with the server
    /// stopped); best effort.
    pub fn start_blocking(&self) {
        let _ = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!("{} start", self.0))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status();
    }
}
