//! Group commit for deliveries, on both backends: one writer task records concurrent
//! deliveries in one transaction, so they share one commit (one fsync) instead of each paying
//! its own. The transaction is set-based (a multi-row insert for the deliveries, one for their
//! tasks, one gate update: [`Store::record_batch`]), so a batch of 200 costs about the
//! statements and round trips of one delivery, which is what lets a single writer keep up on
//! PostgreSQL too, where each statement is a network round trip.
//!
//! A delivery waits in a queue while the previous batch commits; the writer then takes every
//! delivery that has arrived (up to `max_batch`) and, when the last batch had company, waits
//! up to `max_wait` for more. Each caller gets its result only after the batch's commit:
//! nothing is answered before it is durable. A failed batch fails every delivery in it (each
//! answers 503 and its sender retries); nothing is half-written.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::deliveries::NewDelivery;
use super::{Recorded, Store, StoreError};

/// Told the size of each batch and how long its first delivery waited for the commit to start.
pub type BatchObserver = Arc<dyn Fn(usize, Duration) + Send + Sync>;

/// Batching settings.
#[derive(Debug, Clone, Copy)]
pub struct IntakeOptions {
    /// Most deliveries in one transaction.
    pub max_batch: usize,
    /// Longest extra wait for company, once the load shows there is some.
    pub max_wait: Duration,
    /// Deliveries waiting for the writer at most; more are refused at once (overload).
    pub queue: usize,
}

impl Default for IntakeOptions {
    fn default() -> Self {
        Self {
            max_batch: 256,
            max_wait: Duration::from_millis(2),
            queue: 4096,
        }
    }
}

struct Pending {
    delivery: NewDelivery,
    queued_at: Instant,
    reply: oneshot::Sender<Result<Recorded, StoreError>>,
}

/// The handle deliveries are recorded through. Cheap to clone.
#[derive(Clone)]
pub struct Intake {
    queue: mpsc::Sender<Pending>,
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Intake")
    }
}

impl Intake {
    /// Starts the writer task for `store`; it ends when every handle is dropped.
    pub fn start(store: Store, options: IntakeOptions, observe: BatchObserver) -> Self {
        let (queue, receiver) = mpsc::channel(options.queue.max(1));
        tokio::spawn(write_batches(store, options, receiver, observe));
        Self { queue }
    }

    /// Records one delivery; returns once its batch has committed.
    pub async fn record(&self, delivery: NewDelivery) -> Result<Recorded, StoreError> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            delivery,
            queued_at: Instant::now(),
            reply,
        };
        self.queue
            .try_send(pending)
            .map_err(|_| StoreError::Invalid("the intake queue is full".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Invalid("the intake writer stopped".into()))?
    }
}

/// One delivery in its own transaction, tried again after a deadlock or a serialisation
/// failure (another writer won; the second try sees its row).
async fn record_alone(store: &Store, delivery: &NewDelivery) -> Result<Recorded, StoreError> {
    let mut tries = 0;
    loop {
        tries += 1;
        match store.record_batch(std::slice::from_ref(delivery)).await {
            Ok(mut one) => {
                return one
                    .pop()
                    .ok_or_else(|| StoreError::Invalid("a batch of one gave no result".into()))
            }
            Err(e) if tries < 3 && e.is_conflict() => continue,
            Err(e) => {
                tracing::warn!(error = %e, "a delivery was not stored");
                return Err(e);
            }
        }
    }
}

async fn write_batches(
    store: Store,
    options: IntakeOptions,
    mut receiver: mpsc::Receiver<Pending>,
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
        // One order for every writer (replicas included): rows of the same event are then
        // locked in the same order, which keeps batches from deadlocking one another.
        batch.sort_by(|a, b| a.delivery.event.id.cmp(&b.delivery.event.id));
        let (deliveries, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|p| (p.delivery, p.reply)).unzip();
        match store.record_batch(&deliveries).await {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(Ok(result));
                }
            }
            // Replicas writing batches that share an event (or a hold job) can deadlock;
            // the database then aborts one of them. Its deliveries are written one by one
            // instead, each with a retry: one row and its task cannot deadlock for long.
            Err(e) if deliveries.len() > 1 => {
                tracing::debug!(error = %e, deliveries = deliveries.len(), "batch failed; storing one by one");
                for (delivery, reply) in deliveries.iter().zip(replies) {
                    let _ = reply.send(record_alone(&store, delivery).await);
                }
            }
            Err(_) => {
                let result = record_alone(&store, &deliveries[0]).await;
                if let Some(reply) = replies.into_iter().next() {
                    let _ = reply.send(result);
                }
            }
        }
    }
}
