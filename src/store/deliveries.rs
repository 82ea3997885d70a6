//! The `deliveries` table: every verified webhook delivery, and the task it creates.

use std::collections::HashMap;

use sqlx::any::AnyRow;
use sqlx::Row;

use super::attempts::AttemptId;
use super::tasks::{ClaimedTask, HandOffTerms};
use super::{value_rows, Store, StoreError};
use crate::domain::binding::RunBinding;
use crate::domain::event::{Event, EventKind};
use crate::domain::gate::ApprovalPath;
use crate::domain::ids::{DeliveryId, TaskId, WorkflowId};
use crate::domain::task::{DeliveryStatus, NewTask, TaskAction, TaskStatus};

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
    /// A new `request` event: its run is bound to its workflow and hold job.
    Bound { delivery_id: DeliveryId },
    /// Seen before (same Sym id or same webhook-id), or its hold job already has a live
    /// approval (from another event or the reconciler); `original_id` is that delivery.
    Duplicate { original_id: DeliveryId },
}

impl Recorded {
    pub fn status(&self) -> DeliveryStatus {
        match self {
            Self::Queued { .. } => DeliveryStatus::Queued,
            Self::Ignored { .. } => DeliveryStatus::Ignored,
            Self::Bound { .. } => DeliveryStatus::Bound,
            Self::Duplicate { .. } => DeliveryStatus::Duplicate,
        }
    }

    /// The delivery the caller is told about (the original, for a duplicate).
    pub fn delivery_id(&self) -> DeliveryId {
        match self {
            Self::Queued { delivery_id, .. }
            | Self::Ignored { delivery_id }
            | Self::Bound { delivery_id } => *delivery_id,
            Self::Duplicate { original_id } => *original_id,
        }
    }
}

/// One delivery to record (owned: it may wait in the intake queue).
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub webhook_id: String,
    pub event: Event,
    pub received_at: i64,
    pub task: Option<NewTask>,
    /// The run the event binds to its workflow and hold job, if it names both.
    pub binding: Option<RunBinding>,
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
        event: &Event,
        received_at: i64,
        task: Option<&NewTask>,
        binding: Option<&RunBinding>,
    ) -> Result<Recorded, StoreError> {
        let item = NewDelivery {
            webhook_id: webhook_id.to_owned(),
            event: event.clone(),
            received_at,
            task: task.cloned(),
            binding: binding.cloned(),
        };
        let mut results = self.record_batch(std::slice::from_ref(&item)).await?;
        results
            .pop()
            .ok_or_else(|| StoreError::Invalid("a batch of one gave no result".into()))
    }

    /// Records `items` in ONE transaction (one commit, one fsync), with a few statements for
    /// the whole batch whatever its size (see [`record_all`]). Results come back in order, and
    /// only after the commit: none is answered before it is durable.
    pub async fn record_batch(&self, items: &[NewDelivery]) -> Result<Vec<Recorded>, StoreError> {
        Ok(self.record_batch_handing_off(items, None).await?.0)
    }

    /// [`Self::record_batch`], and with `hand_off` the same transaction leases up to that many
    /// of the new tasks for the local worker and notes their calls (`tasks::hand_off_in`);
    /// returns them, each with its note, and when they were leased.
    pub(super) async fn record_batch_handing_off(
        &self,
        items: &[NewDelivery],
        hand_off: Option<HandOffTerms<'_>>,
    ) -> Result<(Vec<Recorded>, Vec<(ClaimedTask, AttemptId)>, i64), StoreError> {
        self.bounded(async {
            let mut writer = self.writer().await?;
            let mut tx = writer.begin().await?;
            let results = record_all(&mut tx, items, self.backend.param_mark()).await?;
            let now = self.clock.now_ms();
            let handed = match hand_off {
                Some(terms) => {
                    let new: Vec<(TaskId, WorkflowId)> = results
                        .iter()
                        .zip(items)
                        .filter_map(|(result, item)| match (result, &item.task) {
                            (Recorded::Queued { task_id, .. }, Some(task)) => {
                                Some((*task_id, task.workflow_id))
                            }
                            _ => None,
                        })
                        .collect();
                    super::tasks::hand_off_in(&mut tx, self.backend, &new, &terms, now).await?
                }
                None => Vec::new(),
            };
            tx.commit().await?;
            Ok((results, handed, now))
        })
        .await
    }

    /// How many times a delivery was delivered again (replays and covered deliveries).
    pub async fn redeliveries(&self, delivery: DeliveryId) -> Result<i64, StoreError> {
        self.bounded(async {
            Ok(
                sqlx::query_scalar("SELECT redeliveries FROM deliveries WHERE id = $1")
                    .bind(delivery)
                    .fetch_one(&mut *self.reader().await?)
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
                    .fetch_one(&mut *self.reader().await?)
                    .await?,
            )
        })
        .await
    }
}

/// Most rows one multi-row statement carries (12 parameters a row: far inside both
/// backends' parameter limits).
const ROWS_PER_STATEMENT: usize = 200;

/// Every delivery of a batch inside the batch's transaction, set-based: one multi-row insert
/// for the deliveries, one for their tasks and one update for the gates they release, so a
/// batch of 200 costs about as many statements as a batch of one. A conflict does not abort
/// the statement (`ON CONFLICT DO NOTHING`); the rows it skipped are looked at one by one:
/// - a delivery seen before (same Sym id or webhook-id) gets no row, a count on the original;
/// - a task whose hold job already has a live approval (another event, the reconciler, or an
///   earlier delivery of this batch) gets no row; its delivery is kept, attached to that
///   approval's task (see [`attach_in`]).
async fn record_all(
    tx: &mut Tx<'_>,
    items: &[NewDelivery],
    mark: char,
) -> Result<Vec<Recorded>, StoreError> {
    let delivery_ids: Vec<DeliveryId> = items.iter().map(|_| DeliveryId::new_random()).collect();
    let stored = insert_deliveries(tx, items, &delivery_ids, mark).await?;

    // The runs the stored deliveries bind (a repeat binds nothing new).
    let bindings: Vec<(&RunBinding, Option<DeliveryId>)> = items
        .iter()
        .enumerate()
        .filter(|(i, _)| stored[*i])
        .filter_map(|(i, item)| Some((item.binding.as_ref()?, Some(delivery_ids[i]))))
        .collect();
    let received_at = items
        .iter()
        .map(|i| i.received_at)
        .max()
        .unwrap_or_default();
    if !bindings.is_empty() {
        super::gates::insert_bindings(tx, &bindings, received_at, mark).await?;
    }

    // The stored deliveries that ask for work, with their new task ids.
    let new_tasks: Vec<NewTaskRow<'_>> = items
        .iter()
        .enumerate()
        .filter(|(i, _)| stored[*i])
        .filter_map(|(i, item)| {
            Some(NewTaskRow {
                index: i,
                id: TaskId::new_random(),
                task: item.task.as_ref()?,
            })
        })
        .collect();
    let task_stored = insert_tasks(tx, items, &delivery_ids, &new_tasks, mark).await?;
    let (queued, covered): (Vec<_>, Vec<_>) = new_tasks
        .iter()
        .zip(task_stored)
        .partition(|(_, stored)| *stored);

    let released: Vec<&NewTask> = queued
        .iter()
        .map(|(row, _)| row.task)
        .filter(|task| task.action == TaskAction::Approve)
        .collect();
    super::gates::release_gates_by_hook(tx, &released, received_at, mark).await?;

    let task_of: HashMap<usize, (&NewTaskRow<'_>, bool)> = queued
        .iter()
        .chain(&covered)
        .map(|(row, stored)| (row.index, (*row, *stored)))
        .collect();
    let mut results = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let result = match task_of.get(&i) {
            _ if !stored[i] => duplicate_in(tx, &item.webhook_id, &item.event).await?,
            Some((row, true)) => Recorded::Queued {
                delivery_id: delivery_ids[i],
                task_id: row.id,
            },
            Some((row, false)) => {
                attach_in(tx, delivery_ids[i], row.task, item.received_at).await?
            }
            None if status_of(item) == DeliveryStatus::Bound => Recorded::Bound {
                delivery_id: delivery_ids[i],
            },
            None => Recorded::Ignored {
                delivery_id: delivery_ids[i],
            },
        };
        results.push(result);
    }
    Ok(results)
}

/// What a new delivery is stored as: queued with a task, bound (a request event binding its
/// run), else ignored.
fn status_of(item: &NewDelivery) -> DeliveryStatus {
    if item.task.is_some() {
        DeliveryStatus::Queued
    } else if item.binding.is_some() && item.event.kind == EventKind::Request {
        DeliveryStatus::Bound
    } else {
        DeliveryStatus::Ignored
    }
}

/// A task to insert for the delivery at `index` of the batch.
struct NewTaskRow<'a> {
    index: usize,
    id: TaskId,
    task: &'a NewTask,
}

/// A statement whose text depends on the batch size is not worth a cached prepared
/// statement (there would be one per size); a single row's is.
fn cache_statement(rows: usize) -> bool {
    rows == 1
}

/// Marks `stored[k]` for each id a `RETURNING id` gave back, `index_of` mapping ids to `k`.
fn mark_returned(
    rows: &[AnyRow],
    index_of: &HashMap<String, usize>,
    stored: &mut [bool],
) -> Result<(), StoreError> {
    for row in rows {
        let id: String = row.try_get("id")?;
        if let Some(&k) = index_of.get(&id) {
            stored[k] = true;
        }
    }
    Ok(())
}

/// Inserts every delivery; true for each one stored, false for one seen before.
async fn insert_deliveries(
    tx: &mut Tx<'_>,
    items: &[NewDelivery],
    ids: &[DeliveryId],
    mark: char,
) -> Result<Vec<bool>, StoreError> {
    let mut stored = vec![false; items.len()];
    let index_of: HashMap<String, usize> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.to_string(), i))
        .collect();
    for (items, ids) in items
        .chunks(ROWS_PER_STATEMENT)
        .zip(ids.chunks(ROWS_PER_STATEMENT))
    {
        let sql = format!(
            "INSERT INTO deliveries (id, webhook_id, sym_event_id, event_type, workflow_id, \
             workflow_url, merging_user, approver_username, approver_name, run_srn, \
             received_at, outcome) VALUES {} ON CONFLICT DO NOTHING RETURNING id",
            value_rows(mark, 1, items.len(), 12)
        );
        let mut insert = sqlx::query(&sql).persistent(cache_statement(items.len()));
        for (item, id) in items.iter().zip(ids) {
            let event = &item.event;
            let status = status_of(item);
            insert = insert
                .bind(id)
                .bind(item.webhook_id.as_str())
                .bind(event.id.as_str())
                .bind(event.event_type.as_str())
                .bind(event.workflow_id.map(|w| w.to_string()))
                .bind(event.workflow_url.as_deref())
                .bind(event.merging_user.as_deref())
                .bind(event.approver_username.as_deref())
                .bind(event.approver_name.as_deref())
                .bind(event.run_srn.as_deref())
                .bind(item.received_at)
                .bind(status.as_str());
        }
        mark_returned(&insert.fetch_all(&mut **tx).await?, &index_of, &mut stored)?;
    }
    Ok(stored)
}

/// Inserts `new_tasks`; true for each one stored, false for one whose hold job already has a
/// live approval.
async fn insert_tasks(
    tx: &mut Tx<'_>,
    items: &[NewDelivery],
    delivery_ids: &[DeliveryId],
    new_tasks: &[NewTaskRow<'_>],
    mark: char,
) -> Result<Vec<bool>, StoreError> {
    let mut stored = vec![false; new_tasks.len()];
    let index_of: HashMap<String, usize> = new_tasks
        .iter()
        .enumerate()
        .map(|(k, row)| (row.id.to_string(), k))
        .collect();
    for chunk in new_tasks.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO tasks (id, delivery_id, action, workflow_id, status, created_at, \
             deadline_at, next_attempt_at, hold_job_name, origin) \
             VALUES {} ON CONFLICT DO NOTHING RETURNING id",
            value_rows(mark, 1, chunk.len(), 10)
        );
        let mut insert = sqlx::query(&sql).persistent(cache_statement(chunk.len()));
        for row in chunk {
            let received_at = items[row.index].received_at;
            insert = insert
                .bind(row.id)
                .bind(delivery_ids[row.index])
                .bind(row.task.action.as_str())
                .bind(row.task.workflow_id)
                .bind(TaskStatus::Pending.as_str())
                .bind(received_at)
                .bind(row.task.deadline_at)
                .bind(received_at)
                .bind(row.task.hold_job_name.as_str())
                .bind(ApprovalPath::Hook.as_str());
        }
        mark_returned(&insert.fetch_all(&mut **tx).await?, &index_of, &mut stored)?;
    }
    Ok(stored)
}

/// A delivery seen before (same Sym id or webhook-id): no row, a count on the original.
async fn duplicate_in(
    tx: &mut Tx<'_>,
    webhook_id: &str,
    event: &Event,
) -> Result<Recorded, StoreError> {
    let original = sqlx::query(
        "SELECT id, outcome, duplicate_of FROM deliveries WHERE outcome <> $3 \
         AND (sym_event_id = $1 OR webhook_id = $2) ORDER BY received_at LIMIT 1",
    )
    .bind(&event.id)
    .bind(webhook_id)
    .bind(DeliveryStatus::Duplicate.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    let Some(original) = original else {
        return Err(StoreError::Invalid(
            "unique conflict without an original delivery".into(),
        ));
    };
    let id: DeliveryId = original.try_get("id")?;
    let outcome: String = original.try_get("outcome")?;
    let attached_to: Option<DeliveryId> = original.try_get("duplicate_of")?;
    count_redelivery(tx, id).await?;
    // A repeat of an attached approval is answered like the approval was: with the live
    // task's delivery.
    let told = match attached_to {
        Some(live) if outcome == DeliveryStatus::Attached.as_str() => live,
        _ => id,
    };
    Ok(Recorded::Duplicate { original_id: told })
}

/// A delivery whose hold job already has a live approval (another Sym event, the reconciler):
/// kept, attached to that approval's task. A pending task's deadline is extended to this
/// approval's (a later approval buys the release more time); if that task then fails, the
/// newest attached approval gets a task of its own (`settle::promote_attached`). The sender is
/// told about the live task's delivery, as for a duplicate.
async fn attach_in(
    tx: &mut Tx<'_>,
    delivery: DeliveryId,
    task: &NewTask,
    received_at: i64,
) -> Result<Recorded, StoreError> {
    let live = sqlx::query(
        "SELECT id, delivery_id, status FROM tasks WHERE workflow_id = $1 AND hold_job_name = $2 \
         AND action = $3 AND (status = $4 OR outcome = 'approved') LIMIT 1",
    )
    .bind(task.workflow_id)
    .bind(&task.hold_job_name)
    .bind(TaskAction::Approve.as_str())
    .bind(TaskStatus::Pending.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    let Some(live) = live else {
        return Err(StoreError::Invalid(
            "live-approval conflict without a live approval".into(),
        ));
    };
    let live_task: String = live.try_get("id")?;
    let original_id: DeliveryId = live.try_get("delivery_id")?;
    sqlx::query("UPDATE deliveries SET outcome = $2, duplicate_of = $3 WHERE id = $1")
        .bind(delivery)
        .bind(DeliveryStatus::Attached.as_str())
        .bind(original_id)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "UPDATE tasks SET deadline_at = CASE WHEN deadline_at < $2 THEN $2 ELSE deadline_at END \
         WHERE id = $1 AND status = $3",
    )
    .bind(&live_task)
    .bind(task.deadline_at.max(received_at))
    .bind(TaskStatus::Pending.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(Recorded::Duplicate { original_id })
}

async fn count_redelivery(tx: &mut Tx<'_>, original: DeliveryId) -> Result<(), StoreError> {
    sqlx::query("UPDATE deliveries SET redeliveries = redeliveries + 1 WHERE id = $1")
        .bind(original)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
