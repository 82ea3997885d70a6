//! Group commit for the worker's step results on SQLite: the results of concurrent steps
//! (each a task's calls and new state) share one transaction ([`super::group_commit`]). On
//! PostgreSQL each result commits on its own pooled connection: a result is several
//! statements (one per CircleCI call), and one writer would serialise their network round
//! trips (measured: the worker drained 250 approvals/s that way against 423/s without), while
//! the server already shares WAL flushes among concurrent commits.

use super::group_commit::{Batch, BatchObserver, BatchOptions, GroupCommit};
use super::tasks::StepResult;
use super::{Store, StoreError};

struct Steps;

impl Batch for Steps {
    type Item = StepResult;
    type Output = bool;

    async fn write(&self, store: &Store, items: &[StepResult]) -> Result<Vec<bool>, StoreError> {
        store.settle_steps(items).await
    }

    /// By task id: every writer updates task rows in the same order.
    fn order(a: &StepResult, b: &StepResult) -> std::cmp::Ordering {
        a.task.cmp(&b.task)
    }
}

/// The handle step results are stored through. Cheap to clone.
#[derive(Clone)]
pub struct StepResults(Mode);

#[derive(Clone)]
enum Mode {
    /// SQLite: one writer, many results to a commit.
    Batched(GroupCommit<Steps>),
    /// PostgreSQL: each result in its own transaction.
    Direct(Store),
}

impl std::fmt::Debug for StepResults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StepResults")
    }
}

impl StepResults {
    /// Starts the writer task for `store`; it ends when every handle is dropped.
    pub fn start(store: Store, options: BatchOptions, observe: BatchObserver) -> Self {
        match store.backend() {
            super::Backend::Sqlite => Self(Mode::Batched(GroupCommit::start(
                store, Steps, options, observe,
            ))),
            super::Backend::Postgres => Self(Mode::Direct(store)),
        }
    }

    /// Stores one step's result; returns once its batch has committed: true when the lease
    /// was still held (the task took the new state).
    pub async fn settle(&self, result: StepResult) -> Result<bool, StoreError> {
        match &self.0 {
            Mode::Batched(writer) => writer.write(result).await,
            Mode::Direct(store) => {
                let mut kept = store.settle_steps(std::slice::from_ref(&result)).await?;
                kept.pop()
                    .ok_or_else(|| StoreError::Invalid("a batch of one gave no result".into()))
            }
        }
    }
}
