//! The `gates` table: hold jobs registered from CircleCI with their Sym run, and the
//! reconciler's claims and results.
//!
//! A gate is claimed under a lease like a task, so one replica polls it at a time. Releasing a
//! gate creates its approve task in the same transaction, through the same one-live-approval
//! rule as a hook delivery: whichever path comes first makes the task, the other finds it.

use std::time::Duration;

use sqlx::any::AnyRow;
use sqlx::{Acquire as _, Row};

use super::deliveries::{insert_task, is_unique_violation, parse_id};
use super::{Store, StoreError};
use crate::clock::duration_ms;
use crate::domain::gate::{ApprovalPath, GateStatus};
use crate::domain::ids::{DeliveryId, LeaseToken, TaskId, WorkflowId};
use crate::domain::task::{DeliveryStatus, NewTask, TaskAction};

/// What registering a gate did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registered {
    /// A new gate.
    Created,
    /// The same gate (same run and hold job) was already registered.
    Same,
    /// The workflow is registered with another run (or hold job).
    Conflict { sym_run_id: String },
}

/// What ending a gate did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateEnd {
    /// Another process holds the gate now; nothing was written.
    LeaseLost,
    /// Ended; for a release, the path whose task approves the hold job.
    Ended { released_by: Option<ApprovalPath> },
}

/// A gate the reconciler claimed.
#[derive(Debug, Clone)]
pub struct ClaimedGate {
    pub workflow_id: WorkflowId,
    pub sym_run_id: String,
    pub hold_job_name: String,
    /// Reads of the run so far.
    pub polls: i64,
    pub created_at: i64,
}

/// A gate as the audit trail shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GateView {
    pub workflow_id: String,
    pub sym_run_id: String,
    pub hold_job_name: String,
    pub status: String,
    /// `hook` or `reconciler`, once released.
    pub released_by: Option<String>,
    pub polling: bool,
    pub polls: i64,
    pub last_run_status: Option<String>,
    pub detail: Option<String>,
    pub created_at: String,
    pub closed_at: Option<String>,
}

const OPEN: &str = "open";

impl Store {
    /// Registers a gate (idempotent for the same workflow, run and hold job).
    pub async fn register_gate(
        &self,
        workflow: WorkflowId,
        sym_run_id: &str,
        hold_job_name: &str,
    ) -> Result<Registered, StoreError> {
        let now = self.clock.now_ms();
        self.bounded(async {
            let _turn = self.write_turn().await;
            let inserted = sqlx::query(
                "INSERT INTO gates (workflow_id, sym_run_id, hold_job_name, status, created_at, \
                 next_poll_at) VALUES ($1, $2, $3, $4, $5, $5)",
            )
            .bind(workflow.to_string())
            .bind(sym_run_id)
            .bind(hold_job_name)
            .bind(OPEN)
            .bind(now)
            .execute(&self.pool)
            .await;
            match inserted {
                Ok(_) => Ok(Registered::Created),
                Err(e) if is_unique_violation(&e) => {
                    let row = sqlx::query(
                        "SELECT sym_run_id, hold_job_name FROM gates WHERE workflow_id = $1",
                    )
                    .bind(workflow.to_string())
                    .fetch_one(&self.pool)
                    .await?;
                    let run: String = row.try_get("sym_run_id")?;
                    let hold: String = row.try_get("hold_job_name")?;
                    if run == sym_run_id && hold == hold_job_name {
                        Ok(Registered::Same)
                    } else {
                        Ok(Registered::Conflict { sym_run_id: run })
                    }
                }
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    /// Claims the most overdue open gate that is being polled and no live lease holds.
    pub async fn claim_due_gate(
        &self,
        lease: &LeaseToken,
        lease_for: Duration,
    ) -> Result<Option<ClaimedGate>, StoreError> {
        let now = self.clock.now_ms();
        let lock = match self.backend {
            super::Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            super::Backend::Sqlite => "",
        };
        self.bounded(async {
            let _turn = self.write_turn().await;
            let row = sqlx::query(&format!(
                "UPDATE gates SET lease_owner = $1, lease_expires_at = $2 \
                 WHERE workflow_id = (SELECT g.workflow_id FROM gates g \
                    WHERE g.status = 'open' AND g.polling = 1 AND g.next_poll_at <= $3 \
                    AND (g.lease_expires_at IS NULL OR g.lease_expires_at < $3) \
                    ORDER BY g.next_poll_at LIMIT 1 {lock}) \
                 AND status = 'open' AND (lease_expires_at IS NULL OR lease_expires_at < $3) \
                 RETURNING workflow_id, sym_run_id, hold_job_name, polls, created_at"
            ))
            .bind(lease.as_str())
            .bind(now.saturating_add(duration_ms(lease_for)))
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
            row.map(|row| gate_from_row(&row)).transpose()
        })
        .await
    }

    /// Records one read of the gate's run that decided nothing yet: the next read at
    /// `next_poll_at`, or none (`polling` false: stopped).
    pub async fn gate_polled(
        &self,
        workflow: WorkflowId,
        lease: &LeaseToken,
        next_poll_at: Option<i64>,
        last_run_status: Option<&str>,
        detail: &str,
    ) -> Result<bool, StoreError> {
        self.bounded(async {
            let _turn = self.write_turn().await;
            let done = sqlx::query(
                "UPDATE gates SET polls = polls + 1, next_poll_at = COALESCE($3, next_poll_at), \
                 polling = $4, last_run_status = COALESCE($5, last_run_status), detail = $6, \
                 lease_owner = NULL, lease_expires_at = NULL \
                 WHERE workflow_id = $1 AND lease_owner = $2 AND status = 'open'",
            )
            .bind(workflow.to_string())
            .bind(lease.as_str())
            .bind(next_poll_at)
            .bind(i64::from(next_poll_at.is_some()))
            .bind(last_run_status)
            .bind(detail)
            .execute(&self.pool)
            .await?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }

    /// Ends a gate: released (with its approve task, unless the hook's is already live),
    /// closed (with a cancel task for a denial under `ON_DENY=cancel`) or timed out. Returns
    /// the path that released it, for a release: `reconciler` when this made the task, `hook`
    /// when a hook delivery's task was there first.
    pub async fn end_gate(
        &self,
        gate: &ClaimedGate,
        lease: &LeaseToken,
        status: GateStatus,
        run_status: &str,
        detail: &str,
        task: Option<&NewTask>,
    ) -> Result<GateEnd, StoreError> {
        let now = self.clock.now_ms();
        self.bounded(async {
            let _turn = self.write_turn().await;
            let mut tx = self.pool.begin().await?;
            // The task first, then the gate: the same order as a hook delivery's transaction
            // (task, then gate), so the two paths racing wait for each other, never deadlock.
            let mut released_by = None;
            if let Some(task) = task {
                let mut saved = tx.begin().await?;
                // A delivery of the reconciler's own, so the task has one like every task.
                let delivery_id = DeliveryId::new_random();
                let marker = format!("reconciler:{}:{}", gate.sym_run_id, gate.workflow_id);
                let made = async {
                    sqlx::query(
                        "INSERT INTO deliveries (id, webhook_id, sym_event_id, event_type, \
                         workflow_id, run_srn, received_at, outcome) \
                         VALUES ($1, $2, $2, $3, $4, $5, $6, $7)",
                    )
                    .bind(delivery_id.to_string())
                    .bind(&marker)
                    .bind(task.action.as_str())
                    .bind(gate.workflow_id.to_string())
                    .bind(&gate.sym_run_id)
                    .bind(now)
                    .bind(DeliveryStatus::Queued.as_str())
                    .execute(&mut *saved)
                    .await?;
                    insert_task(
                        &mut saved,
                        TaskId::new_random(),
                        delivery_id,
                        task,
                        now,
                        ApprovalPath::Reconciler,
                    )
                    .await
                }
                .await;
                match made {
                    Ok(()) => {
                        saved.commit().await?;
                        if task.action == TaskAction::Approve {
                            released_by = Some(ApprovalPath::Reconciler);
                        }
                    }
                    // The hook's approve task is live (or done): it released the hold job.
                    Err(e) if is_unique_violation(&e) && task.action == TaskAction::Approve => {
                        saved.rollback().await?;
                        released_by = Some(ApprovalPath::Hook);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            // Only the lease holder ends the gate, once.
            let ended = sqlx::query(
                "UPDATE gates SET status = $3, closed_at = $4, last_run_status = $5, detail = $6, \
                 released_by = $7, polls = polls + 1, lease_owner = NULL, \
                 lease_expires_at = NULL \
                 WHERE workflow_id = $1 AND lease_owner = $2 AND status = 'open'",
            )
            .bind(gate.workflow_id.to_string())
            .bind(lease.as_str())
            .bind(status.as_str())
            .bind(now)
            .bind(run_status)
            .bind(detail)
            .bind(released_by.map(ApprovalPath::as_str))
            .execute(&mut *tx)
            .await?;
            if ended.rows_affected() != 1 {
                // Lease lost, or a hook delivery ended the gate meanwhile: nothing is written.
                tx.rollback().await?;
                return Ok(GateEnd::LeaseLost);
            }
            tx.commit().await?;
            Ok(GateEnd::Ended { released_by })
        })
        .await
    }

    /// Open gates and the creation time of the oldest, for metrics.
    pub async fn open_gates_summary(&self) -> Result<(i64, Option<i64>), StoreError> {
        self.bounded(async {
            let row = sqlx::query(
                "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM gates WHERE status = $1",
            )
            .bind(OPEN)
            .fetch_one(&self.pool)
            .await?;
            Ok((row.try_get("n")?, row.try_get("oldest")?))
        })
        .await
    }

    /// A workflow's gate, for the audit trail.
    pub async fn gate_of(&self, workflow: &str) -> Result<Option<GateView>, StoreError> {
        self.bounded(self.gate_of_now(workflow)).await
    }

    /// [`Self::gate_of`] inside an operation that is already time-limited.
    pub(super) async fn gate_of_now(&self, workflow: &str) -> Result<Option<GateView>, StoreError> {
        async {
            let row = sqlx::query(
                "SELECT workflow_id, sym_run_id, hold_job_name, status, released_by, polling, \
                 polls, last_run_status, detail, created_at, closed_at FROM gates \
                 WHERE workflow_id = $1",
            )
            .bind(workflow)
            .fetch_optional(&self.pool)
            .await?;
            row.map(|row| {
                let polling: i64 = row.try_get("polling")?;
                let closed: Option<i64> = row.try_get("closed_at")?;
                Ok(GateView {
                    workflow_id: row.try_get("workflow_id")?,
                    sym_run_id: row.try_get("sym_run_id")?,
                    hold_job_name: row.try_get("hold_job_name")?,
                    status: row.try_get("status")?,
                    released_by: row.try_get("released_by")?,
                    polling: polling == 1,
                    polls: row.try_get("polls")?,
                    last_run_status: row.try_get("last_run_status")?,
                    detail: row.try_get("detail")?,
                    created_at: super::audit::rfc3339(row.try_get("created_at")?),
                    closed_at: closed.map(super::audit::rfc3339),
                })
            })
            .transpose()
        }
        .await
    }
}

fn gate_from_row(row: &AnyRow) -> Result<ClaimedGate, StoreError> {
    let workflow: String = row.try_get("workflow_id")?;
    Ok(ClaimedGate {
        workflow_id: parse_id(&workflow)?,
        sym_run_id: row.try_get("sym_run_id")?,
        hold_job_name: row.try_get("hold_job_name")?,
        polls: row.try_get("polls")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Marks the open gates of these approve tasks' hold jobs released by the hook (in the hook
/// deliveries' transaction): one statement for a whole intake batch.
pub(super) async fn release_gates_by_hook(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    tasks: &[&NewTask],
    now: i64,
    mark: char,
) -> Result<(), sqlx::Error> {
    for chunk in tasks.chunks(200) {
        let sql = format!(
            "UPDATE gates SET status = {mark}1, released_by = {mark}2, closed_at = {mark}3, \
             detail = 'released by the Sym hook delivery' \
             WHERE status = 'open' AND (workflow_id, hold_job_name) IN (VALUES {})",
            super::value_rows(mark, 4, chunk.len(), 2)
        );
        let mut update = sqlx::query(&sql)
            .persistent(chunk.len() == 1)
            .bind(GateStatus::Released.as_str())
            .bind(ApprovalPath::Hook.as_str())
            .bind(now);
        for task in chunk {
            update = update
                .bind(task.workflow_id.to_string())
                .bind(task.hold_job_name.as_str());
        }
        update.execute(&mut **tx).await?;
    }
    Ok(())
}
