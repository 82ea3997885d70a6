//! Group commit: one writer task per kind of write takes everything that is waiting and
//! writes it in ONE transaction, so concurrent writers share one commit (one fsync) instead of
//! each paying its own. Used for deliveries ([`super::Intake`]) and for the worker's step
//! writes ([`super::StepWrites`]).
//!
//! A write waits in a queue while the previous batch commits; the writer then takes every
//! write that has arrived (up to `max_batch`) and, when the last batch had company, waits up
//! to `max_wait` for more. An idle service never waits. Each caller gets its result only after
//! the batch's commit: nothing is reported done before it is durable. A failed batch is
//! written again one by one (each with its own transaction), so one bad write, or a deadlock
//! between replicas' batches, fails no one else.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{Store, StoreError};

/// Told the size of each batch and how long its first write waited for the commit to start.
pub type BatchObserver = Arc<dyn Fn(usize, Duration) + Send + Sync>;

/// Batching settings.
#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    /// Most writes in one transaction.
    pub max_batch: usize,
    /// Longest extra wait for company, once the load shows there is some.
    pub max_wait: Duration,
    /// Writes waiting for the writer at most; more are refused at once (overload).
    pub queue: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self {
            max_batch: 256,
            max_wait: Duration::from_millis(2),
            queue: 4096,
        }
    }
}

/// One kind of write that can share a transaction with others of its kind.
pub(super) trait Batch: Send + Sync + 'static {
    type Item: Send + Sync + 'static;
    type Output: Send + 'static;

    /// Writes `items` in one transaction; one output per item, in order.
    fn write(
        &self,
        store: &Store,
        items: &[Self::Item],
    ) -> impl Future<Output = Result<Vec<Self::Output>, StoreError>> + Send;

    /// One order for every writer (replicas included), so batches lock rows in the same order
    /// and do not deadlock one another.
    fn order(_a: &Self::Item, _b: &Self::Item) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }

    /// Whether an item of a failed batch is written again on its own; if not, its writer is
    /// told the batch's error.
    fn retry_alone(_item: &Self::Item) -> bool {
        true
    }
}

struct Pending<B: Batch> {
    item: B::Item,
    queued_at: Instant,
    reply: oneshot::Sender<Result<B::Output, StoreError>>,
}

/// The queue writes of kind `B` go through. Cheap to clone.
pub(super) struct GroupCommit<B: Batch> {
    queue: mpsc::Sender<Pending<B>>,
}

impl<B: Batch> Clone for GroupCommit<B> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<B: Batch> GroupCommit<B> {
    /// Starts the writer task; it ends when every handle is dropped.
    pub(super) fn start(
        store: Store,
        batch: B,
        options: BatchOptions,
        observe: BatchObserver,
    ) -> Self {
        let (queue, receiver) = mpsc::channel(options.queue.max(1));
        tokio::spawn(write_batches::<B>(store, batch, options, receiver, observe));
        Self { queue }
    }

    /// Writes one item; returns once its batch has committed.
    pub(super) async fn write(&self, item: B::Item) -> Result<B::Output, StoreError> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            item,
            queued_at: Instant::now(),
            reply,
        };
        self.queue
            .try_send(pending)
            .map_err(|_| StoreError::Invalid("the write queue is full".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Invalid("the store's writer stopped".into()))?
    }
}

/// One item in its own transaction, tried again after a deadlock or a serialisation failure
/// (another writer won; the second try sees its row).
async fn write_alone<B: Batch>(
    batch: &B,
    store: &Store,
    item: &B::Item,
) -> Result<B::Output, StoreError> {
    let mut tries = 0;
    loop {
        tries += 1;
        match batch.write(store, std::slice::from_ref(item)).await {
            Ok(mut one) => {
                return one
                    .pop()
                    .ok_or_else(|| StoreError::Invalid("a batch of one gave no result".into()))
            }
            Err(e) if tries < 3 && e.is_conflict() => continue,
            Err(e) => {
                tracing::warn!(error = %e, "a write was not stored");
                return Err(e);
            }
        }
    }
}

async fn write_batches<B: Batch>(
    store: Store,
    writer: B,
    options: BatchOptions,
    mut receiver: mpsc::Receiver<Pending<B>>,
    observe: BatchObserver,
) {
    let mut busy = false;
    while let Some(first) = receiver.recv().await {
        let mut batch = vec![first];
        // Whatever has already arrived joins at once.
        while batch.len() < options.max_batch {
            match receiver.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        // Under load, a moment more gathers more company for the same fsync; an idle service
        // does not wait at all.
        if (busy || batch.len() > 1) && !options.max_wait.is_zero() {
            let until = Instant::now() + options.max_wait;
            while batch.len() < options.max_batch {
                match tokio::time::timeout_at(until, receiver.recv()).await {
                    Ok(Some(next)) => batch.push(next),
                    _ => break,
                }
            }
        }
        busy = batch.len() > 1;
        let waited = batch[0].queued_at.elapsed();
        observe(batch.len(), waited);
        batch.sort_by(|a, b| B::order(&a.item, &b.item));
        let (items, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|p| (p.item, p.reply)).unzip();
        match writer.write(&store, &items).await {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(Ok(result));
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, writes = items.len(), "batch failed; writing one by one");
                for (item, reply) in items.iter().zip(replies) {
                    let result = if B::retry_alone(item) {
                        write_alone(&writer, &store, item).await
                    } else {
                        Err(StoreError::Invalid(format!(
                            "the write's batch was not stored: {e}"
                        )))
                    };
                    let _ = reply.send(result);
                }
            }
        }
    }
}
