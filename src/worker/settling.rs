//! The end of a step: its CircleCI calls and result stored (retried while the store is away),
//! then counted and logged.

use std::time::Duration;

use super::{ApprovalWorker, Lease};
use crate::domain::settle::Settlement;
use crate::domain::task::{NewTask, Outcome, TaskAction, TaskStatus};
use crate::domain::upstream::CallRecord;
use crate::store::{AttemptId, ClaimedTask, JobInfo, StepResult};

/// How long a step's result is retried while the store is away.
const PERSIST_PATIENCE: Duration = Duration::from_secs(60);

/// The CircleCI calls of one step: how many are already in the audit trail, and the notes
/// the step holds (docs/writes.md): the intake's, for a task handed over, and a fresh one
/// written before its call; and the call made under one of them, with its record.
#[derive(Default)]
pub(super) struct Trail {
    pub(super) calls: Vec<CallRecord>,
    pub(super) saved: usize,
    /// The intake's note of a handed task.
    pub(super) intake: Option<AttemptId>,
    /// The note this step wrote before its call ((3) in docs/writes.md).
    pub(super) fresh: Option<AttemptId>,
    /// The note a call was made under (it may have been sent) and the index of its record in
    /// `calls`: the result stores the record in the note's place, not as a row of its own.
    /// A call refused before anything was sent leaves no record, and no mark here.
    pub(super) noted: Option<(AttemptId, usize)>,
}

impl Trail {
    /// Calls not in the audit trail yet (the noted one aside: it takes its note's place).
    pub(super) fn unsaved(&self) -> Vec<CallRecord> {
        self.calls
            .iter()
            .enumerate()
            .skip(self.saved)
            .filter(|(i, _)| self.noted.is_none_or(|(_, n)| n != *i))
            .map(|(_, c)| c.clone())
            .collect()
    }

    pub(super) fn mark_all_saved(&mut self) {
        self.saved = self.calls.len();
    }

    /// The notes this step holds that no call was made under: none of them is an earlier
    /// call, and the step's result takes them back.
    pub(super) fn unused_notes(&self) -> Vec<AttemptId> {
        let called = self.noted.map(|(id, _)| id);
        self.intake
            .into_iter()
            .chain(self.fresh)
            .filter(|note| called != Some(*note))
            .collect()
    }

    /// The noted call and its record, when it was made.
    fn noted_call(&self) -> Option<(AttemptId, &CallRecord)> {
        let (id, index) = self.noted?;
        Some((id, self.calls.get(index)?))
    }

    /// A fresh note's call: its answer completes the note.
    pub(super) fn completed(&self) -> Option<(AttemptId, &CallRecord)> {
        self.noted_call().filter(|(id, _)| self.fresh == Some(*id))
    }

    /// A call under the intake's note: its record replaces the note, after the step's reads.
    pub(super) fn replacing(&self) -> Option<(AttemptId, &CallRecord)> {
        self.noted_call().filter(|(id, _)| self.intake == Some(*id))
    }
}

impl ApprovalWorker {
    /// Stores the step's CircleCI calls and result. A store that is away (a restart, a
    /// failover) is retried for up to [`PERSIST_PATIENCE`], so an approve that landed during
    /// the outage is still recorded as this task's; after that the lease runs out and the step
    /// is taken again: steps re-read first, so this can cost a call but never a second approve.
    pub(super) async fn persist(
        &self,
        task: &ClaimedTask,
        lease: &Lease,
        trail: &mut Trail,
        settlement: &Settlement,
        job: &JobInfo,
    ) {
        let give_up = self
            .clock
            .now_ms()
            .saturating_add(crate::clock::duration_ms(PERSIST_PATIENCE));
        let mut pause = Duration::from_millis(200);
        loop {
            let result = StepResult {
                task: task.id,
                delivery: task.delivery_id,
                lease: lease.token.clone(),
                calls: trail.unsaved(),
                completed: trail.completed().map(|(id, call)| (id, call.clone())),
                replaces: trail.replacing().map(|(id, call)| (id, call.clone())),
                withdrawn: trail.unused_notes(),
                job: job.clone(),
                settle: settlement.clone(),
                successor: self.successor(task),
            };
            match self.writes.settle(result).await {
                Ok(kept) => {
                    self.settled.notify_waiters();
                    self.report(task, settlement, kept);
                    if kept
                        && matches!(
                            settlement,
                            Settlement::Finish {
                                status: TaskStatus::Failed,
                                ..
                            }
                        )
                    {
                        // An attached approval may have been given a task of its own.
                        self.wake.notify_one();
                    }
                    return;
                }
                Err(e)
                    if self
                        .clock
                        .now_ms()
                        .saturating_add(crate::clock::duration_ms(pause))
                        < give_up =>
                {
                    tracing::warn!(error = %e, "could not store the step result; retrying");
                    self.clock.sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not store the step result; it will be retried");
                    return;
                }
            }
        }
    }

    /// The task an approval attached to this one gets if this one fails: a fresh
    /// APPROVAL_TIMEOUT from now, for the same hold job.
    fn successor(&self, task: &ClaimedTask) -> Option<NewTask> {
        (task.action == TaskAction::Approve).then(|| NewTask {
            action: TaskAction::Approve,
            workflow_id: task.workflow_id,
            hold_job_name: self.hold_job(task).to_owned(),
            deadline_at: self
                .clock
                .now_ms()
                .saturating_add(crate::clock::duration_ms(self.config.approval_timeout)),
        })
    }

    /// Metrics and the log line of a stored result.
    fn report(&self, task: &ClaimedTask, settlement: &Settlement, kept: bool) {
        match settlement {
            Settlement::Reschedule { at, detail, .. } => {
                tracing::info!(
                    retry_in_ms = at - self.clock.now_ms(),
                    reason = %detail,
                    lease_kept = kept,
                    "task will be retried"
                );
            }
            Settlement::Finish {
                status,
                outcome,
                detail,
            } => {
                let seconds = (self.clock.now_ms() - task.created_at) as f64 / 1000.0;
                // Only a finish that took effect counts: a lost lease means another process
                // settles (or settled) this task.
                if kept {
                    self.metrics.task_finished(task.action, *outcome, seconds);
                    if *outcome == Outcome::Approved {
                        self.metrics.approval_by_path(task.origin);
                    }
                }
                log_finish(*status, *outcome, detail, seconds, kept);
            }
        }
    }
}

fn log_finish(status: TaskStatus, outcome: Outcome, detail: &str, seconds: f64, kept: bool) {
    let outcome = outcome.as_str();
    if status == TaskStatus::Succeeded {
        tracing::info!(outcome, detail = %detail, total_seconds = seconds, lease_kept = kept, "task succeeded");
    } else {
        tracing::error!(outcome, detail = %detail, total_seconds = seconds, lease_kept = kept, "task failed");
    }
}
