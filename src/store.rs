//! The durable store: deliveries, the tasks they create, and every CircleCI attempt.
//!
//! One [`Store`] type is the interface the rest of the service uses; the backend (embedded
//! SQLite, or PostgreSQL for several replicas) is chosen by `DATABASE_URL`. Queries are written
//! once, in the SQL both backends share (`$n` placeholders, unix-millisecond integers), through
//! sqlx's `Any` driver. The few places where the dialects differ are spelled out per backend.
//!
//! Correctness lives in the database, not in process memory:
//! - deduplication: partial unique indexes allow one original delivery per Sym id and per
//!   `webhook-id`; a conflicting insert becomes a `duplicate` row pointing at the original;
//! - a task is worked by one process at a time: claiming sets a lease, and every later write
//!   is guarded by `lease_owner`, so a process that lost its lease cannot overwrite the result.
//!   On PostgreSQL, claims are serialised by a transaction-level advisory lock (and the row by
//!   `FOR UPDATE SKIP LOCKED`), so two replicas never take two tasks of one workflow at once.
//!
//! The database going away is an ordinary, bounded error: every operation has a client-side
//! time limit (getting a connection + statement time), the pool drops dead connections and
//! reconnects by itself, and [`Store::connect`] waits a bounded time for a database that is not
//! up yet (a replica starting beside its PostgreSQL).

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use secrecy::{ExposeSecret, SecretString};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, Connection as _, Executor, Row};
use uuid::Uuid;

use crate::circleci::CallRecord;
use crate::inbound::sym_event::SymEvent;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    // The cause is shown inline, not chained as a source too (it would print twice).
    #[error("database error: {0}")]
    Database(sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    #[error("{0}")]
    Invalid(String),
    /// The operation did not finish within the store's time limit (the database is gone or
    /// hanging); nothing is known to have been written.
    #[error("the store did not answer within {0:?}")]
    TimedOut(Duration),
    /// At startup: the database stayed unreachable. `database` has no password.
    #[error("the store at {database} did not become reachable within {waited:?}: {last_error}")]
    Unreachable {
        database: String,
        waited: Duration,
        last_error: Box<StoreError>,
    },
}

impl StoreError {
    /// Could waiting help? True for a database that is down, starting, restarting, out of
    /// connections or unreachable over the network; false for a wrong password, a missing
    /// database, a bad URL or a failed migration.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::TimedOut(_) => true,
            Self::Database(e) | Self::Migrate(sqlx::migrate::MigrateError::Execute(e)) => {
                is_transient_sqlx(e)
            }
            _ => false,
        }
    }
}

fn is_transient_sqlx(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 53: insufficient resources (too many connections);
            // 57P01-57P03: shutting down, crashed, starting up.
            code.starts_with("08") || code.starts_with("53") || code.starts_with("57P")
        }),
        _ => false,
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(e)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        Self::Migrate(e)
    }
}

/// Unix milliseconds now; the store keeps every time in this form.
pub fn now_ms() -> i64 {
    to_ms(SystemTime::now())
}

pub fn to_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// What a task does at CircleCI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskAction {
    /// Approve the workflow's hold job.
    Approve,
    /// Cancel the workflow (a denied or expired request, with `ON_DENY=cancel`).
    Cancel,
}

impl TaskAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approve => "approve",
            Self::Cancel => "cancel",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "approve" => Ok(Self::Approve),
            "cancel" => Ok(Self::Cancel),
            other => Err(StoreError::Invalid(format!(
                "unknown task action {other:?}"
            ))),
        }
    }
}

/// A task to create along with its delivery.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub action: TaskAction,
    pub workflow_id: Uuid,
    pub deadline_at: i64,
}

/// What recording a delivery did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// A new delivery with a task to work on.
    Queued {
        delivery_id: String,
        task_id: String,
    },
    /// A new delivery that asks nothing of us (an event type we do not act on).
    Ignored { delivery_id: String },
    /// Seen before (same Sym id or same webhook-id); `original_id` is the first delivery.
    Duplicate { original_id: String },
}

/// A claimed task, as the worker needs it.
#[derive(Debug, Clone)]
pub struct Task {
    pub id: String,
    pub delivery_id: String,
    pub action: TaskAction,
    pub workflow_id: Uuid,
    /// Steps already taken (drives the backoff).
    pub attempts: i64,
    pub created_at: i64,
    pub deadline_at: i64,
}

/// The hold job a task found, kept for the audit trail.
#[derive(Debug, Clone, Default)]
pub struct JobInfo {
    pub job_id: Option<String>,
    pub job_number: Option<i64>,
    pub project_slug: Option<String>,
}

/// Final state of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalStatus {
    Succeeded,
    Failed,
}

impl FinalStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// SQLite: the database file (for the one-serving-process lock).
    sqlite_file: Option<std::path::PathBuf>,
    /// Client-side bound on one operation, so a database that vanished mid-query (a network
    /// cut, where no error ever arrives) costs a bounded wait, never a hang.
    op_timeout: Duration,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// Pool settings.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub max_connections: u32,
    /// Time limit for getting a connection from the pool (and for connecting).
    pub acquire_timeout: Duration,
    /// Time limit for one statement: PostgreSQL `statement_timeout`, SQLite `busy_timeout`.
    pub statement_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(5),
        }
    }
}

/// How many times `DATABASE_CONNECT_TIMEOUT` a starting process waits for its database.
pub const STARTUP_PATIENCE_FACTOR: u32 = 12;

/// Key of the PostgreSQL advisory lock that serialises task claims across replicas.
const CLAIM_LOCK_KEY: i64 = 0x5379_6d43_6c61_696d; // "SymClaim"

impl Store {
    /// Connects, creating the SQLite file and its folder if needed, and migrates.
    ///
    /// A database that is not reachable yet (PostgreSQL still starting, a DNS name not there
    /// yet) is waited for, up to [`STARTUP_PATIENCE_FACTOR`] × `acquire_timeout` (60 s by
    /// default), with a log line per try; then the error names the database, without its
    /// password. Wrong credentials, a missing database or a failed migration fail at once.
    pub async fn connect(url: &SecretString, options: &StoreOptions) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let raw = url.expose_secret();
        let (backend, url, sqlite_file) = if raw.starts_with("sqlite:") {
            let (url, path) = prepare_sqlite_url(raw)?;
            (Backend::Sqlite, url, Some(path))
        } else if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            (Backend::Postgres, raw.to_owned(), None)
        } else {
            return Err(StoreError::Invalid(
                "DATABASE_URL must start with sqlite:// or postgres://".into(),
            ));
        };
        let shown = redact_url(raw);
        let patience = options
            .acquire_timeout
            .saturating_mul(STARTUP_PATIENCE_FACTOR);
        let started = Instant::now();
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let error = match Self::open(backend, &url, options, sqlite_file.clone()).await {
                Ok(store) => {
                    if attempt > 1 {
                        tracing::info!(database = %shown, attempt, "the store is reachable");
                    }
                    return Ok(store);
                }
                Err(e) => e,
            };
            let waited = started.elapsed();
            if !error.is_transient() {
                return Err(error);
            }
            if waited >= patience {
                return Err(StoreError::Unreachable {
                    database: shown,
                    waited,
                    last_error: Box::new(error),
                });
            }
            let pause = Duration::from_millis(250u64 << attempt.min(5))
                .min(Duration::from_secs(5))
                .min(patience - waited);
            tracing::warn!(
                database = %shown,
                attempt,
                error = %error,
                retry_in_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
                gives_up_in_s = (patience - waited).as_secs(),
                "the store is not reachable yet (DATABASE_URL); retrying"
            );
            tokio::time::sleep(pause).await;
        }
    }

    /// One attempt: migrate, then open the pool.
    async fn open(
        backend: Backend,
        url: &str,
        options: &StoreOptions,
        sqlite_file: Option<std::path::PathBuf>,
    ) -> Result<Self, StoreError> {
        let connect_timeout = options.acquire_timeout;
        if backend == Backend::Postgres {
            // Migrations run on a connection of their own, without the statement time limit
            // (a long migration, or waiting for another replica's migration, is legitimate).
            // sqlx's migrator holds a PostgreSQL advisory lock while it works, so replicas
            // starting at once apply each migration once, one after the other.
            let mut conn = tokio::time::timeout(connect_timeout, AnyConnection::connect(url))
                .await
                .map_err(|_| StoreError::TimedOut(connect_timeout))??;
            let migrated = POSTGRES_MIGRATIONS.run_direct(&mut conn).await;
            let _ = conn.close().await;
            migrated?;
        }

        let statement_ms = duration_ms(options.statement_timeout);
        let pool = AnyPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    match backend {
                        // WAL lets readers run beside the writer; FULL makes each commit
                        // durable before we answer 2xx; busy_timeout queues writers.
                        Backend::Sqlite => {
                            conn.execute(
                                format!(
                                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                                     PRAGMA busy_timeout = {statement_ms}; PRAGMA foreign_keys = ON;"
                                )
                                .as_str(),
                            )
                            .await?;
                        }
                        Backend::Postgres => {
                            conn.execute(format!("SET statement_timeout = {statement_ms}").as_str())
                                .await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await?;

        if backend == Backend::Sqlite {
            // One process owns a SQLite file: no lock needed.
            if let Err(e) = SQLITE_MIGRATIONS.run(&pool).await {
                pool.close().await;
                return Err(e.into());
            }
        }
        Ok(Self {
            pool,
            backend,
            sqlite_file,
            op_timeout: options
                .acquire_timeout
                .saturating_add(options.statement_timeout.saturating_mul(2)),
        })
    }

    /// Runs one store operation within [`Self::op_timeout`] (also used by the audit module's
    /// reads, so every query has the same time limit).
    pub(crate) async fn bounded<T>(
        &self,
        operation: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.op_timeout, operation)
            .await
            .map_err(|_| StoreError::TimedOut(self.op_timeout))?
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// SQLite: claims the file for this serving process (see [`ServingLock`]); PostgreSQL
    /// serves several replicas and needs none.
    pub fn lock_for_serving(&self) -> Result<Option<ServingLock>, StoreError> {
        self.sqlite_file
            .as_deref()
            .map(|path| lock_sqlite_file(path).map(ServingLock))
            .transpose()
    }

    /// For the read-side modules (the audit trail) that query the same tables.
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Is the database answering?
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.bounded(async {
            sqlx::query("SELECT 1").execute(&self.pool).await?;
            Ok(())
        })
        .await
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Stores a verified delivery and, when it asks for work, its task: in one transaction,
    /// so a 2xx is only ever sent for an event that is durably stored with its task.
    pub async fn record_delivery(
        &self,
        webhook_id: &str,
        event: &SymEvent,
        received_at: i64,
        task: Option<&NewTask>,
    ) -> Result<Recorded, StoreError> {
        self.bounded(self.record_delivery_now(webhook_id, event, received_at, task))
            .await
    }

    async fn record_delivery_now(
        &self,
        webhook_id: &str,
        event: &SymEvent,
        received_at: i64,
        task: Option<&NewTask>,
    ) -> Result<Recorded, StoreError> {
        let delivery_id = Uuid::new_v4().to_string();
        let outcome = if task.is_some() { "queued" } else { "ignored" };
        let mut tx = self.pool.begin().await?;
        // The insert comes first so SQLite takes its write lock at once (no lock upgrade).
        let inserted = insert_delivery(
            &mut *tx,
            &delivery_id,
            webhook_id,
            event,
            received_at,
            outcome,
            None,
        )
        .await;
        match inserted {
            Ok(()) => {}
            Err(e) if is_unique_violation(&e) => {
                tx.rollback().await?;
                return self.record_duplicate(webhook_id, event, received_at).await;
            }
            Err(e) => return Err(e.into()),
        }
        let Some(task) = task else {
            tx.commit().await?;
            return Ok(Recorded::Ignored { delivery_id });
        };
        let task_id = Uuid::new_v4().to_string();
        sqlx::query(
            "INSERT INTO tasks (id, delivery_id, action, workflow_id, status, attempts, \
             created_at, deadline_at, next_attempt_at) \
             VALUES ($1, $2, $3, $4, 'pending', 0, $5, $6, $5)",
        )
        .bind(&task_id)
        .bind(&delivery_id)
        .bind(task.action.as_str())
        .bind(task.workflow_id.to_string())
        .bind(received_at)
        .bind(task.deadline_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Recorded::Queued {
            delivery_id,
            task_id,
        })
    }

    async fn record_duplicate(
        &self,
        webhook_id: &str,
        event: &SymEvent,
        received_at: i64,
    ) -> Result<Recorded, StoreError> {
        let original: Option<String> = sqlx::query_scalar(
            "SELECT id FROM deliveries WHERE outcome <> 'duplicate' \
             AND (sym_event_id = $1 OR webhook_id = $2) ORDER BY received_at LIMIT 1",
        )
        .bind(&event.id)
        .bind(webhook_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(original_id) = original else {
            return Err(StoreError::Invalid(
                "unique conflict without an original delivery".into(),
            ));
        };
        let id = Uuid::new_v4().to_string();
        insert_delivery(
            &self.pool,
            &id,
            webhook_id,
            event,
            received_at,
            "duplicate",
            Some(&original_id),
        )
        .await?;
        Ok(Recorded::Duplicate { original_id })
    }

    /// Single-replica backends only: forget leases left by a process that died, so its tasks
    /// resume at once instead of after the lease runs out.
    pub async fn release_stale_leases(&self) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE tasks SET lease_owner = NULL, lease_expires_at = NULL \
             WHERE status = 'pending' AND lease_owner IS NOT NULL",
        )
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Claims the most overdue task that no live lease holds, for `lease` from `now`.
    /// Tasks of a workflow another task is being worked on for wait their turn.
    pub async fn claim_next_task(
        &self,
        owner: &str,
        now: i64,
        lease: Duration,
    ) -> Result<Option<Task>, StoreError> {
        self.bounded(self.claim_now(owner, now, lease)).await
    }

    async fn claim_now(
        &self,
        owner: &str,
        now: i64,
        lease: Duration,
    ) -> Result<Option<Task>, StoreError> {
        let lock = match self.backend {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE tasks SET lease_owner = $1, lease_expires_at = $2 \
             WHERE status = 'pending' AND (lease_expires_at IS NULL OR lease_expires_at < $3) \
             AND id = (SELECT t.id FROM tasks t \
                WHERE t.status = 'pending' AND t.next_attempt_at <= $3 \
                AND (t.lease_expires_at IS NULL OR t.lease_expires_at < $3) \
                AND NOT EXISTS (SELECT 1 FROM tasks o WHERE o.workflow_id = t.workflow_id \
                    AND o.id <> t.id AND o.status = 'pending' AND o.lease_expires_at >= $3) \
                ORDER BY t.next_attempt_at, t.created_at LIMIT 1 {lock}) \
             RETURNING id, delivery_id, action, workflow_id, attempts, created_at, deadline_at"
        );
        let claim = sqlx::query(&sql)
            .bind(owner)
            .bind(now.saturating_add(duration_ms(lease)))
            .bind(now);
        let row = match self.backend {
            // SQLite runs one write at a time: the statement alone is atomic.
            Backend::Sqlite => claim.fetch_optional(&self.pool).await?,
            // Under READ COMMITTED two replicas could each see "no other task of this
            // workflow is leased" and claim two at once; a transaction-level advisory lock
            // makes claims take turns (a few milliseconds each), and the statement after the
            // lock sees every claim committed before it.
            Backend::Postgres => {
                let mut tx = self.pool.begin().await?;
                sqlx::query("SELECT 1 FROM (SELECT pg_advisory_xact_lock($1)) AS claim_lock")
                    .bind(CLAIM_LOCK_KEY)
                    .execute(&mut *tx)
                    .await?;
                let row = claim.fetch_optional(&mut *tx).await?;
                tx.commit().await?;
                row
            }
        };
        row.map(|row| task_from_row(&row)).transpose()
    }

    /// When the next pending task becomes due (or its lease runs out), if any.
    pub async fn next_due_at(&self) -> Result<Option<i64>, StoreError> {
        self.bounded(async {
            let due: Option<i64> = sqlx::query_scalar(
                "SELECT MIN(CASE WHEN lease_expires_at IS NOT NULL \
                 AND lease_expires_at > next_attempt_at \
                 THEN lease_expires_at ELSE next_attempt_at END) \
                 FROM tasks WHERE status = 'pending'",
            )
            .fetch_one(&self.pool)
            .await?;
            Ok(due)
        })
        .await
    }

    /// Appends CircleCI exchanges to a task's audit trail (all or none, so a retry after a
    /// failure does not record a call twice).
    pub async fn record_attempts(
        &self,
        task_id: &str,
        calls: &[CallRecord],
    ) -> Result<(), StoreError> {
        if calls.is_empty() {
            return Ok(());
        }
        self.bounded(self.record_attempts_now(task_id, calls)).await
    }

    async fn record_attempts_now(
        &self,
        task_id: &str,
        calls: &[CallRecord],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for call in calls {
            sqlx::query(
                "INSERT INTO attempts (task_id, started_at, method, endpoint, status_code, \
                 duration_ms, error) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(task_id)
            .bind(to_ms(call.started_at))
            .bind(call.method)
            .bind(&call.endpoint)
            .bind(call.status.map(i64::from))
            .bind(duration_ms(call.duration))
            .bind(call.error.as_deref())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Ends this step and schedules the next one; false when the lease was lost.
    pub async fn reschedule(
        &self,
        task_id: &str,
        owner: &str,
        next_attempt_at: i64,
        detail: &str,
        job: &JobInfo,
    ) -> Result<bool, StoreError> {
        let done = self
            .bounded(async {
                Ok(sqlx::query(
                    "UPDATE tasks SET attempts = attempts + 1, next_attempt_at = $3, detail = $4, \
             job_id = COALESCE($5, job_id), job_number = COALESCE($6, job_number), \
             project_slug = COALESCE($7, project_slug), \
             lease_owner = NULL, lease_expires_at = NULL \
             WHERE id = $1 AND lease_owner = $2 AND status = 'pending'",
                )
                .bind(task_id)
                .bind(owner)
                .bind(next_attempt_at)
                .bind(detail)
                .bind(job.job_id.as_deref())
                .bind(job.job_number)
                .bind(job.project_slug.as_deref())
                .execute(&self.pool)
                .await?)
            })
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records a task's final outcome; false when the lease was lost.
    #[allow(clippy::too_many_arguments)]
    pub async fn finish(
        &self,
        task_id: &str,
        owner: &str,
        status: FinalStatus,
        outcome: &str,
        detail: &str,
        job: &JobInfo,
        now: i64,
    ) -> Result<bool, StoreError> {
        let done = self
            .bounded(async {
                Ok(sqlx::query(
            "UPDATE tasks SET status = $3, outcome = $4, detail = $5, attempts = attempts + 1, \
             job_id = COALESCE($6, job_id), job_number = COALESCE($7, job_number), \
             project_slug = COALESCE($8, project_slug), finished_at = $9, \
             lease_owner = NULL, lease_expires_at = NULL \
             WHERE id = $1 AND lease_owner = $2 AND status = 'pending'",
        )
        .bind(task_id)
        .bind(owner)
        .bind(status.as_str())
        .bind(outcome)
        .bind(detail)
        .bind(job.job_id.as_deref())
        .bind(job.job_number)
        .bind(job.project_slug.as_deref())
        .bind(now)
        .execute(&self.pool)
                .await?)
            })
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Extends a lease this claim still holds (`lease_owner` is the claim's token and the lease
    /// has not run out); false when it was lost. Called right before an approve or cancel, so
    /// such a call is only ever made under a live lease.
    pub async fn renew_lease(
        &self,
        task_id: &str,
        lease_token: &str,
        now: i64,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        self.bounded(async {
            let done = sqlx::query(
                "UPDATE tasks SET lease_expires_at = $3 \
                 WHERE id = $1 AND lease_owner = $2 AND status = 'pending' \
                 AND lease_expires_at > $4",
            )
            .bind(task_id)
            .bind(lease_token)
            .bind(now.saturating_add(duration_ms(lease)))
            .bind(now)
            .execute(&self.pool)
            .await?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }

    /// Durably notes a call about to be made (no status yet), so that if the process dies
    /// before the answer is stored, the audit trail still shows the call may have landed.
    pub async fn begin_attempt(
        &self,
        task_id: &str,
        method: &str,
        endpoint: &str,
        started_at: i64,
    ) -> Result<i64, StoreError> {
        self.bounded(async {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO attempts (task_id, started_at, method, endpoint, status_code, \
                 duration_ms, error) VALUES ($1, $2, $3, $4, NULL, 0, $5) RETURNING id",
            )
            .bind(task_id)
            .bind(started_at)
            .bind(method)
            .bind(endpoint)
            .bind("no answer recorded (the call was in flight)")
            .fetch_one(&self.pool)
            .await?;
            Ok(id)
        })
        .await
    }

    /// Fills in the answer of a call noted by [`Self::begin_attempt`].
    pub async fn complete_attempt(
        &self,
        attempt_id: i64,
        call: &CallRecord,
    ) -> Result<(), StoreError> {
        self.bounded(async {
            sqlx::query(
                "UPDATE attempts SET status_code = $2, duration_ms = $3, error = $4 WHERE id = $1",
            )
            .bind(attempt_id)
            .bind(call.status.map(i64::from))
            .bind(duration_ms(call.duration))
            .bind(call.error.as_deref())
            .execute(&self.pool)
            .await?;
            Ok(())
        })
        .await
    }

    /// Gives a lease back without counting a step (shutdown mid-step).
    pub async fn release_lease(&self, task_id: &str, owner: &str) -> Result<(), StoreError> {
        self.bounded(async {
            sqlx::query(
                "UPDATE tasks SET lease_owner = NULL, lease_expires_at = NULL \
                 WHERE id = $1 AND lease_owner = $2",
            )
            .bind(task_id)
            .bind(owner)
            .execute(&self.pool)
            .await?;
            Ok(())
        })
        .await
    }

    /// One task's status row, for tests and the audit API.
    pub async fn task_status(&self, task_id: &str) -> Result<Option<TaskStatus>, StoreError> {
        let row = sqlx::query("SELECT status, outcome, detail, attempts FROM tasks WHERE id = $1")
            .bind(task_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok(TaskStatus {
                status: row.try_get("status")?,
                outcome: row.try_get("outcome")?,
                detail: row.try_get("detail")?,
                attempts: row.try_get("attempts")?,
            })
        })
        .transpose()
    }

    /// The task created for a delivery, if any.
    pub async fn task_for_delivery(&self, delivery_id: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT id FROM tasks WHERE delivery_id = $1")
                .bind(delivery_id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Counts of deliveries by outcome (for tests and the demo).
    pub async fn delivery_count(&self, outcome: &str) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE outcome = $1")
                .bind(outcome)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Pending tasks and the creation time of the oldest, for metrics.
    pub async fn pending_summary(&self) -> Result<(i64, Option<i64>), StoreError> {
        self.bounded(async {
            let row = sqlx::query(
                "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM tasks \
                 WHERE status = 'pending'",
            )
            .fetch_one(&self.pool)
            .await?;
            Ok((row.try_get("n")?, row.try_get("oldest")?))
        })
        .await
    }
}

/// A task's state, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskStatus {
    pub status: String,
    pub outcome: Option<String>,
    pub detail: Option<String>,
    pub attempts: i64,
}

async fn insert_delivery<'e, E>(
    executor: E,
    id: &str,
    webhook_id: &str,
    event: &SymEvent,
    received_at: i64,
    outcome: &str,
    duplicate_of: Option<&str>,
) -> Result<(), sqlx::Error>
where
    E: Executor<'e, Database = sqlx::Any>,
{
    sqlx::query(
        "INSERT INTO deliveries (id, webhook_id, sym_event_id, event_type, workflow_id, \
         workflow_url, merging_user, approver_username, approver_name, run_srn, received_at, \
         outcome, duplicate_of) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(id)
    .bind(webhook_id)
    .bind(&event.id)
    .bind(&event.event_type)
    .bind(event.workflow_id.map(|w| w.to_string()))
    .bind(event.workflow_url.as_deref())
    .bind(event.merging_user.as_deref())
    .bind(event.approver_username.as_deref())
    .bind(event.approver_name.as_deref())
    .bind(event.run_srn.as_deref())
    .bind(received_at)
    .bind(outcome)
    .bind(duplicate_of)
    .execute(executor)
    .await?;
    Ok(())
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|db| db.is_unique_violation())
}

fn task_from_row(row: &AnyRow) -> Result<Task, StoreError> {
    let workflow_id: String = row.try_get("workflow_id")?;
    let action: String = row.try_get("action")?;
    Ok(Task {
        id: row.try_get("id")?,
        delivery_id: row.try_get("delivery_id")?,
        action: TaskAction::parse(&action)?,
        workflow_id: Uuid::try_parse(&workflow_id)
            .map_err(|_| StoreError::Invalid(format!("stored workflow id {workflow_id:?}")))?,
        attempts: row.try_get("attempts")?,
        created_at: row.try_get("created_at")?,
        deadline_at: row.try_get("deadline_at")?,
    })
}

/// Creates the SQLite file's folder and asks sqlx to create the file (`mode=rwc`).
fn prepare_sqlite_url(url: &str) -> Result<(String, std::path::PathBuf), StoreError> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    if path.is_empty() || path.contains(":memory:") || query.is_some_and(|q| q.contains("memory")) {
        return Err(StoreError::Invalid(
            "DATABASE_URL: an in-memory SQLite store would lose accepted events; give a file path"
                .into(),
        ));
    }
    if let Some(parent) = Path::new(path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent).map_err(|e| {
            StoreError::Invalid(format!(
                "DATABASE_URL: cannot create folder {}: {e}",
                parent.display()
            ))
        })?;
    }
    let url = match query {
        Some(q) if q.contains("mode=") => format!("sqlite://{path}?{q}"),
        Some(q) => format!("sqlite://{path}?{q}&mode=rwc"),
        None => format!("sqlite://{path}?mode=rwc"),
    };
    Ok((url, std::path::PathBuf::from(path)))
}

/// An exclusive lock beside the SQLite file, held while a process serves from it: one process
/// per file is what makes releasing leftover leases at startup safe, so a second `serve` on
/// the same file is refused instead of racing the first. Released when dropped (or the
/// process dies).
#[derive(Debug)]
pub struct ServingLock(#[allow(dead_code)] std::fs::File);

/// Takes the [`ServingLock`] file lock.
fn lock_sqlite_file(db: &Path) -> Result<std::fs::File, StoreError> {
    let mut lock_path = db.as_os_str().to_owned();
    lock_path.push(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| {
            StoreError::Invalid(format!(
                "DATABASE_URL: cannot open {}: {e}",
                Path::new(&lock_path).display()
            ))
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Invalid(format!(
            "DATABASE_URL: another process is already serving from {} (SQLite allows one \
             replica; use PostgreSQL for several)",
            db.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Invalid(format!(
            "DATABASE_URL: cannot lock {}: {e}",
            Path::new(&lock_path).display()
        ))),
    }
}

/// `DATABASE_URL` fit for logs and errors: the password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() && parsed.set_password(Some("***")).is_err() {
                return "<DATABASE_URL with a password>".to_owned();
            }
            // Query parameters may carry a password too (`?password=…`).
            if parsed
                .query_pairs()
                .any(|(k, _)| k.eq_ignore_ascii_case("password"))
            {
                let kept: Vec<(String, String)> = parsed
                    .query_pairs()
                    .map(|(k, v)| {
                        if k.eq_ignore_ascii_case("password") {
                            (k.into_owned(), "***".to_owned())
                        } else {
                            (k.into_owned(), v.into_owned())
                        }
                    })
                    .collect();
                parsed.query_pairs_mut().clear().extend_pairs(kept);
            }
            parsed.to_string()
        }
        Err(_) => "<DATABASE_URL (not a valid URL)>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn redacted_urls_never_show_a_password() {
        assert_eq!(
            redact_url("postgres://approver:s3cret@db.internal:5432/approver?sslmode=require"),
            "postgres://approver:***@db.internal:5432/approver?sslmode=require"
        );
        let query = redact_url("postgres://db/approver?user=a&password=s3cret");
        assert!(!query.contains("s3cret"), "{query}");
        assert!(query.contains("password=***"), "{query}");
        assert_eq!(
            redact_url("postgres://approver@db/approver"),
            "postgres://approver@db/approver"
        );
        assert_eq!(
            redact_url("sqlite://data/approver.db"),
            "sqlite://data/approver.db"
        );
        assert!(!redact_url("postgres://a:s3cret@[bad").contains("s3cret"));
    }

    #[test]
    fn only_outages_are_worth_waiting_for() {
        let refused = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(StoreError::from(refused).is_transient());
        assert!(StoreError::from(sqlx::Error::PoolTimedOut).is_transient());
        assert!(StoreError::TimedOut(Duration::from_secs(1)).is_transient());
        assert!(!StoreError::Invalid("bad".into()).is_transient());
        assert!(!StoreError::from(sqlx::Error::Configuration("bad url".into())).is_transient());
    }
}
