//! SQLite's write turn (one writer at a time, in order), the two connections the writer
//! writes on, and the background checkpoint that needs to know whether anyone wrote since the
//! last one.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, Connection as _};
use tokio::sync::{MappedMutexGuard, MutexGuard};

use super::{Store, StoreError};

/// How often the serving process checkpoints a SQLite WAL ([`Store::checkpoint`]).
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// SQLite's one writer at a time, its two connections, and what the checkpoint needs to
/// know. The store owns the connections instead of drawing them from a pool: sqlx pings a
/// pooled connection each time it goes back (a round trip to SQLite's thread), and with one
/// connection the next writer or reader waited for that ping. Measured: a transaction of five
/// inserts, back to back, took 222-232 µs through a pool of one and 56-57 µs on a held
/// connection (`cargo bench --bench sqlite_conn`).
pub(super) struct WriteTurn {
    /// Held by a writer from before its first statement until after its commit.
    turn: tokio::sync::Mutex<()>,
    /// Commits synced before they return (`synchronous = FULL`): deliveries, step results;
    /// and reads, between writes (as the pool's one connection was).
    synced: Slot,
    /// Commits that do not sync (`NORMAL`): claims, checkpoints, pruning (see `Store::open`).
    unsynced: Slot,
    /// Where the connections connect again (a SQLite URL: a file name, no secret).
    url: String,
    /// SQLite's `busy_timeout`, in ms.
    statement_ms: i64,
    /// Set by [`WriteTurn::close`]: no connection is opened after it.
    closed: AtomicBool,
    /// Turns taken by writes so far.
    taken: AtomicU64,
    /// `taken` when a checkpoint last emptied the WAL; `u64::MAX` at start, so the first
    /// checkpoint always runs (a WAL may be left from the previous process).
    checkpointed: AtomicU64,
}

/// One of SQLite's own connections (`None` until its first use, or after it was dropped).
struct Slot {
    conn: tokio::sync::Mutex<Option<AnyConnection>>,
    synchronous: &'static str,
    /// An operation failed in a way that may have left this connection unusable (its thread
    /// gone, an I/O error): it is closed and opened again at its next use. A pool would have
    /// found out with its ping. (Whoever takes it before the flag is set gets the same error
    /// and sets it too.)
    suspect: AtomicBool,
}

impl Slot {
    fn new(conn: Option<AnyConnection>, synchronous: &'static str) -> Self {
        Self {
            conn: tokio::sync::Mutex::new(conn),
            synchronous,
            suspect: AtomicBool::new(false),
        }
    }

    /// The connection, opened if it is not (or is suspect).
    async fn take(
        &self,
        url: &str,
        statement_ms: i64,
        closed: &AtomicBool,
    ) -> Result<MappedMutexGuard<'_, AnyConnection>, StoreError> {
        let mut conn = self.conn.lock().await;
        if closed.load(Relaxed) {
            return Err(StoreError::Invalid("the store is closed".into()));
        }
        if self.suspect.swap(false, Relaxed) {
            if let Some(old) = conn.take() {
                // Closed, not just dropped: its thread finishes what is queued first (a
                // rollback), so no statement of it still holds the file when the new one
                // writes.
                let _ = old.close().await;
            }
        }
        if conn.is_none() {
            *conn = Some(super::open_sqlite(url, self.synchronous, statement_ms).await?);
        }
        MutexGuard::try_map(conn, Option::as_mut)
            .map_err(|_| StoreError::Invalid("a SQLite connection is not open".into()))
    }

    async fn close(&self) {
        if let Some(conn) = self.conn.lock().await.take() {
            let _ = conn.close().await;
        }
    }
}

impl std::fmt::Debug for WriteTurn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteTurn")
            .field("taken", &self.taken)
            .finish_non_exhaustive()
    }
}

impl WriteTurn {
    /// `synced`: the connection the migrations ran on.
    pub(super) fn new(url: String, statement_ms: i64, synced: AnyConnection) -> Self {
        Self {
            turn: tokio::sync::Mutex::new(()),
            synced: Slot::new(Some(synced), "FULL"),
            unsynced: Slot::new(None, "NORMAL"),
            url,
            statement_ms,
            closed: AtomicBool::new(false),
            taken: 0.into(),
            checkpointed: u64::MAX.into(),
        }
    }

    /// After a failed operation: both connections are opened again at their next use.
    pub(super) fn suspect(&self) {
        self.synced.suspect.store(true, Relaxed);
        self.unsynced.suspect.store(true, Relaxed);
    }

    /// One of the two connections, opened if need be.
    async fn take(&self, synced: bool) -> Result<MappedMutexGuard<'_, AnyConnection>, StoreError> {
        let slot = if synced { &self.synced } else { &self.unsynced };
        slot.take(&self.url, self.statement_ms, &self.closed).await
    }

    /// Closes both connections (the store is closing).
    pub(super) async fn close(&self) {
        let _turn = self.turn.lock().await;
        self.closed.store(true, Relaxed);
        self.synced.close().await;
        self.unsynced.close().await;
    }
}

/// A connection to run statements on: one of SQLite's own (a writer's holds the write turn
/// for as long as it lives), or PostgreSQL's pooled one (its row locks order writers).
pub(super) enum Conn<'a> {
    Own {
        conn: MappedMutexGuard<'a, AnyConnection>,
        /// Declared after `conn`, so it is let go after the connection is.
        _turn: Option<MutexGuard<'a, ()>>,
    },
    Pooled(PoolConnection<Any>),
}

impl Conn<'_> {
    /// Starts a transaction on this connection.
    pub(super) async fn begin(&mut self) -> Result<sqlx::Transaction<'_, Any>, sqlx::Error> {
        AnyConnection::begin(self).await
    }
}

impl std::ops::Deref for Conn<'_> {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        match self {
            Self::Own { conn, .. } => conn,
            Self::Pooled(conn) => conn,
        }
    }
}

impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match self {
            Self::Own { conn, .. } => conn,
            Self::Pooled(conn) => conn,
        }
    }
}

/// What [`Store::checkpoint`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpoint {
    /// Nothing was written since the WAL was last emptied: no statement ran.
    Skipped,
    /// The WAL's every frame is in the database file: it starts over with the next write.
    Complete,
    /// Some frames stay in the WAL (a reader still needs them): the next tick goes on.
    Partial,
    /// PostgreSQL: nothing to do.
    NotNeeded,
}

impl Store {
    /// A connection for a write whose commit is synced before it returns (SQLite's synced
    /// connection, in the write turn; PostgreSQL: pooled).
    ///
    /// SQLite writes one transaction at a time, and a writer that finds the file locked
    /// sleeps in SQLite's busy handler (1, 2, 5, 10 … 100 ms) before it looks again: under load
    /// the intake's batches, the worker's claims and its finishes collided and spent most of
    /// their time asleep with the CPU idle. So the process's writers queue here instead, in
    /// order, and each one finds the file free the moment the previous one commits. Every
    /// write of this module takes its turn (inside [`Self::bounded`], so a stuck writer costs
    /// the others a bounded wait); reads never do ([`Self::reader`]). PostgreSQL: no turn,
    /// its row locks do this.
    pub(super) async fn writer(&self) -> Result<Conn<'_>, StoreError> {
        self.write_on(true).await
    }

    /// [`Self::writer`] for what need not be durable at once: SQLite's connection whose
    /// commits do not sync (claims, pruning); PostgreSQL: pooled, like every write.
    pub(super) async fn unsynced_writer(&self) -> Result<Conn<'_>, StoreError> {
        self.write_on(false).await
    }

    async fn write_on(&self, synced: bool) -> Result<Conn<'_>, StoreError> {
        let Some(turn) = &self.write_turn else {
            return Ok(Conn::Pooled(self.pool.acquire().await?));
        };
        let guard = turn.turn.lock().await;
        let conn = turn.take(synced).await?;
        turn.taken.fetch_add(1, Relaxed);
        Ok(Conn::Own {
            conn,
            _turn: Some(guard),
        })
    }

    /// A connection for reads: SQLite's synced connection between writes (WAL readers do
    /// not block the file, but one connection runs one statement at a time), or, with
    /// `DATABASE_MAX_CONNECTIONS` above 1, the pool; PostgreSQL: the pool.
    pub(super) async fn reader(&self) -> Result<Conn<'_>, StoreError> {
        match &self.write_turn {
            Some(turn) if !self.sqlite_read_pool => Ok(Conn::Own {
                conn: turn.take(true).await?,
                _turn: None,
            }),
            _ => Ok(Conn::Pooled(self.pool.acquire().await?)),
        }
    }

    /// SQLite: copies what the WAL holds into the database file (a passive checkpoint), so
    /// the WAL can start over, on the unsynced writer, so that reads never wait for it.
    /// It takes the process's write turn: a checkpoint that runs beside a writer never
    /// catches up with it, and under a steady load the WAL then never starts over and grows
    /// for as long as the load lasts (measured: 90-220 MB over a quick bench run, against
    /// 25 MB with the turn). The serving process calls this every [`CHECKPOINT_EVERY`]
    /// instead of letting a commit do it; PostgreSQL: nothing to do. When no write has
    /// taken the turn since the WAL was last emptied, no statement runs: an idle service
    /// does not wake SQLite's thread four times a second for nothing.
    pub async fn checkpoint(&self) -> Result<Checkpoint, StoreError> {
        let Some(turn) = &self.write_turn else {
            return Ok(Checkpoint::NotNeeded);
        };
        self.bounded(async {
            // Not `writer`: a checkpoint is not a write the next checkpoint must see.
            let _turn = turn.turn.lock().await;
            // Every write counts itself while it holds the turn, so this is exact.
            let taken = turn.taken.load(Relaxed);
            if taken == turn.checkpointed.load(Relaxed) {
                return Ok(Checkpoint::Skipped);
            }
            let mut conn = turn.take(false).await?;
            // (busy, frames in the WAL, frames copied into the database file)
            let (busy, log, copied): (i64, i64, i64) =
                sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
                    .fetch_one(&mut *conn)
                    .await?;
            Ok(if busy == 0 && copied == log {
                turn.checkpointed.store(taken, Relaxed);
                Checkpoint::Complete
            } else {
                Checkpoint::Partial
            })
        })
        .await
    }
}
