//! The durable store: deliveries, the tasks they create, and every CircleCI attempt.
//!
//! This module holds the store type, connecting, migrations and the time limit every
//! operation runs under; each table's queries live in their own file ([`deliveries`],
//! [`tasks`], [`attempts`]), the audit trail's reads and retention in [`audit`], and the
//! single-process lock of a SQLite file in [`sqlite_lock`]. The pool is private: no other
//! module writes SQL.
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
//! reconnects by itself (SQLite's own connections are opened again after an error that may
//! have broken them, [`write_turn`]), and [`Store::connect`] waits a bounded time for a database that is not
//! up yet (a replica starting beside its PostgreSQL).

mod attempts;
pub mod audit;
mod deliveries;
mod gate_views;
mod gates;
mod group_commit;
mod ids;
mod intake;
mod settle;
mod sqlite_lock;
mod step_writes;
mod tasks;
mod urls;
mod verdicts;
mod write_turn;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyConnection, AnyPool, Connection as _, Executor};

use crate::clock::{duration_ms, Clock};

pub use attempts::{AttemptId, CallNote};
pub use deliveries::{NewDelivery, Recorded};
pub use gate_views::GateView;
pub use gates::{ClaimedGate, GateConflict, GateEnd, NewGate, Registered};
pub use group_commit::{BatchObserver, BatchOptions};
pub use intake::{Handed, Handoff, Intake};
pub use sqlite_lock::ServingLock;
pub use step_writes::StepWrites;
pub use tasks::{ClaimedTask, JobInfo, StepResult};
use urls::prepare_sqlite_url;
pub use urls::redact_url;
use write_turn::WriteTurn;
pub use write_turn::{Checkpoint, CHECKPOINT_EVERY};

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

    /// The mark of parameters in SQL built at run time (multi-row statements, [`param`]):
    /// PostgreSQL's `$n`; on SQLite a bare `?`, which SQLite numbers by its place in the
    /// statement. Any name costs quadratic time in a statement with thousands of parameters:
    /// SQLite keeps a statement's parameter names in a list it searches from the start, once
    /// when it parses `$n` (looked up among the names before it) and, for `?n` too, once per
    /// parameter when sqlx binds it (sqlx asks each parameter's name,
    /// `sqlite3_bind_parameter_name`, to find its value). A bare `?` has no name. So a
    /// statement built with this mark uses [`param`] for every parameter, in the order the
    /// values are bound, each value once (sqlx numbers bare `?` apart from named ones).
    pub fn param_mark(self) -> char {
        match self {
            Self::Sqlite => '?',
            Self::Postgres => '$',
        }
    }

    /// The pool's size unless `DATABASE_MAX_CONNECTIONS` says otherwise.
    ///
    /// SQLite: one connection, and no pool: the store's synced connection serves reads and
    /// synced writes (claims have one more of their own; above 1, reads get a pool of that
    /// many, `Store::reader`). Writers take turns anyway
    /// (the store's write turn), and one connection keeps what it has read: in WAL mode a
    /// connection drops its whole page cache whenever another connection has committed since
    /// its last transaction, and the pool hands its connections out in turn, so with ten every
    /// write and read began by reading its pages from the file again. Measured with
    /// `scripts/bench` (docs/benchmark.md, round 6): CPU per approval −17 to −22 %, intake
    /// and latency no worse. Reads then wait for a write in progress (a commit's sync, well
    /// under a millisecond on a local disk).
    ///
    /// PostgreSQL: ten per replica, so concurrent steps' statements (each a network round
    /// trip) overlap.
    pub fn default_pool_size(self) -> u32 {
        match self {
            Self::Sqlite => 1,
            Self::Postgres => 10,
        }
    }

    /// The backend a `DATABASE_URL` names, from its scheme (the one place that is checked).
    pub fn for_url(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else {
            Err(StoreError::Invalid(
                "DATABASE_URL must start with sqlite:// or postgres://".into(),
            ))
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
    /// A deadlock or serialisation failure: the database aborted this transaction for
    /// another's sake; trying again right away is the cure.
    pub fn is_conflict(&self) -> bool {
        match self {
            Self::Database(sqlx::Error::Database(db)) => db
                .code()
                .is_some_and(|code| code == "40P01" || code == "40001"),
            _ => false,
        }
    }

    /// Could the connection the operation ran on be unusable now (its thread gone, an I/O
    /// error)? Not after the time limit cut an operation off: a SQLite connection's thread
    /// runs what is queued in order, so the rollback the dropped transaction queued runs
    /// before the next user's statements, and the connection is fine.
    fn may_break_connection(&self) -> bool {
        matches!(
            self,
            Self::Database(
                sqlx::Error::Io(_) | sqlx::Error::WorkerCrashed | sqlx::Error::Protocol(_)
            )
        )
    }

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

#[derive(Clone)]
pub struct Store {
    /// PostgreSQL: every connection. SQLite: reads, when `DATABASE_MAX_CONNECTIONS` is above 1
    /// (otherwise unused and never connected); writes go through the write turn's own
    /// connections ([`Self::writer`]).
    pool: AnyPool,
    /// SQLite: reads use the pool rather than the synced connection ([`Self::reader`]).
    sqlite_read_pool: bool,
    backend: Backend,
    /// SQLite: the database file (for the one-serving-process lock).
    sqlite_file: Option<std::path::PathBuf>,
    /// Client-side bound on one operation, so a database that vanished mid-query (a network
    /// cut, where no error ever arrives) costs a bounded wait, never a hang.
    op_timeout: Duration,
    /// Where leases, attempts and finish times take "now" from.
    clock: Clock,
    /// SQLite: whose turn it is to write, and the connections it writes on (see
    /// [`Self::writer`]).
    write_turn: Option<Arc<WriteTurn>>,
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
    /// The pool's size; `None`: the backend's own default ([`Backend::default_pool_size`]).
    pub max_connections: Option<u32>,
    /// Time limit for getting a connection from the pool (and for connecting).
    pub acquire_timeout: Duration,
    /// Time limit for one statement: PostgreSQL `statement_timeout`, SQLite `busy_timeout`.
    pub statement_timeout: Duration,
    /// The time source (the system clock; tests pass a manual one).
    pub clock: Clock,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: None,
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(5),
            clock: Clock::system(),
        }
    }
}

/// How many times `DATABASE_CONNECT_TIMEOUT` a starting process waits for its database.
pub const STARTUP_PATIENCE_FACTOR: u32 = 12;

impl Store {
    /// Connects, creating the SQLite file and its folder if needed, and migrates.
    ///
    /// A database that is not reachable yet (PostgreSQL still starting, a DNS name not there
    /// yet) is waited for, up to [`STARTUP_PATIENCE_FACTOR`] × `acquire_timeout` (60 s by
    /// default), with a log line per try; then the error names the database, without its
    /// password. Wrong credentials, a missing database or a failed migration fail at once.
    pub async fn connect(url: &SecretString, options: &StoreOptions) -> Result<Self, StoreError> {
        Ok(Self::connect_inner(url, options, false).await?.0)
    }

    /// [`Self::connect`] for the process that serves: on SQLite it first takes the file's
    /// [`ServingLock`], so migrations and the release of leftover leases happen only in the one
    /// process allowed to serve from the file.
    pub async fn connect_serving(
        url: &SecretString,
        options: &StoreOptions,
    ) -> Result<(Self, Option<ServingLock>), StoreError> {
        Self::connect_inner(url, options, true).await
    }

    async fn connect_inner(
        url: &SecretString,
        options: &StoreOptions,
        serving: bool,
    ) -> Result<(Self, Option<ServingLock>), StoreError> {
        sqlx::any::install_default_drivers();
        let raw = url.expose_secret();
        let backend = Backend::for_url(raw)?;
        let (url, sqlite_file) = match backend {
            Backend::Sqlite => {
                let (url, path) = prepare_sqlite_url(raw)?;
                (url, Some(path))
            }
            Backend::Postgres => (raw.to_owned(), None),
        };
        let lock = match (&sqlite_file, serving) {
            (Some(path), true) => Some(ServingLock::take(path)?),
            _ => None,
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
                    return Ok((store, lock));
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

        let size = options
            .max_connections
            .unwrap_or_else(|| backend.default_pool_size());
        // SQLite's reads share the synced connection unless more connections are asked for;
        // then they get a pool of their own, opened at its first use.
        let sqlite_read_pool = backend == Backend::Sqlite && size > 1;
        let pool = open_pool(backend, url, options, size).await?;
        // SQLite's two connections: one whose commits are synced (deliveries, step results, and
        // reads between writes) and one whose commits are not, for claims, checkpoints and
        // pruning: a lease has to be visible at once (it is: the commit is atomic), not
        // durable. One process serves a SQLite file, and it forgets every lease when it starts
        // (`release_stale_leases`), so a claim lost with the machine's power costs nothing; the
        // next synced commit makes it durable anyway (the WAL is synced in order). This takes a
        // flush off the way from a delivery to its approve call. Checkpoints (SQLite still
        // syncs around a checkpoint under NORMAL) and pruning (a prune lost with the power is
        // done again by the next) run there too; it connects at its first use.
        let statement_ms = duration_ms(options.statement_timeout);
        let write_turn = match backend {
            Backend::Sqlite => {
                let mut synced = open_sqlite(url, "FULL", statement_ms).await?;
                // One process owns a SQLite file: no lock needed.
                if let Err(e) = SQLITE_MIGRATIONS.run_direct(&mut synced).await {
                    let _ = synced.close().await;
                    return Err(e.into());
                }
                Some(Arc::new(WriteTurn::new(
                    url.to_owned(),
                    statement_ms,
                    synced,
                )))
            }
            Backend::Postgres => None,
        };
        Ok(Self {
            pool,
            backend,
            sqlite_file,
            write_turn,
            sqlite_read_pool,
            clock: options.clock.clone(),
            op_timeout: options
                .acquire_timeout
                .saturating_add(options.statement_timeout.saturating_mul(2)),
        })
    }

    /// Runs one store operation within [`Self::op_timeout`]: every query has this limit.
    async fn bounded<T>(
        &self,
        operation: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let result = tokio::time::timeout(self.op_timeout, operation)
            .await
            .unwrap_or(Err(StoreError::TimedOut(self.op_timeout)));
        if let (Err(e), Some(turn)) = (&result, &self.write_turn) {
            if e.may_break_connection() {
                turn.suspect();
            }
        }
        result
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Aligns the store's clock with the database's (PostgreSQL: replicas share it, so leases
    /// are measured on one clock). Returns the offset applied, in ms; SQLite has one process
    /// on one machine and needs none.
    pub async fn sync_clock(&self) -> Result<i64, StoreError> {
        if self.backend != Backend::Postgres || self.clock.is_manual() {
            return Ok(0);
        }
        self.bounded(async {
            let before = self.clock.local_ms();
            let db_ms: i64 = sqlx::query_scalar(
                "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
            )
            .fetch_one(&mut *self.reader().await?)
            .await?;
            let after = self.clock.local_ms();
            // The database read its clock somewhere in the round trip: assume the middle.
            let offset = db_ms - (before + after) / 2;
            self.clock.set_offset(offset);
            Ok(offset)
        })
        .await
    }

    /// The store's time source (shared with the worker).
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// SQLite: the database file.
    pub fn sqlite_file(&self) -> Option<&Path> {
        self.sqlite_file.as_deref()
    }

    /// Is the database answering?
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.bounded(async {
            sqlx::query("SELECT 1")
                .execute(&mut *self.reader().await?)
                .await?;
            Ok(())
        })
        .await
    }

    pub async fn close(&self) {
        if let Some(turn) = &self.write_turn {
            turn.close().await;
        }
        self.pool.close().await;
    }
}

/// Did a statement hit a unique index (a duplicate the schema refuses)?
pub(super) fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|db| db.is_unique_violation())
}

/// Parameter `n` (from 1) in SQL built at run time (`mark`: [`Backend::param_mark`]):
/// `$n`, or SQLite's bare `?`, which is the `n`th only when every parameter before it is
/// bound before it.
fn param(mark: char, n: usize) -> String {
    match mark {
        '?' => "?".to_owned(),
        _ => format!("{mark}{n}"),
    }
}

/// `$first, $first+1, …` for `n` values, in SQL built at run time ([`param`]).
fn placeholders(mark: char, first: usize, n: usize) -> String {
    (first..first + n)
        .map(|k| param(mark, k))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `($first, …), (…), …`: `rows` rows of `width` values, numbered from `first`.
pub(super) fn value_rows(mark: char, first: usize, rows: usize, width: usize) -> String {
    (0..rows)
        .map(|r| format!("({})", placeholders(mark, first + r * width, width)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The pool: PostgreSQL's connections, or SQLite's extra readers (connected at first use:
/// with the default of one connection on SQLite, never).
async fn open_pool(
    backend: Backend,
    url: &str,
    options: &StoreOptions,
    max_connections: u32,
) -> Result<AnyPool, StoreError> {
    let statement_ms = duration_ms(options.statement_timeout);
    let pool = AnyPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(options.acquire_timeout)
        // A pooled SQLite connection is a file handle in this process: it cannot go stale
        // the way a network connection can, so pinging it before every use (a round trip
        // to its thread) buys nothing. PostgreSQL connections are still checked.
        .test_before_acquire(backend == Backend::Postgres)
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                match backend {
                    Backend::Sqlite => configure_sqlite(conn, "FULL", statement_ms).await?,
                    Backend::Postgres => {
                        conn.execute(format!("SET statement_timeout = {statement_ms}").as_str())
                            .await?;
                    }
                }
                Ok(())
            })
        });
    Ok(match backend {
        Backend::Sqlite => pool.connect_lazy(url)?,
        Backend::Postgres => pool.connect(url).await?,
    })
}

/// One of SQLite's own connections ([`write_turn`]).
async fn open_sqlite(
    url: &str,
    synchronous: &'static str,
    statement_ms: i64,
) -> Result<AnyConnection, sqlx::Error> {
    let mut conn = AnyConnection::connect(url).await?;
    configure_sqlite(&mut conn, synchronous, statement_ms).await?;
    Ok(conn)
}
/// A SQLite connection's settings. WAL lets readers run beside the writer; `FULL` makes each
/// commit durable before we answer 2xx; `busy_timeout` bounds a wait for the file. No
/// checkpoint inside a commit (`wal_autocheckpoint = 0`): the committing writer would copy the
/// WAL into the file and sync it while every other writer waits; [`Store::checkpoint`] does it
/// in the background.
async fn configure_sqlite(
    conn: &mut AnyConnection,
    synchronous: &'static str,
    statement_ms: i64,
) -> Result<(), sqlx::Error> {
    conn.execute(
        format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; \
             PRAGMA wal_autocheckpoint = 0; \
             PRAGMA busy_timeout = {statement_ms}; PRAGMA foreign_keys = ON;"
        )
        .as_str(),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests;
