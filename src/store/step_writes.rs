//! Group commit for the worker's writes on SQLite: the notes of calls about to be made
//! ([`Store::prepare_call`]) and the results of steps ([`Store::settle_steps`]), of concurrent
//! steps, share one transaction ([`super::group_commit`]), so one synced commit serves them
//! all. On PostgreSQL each write commits on its own pooled connection: a write is several
//! statements (one per CircleCI call), and one writer would serialise their network round
//! trips (measured: the worker drained 250 approvals/s that way against 423/s without), while
//! the server already shares WAL flushes among concurrent commits.
//!
//! Sharing changes nothing a step relies on: each write keeps its own lease guard, and a step
//! hears back only after the commit, so a note is durable before its call is made.

use super::attempts::{note_all, note_one, AttemptId, CallNote};
use super::group_commit::{Batch, BatchObserver, BatchOptions, GroupCommit};
use super::settle::{settle_all, settle_one};
use super::tasks::StepResult;
use super::{Store, StoreError};
use crate::domain::ids::TaskId;

/// One write of a step.
// Each is moved once, into the writer's queue: boxing the larger would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum StepWrite {
    Note(CallNote),
    Settle(StepResult),
}

impl StepWrite {
    fn task(&self) -> TaskId {
        match self {
            Self::Note(note) => note.task,
            Self::Settle(result) => result.task,
        }
    }
}

/// What came of it: the noted call (None: the lease was lost, nothing written), or whether
/// the result was taken (false: the lease was lost).
enum Written {
    Noted(Option<AttemptId>),
    Settled(bool),
}

struct Steps;

impl Batch for Steps {
    type Item = StepWrite;
    type Output = Written;

    /// Set-based (this writer runs on SQLite only): every note's lease renewed in one
    /// statement and their rows in one insert, then every result's answers, calls and task
    /// in one statement each, so a batch costs about the round trips of one write.
    async fn write(&self, store: &Store, items: &[StepWrite]) -> Result<Vec<Written>, StoreError> {
        let now = store.clock.now_ms();
        let notes: Vec<&CallNote> = items
            .iter()
            .filter_map(|i| match i {
                StepWrite::Note(note) => Some(note),
                StepWrite::Settle(_) => None,
            })
            .collect();
        let results: Vec<&StepResult> = items
            .iter()
            .filter_map(|i| match i {
                StepWrite::Settle(result) => Some(result),
                StepWrite::Note(_) => None,
            })
            .collect();
        // Two writes of one task (a step whose lease ran out, still storing its result,
        // beside the step that took the task again) are told apart by their lease tokens,
        // which a set-based statement does not give back: such a batch is written write by
        // write, each under its own guard.
        let mut tasks: Vec<TaskId> = items.iter().map(StepWrite::task).collect();
        tasks.sort();
        tasks.dedup();
        if tasks.len() < items.len() {
            return store
                .bounded(async {
                    let mut writer = store.writer().await?;
                    let mut tx = writer.begin().await?;
                    let mut written = Vec::with_capacity(items.len());
                    for item in items {
                        written.push(match item {
                            StepWrite::Note(note) => {
                                Written::Noted(note_one(&mut tx, note, now, '?').await?)
                            }
                            StepWrite::Settle(result) => {
                                Written::Settled(settle_one(&mut tx, result, now, '?').await?)
                            }
                        });
                    }
                    tx.commit().await?;
                    Ok(written)
                })
                .await;
        }
        let (noted, settled) = store
            .bounded(async {
                let mut writer = store.writer().await?;
                let mut tx = writer.begin().await?;
                let noted = note_all(&mut tx, &notes, now).await?;
                let settled = settle_all(&mut tx, &results, now).await?;
                tx.commit().await?;
                Ok((noted, settled))
            })
            .await?;
        let (mut noted, mut settled) = (noted.into_iter(), settled.into_iter());
        items
            .iter()
            .map(|item| {
                match item {
                    StepWrite::Note(_) => noted.next().map(Written::Noted),
                    StepWrite::Settle(_) => settled.next().map(Written::Settled),
                }
                .ok_or_else(|| StoreError::Invalid("a batch gave fewer answers than writes".into()))
            })
            .collect()
    }

    /// By task id: every writer updates task rows in the same order.
    fn order(a: &StepWrite, b: &StepWrite) -> std::cmp::Ordering {
        a.task().cmp(&b.task())
    }

    /// Not a note: a batch that failed by timing out may still have committed, and a note
    /// written again would leave the first one without an answer, as a call that may have
    /// landed. The step is told the store failed and makes no call (it tries again later,
    /// reading first). A result written again is refused by its own lease guard.
    fn retry_alone(item: &StepWrite) -> bool {
        matches!(item, StepWrite::Settle(_))
    }
}

/// The handle the worker's notes and step results are stored through. Cheap to clone.
#[derive(Clone)]
pub struct StepWrites(Mode);

#[derive(Clone)]
enum Mode {
    /// SQLite: one writer, many writes to a commit.
    Batched(GroupCommit<Steps>),
    /// PostgreSQL: each write in its own transaction.
    Direct(Store),
}

impl std::fmt::Debug for StepWrites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StepWrites")
    }
}

fn mismatch() -> StoreError {
    StoreError::Invalid("the store's writer answered another kind of write".into())
}

impl StepWrites {
    /// Starts the writer task for `store`; it ends when every handle is dropped.
    pub fn start(store: Store, options: BatchOptions, observe: BatchObserver) -> Self {
        match store.backend() {
            super::Backend::Sqlite => Self(Mode::Batched(GroupCommit::start(
                store, Steps, options, observe,
            ))),
            super::Backend::Postgres => Self(Mode::Direct(store)),
        }
    }

    /// Notes a call about to be made ([`Store::prepare_call`]); returns once it is committed.
    /// None when the lease was lost: nothing was written, and the call must not be made.
    pub async fn prepare_call(&self, note: CallNote) -> Result<Option<AttemptId>, StoreError> {
        match &self.0 {
            Mode::Batched(writer) => match writer.write(StepWrite::Note(note)).await? {
                Written::Noted(id) => Ok(id),
                Written::Settled(_) => Err(mismatch()),
            },
            Mode::Direct(store) => store.prepare_call(&note).await,
        }
    }

    /// Stores one step's result; returns once its batch has committed: true when the lease
    /// was still held (the task took the new state).
    pub async fn settle(&self, result: StepResult) -> Result<bool, StoreError> {
        match &self.0 {
            Mode::Batched(writer) => match writer.write(StepWrite::Settle(result)).await? {
                Written::Settled(kept) => Ok(kept),
                Written::Noted(_) => Err(mismatch()),
            },
            Mode::Direct(store) => {
                let mut kept = store.settle_steps(std::slice::from_ref(&result)).await?;
                kept.pop()
                    .ok_or_else(|| StoreError::Invalid("a batch of one gave no result".into()))
            }
        }
    }
}
