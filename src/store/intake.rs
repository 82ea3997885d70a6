//! Group commit for deliveries, on both backends: concurrent deliveries are written by one
//! writer in one transaction ([`super::group_commit`]). The transaction is set-based (a
//! multi-row insert for the deliveries, one for their tasks, one gate update:
//! [`Store::record_batch`]), so a batch of 200 costs about the statements and round trips of
//! one delivery, which is what lets a single writer keep up on PostgreSQL too, where each
//! statement is a network round trip.

use super::deliveries::NewDelivery;
use super::group_commit::{Batch, BatchObserver, BatchOptions, GroupCommit};
use super::{Recorded, Store, StoreError};

/// Deliveries as a kind of batched write.
struct Deliveries;

impl Batch for Deliveries {
    type Item = NewDelivery;
    type Output = Recorded;

    async fn write(store: &Store, items: &[NewDelivery]) -> Result<Vec<Recorded>, StoreError> {
        store.record_batch(items).await
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
    /// Starts the writer task for `store`; it ends when every handle is dropped.
    pub fn start(store: Store, options: BatchOptions, observe: BatchObserver) -> Self {
        Self(GroupCommit::start(store, options, observe))
    }

    /// Records one delivery; returns once its batch has committed.
    pub async fn record(&self, delivery: NewDelivery) -> Result<Recorded, StoreError> {
        self.0.write(delivery).await
    }
}
