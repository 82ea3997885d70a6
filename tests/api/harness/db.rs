//! Each test's store: a fresh SQLite file, or a fresh PostgreSQL database when the run has a
//! server (`APPROVER_TEST_POSTGRES_URL`, a throwaway cluster: CI deletes it after the run).
//! The rule for tests that need PostgreSQL (skipped loudly without it, failed when
//! `APPROVER_REQUIRE_POSTGRES=1`) is `approver_test_support::postgres`, shared with the chaos
//! suite.

use approver_test_support::postgres;
use uuid::Uuid;

pub struct TestDatabase {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    pub async fn new() -> Self {
        match postgres::admin_url() {
            Some(admin) => {
                let name = format!("approver_test_{}", Uuid::new_v4().simple());
                let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
                    .await
                    .expect("APPROVER_TEST_POSTGRES_URL reachable");
                sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
                    .await
                    .expect("create test database");
                let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
                Self {
                    url: format!("{base}/{name}"),
                    _dir: None,
                }
            }
            None => {
                let dir = tempfile::tempdir().expect("temp dir");
                Self {
                    url: format!("sqlite://{}/approver.db", dir.path().display()),
                    _dir: Some(dir),
                }
            }
        }
    }

    pub fn is_postgres(&self) -> bool {
        self.url.starts_with("postgres")
    }

    /// For a test about SQLite only: true (after a loud `SKIPPED` line) on PostgreSQL.
    pub fn skip_on_postgres(&self, why: &str) -> bool {
        if self.is_postgres() {
            postgres::skipped(&postgres::current_test(), why);
        }
        self.is_postgres()
    }
}
