//! SQLite's write turn (one writer at a time, in order) and the background checkpoint that
//! needs to know whether anyone wrote since the last one.

use std::time::Duration;

use super::{Store, StoreError};

/// How often the serving process checkpoints a SQLite WAL ([`Store::checkpoint`]).
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// SQLite's one writer at a time, and what the checkpoint needs to know about them.
#[derive(Debug)]
pub(super) struct WriteTurn {
    lock: tokio::sync::Mutex<()>,
    /// Turns taken by writes so far.
    taken: std::sync::atomic::AtomicU64,
    /// `taken` when a checkpoint last emptied the WAL; `u64::MAX` at start, so the first
    /// checkpoint always runs (a WAL may be left from the previous process).
    checkpointed: std::sync::atomic::AtomicU64,
}

impl Default for WriteTurn {
    fn default() -> Self {
        Self {
            lock: tokio::sync::Mutex::new(()),
            taken: 0.into(),
            checkpointed: u64::MAX.into(),
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
    /// SQLite writes one transaction at a time, and a writer that finds the file locked
    /// sleeps in SQLite's busy handler (1, 2, 5, 10 … 100 ms) before it looks again: under load
    /// the intake's batches, the worker's claims and its finishes collided and spent most of
    /// their time asleep with the CPU idle. So the process's writers queue here instead, in
    /// order, and each one finds the file free the moment the previous one commits. Every
    /// write of this module takes its turn (inside [`Self::bounded`], so a stuck writer costs
    /// the others a bounded wait); reads never do (WAL readers do not block the file; on the
    /// default single connection they wait for the statement in progress). PostgreSQL: no
    /// turn, its row locks do this.
    pub(super) async fn write_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match &self.write_turn {
            Some(turn) => {
                let guard = turn.lock.lock().await;
                turn.taken
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Some(guard)
            }
            None => None,
        }
    }

    /// SQLite: copies what the WAL holds into the database file (a passive checkpoint), so
    /// the WAL can start over, on the unsynced connection, so that reads never wait for it.
    /// It takes the process's write turn: a checkpoint that runs beside a writer never
    /// catches up with it, and under a steady load the WAL then never starts over and grows
    /// for as long as the load lasts (measured: 90-220 MB over a quick bench run, against
    /// 25 MB with the turn). The serving process calls this every [`CHECKPOINT_EVERY`]
    /// instead of letting a commit do it; PostgreSQL: nothing to do. When no write has
    /// taken the turn since the WAL was last emptied, no statement runs: an idle service
    /// does not wake SQLite's thread four times a second for nothing.
    pub async fn checkpoint(&self) -> Result<Checkpoint, StoreError> {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(turn) = &self.write_turn else {
            return Ok(Checkpoint::NotNeeded);
        };
        self.bounded(async {
            // Not `write_turn`: a checkpoint is not a write the next checkpoint must see.
            let _turn = turn.lock.lock().await;
            // Every write counts itself while it holds the turn, so this is exact.
            let taken = turn.taken.load(Relaxed);
            if taken == turn.checkpointed.load(Relaxed) {
                return Ok(Checkpoint::Skipped);
            }
            // (busy, frames in the WAL, frames copied into the database file)
            let (busy, log, copied): (i64, i64, i64) =
                sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
                    .fetch_one(self.unsynced())
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
