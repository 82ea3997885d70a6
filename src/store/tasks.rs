//! The `tasks` table: claiming due tasks under a lease (a step's result: `settle.rs`).
//!
//! A task is worked by one process at a time: claiming sets a lease, and every later write is
//! guarded by the claim's [`LeaseToken`], so a process that lost its lease cannot overwrite
//! the result. On PostgreSQL, claims are serialised by a transaction-level advisory lock (and
//! the row by `FOR UPDATE SKIP LOCKED`), so two replicas never take two tasks of one workflow
//! at once.

use std::time::Duration;

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{Backend, Store, StoreError};
use crate::clock::duration_ms;
use crate::domain::gate::ApprovalPath;
use crate::domain::ids::{DeliveryId, LeaseToken, TaskId, WorkflowId};
use crate::domain::settle::Settlement;
use crate::domain::task::{NewTask, Outcome, TaskAction, TaskState, TaskStatus};
use crate::domain::upstream::CallRecord;

use super::attempts::{note_handed, withdraw_task_notes, AttemptId, HandedNote};

/// Key of the PostgreSQL advisory lock that serialises task claims across replicas.
const CLAIM_LOCK_KEY: i64 = 0x5379_6d43_6c61_696d; // "SymClaim"

/// A claimed task, as the worker needs it.
#[derive(Debug, Clone)]
pub struct ClaimedTask {
    pub id: TaskId,
    pub delivery_id: DeliveryId,
    pub action: TaskAction,
    pub workflow_id: WorkflowId,
    /// The approval job to release; None for tasks stored before this was recorded (the
    /// default hold job then).
    pub hold_job_name: Option<String>,
    /// The path that made it (hook delivery or reconciler).
    pub origin: ApprovalPath,
    /// Steps already taken.
    pub attempts: i64,
    /// Of those, steps that ended in an error (the rest were polls).
    pub errors: i64,
    pub created_at: i64,
    pub deadline_at: i64,
    /// When this step was due; past `deadline_at` it only confirms an unknown call
    /// (`domain::settle::is_confirming`).
    pub next_attempt_at: i64,
    /// The Sym event id and approver of its delivery, read with the lease (not in a read of
    /// their own on the way to the call): the step's log context.
    pub sym_event_id: Option<String>,
    pub approver: Option<String>,
}

/// What a step leaves behind: its CircleCI calls not stored yet, the answer of the call
/// noted by [`Store::prepare_call`], the hold job it saw, and the task's new state.
#[derive(Debug, Clone)]
pub struct StepResult {
    pub task: TaskId,
    /// The task's delivery (approvals attached to the task point at it).
    pub delivery: DeliveryId,
    pub lease: LeaseToken,
    pub calls: Vec<CallRecord>,
    pub completed: Option<(AttemptId, CallRecord)>,
    /// The call made under the intake's note ([`super::Handed::note`]): its record takes the
    /// note's place, after `calls`, if the note is still there (a result written twice stores
    /// it once).
    pub replaces: Option<(AttemptId, CallRecord)>,
    /// Notes no call was made under, taken back with the result
    /// ([`super::attempts::withdraw_notes`]).
    pub withdrawn: Vec<AttemptId>,
    pub job: JobInfo,
    pub settle: Settlement,
    /// For an approve task that fails: the task the newest approval attached to it gets
    /// (with its deadline), so an approval that was never tried is not dropped.
    pub successor: Option<NewTask>,
}

/// The hold job a task found and its workflow, kept for the audit trail and the verdict.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobInfo {
    pub job_id: Option<String>,
    pub job_number: Option<i64>,
    pub project_slug: Option<String>,
    pub pipeline_id: Option<String>,
    pub workflow_name: Option<String>,
}

const PENDING: &str = "pending";

impl Store {
    /// Single-replica backends only: forget leases left by a process that died, so its tasks
    /// resume at once instead of after the lease runs out. Not the lease of a task whose call
    /// was in flight: that call may still land, so the task waits for the lease to run out
    /// before anyone reads its hold job again.
    pub async fn release_stale_leases(&self) -> Result<u64, StoreError> {
        self.bounded(async {
            let mut writer = self.writer().await?;
            let done = sqlx::query(
                "UPDATE tasks SET lease_owner = NULL, lease_expires_at = NULL \
                 WHERE status = $1 AND lease_owner IS NOT NULL AND call_in_flight = 0",
            )
            .bind(PENDING)
            .execute(&mut *writer)
            .await?;
            Ok(done.rows_affected())
        })
        .await
    }

    /// Claims up to `max` due tasks in ONE transaction (one commit), most overdue first, under
    /// one lease token (each task's later writes are still guarded by its own row), at most
    /// one per workflow, and none of a workflow another task is being worked on for.
    pub async fn claim_due_tasks(
        &self,
        lease: &LeaseToken,
        lease_for: Duration,
        max: usize,
    ) -> Result<Vec<ClaimedTask>, StoreError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        self.bounded(self.claim_now(lease, lease_for, max)).await
    }

    async fn claim_now(
        &self,
        lease: &LeaseToken,
        lease_for: Duration,
        max: usize,
    ) -> Result<Vec<ClaimedTask>, StoreError> {
        let mut writer = self.unsynced_writer().await?;
        let now = self.clock.now_ms();
        let mut tx = writer.begin().await?;
        if self.backend == Backend::Postgres {
            // Under READ COMMITTED two replicas could each see "no other task of this
            // workflow is leased" and claim two at once; a transaction-level advisory lock
            // makes claims take turns (a few milliseconds each), and the statements after the
            // lock see every claim committed before it. (SQLite: the write turn.)
            sqlx::query("SELECT 1 FROM (SELECT pg_advisory_xact_lock($1)) AS claim_lock")
                .bind(CLAIM_LOCK_KEY)
                .execute(&mut *tx)
                .await?;
        }
        let lock = match self.backend {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        // A few more candidates than wanted: some may share a workflow.
        let candidates = sqlx::query(&format!(
            "SELECT t.id, t.workflow_id FROM tasks t \
             WHERE t.status = 'pending' AND t.next_attempt_at <= $1 \
             AND (t.lease_expires_at IS NULL OR t.lease_expires_at < $1) \
             AND NOT EXISTS (SELECT 1 FROM tasks o WHERE o.workflow_id = t.workflow_id \
                 AND o.id <> t.id AND o.status = 'pending' AND o.lease_expires_at >= $1) \
             ORDER BY t.next_attempt_at, t.created_at LIMIT $2 {lock}"
        ))
        .bind(now)
        .bind(i64::try_from(max.saturating_mul(2)).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await?;
        let picked = pick_one_per_workflow(&candidates, max)?;
        if picked.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let claimed = lease_in(
            &mut tx,
            &picked,
            lease,
            now.saturating_add(duration_ms(lease_for)),
            now,
            self.backend.param_mark(),
            LeaseKind::Claim,
        )
        .await?;
        tx.commit().await?;
        Ok(claimed)
    }

    /// When the next pending task becomes due (or its lease runs out), if any.
    pub async fn next_due_at(&self) -> Result<Option<i64>, StoreError> {
        self.bounded(async {
            let due: Option<i64> = sqlx::query_scalar(
                "SELECT MIN(CASE WHEN lease_expires_at IS NOT NULL \
                 AND lease_expires_at > next_attempt_at \
                 THEN lease_expires_at ELSE next_attempt_at END) \
                 FROM tasks WHERE status = 'pending'",
            )
            .fetch_one(&mut *self.reader().await?)
            .await?;
            Ok(due)
        })
        .await
    }

    /// Gives a lease back without counting a step (shutdown mid-step), unless the step has a
    /// call in flight: then the lease is kept until it runs out, so no other process reads the
    /// hold job and calls again while that call may still land.
    pub async fn release_lease(&self, task: TaskId, lease: &LeaseToken) -> Result<(), StoreError> {
        self.bounded(async {
            let mut writer = self.writer().await?;
            sqlx::query(
                "UPDATE tasks SET lease_owner = NULL, lease_expires_at = NULL \
                 WHERE id = $1 AND lease_owner = $2 AND call_in_flight = 0",
            )
            .bind(task)
            .bind(lease.as_str())
            .execute(&mut *writer)
            .await?;
            Ok(())
        })
        .await
    }

    /// Gives back the lease of a task the intake handed over, when no call was made under the
    /// call it noted (the worker stopped before the step started, or cut the step off before
    /// its call), and takes its notes back: unlike [`Self::release_lease`], the call mark is
    /// cleared too, since this process knows no call of its is in flight.
    pub async fn release_unstarted(
        &self,
        task: TaskId,
        lease: &LeaseToken,
    ) -> Result<(), StoreError> {
        self.bounded(async {
            let mut writer = self.writer().await?;
            let mut tx = writer.begin().await?;
            let released = sqlx::query(
                "UPDATE tasks SET lease_owner = NULL, lease_expires_at = NULL, \
                 call_in_flight = 0 WHERE id = $1 AND lease_owner = $2 AND status = 'pending'",
            )
            .bind(task)
            .bind(lease.as_str())
            .execute(&mut *tx)
            .await?;
            if released.rows_affected() == 1 {
                // The intake's note, and a fresh one if the step noted its call again after
                // slow reads: a task handed over has had no other holder.
                withdraw_task_notes(&mut tx, task).await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// One task's state.
    pub async fn task_state(&self, task: TaskId) -> Result<Option<TaskState>, StoreError> {
        self.bounded(async {
            let row =
                sqlx::query("SELECT status, outcome, detail, attempts FROM tasks WHERE id = $1")
                    .bind(task)
                    .fetch_optional(&mut *self.reader().await?)
                    .await?;
            row.map(|row| {
                let status: String = row.try_get("status")?;
                let outcome: Option<String> = row.try_get("outcome")?;
                Ok(TaskState {
                    status: parse_status(&status)?,
                    outcome: outcome.as_deref().map(parse_outcome).transpose()?,
                    detail: row.try_get("detail")?,
                    attempts: row.try_get("attempts")?,
                })
            })
            .transpose()
        })
        .await
    }

    /// The task created for a delivery, if any.
    pub async fn task_for_delivery(
        &self,
        delivery: DeliveryId,
    ) -> Result<Option<TaskId>, StoreError> {
        self.bounded(async {
            Ok(
                sqlx::query_scalar("SELECT id FROM tasks WHERE delivery_id = $1")
                    .bind(delivery)
                    .fetch_optional(&mut *self.reader().await?)
                    .await?,
            )
        })
        .await
    }

    /// Pending tasks and the creation time of the oldest, for metrics.
    pub async fn pending_summary(&self) -> Result<(i64, Option<i64>), StoreError> {
        self.bounded(async {
            let row = sqlx::query(
                "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM tasks \
                 WHERE status = 'pending'",
            )
            .fetch_one(&mut *self.reader().await?)
            .await?;
            Ok((row.try_get("n")?, row.try_get("oldest")?))
        })
        .await
    }
}

/// The first `max` candidates (id, workflow), in order, skipping a second task of a workflow.
fn pick_one_per_workflow(candidates: &[AnyRow], max: usize) -> Result<Vec<String>, StoreError> {
    let mut workflows = std::collections::HashSet::new();
    let mut picked = Vec::with_capacity(max);
    for row in candidates {
        let id: String = row.try_get("id")?;
        let workflow: String = row.try_get("workflow_id")?;
        if workflows.insert(workflow) {
            picked.push(id);
            if picked.len() == max {
                break;
            }
        }
    }
    Ok(picked)
}

/// Who takes a lease, and so what it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeaseKind {
    /// The worker's claim of due tasks (it picked one per workflow itself).
    Claim,
    /// The intake's hand-off of tasks it just stored: only tasks of a workflow no other task
    /// is leased for, and marked with a call in flight (the intake notes each one's call).
    HandOff,
}

/// Leases the tasks `ids` (most overdue first, as given) under `lease` until `until`, those
/// still pending and unleased (or whose lease ran out), as `kind` says. The rows are returned
/// in the order of `ids`.
async fn lease_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    ids: &[String],
    lease: &LeaseToken,
    until: i64,
    now: i64,
    m: char,
    kind: LeaseKind,
) -> Result<Vec<ClaimedTask>, StoreError> {
    use super::param;
    let only_free_workflows = kind == LeaseKind::HandOff;
    let in_flight = if kind == LeaseKind::HandOff {
        ", call_in_flight = 1"
    } else {
        ""
    };
    // `now` again after the ids (each parameter once, in order: see `Backend::param_mark`).
    let free_workflow = if only_free_workflows {
        format!(
            " AND NOT EXISTS (SELECT 1 FROM tasks o WHERE o.workflow_id = tasks.workflow_id \
             AND o.id <> tasks.id AND o.status = 'pending' AND o.lease_expires_at >= {})",
            param(m, 4 + ids.len())
        )
    } else {
        String::new()
    };
    let sql = format!(
        "UPDATE tasks SET lease_owner = {}, lease_expires_at = {}{in_flight} \
         WHERE status = 'pending' AND (lease_expires_at IS NULL OR lease_expires_at < {}) \
         AND id IN ({}){free_workflow} \
         RETURNING id, delivery_id, action, workflow_id, hold_job_name, origin, attempts, \
         errors, created_at, deadline_at, next_attempt_at, \
         (SELECT d.sym_event_id FROM deliveries d WHERE d.id = tasks.delivery_id) AS sym_event_id, \
         (SELECT COALESCE(d.approver_username, d.approver_name) FROM deliveries d \
          WHERE d.id = tasks.delivery_id) AS approver",
        param(m, 1),
        param(m, 2),
        param(m, 3),
        super::placeholders(m, 4, ids.len())
    );
    let mut claim = sqlx::query(&sql)
        .persistent(ids.len() == 1)
        .bind(lease.as_str())
        .bind(until)
        .bind(now);
    for id in ids {
        claim = claim.bind(id);
    }
    if only_free_workflows {
        claim = claim.bind(now);
    }
    let rows = claim.fetch_all(&mut **tx).await?;
    let mut claimed = rows
        .iter()
        .map(claimed_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    claimed.sort_by_key(|t| {
        ids.iter()
            .position(|id| *id == t.id.to_string())
            .unwrap_or(usize::MAX)
    });
    Ok(claimed)
}

/// What the intake's hand-off needs ([`Store::record_batch_handing_off`], [`hand_off_in`]).
pub(super) struct HandOffTerms<'a> {
    pub lease: &'a LeaseToken,
    pub lease_for: Duration,
    /// How many tasks at most (the worker's free slots).
    pub max: usize,
    /// A handed task's call as far as it is known before its step reads the workflow.
    pub endpoint: fn(TaskAction, WorkflowId) -> String,
}

/// The hand-off: leases up to `max` of the tasks this transaction just stored (`new`, with
/// their workflows), for the local worker, in the intake's own transaction, so they need no
/// claim of their own. The same rules as a claim: at most one per workflow, none of a workflow
/// another task is leased for. On PostgreSQL only when the claim lock is free at once
/// (`pg_try_advisory_xact_lock`): a replica claiming now is never waited for, and the tasks
/// are then claimed as usual.
///
/// Each handed task's call is noted here too, with its task marked as having a call in
/// flight ([`note_handed`]): its first step then makes the call without a commit of its own
/// before it (docs/writes.md, "The intake's note"). `terms.endpoint` gives a note's path as
/// far as it is known before the step reads the workflow.
pub(super) async fn hand_off_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    backend: super::Backend,
    new: &[(TaskId, WorkflowId)],
    terms: &HandOffTerms<'_>,
    now: i64,
) -> Result<Vec<(ClaimedTask, AttemptId)>, StoreError> {
    let (max, lease) = (terms.max, terms.lease);
    let until = now.saturating_add(duration_ms(terms.lease_for));
    if new.is_empty() || max == 0 {
        return Ok(Vec::new());
    }
    if backend == super::Backend::Postgres {
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(CLAIM_LOCK_KEY)
            .fetch_one(&mut **tx)
            .await?;
        if !locked {
            return Ok(Vec::new());
        }
    }
    let mut workflows = std::collections::HashSet::new();
    let picked: Vec<String> = new
        .iter()
        .filter(|(_, workflow)| workflows.insert(*workflow))
        .take(max)
        .map(|(id, _)| id.to_string())
        .collect();
    let mark = backend.param_mark();
    let handed = lease_in(tx, &picked, lease, until, now, mark, LeaseKind::HandOff).await?;
    let notes: Vec<HandedNote> = handed
        .iter()
        .map(|task| HandedNote {
            task: task.id,
            operation: task.action.operation(),
            endpoint: (terms.endpoint)(task.action, task.workflow_id),
        })
        .collect();
    let noted = note_handed(tx, &notes, now, mark).await?;
    Ok(handed.into_iter().zip(noted).collect())
}

pub(super) fn parse_status(text: &str) -> Result<TaskStatus, StoreError> {
    TaskStatus::parse(text)
        .ok_or_else(|| StoreError::Invalid(format!("unknown task status {text:?}")))
}

pub(super) fn parse_outcome(text: &str) -> Result<Outcome, StoreError> {
    Outcome::parse(text).ok_or_else(|| StoreError::Invalid(format!("unknown outcome {text:?}")))
}

fn claimed_from_row(row: &AnyRow) -> Result<ClaimedTask, StoreError> {
    let action: String = row.try_get("action")?;
    let origin: Option<String> = row.try_get("origin")?;
    Ok(ClaimedTask {
        id: row.try_get("id")?,
        delivery_id: row.try_get("delivery_id")?,
        action: TaskAction::parse(&action)
            .ok_or_else(|| StoreError::Invalid(format!("unknown task action {action:?}")))?,
        workflow_id: row.try_get("workflow_id")?,
        hold_job_name: row.try_get("hold_job_name")?,
        origin: origin
            .as_deref()
            .and_then(ApprovalPath::parse)
            .unwrap_or(ApprovalPath::Hook),
        attempts: row.try_get("attempts")?,
        errors: row.try_get("errors")?,
        created_at: row.try_get("created_at")?,
        deadline_at: row.try_get("deadline_at")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        sym_event_id: row.try_get("sym_event_id")?,
        approver: row.try_get("approver")?,
    })
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
    .bind(task_id)
    .bind(delivery_id)
    .bind(task.action.as_str())
    .bind(task.workflow_id)
    .bind(TaskStatus::Pending.as_str())
    .bind(now)
    .bind(task.deadline_at)
    .bind(&task.hold_job_name)
    .bind(origin.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(())
}
