//! The `gates` table: hold jobs registered from CircleCI with their Sym run, one gate per
//! workflow and hold job, a run belonging to one gate at most; and the `sym_runs` table: the
//! workflow and hold job each run was requested for, from data Sym signed.
//!
//! A gate is claimed under a lease like a task, so one replica polls it at a time. Releasing a
//! gate creates its approve task in the same transaction, through the same one-live-approval
//! rule as a hook delivery: whichever path comes first makes the task, the other finds it.

use std::time::Duration;

use sqlx::any::AnyRow;
use sqlx::{Acquire as _, Row};

use super::is_unique_violation;
use super::tasks::insert_task;
use super::{Store, StoreError};
use crate::clock::duration_ms;
use crate::domain::binding::{run_key, RunBinding};
use crate::domain::gate::{ApprovalPath, GateProblem, GateStatus};
use crate::domain::ids::{DeliveryId, LeaseToken, TaskId, WorkflowId};
use crate::domain::task::{DeliveryStatus, NewTask, TaskAction};

/// What registering a gate did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// A new gate; `evicted`: it took its run from a gate registered for it earlier, which
    /// Sym's binding says is not the run's (that gate is closed, `run_bound_elsewhere`).
    Created { evicted: bool },
    /// The same gate (same workflow, hold job and run) was already registered.
    Same,
    /// Refused; nothing was written. The reason names no run and no other workflow.
    Conflict(GateConflict),
}

/// Why a registration was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateConflict {
    /// This workflow's hold job is registered with another Sym run.
    HoldJobHasAnotherRun,
    /// The Sym run is registered for another gate.
    RunHasAnotherGate,
    /// Sym signed that the run was requested for another workflow or hold job.
    RunBoundElsewhere,
}

/// The gate a registration asks for.
#[derive(Debug, Clone)]
pub struct NewGate<'a> {
    pub workflow_id: WorkflowId,
    pub hold_job_name: &'a str,
    pub sym_run_id: &'a str,
    /// The workflow's pipeline and project, when the caller proved them (OIDC).
    pub pipeline_id: Option<&'a str>,
    pub project_slug: Option<&'a str>,
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

const OPEN: &str = "open";

impl Store {
    /// Registers a gate: idempotent for the same workflow, hold job and run; refused when the
    /// hold job has another run, the run another gate, or Sym bound the run elsewhere.
    pub async fn register_gate(&self, gate: &NewGate<'_>) -> Result<Registered, StoreError> {
        let now = self.clock.now_ms();
        let key = run_key(gate.sym_run_id);
        self.bounded(async {
            let mut writer = self.writer().await?;
            let mut tx = writer.begin().await?;
            let bound: Option<AnyRow> =
                sqlx::query("SELECT workflow_id, hold_job_name FROM sym_runs WHERE run_key = $1")
                    .bind(&key)
                    .fetch_optional(&mut *tx)
                    .await?;
            let bound_here = match bound {
                Some(bound) => {
                    let workflow: String = bound.try_get("workflow_id")?;
                    let hold: String = bound.try_get("hold_job_name")?;
                    if workflow != gate.workflow_id.to_string() || hold != gate.hold_job_name {
                        tx.rollback().await?;
                        return Ok(Registered::Conflict(GateConflict::RunBoundElsewhere));
                    }
                    true
                }
                None => false,
            };
            let same: Option<AnyRow> = sqlx::query(
                "SELECT run_key FROM gates WHERE workflow_id = $1 AND hold_job_name = $2",
            )
            .bind(gate.workflow_id)
            .bind(gate.hold_job_name)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = same {
                let outcome = if row.try_get::<String, _>("run_key")? == key {
                    Registered::Same
                } else {
                    Registered::Conflict(GateConflict::HoldJobHasAnotherRun)
                };
                tx.rollback().await?;
                return Ok(outcome);
            }
            // Another gate may squat this run (registered before Sym's binding arrived): the
            // run is this gate's, so that one is refused and lets go of it.
            let evicted = bound_here && evict_squatter(&mut tx, &key, now).await?;
            let inserted = sqlx::query(
                "INSERT INTO gates (workflow_id, hold_job_name, sym_run_id, run_key, status, \
                 created_at, next_poll_at, pipeline_id, project_slug) \
                 VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8)",
            )
            .bind(gate.workflow_id)
            .bind(gate.hold_job_name)
            .bind(gate.sym_run_id)
            .bind(&key)
            .bind(OPEN)
            .bind(now)
            .bind(gate.pipeline_id)
            .bind(gate.project_slug)
            .execute(&mut *tx)
            .await;
            let outcome = match inserted {
                Ok(_) => Registered::Created { evicted },
                // The run is another gate's (or a concurrent registration won the race).
                Err(e) if is_unique_violation(&e) => {
                    tx.rollback().await?;
                    return Ok(Registered::Conflict(GateConflict::RunHasAnotherGate));
                }
                Err(e) => return Err(e.into()),
            };
            tx.commit().await?;
            Ok(outcome)
        })
        .await
    }

    /// Claims the most overdue open gate that is being polled and no live lease holds, with
    /// the workflow and hold job Sym bound its run to, if any.
    pub async fn claim_due_gate(
        &self,
        lease: &LeaseToken,
        lease_for: Duration,
    ) -> Result<Option<(ClaimedGate, Option<(WorkflowId, String)>)>, StoreError> {
        let now = self.clock.now_ms();
        let lock = match self.backend {
            super::Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            super::Backend::Sqlite => "",
        };
        self.bounded(async {
            let claimed = {
                let mut writer = self.writer().await?;
                sqlx::query(&format!(
                    "UPDATE gates SET lease_owner = $1, lease_expires_at = $2 \
                     WHERE (workflow_id, hold_job_name) = (SELECT g.workflow_id, g.hold_job_name \
                        FROM gates g WHERE g.status = 'open' AND g.polling = 1 \
                        AND g.next_poll_at <= $3 \
                        AND (g.lease_expires_at IS NULL OR g.lease_expires_at < $3) \
                        ORDER BY g.next_poll_at LIMIT 1 {lock}) \
                     AND status = 'open' AND (lease_expires_at IS NULL OR lease_expires_at < $3) \
                     RETURNING workflow_id, sym_run_id, run_key, hold_job_name, polls, created_at"
                ))
                .bind(lease.as_str())
                .bind(now.saturating_add(duration_ms(lease_for)))
                .bind(now)
                .fetch_optional(&mut *writer)
                .await?
            };
            let Some(row) = claimed else {
                return Ok(None);
            };
            let gate = gate_from_row(&row)?;
            let key: String = row.try_get("run_key")?;
            let binding = self.binding_now(&key).await?;
            Ok(Some((gate, binding)))
        })
        .await
    }

    /// The workflow and hold job a run is bound to, if any.
    async fn binding_now(&self, key: &str) -> Result<Option<(WorkflowId, String)>, StoreError> {
        let row = sqlx::query("SELECT workflow_id, hold_job_name FROM sym_runs WHERE run_key = $1")
            .bind(key)
            .fetch_optional(&mut *self.reader().await?)
            .await?;
        row.map(|row| Ok((row.try_get("workflow_id")?, row.try_get("hold_job_name")?)))
            .transpose()
    }

    /// Binds a run from Sym's own answer for it (the first binding of a run stands); returns
    /// the binding in force afterwards.
    pub async fn bind_run(
        &self,
        binding: &RunBinding,
    ) -> Result<Option<(WorkflowId, String)>, StoreError> {
        let now = self.clock.now_ms();
        self.bounded(async {
            {
                let mut writer = self.writer().await?;
                let mut tx = writer.begin().await?;
                insert_bindings(&mut tx, &[(binding, None)], now, self.backend.param_mark())
                    .await?;
                tx.commit().await?;
            }
            self.binding_now(&binding.run_key).await
        })
        .await
    }

    /// Records one read of the gate's run that decided nothing yet: the next read at
    /// `next_poll_at`, or none (`polling` false: stopped), and what is wrong with it.
    #[allow(clippy::too_many_arguments)]
    pub async fn gate_polled(
        &self,
        gate: &ClaimedGate,
        lease: &LeaseToken,
        next_poll_at: Option<i64>,
        last_run_status: Option<&str>,
        detail: &str,
        problem: Option<GateProblem>,
    ) -> Result<bool, StoreError> {
        self.bounded(async {
            let mut writer = self.writer().await?;
            let done = sqlx::query(
                "UPDATE gates SET polls = polls + 1, next_poll_at = COALESCE($4, next_poll_at), \
                 polling = $5, last_run_status = COALESCE($6, last_run_status), detail = $7, \
                 problem = $8, lease_owner = NULL, lease_expires_at = NULL \
                 WHERE workflow_id = $1 AND hold_job_name = $2 AND lease_owner = $3 \
                 AND status = 'open'",
            )
            .bind(gate.workflow_id)
            .bind(&gate.hold_job_name)
            .bind(lease.as_str())
            .bind(next_poll_at)
            .bind(i64::from(next_poll_at.is_some()))
            .bind(last_run_status)
            .bind(detail)
            .bind(problem.map(GateProblem::as_str))
            .execute(&mut *writer)
            .await?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }

    /// Gives a gate's lease back without counting a read (the Sym token was refused: nothing
    /// was learnt about this gate).
    pub async fn release_gate(
        &self,
        gate: &ClaimedGate,
        lease: &LeaseToken,
    ) -> Result<(), StoreError> {
        self.bounded(async {
            let mut writer = self.writer().await?;
            sqlx::query(
                "UPDATE gates SET lease_owner = NULL, lease_expires_at = NULL \
                 WHERE workflow_id = $1 AND hold_job_name = $2 AND lease_owner = $3",
            )
            .bind(gate.workflow_id)
            .bind(&gate.hold_job_name)
            .bind(lease.as_str())
            .execute(&mut *writer)
            .await?;
            Ok(())
        })
        .await
    }

    /// Ends a gate: released (with its approve task, unless the hook's is already live),
    /// closed (with a cancel task for a denial under `ON_DENY=cancel`) or timed out. Returns
    /// the path that released it, for a release: `reconciler` when this made the task, `hook`
    /// when a hook delivery's task was there first.
    #[allow(clippy::too_many_arguments)]
    pub async fn end_gate(
        &self,
        gate: &ClaimedGate,
        lease: &LeaseToken,
        status: GateStatus,
        run_status: &str,
        detail: &str,
        problem: Option<GateProblem>,
        task: Option<&NewTask>,
    ) -> Result<GateEnd, StoreError> {
        let now = self.clock.now_ms();
        self.bounded(async {
            let mut writer = self.writer().await?;
            let mut tx = writer.begin().await?;
            // The task first, then the gate: the same order as a hook delivery's transaction
            // (task, then gate), so the two paths racing wait for each other, never deadlock.
            let mut released_by = None;
            if let Some(task) = task {
                let mut saved = tx.begin().await?;
                // A delivery of the reconciler's own, so the task has one like every task.
                let delivery_id = DeliveryId::new_random();
                let marker = format!(
                    "reconciler:{}:{}:{}",
                    gate.sym_run_id, gate.workflow_id, gate.hold_job_name
                );
                let made = async {
                    sqlx::query(
                        "INSERT INTO deliveries (id, webhook_id, sym_event_id, event_type, \
                         workflow_id, run_srn, received_at, outcome) \
                         VALUES ($1, $2, $2, $3, $4, $5, $6, $7)",
                    )
                    .bind(delivery_id)
                    .bind(&marker)
                    .bind(task.action.as_str())
                    .bind(gate.workflow_id)
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
            // A gate refused for a foreign run lets go of the run (its key becomes a tombstone),
            // so the gate the run was requested for can still be registered.
            let ended = sqlx::query(
                "UPDATE gates SET status = $4, closed_at = $5, last_run_status = $6, detail = $7, \
                 released_by = $8, problem = $9, polls = polls + 1, lease_owner = NULL, \
                 lease_expires_at = NULL, \
                 run_key = CASE WHEN $9 = 'run_bound_elsewhere' \
                     THEN '!' || run_key || '!' || workflow_id || '!' || hold_job_name \
                     ELSE run_key END \
                 WHERE workflow_id = $1 AND hold_job_name = $2 AND lease_owner = $3 \
                 AND status = 'open'",
            )
            .bind(gate.workflow_id)
            .bind(&gate.hold_job_name)
            .bind(lease.as_str())
            .bind(status.as_str())
            .bind(now)
            .bind(run_status)
            .bind(detail)
            .bind(released_by.map(ApprovalPath::as_str))
            .bind(problem.map(GateProblem::as_str))
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
}

/// Refuses the gate that holds run `key` though Sym bound the run to another gate: closed,
/// `run_bound_elsewhere`, its key a tombstone.
async fn evict_squatter(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    key: &str,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE gates SET status = CASE WHEN status = 'open' THEN $2 ELSE status END, \
         closed_at = COALESCE(closed_at, $3), problem = $4, \
         detail = 'refused: Sym signed that its run was requested for another workflow or hold \
         job', lease_owner = NULL, lease_expires_at = NULL, \
         run_key = '!' || run_key || '!' || workflow_id || '!' || hold_job_name \
         WHERE run_key = $1",
    )
    .bind(key)
    .bind(GateStatus::Closed.as_str())
    .bind(now)
    .bind(GateProblem::RunBoundElsewhere.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() > 0)
}

fn gate_from_row(row: &AnyRow) -> Result<ClaimedGate, StoreError> {
    Ok(ClaimedGate {
        workflow_id: row.try_get("workflow_id")?,
        sym_run_id: row.try_get("sym_run_id")?,
        hold_job_name: row.try_get("hold_job_name")?,
        polls: row.try_get("polls")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Binds runs (the first binding of a run stands: `ON CONFLICT DO NOTHING`), and makes the
/// open gates of newly bound runs due at once, so a gate waiting on its binding is read again
/// now. `bindings` pairs each with the delivery that signed it.
pub(super) async fn insert_bindings(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    bindings: &[(&RunBinding, Option<DeliveryId>)],
    now: i64,
    mark: char,
) -> Result<(), sqlx::Error> {
    for chunk in bindings.chunks(200) {
        let sql = format!(
            "INSERT INTO sym_runs (run_key, workflow_id, hold_job_name, source, delivery_id, \
             bound_at) VALUES {} ON CONFLICT DO NOTHING",
            super::value_rows(mark, 1, chunk.len(), 6)
        );
        let mut insert = sqlx::query(&sql).persistent(chunk.len() == 1);
        for (binding, delivery) in chunk {
            insert = insert
                .bind(binding.run_key.as_str())
                .bind(binding.workflow_id)
                .bind(binding.hold_job_name.as_str())
                .bind(binding.source.as_str())
                .bind(delivery)
                .bind(now);
        }
        insert.execute(&mut **tx).await?;
        let sql = format!(
            "UPDATE gates SET next_poll_at = {} WHERE status = 'open' AND run_key IN ({})",
            super::param(mark, 1),
            super::placeholders(mark, 2, chunk.len())
        );
        let mut nudge = sqlx::query(&sql).persistent(chunk.len() == 1).bind(now);
        for (binding, _) in chunk {
            nudge = nudge.bind(binding.run_key.as_str());
        }
        nudge.execute(&mut **tx).await?;
    }
    Ok(())
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
            "UPDATE gates SET status = {}, released_by = {}, closed_at = {}, \
             detail = 'released by the Sym hook delivery', problem = NULL \
             WHERE status = 'open' AND (workflow_id, hold_job_name) IN (VALUES {})",
            super::param(mark, 1),
            super::param(mark, 2),
            super::param(mark, 3),
            super::value_rows(mark, 4, chunk.len(), 2)
        );
        let mut update = sqlx::query(&sql)
            .persistent(chunk.len() == 1)
            .bind(GateStatus::Released.as_str())
            .bind(ApprovalPath::Hook.as_str())
            .bind(now);
        for task in chunk {
            update = update
                .bind(task.workflow_id)
                .bind(task.hold_job_name.as_str());
        }
        update.execute(&mut **tx).await?;
    }
    Ok(())
}
