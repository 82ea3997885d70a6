//! The `deliveries` table: every verified webhook delivery, and the task it creates.

use sqlx::{Acquire as _, Executor, Row};

use super::{Store, StoreError};
use crate::domain::gate::ApprovalPath;
use crate::domain::ids::{DeliveryId, TaskId};
use crate::domain::task::{DeliveryStatus, NewTask, TaskAction, TaskStatus};
use crate::inbound::sym_event::SymEvent;

/// What recording a delivery did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// A new delivery with a task to work on.
    Queued {
        delivery_id: DeliveryId,
        task_id: TaskId,
    },
    /// A new delivery that asks nothing of us (an event type we do not act on).
    Ignored { delivery_id: DeliveryId },
    /// Seen before (same Sym id or same webhook-id), or its hold job already has a live
    /// approval (from another event or the reconciler); `original_id` is that delivery.
    Duplicate { original_id: DeliveryId },
}

impl Recorded {
    pub fn status(&self) -> DeliveryStatus {
        match self {
            Self::Queued { .. } => DeliveryStatus::Queued,
            Self::Ignored { .. } => DeliveryStatus::Ignored,
            Self::Duplicate { .. } => DeliveryStatus::Duplicate,
        }
    }

    /// The delivery the caller is told about (the original, for a duplicate).
    pub fn delivery_id(&self) -> DeliveryId {
        match self {
            Self::Queued { delivery_id, .. } | Self::Ignored { delivery_id } => *delivery_id,
            Self::Duplicate { original_id } => *original_id,
        }
    }
}

/// One delivery to record (owned: it may wait in the intake queue).
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub webhook_id: String,
    pub event: SymEvent,
    pub received_at: i64,
    pub task: Option<NewTask>,
}

type Tx<'c> = sqlx::Transaction<'c, sqlx::Any>;

impl Store {
    /// Stores a verified delivery and, when it asks for work, its task: in one transaction,
    /// so a 2xx is only ever sent for an event that is durably stored with its task. (The
    /// service itself records through [`super::Intake`], which shares one transaction among
    /// concurrent deliveries.)
    pub async fn record_delivery(
        &self,
        webhook_id: &str,
        event: &SymEvent,
        received_at: i64,
        task: Option<&NewTask>,
    ) -> Result<Recorded, StoreError> {
        let item = NewDelivery {
            webhook_id: webhook_id.to_owned(),
            event: event.clone(),
            received_at,
            task: task.cloned(),
        };
        let mut results = self.record_batch(std::slice::from_ref(&item)).await?;
        results
            .pop()
            .ok_or_else(|| StoreError::Invalid("a batch of one gave no result".into()))
    }

    /// Records `items` in ONE transaction (one commit, one fsync), each behind a savepoint so
    /// a duplicate or a covered approval is handled without failing the others. Results come
    /// back in order, and only after the commit: none is answered before it is durable.
    pub(super) async fn record_batch(
        &self,
        items: &[NewDelivery],
    ) -> Result<Vec<Recorded>, StoreError> {
        self.bounded(async {
            let mut tx = self.pool.begin().await?;
            let mut results = Vec::with_capacity(items.len());
            for item in items {
                results.push(record_one(&mut tx, item).await?);
            }
            tx.commit().await?;
            Ok(results)
        })
        .await
    }

    /// How many times a delivery was delivered again (replays and covered deliveries).
    pub async fn redeliveries(&self, delivery: DeliveryId) -> Result<i64, StoreError> {
        self.bounded(async {
            Ok(
                sqlx::query_scalar("SELECT redeliveries FROM deliveries WHERE id = $1")
                    .bind(delivery.to_string())
                    .fetch_one(&self.pool)
                    .await?,
            )
        })
        .await
    }

    /// How many deliveries ended up `status` (tests and the demo).
    pub async fn delivery_count(&self, status: DeliveryStatus) -> Result<i64, StoreError> {
        self.bounded(async {
            Ok(
                sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE outcome = $1")
                    .bind(status.as_str())
                    .fetch_one(&self.pool)
                    .await?,
            )
        })
        .await
    }

    /// The Sym event id and approver of a delivery, for log context.
    pub async fn event_context(
        &self,
        delivery_id: DeliveryId,
    ) -> Result<(String, Option<String>), StoreError> {
        self.bounded(async {
            let row = sqlx::query(
                "SELECT sym_event_id, COALESCE(approver_username, approver_name) AS approver \
                 FROM deliveries WHERE id = $1",
            )
            .bind(delivery_id.to_string())
            .fetch_one(&self.pool)
            .await?;
            Ok((row.try_get("sym_event_id")?, row.try_get("approver")?))
        })
        .await
    }
}

/// One delivery inside the batch's transaction.
async fn record_one(tx: &mut Tx<'_>, item: &NewDelivery) -> Result<Recorded, StoreError> {
    let delivery_id = DeliveryId::new_random();
    let status = if item.task.is_some() {
        DeliveryStatus::Queued
    } else {
        DeliveryStatus::Ignored
    };
    let mut saved = tx.begin().await?;
    let inserted = insert_delivery(
        &mut *saved,
        delivery_id,
        &item.webhook_id,
        &item.event,
        item.received_at,
        status,
    )
    .await;
    match inserted {
        Ok(()) => {}
        Err(e) if is_unique_violation(&e) => {
            saved.rollback().await?;
            return duplicate_in(tx, &item.webhook_id, &item.event).await;
        }
        Err(e) => return Err(e.into()),
    }
    let Some(task) = &item.task else {
        saved.commit().await?;
        return Ok(Recorded::Ignored { delivery_id });
    };
    let task_id = TaskId::new_random();
    let inserted = insert_task(
        &mut saved,
        task_id,
        delivery_id,
        task,
        item.received_at,
        ApprovalPath::Hook,
    )
    .await;
    match inserted {
        Ok(()) => {}
        // The hold job already has a live approval: this delivery asks for nothing new.
        Err(e) if is_unique_violation(&e) => {
            saved.rollback().await?;
            return covered_in(tx, task).await;
        }
        Err(e) => return Err(e.into()),
    }
    if task.action == TaskAction::Approve {
        super::gates::release_gate_by_hook(
            &mut saved,
            task.workflow_id,
            &task.hold_job_name,
            item.received_at,
        )
        .await?;
    }
    saved.commit().await?;
    Ok(Recorded::Queued {
        delivery_id,
        task_id,
    })
}

/// A delivery seen before (same Sym id or webhook-id): no row, a count on the original.
async fn duplicate_in(
    tx: &mut Tx<'_>,
    webhook_id: &str,
    event: &SymEvent,
) -> Result<Recorded, StoreError> {
    let original: Option<String> = sqlx::query_scalar(
        "SELECT id FROM deliveries WHERE outcome <> $3 \
         AND (sym_event_id = $1 OR webhook_id = $2) ORDER BY received_at LIMIT 1",
    )
    .bind(&event.id)
    .bind(webhook_id)
    .bind(DeliveryStatus::Duplicate.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    let Some(original_id) = original else {
        return Err(StoreError::Invalid(
            "unique conflict without an original delivery".into(),
        ));
    };
    let original_id: DeliveryId = parse_id(&original_id)?;
    count_redelivery(tx, original_id).await?;
    Ok(Recorded::Duplicate { original_id })
}

/// A delivery whose hold job already has a live approval: counted on that approval's
/// delivery.
async fn covered_in(tx: &mut Tx<'_>, task: &NewTask) -> Result<Recorded, StoreError> {
    let original: Option<String> = sqlx::query_scalar(
        "SELECT delivery_id FROM tasks WHERE workflow_id = $1 AND hold_job_name = $2 \
         AND action = $3 AND (status = $4 OR outcome = 'approved') LIMIT 1",
    )
    .bind(task.workflow_id.to_string())
    .bind(&task.hold_job_name)
    .bind(TaskAction::Approve.as_str())
    .bind(TaskStatus::Pending.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    let Some(original) = original else {
        return Err(StoreError::Invalid(
            "live-approval conflict without a live approval".into(),
        ));
    };
    let original_id: DeliveryId = parse_id(&original)?;
    count_redelivery(tx, original_id).await?;
    Ok(Recorded::Duplicate { original_id })
}

async fn count_redelivery(tx: &mut Tx<'_>, original: DeliveryId) -> Result<(), StoreError> {
    sqlx::query("UPDATE deliveries SET redeliveries = redeliveries + 1 WHERE id = $1")
        .bind(original.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub(super) fn parse_id<T: std::str::FromStr>(text: &str) -> Result<T, StoreError> {
    text.parse()
        .map_err(|_| StoreError::Invalid(format!("stored id {text:?} is not a UUID")))
}

async fn insert_delivery<'e, E>(
    executor: E,
    id: DeliveryId,
    webhook_id: &str,
    event: &SymEvent,
    received_at: i64,
    status: DeliveryStatus,
) -> Result<(), sqlx::Error>
where
    E: Executor<'e, Database = sqlx::Any>,
{
    sqlx::query(
        "INSERT INTO deliveries (id, webhook_id, sym_event_id, event_type, workflow_id, \
         workflow_url, merging_user, approver_username, approver_name, run_srn, received_at, \
         outcome) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(id.to_string())
    .bind(webhook_id)
    .bind(&event.id)
    .bind(&event.event_type)
    .bind(event.workflow_id.map(|w| w.to_string()))
    .bind(event.workflow_url.as_deref())
    .bind(event.merging_user.as_deref())
    .bind(event.approver_username.as_deref())
    .bind(event.approver_name.as_deref())
    .bind(event.run_srn.as_deref())
    .bind(received_at)
    .bind(status.as_str())
    .execute(executor)
    .await?;
    Ok(())
}

/// Inserts a task (pending, due now) in `tx`.
pub(super) async fn insert_task(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    task_id: TaskId,
    delivery_id: DeliveryId,
    task: &NewTask,
    now: i64,
    origin: ApprovalPath,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO tasks (id, delivery_id, action, workflow_id, status, attempts, \
         created_at, deadline_at, next_attempt_at, hold_job_name, origin) \
         VALUES ($1, $2, $3, $4, $5, 0, $6, $7, $6, $8, $9)",
    )
    .bind(task_id.to_string())
    .bind(delivery_id.to_string())
    .bind(task.action.as_str())
    .bind(task.workflow_id.to_string())
    .bind(TaskStatus::Pending.as_str())
    .bind(now)
    .bind(task.deadline_at)
    .bind(&task.hold_job_name)
    .bind(origin.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(super) fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|db| db.is_unique_violation())
}
