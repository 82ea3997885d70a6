//! Group commit for deliveries, on both backends: concurrent deliveries are written by one
//! writer in one transaction ([`super::group_commit`]). The transaction is set-based (a
//! multi-row insert for the deliveries, one for their tasks, one gate update:
//! [`Store::record_batch`]), so a batch of 200 costs about the statements and round trips of
//! one delivery, which is what lets a single writer keep up on PostgreSQL too, where each
//! statement is a network round trip.
//!
//! The hand-off: when the local worker has free slots, the same transaction leases the new
//! tasks to it ([`super::tasks::hand_off_in`], the claim's rules) and, once committed, they
//! go straight to the worker: no claim of their own. Tasks it has no room for are left
//! unleased, and the worker (or another replica) claims them as before.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};

use super::attempts::AttemptId;
use super::deliveries::NewDelivery;
use super::group_commit::{Batch, BatchObserver, BatchOptions, GroupCommit};
use super::tasks::ClaimedTask;
use super::tasks::HandOffTerms;
use super::{Recorded, Store, StoreError};
use crate::domain::ids::{LeaseToken, WorkflowId};
use crate::domain::task::TaskAction;

/// A task leased to the local worker by the intake, with the worker slot it was given.
#[derive(Debug)]
pub struct Handed {
    pub task: ClaimedTask,
    pub lease: LeaseToken,
    /// The call the intake noted for the task's first step (docs/writes.md, "The intake's
    /// note"): the step makes it under this note, or takes the note back.
    pub note: AttemptId,
    /// When the lease was taken, on the store's clock (unix ms).
    pub claimed_ms: i64,
    /// The worker slot this task holds until its step ends.
    pub slot: OwnedSemaphorePermit,
}

/// Where the intake hands new tasks: the worker's free slots and its inbox.
#[derive(Debug, Clone)]
pub struct Handoff {
    /// The worker's free slots. It adds them when it starts and closes them when it stops,
    /// so nothing is handed to a worker that is not running.
    pub slots: Arc<Semaphore>,
    pub inbox: mpsc::UnboundedSender<Handed>,
    /// Names this process's leases.
    pub owner: String,
    pub lease_for: Duration,
    /// A handed task's call as far as it is known before its step reads the workflow (the
    /// intake notes it).
    pub endpoint: fn(TaskAction, WorkflowId) -> String,
}

/// Deliveries as a kind of batched write.
struct Deliveries {
    /// Wakes the worker when tasks are stored that it was not handed.
    wake: Arc<Notify>,
    handoff: Option<Handoff>,
}

impl Batch for Deliveries {
    type Item = NewDelivery;
    type Output = Recorded;

    async fn write(
        &self,
        store: &Store,
        items: &[NewDelivery],
    ) -> Result<Vec<Recorded>, StoreError> {
        let queued_at_most = items.iter().filter(|i| i.task.is_some()).count();
        // Slots first (never waited for): as many as there may be new tasks, at most.
        let mut slots: Vec<OwnedSemaphorePermit> = Vec::new();
        if let Some(handoff) = &self.handoff {
            while slots.len() < queued_at_most {
                match Arc::clone(&handoff.slots).try_acquire_owned() {
                    Ok(slot) => slots.push(slot),
                    Err(_) => break,
                }
            }
        }
        let lease = self
            .handoff
            .as_ref()
            .filter(|_| !slots.is_empty())
            .map(|h| LeaseToken::new(&h.owner));
        let terms = self
            .handoff
            .as_ref()
            .zip(lease.as_ref())
            .map(|(h, token)| HandOffTerms {
                lease: token,
                lease_for: h.lease_for,
                max: slots.len(),
                endpoint: h.endpoint,
            });
        let (results, handed, claimed_ms) = store.record_batch_handing_off(items, terms).await?;
        let queued = results
            .iter()
            .filter(|r| matches!(r, Recorded::Queued { .. }))
            .count();
        if queued > handed.len() {
            self.wake.notify_one();
        }
        if let (Some(handoff), Some(token)) = (&self.handoff, lease) {
            for ((task, note), slot) in handed.into_iter().zip(slots) {
                let handed = Handed {
                    task,
                    lease: token.clone(),
                    note,
                    claimed_ms,
                    slot,
                };
                if let Err(mpsc::error::SendError(lost)) = handoff.inbox.send(handed) {
                    // The worker stopped between the slot and the send: give the lease back
                    // so the task is claimed at once (here after a restart, or elsewhere).
                    let _ = store.release_unstarted(lost.task.id, &lost.lease).await;
                }
            }
        }
        Ok(results)
    }

    /// By Sym event id: rows of the same event are locked in the same order by every writer.
    fn order(a: &NewDelivery, b: &NewDelivery) -> std::cmp::Ordering {
        a.event.id.cmp(&b.event.id)
    }
}

/// The handle deliveries are recorded through. Cheap to clone.
#[derive(Clone)]
pub struct Intake(GroupCommit<Deliveries>);

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Intake")
    }
}

impl Intake {
    /// Starts the writer task for `store`; it ends when every handle is dropped. `wake` is
    /// told when tasks are stored that were not handed to the worker through `handoff`.
    pub fn start(
        store: Store,
        options: BatchOptions,
        observe: BatchObserver,
        wake: Arc<Notify>,
        handoff: Option<Handoff>,
    ) -> Self {
        Self(GroupCommit::start(
            store,
            Deliveries { wake, handoff },
            options,
            observe,
        ))
    }

    /// Records one delivery; returns once its batch has committed.
    pub async fn record(&self, delivery: NewDelivery) -> Result<Recorded, StoreError> {
        self.0.write(delivery).await
    }
}
