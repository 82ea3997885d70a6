//! A step's result written to its task: the calls it made, the task's new state, guarded by
//! the step's lease, one result at a time ([`settle_one`], both backends) or a SQLite batch
//! set-based ([`settle_all`]); and a failed approval's successor ([`promote_attached`]).

use sqlx::{Acquire as _, Row};

use super::attempts::{
    complete_all, complete_call, insert_calls, insert_rows, replace_notes, withdraw_notes,
    AttemptId,
};
use super::tasks::{insert_task, StepResult};
use super::{is_unique_violation, Store, StoreError};
use crate::domain::gate::ApprovalPath;
use crate::domain::ids::{DeliveryId, TaskId};
use crate::domain::retry::RetryKind;
use crate::domain::settle::Settlement;
use crate::domain::task::{DeliveryStatus, NewTask, Outcome, TaskStatus};
use crate::domain::upstream::CallRecord;

impl Store {
    /// Stores the results of steps, in ONE transaction (one commit): for each, its calls
    /// and then its task's new state, guarded by its lease. One output per result, in order:
    /// false when the lease was lost (the calls are stored, the task is not touched). The
    /// worker writes through [`super::StepWrites`], which batches concurrent steps' writes.
    pub async fn settle_steps(&self, results: &[StepResult]) -> Result<Vec<bool>, StoreError> {
        let now = self.clock.now_ms();
        self.bounded(async {
            let mut writer = self.writer().await?;
            let mut tx = writer.begin().await?;
            let mut kept = Vec::with_capacity(results.len());
            for result in results {
                kept.push(settle_one(&mut tx, result, now, self.backend.param_mark()).await?);
            }
            tx.commit().await?;
            Ok(kept)
        })
        .await
    }
}

/// One step's result inside the batch's transaction.
pub(super) async fn settle_one(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    result: &StepResult,
    now: i64,
    mark: char,
) -> Result<bool, StoreError> {
    if let Some((attempt, call)) = &result.completed {
        complete_call(tx, *attempt, call).await?;
    }
    insert_calls(tx, result.task, &result.calls, mark).await?;
    // Whether or not the lease is still held: these notes are this step's own.
    if let Some((note, call)) = &result.replaces {
        replace_notes(tx, &[(result.task, *note, call)], mark).await?;
    }
    withdraw_notes(tx, &result.withdrawn, mark).await?;
    // One statement for both kinds of result: what a kind leaves alone is bound as NULL and
    // kept by COALESCE.
    let update = sqlx::query(
        "UPDATE tasks SET status = $3, outcome = COALESCE($4, outcome), detail = $5, \
         attempts = attempts + 1, errors = errors + $6, \
         next_attempt_at = COALESCE($7, next_attempt_at), \
         finished_at = COALESCE($8, finished_at), \
         job_id = COALESCE($9, job_id), job_number = COALESCE($10, job_number), \
         project_slug = COALESCE($11, project_slug), \
         pipeline_id = COALESCE($12, pipeline_id), \
         workflow_name = COALESCE($13, workflow_name), \
         lease_owner = NULL, lease_expires_at = NULL, call_in_flight = 0 \
         WHERE id = $1 AND lease_owner = $2 AND status = 'pending'",
    );
    let done = bind_task_update(update, result, now)
        .execute(&mut **tx)
        .await?;
    let kept = done.rows_affected() == 1;
    if kept && task_update(&result.settle, now).0 == TaskStatus::Failed {
        if let Some(successor) = &result.successor {
            promote_attached(tx, result.delivery, successor, now).await?;
        }
    }
    Ok(kept)
}

type TaskUpdate<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Binds a step result's 13 values to a task update, in the order both updates number them
/// (`$1`…`$13` in [`settle_one`], `column1`…`column13` of each row in [`settle_all`]).
fn bind_task_update<'q>(query: TaskUpdate<'q>, result: &'q StepResult, now: i64) -> TaskUpdate<'q> {
    let (status, outcome, detail, next_attempt_at, finished_at, error_step) =
        task_update(&result.settle, now);
    let job = &result.job;
    query
        .bind(result.task)
        .bind(result.lease.as_str())
        .bind(status.as_str())
        .bind(outcome.map(Outcome::as_str))
        .bind(detail)
        .bind(i64::from(error_step))
        .bind(next_attempt_at)
        .bind(finished_at)
        .bind(job.job_id.as_deref())
        .bind(job.job_number)
        .bind(job.project_slug.as_deref())
        .bind(job.pipeline_id.as_deref())
        .bind(job.workflow_name.as_deref())
}

/// What one result sets on its task: (status, outcome, detail, next attempt, finished at,
/// whether the step was an error). A kind of result leaves the rest as NULL, kept by COALESCE.
fn task_update(
    settle: &Settlement,
    now: i64,
) -> (
    TaskStatus,
    Option<Outcome>,
    &str,
    Option<i64>,
    Option<i64>,
    bool,
) {
    match settle {
        Settlement::Reschedule {
            at: next_attempt_at,
            kind,
            detail,
        } => (
            TaskStatus::Pending,
            None,
            detail,
            Some(*next_attempt_at),
            None,
            *kind == RetryKind::Error,
        ),
        Settlement::Finish {
            status,
            outcome,
            detail,
        } => (*status, Some(*outcome), detail, None, Some(now), false),
    }
}

/// The results of a SQLite batch, set-based: the answers of noted calls in one statement,
/// the other calls in one multi-row insert, and every task's new state in ONE update, each
/// row guarded by its lease as in [`settle_one`]. One answer per result, in order: false
/// when the lease was lost (the calls are stored, the task is not touched).
pub(super) async fn settle_all(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    results: &[&StepResult],
    now: i64,
) -> Result<Vec<bool>, StoreError> {
    if results.is_empty() {
        return Ok(Vec::new());
    }
    let answers: Vec<(AttemptId, &CallRecord)> = results
        .iter()
        .filter_map(|r| r.completed.as_ref().map(|(id, call)| (*id, call)))
        .collect();
    complete_all(tx, &answers).await?;
    let calls: Vec<(TaskId, &CallRecord)> = results
        .iter()
        .flat_map(|r| r.calls.iter().map(|c| (r.task, c)))
        .collect();
    insert_rows(tx, &calls, None, '?').await?;
    // Whether or not the leases are still held: these notes are the steps' own.
    let replacing: Vec<(TaskId, AttemptId, &CallRecord)> = results
        .iter()
        .filter_map(|r| {
            r.replaces
                .as_ref()
                .map(|(note, call)| (r.task, *note, call))
        })
        .collect();
    replace_notes(tx, &replacing, '?').await?;
    let withdrawn: Vec<AttemptId> = results
        .iter()
        .flat_map(|r| r.withdrawn.iter().copied())
        .collect();
    withdraw_notes(tx, &withdrawn, '?').await?;
    const WIDTH: usize = 13;
    let sql = format!(
        "UPDATE tasks SET status = v.column3, outcome = COALESCE(v.column4, outcome), \
         detail = v.column5, attempts = attempts + 1, errors = errors + v.column6, \
         next_attempt_at = COALESCE(v.column7, next_attempt_at), \
         finished_at = COALESCE(v.column8, finished_at), \
         job_id = COALESCE(v.column9, job_id), job_number = COALESCE(v.column10, job_number), \
         project_slug = COALESCE(v.column11, project_slug), \
         pipeline_id = COALESCE(v.column12, pipeline_id), \
         workflow_name = COALESCE(v.column13, workflow_name), \
         lease_owner = NULL, lease_expires_at = NULL, call_in_flight = 0 \
         FROM (VALUES {}) AS v \
         WHERE tasks.id = v.column1 AND tasks.lease_owner = v.column2 \
         AND tasks.status = 'pending' RETURNING tasks.id",
        super::value_rows('?', 1, results.len(), WIDTH)
    );
    let mut update = sqlx::query(&sql).persistent(results.len() <= 2);
    for result in results {
        update = bind_task_update(update, result, now);
    }
    let updated: Vec<TaskId> = update
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|row| row.try_get("id"))
        .collect::<Result<_, _>>()?;
    let mut kept = Vec::with_capacity(results.len());
    for result in results {
        let took = updated.contains(&result.task);
        if took && task_update(&result.settle, now).0 == TaskStatus::Failed {
            if let Some(successor) = &result.successor {
                promote_attached(tx, result.delivery, successor, now).await?;
            }
        }
        kept.push(took);
    }
    Ok(kept)
}

/// A failed approve task's newest attached approval (one that was never tried) gets a task of
/// its own, in the failure's transaction; the other attached approvals move to it. Nothing
/// when none is attached, or when another approve of the hold job is live already.
async fn promote_attached(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    failed: DeliveryId,
    successor: &NewTask,
    now: i64,
) -> Result<(), StoreError> {
    let newest: Option<DeliveryId> = sqlx::query_scalar(
        "SELECT id FROM deliveries WHERE duplicate_of = $1 AND outcome = $2 \
         ORDER BY received_at DESC, id DESC LIMIT 1",
    )
    .bind(failed)
    .bind(DeliveryStatus::Attached.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    let Some(newest) = newest else {
        return Ok(());
    };
    let mut saved = tx.begin().await?;
    let made = insert_task(
        &mut saved,
        TaskId::new_random(),
        newest,
        successor,
        now,
        ApprovalPath::Hook,
    )
    .await;
    match made {
        Ok(()) => saved.commit().await?,
        // Another approve of this hold job is live (the reconciler's): it will do.
        Err(e) if is_unique_violation(&e) => {
            saved.rollback().await?;
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    }
    sqlx::query("UPDATE deliveries SET outcome = $2, duplicate_of = NULL WHERE id = $1")
        .bind(newest)
        .bind(DeliveryStatus::Queued.as_str())
        .execute(&mut **tx)
        .await?;
    sqlx::query("UPDATE deliveries SET duplicate_of = $2 WHERE duplicate_of = $1 AND outcome = $3")
        .bind(failed)
        .bind(newest)
        .bind(DeliveryStatus::Attached.as_str())
        .execute(&mut **tx)
        .await?;
    Ok(())
}
