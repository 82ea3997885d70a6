//! Group commit for the worker's step results: the results of concurrent steps (each a task's
//! calls and new state) share one transaction ([`super::group_commit`]).

use super::group_commit::{Batch, BatchObserver, BatchOptions, GroupCommit};
use super::tasks::StepResult;
use super::{Store, StoreError};

struct Steps;

impl Batch for Steps {
    type Item = StepResult;
    type Output = bool;

    async fn write(store: &Store, items: &[StepResult]) -> Result<Vec<bool>, StoreError> {
        store.settle_steps(items).await
    }

    /// By task id: every writer updates task rows in the same order.
    fn order(a: &StepResult, b: &StepResult) -> std::cmp::Ordering {
        a.task.cmp(&b.task)
    }
}

/// The handle step results are stored through. Cheap to clone.
#[derive(Clone)]
pub struct StepResults(GroupCommit<Steps>);

impl std::fmt::Debug for StepResults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StepResults")
    }
}

impl StepResults {
    /// Starts the writer task for `store`; it ends when every handle is dropped.
    pub fn start(store: Store, options: BatchOptions, observe: BatchObserver) -> Self {
        Self(GroupCommit::start(store, options, observe))
    }

    /// Stores one step's result; returns once its batch has committed: true when the lease
    /// was still held (the task took the new state).
    pub fn settle(
        &self,
        result: StepResult,
    ) -> impl std::future::Future<Output = Result<bool, StoreError>> + Send + '_ {
        self.0.write(result)
    }
}
