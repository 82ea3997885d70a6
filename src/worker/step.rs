//! One step of one task: read the workflow, decide, maybe call CircleCI, store the result.

use tracing::Instrument as _;

use super::settling::Trail;
use super::{ApprovalWorker, Lease};
use crate::domain::decide::{self, Facts, Next, StepEnd};
use crate::domain::settle::{self, Progress, Settled};
use crate::domain::task::{Outcome, TaskAction};
use crate::domain::upstream::{CallRecord, Operation, UpstreamError};
use crate::domain::workflow::{HoldJobState, WorkflowInfo, WorkflowView};
use crate::outbound::circleci::CircleCiClient;
use crate::store::{AttemptId, CallNote, ClaimedTask, JobInfo, StoreError};

/// Why a step stopped without a result to store.
enum Interrupted {
    /// The lease ran out before a call that changes something; nothing was done.
    LeaseLost,
}

/// What the first phase of a step (read, decide, note the call) leaves for the second.
enum Prepared {
    /// Nothing to call: the step ends with this.
    End(StepEnd),
    /// Make this call (`operation` at `endpoint`), noted as `attempt`, before `deadline_ms`
    /// (measured from the lease renewal that noted it, or the hand-off, on the service's
    /// clock).
    Call {
        next: Next,
        attempt: AttemptId,
        deadline_ms: i64,
        operation: Operation,
        endpoint: String,
    },
}

/// Share of the lease a phase of a step may take: a step always ends well inside the lease it
/// holds, so no other replica takes the task while this one still works on it.
const LEASE_SHARE: f64 = 0.8;

impl ApprovalWorker {
    /// One step of one task, with its outcome stored.
    pub(super) async fn work(&self, task: &ClaimedTask, lease: &Lease) {
        let read_deadline = lease.claimed_ms.saturating_add(self.lease_share());
        // Every log line of the step (each CircleCI call included) carries these.
        let span = tracing::info_span!(
            "task",
            task_id = %task.id,
            delivery_id = %task.delivery_id,
            sym_event_id = task.sym_event_id.as_deref().unwrap_or_default(),
            workflow_id = %task.workflow_id,
            approver = task.approver.as_deref().unwrap_or_default(),
            action = task.action.as_str(),
            attempt = task.attempts + 1,
        );
        async {
            let mut trail = Trail {
                intake: lease.note,
                ..Trail::default()
            };
            let mut job = JobInfo::default();
            let end = match self
                .step(task, lease, read_deadline, &mut trail, &mut job)
                .await
            {
                Ok(end) => end,
                Err(Interrupted::LeaseLost) => {
                    self.count_calls(&trail);
                    // No call was made: the intake's note must not read as one to the task's
                    // next holder. Best effort: left behind, it only makes that step careful.
                    let _ = self
                        .store
                        .withdraw_unused_notes(&trail.unused_notes())
                        .await;
                    tracing::warn!("the task's lease ran out mid-step; its next step is another's");
                    return;
                }
            };
            let now = self.clock.now_ms();
            let progress = Progress {
                errors: task.errors,
                polls: task.attempts - task.errors,
                created_at: task.created_at,
                deadline_at: task.deadline_at,
                call_may_have_landed: self
                    .call_may_have_landed(task, &end, now, &trail.unused_notes())
                    .await,
            };
            let jitter = rand::random_range(0.8..=1.2);
            let settlement = match settle::settle(end, &progress, now, &self.config.retry, jitter) {
                Settled::Now(settlement) => settlement,
                Settled::LastLook { detail } => {
                    let look = self.last_look(task, &mut trail, &mut job).await;
                    settle::after_last_look(
                        look,
                        &progress,
                        self.clock.now_ms(),
                        &detail,
                        &self.config.retry,
                        jitter,
                    )
                }
            };
            self.count_calls(&trail);
            self.persist(task, lease, &mut trail, &settlement, &job)
                .await;
        }
        .instrument(span)
        .await;
    }

    fn count_calls(&self, trail: &Trail) {
        for call in &trail.calls {
            self.metrics.circleci_call(call);
        }
    }

    /// Whether a call of this task may have landed, as settling a step past its deadline needs
    /// to know (a store read, only then). `unused`: the notes this step made no call under.
    async fn call_may_have_landed(
        &self,
        task: &ClaimedTask,
        end: &StepEnd,
        now: i64,
        unused: &[AttemptId],
    ) -> bool {
        match end {
            StepEnd::Retry { call_unknown, .. } if now >= task.deadline_at => {
                *call_unknown
                    || self
                        .store
                        .call_may_have_landed(task.id, task.action.operation(), unused)
                        .await
                        // The store cannot tell: assume it may have, so the task is re-read
                        // rather than failed.
                        .unwrap_or(true)
            }
            _ => false,
        }
    }

    /// Reads the workflow and gathers what the decision needs.
    async fn read(
        &self,
        task: &ClaimedTask,
        trail: &mut Trail,
        job: &mut JobInfo,
    ) -> Result<WorkflowView, StepEnd> {
        let view = self
            .circleci
            .workflow_view(task.workflow_id, self.hold_job(task), &mut trail.calls)
            .await
            .map_err(|e| self.failed_call(&e, "listing the workflow's jobs"))?;
        if let Some(hold) = &view.hold {
            job.job_id.clone_from(&hold.job_id);
            job.job_number = hold.job_number;
            job.project_slug.clone_from(&hold.project_slug);
        }
        Ok(view)
    }

    /// The pure decision on a fresh read, with the lookups it may need: whether a call of this
    /// task may have landed (when the hold job shows what that call would have done), and then
    /// whose token this service holds.
    async fn decide(
        &self,
        task: &ClaimedTask,
        besides: &[AttemptId],
        view: &WorkflowView,
        trail: &mut Trail,
    ) -> Result<Next, StepEnd> {
        let state = view.hold.as_ref().map(|h| &h.state);
        let shows_our_effect = match task.action {
            TaskAction::Approve => state == Some(&HoldJobState::Approved),
            TaskAction::Cancel => state == Some(&HoldJobState::Canceled),
        };
        let our_call_may_have_landed = if shows_our_effect {
            self.store
                .call_may_have_landed(task.id, task.action.operation(), besides)
                .await
                .map_err(|e| {
                    StepEnd::retry_error(format!("cannot read this task's attempts: {e}"))
                })?
        } else {
            false
        };
        let token_user = if our_call_may_have_landed && task.action == TaskAction::Approve {
            self.token
                .user_id_or_ask(&self.circleci, &self.metrics, &mut trail.calls)
                .await
        } else {
            None
        };
        Ok(decide::next_step(&Facts {
            action: task.action,
            hold_job_name: self.hold_job(task),
            view,
            allowed_projects: self.config.allowed_projects.as_deref(),
            our_call_may_have_landed,
            token_user: token_user.as_deref(),
        }))
    }

    /// A step in two phases, each inside its share of the lease: read, decide and note the
    /// call (from the claim); then the call itself (from the lease renewal that noted it), so
    /// a slow read never eats the call's time. A call cut off by its time limit is an unknown
    /// outcome, re-read before anything else.
    async fn step(
        &self,
        task: &ClaimedTask,
        lease: &Lease,
        read_deadline: i64,
        trail: &mut Trail,
        job: &mut JobInfo,
    ) -> Result<StepEnd, Interrupted> {
        let prepared =
            match self
                .clock
                .timeout_at(read_deadline, self.prepare(task, lease, trail, job))
                .await
            {
                Ok(Ok(prepared)) => prepared,
                Ok(Err(interrupted)) => return Err(interrupted),
                Err(_) => return Ok(StepEnd::retry_error(
                    "the step's reads took longer than its share of TASK_LEASE; the job will be \
                     re-read before any call",
                )),
            };
        let (next, attempt, deadline, operation, endpoint) = match prepared {
            Prepared::End(end) => return Ok(end),
            Prepared::Call {
                next,
                attempt,
                deadline_ms,
                operation,
                endpoint,
            } => (next, attempt, deadline_ms, operation, endpoint),
        };
        // A process that was paused past its lease (SIGSTOP, a frozen VM) must not send a call
        // that the task's next holder may be making already. Nothing was sent: the note is
        // taken back with the result.
        if self.clock.now_ms() >= deadline {
            return Ok(StepEnd::retry_error(
                "the step ran out of its share of TASK_LEASE before the call could be sent; \
                 nothing was sent, and the job will be re-read before any call",
            ));
        }
        // Shutdown may cut this step off now: one or the other, under one lock, so a step that
        // was given back (its lease, its note) never sends.
        if !self.calling(task.id) {
            return Ok(StepEnd::retry_error(
                "shutdown cut the step off before its call; nothing was sent",
            ));
        }
        let index = trail.calls.len();
        let started_at = self.clock.now_ms();
        let call = async {
            match &next {
                Next::Approve(id) => {
                    self.circleci
                        .approve_job(task.workflow_id, *id, &mut trail.calls)
                        .await
                }
                _ => {
                    self.circleci
                        .cancel_workflow(task.workflow_id, &mut trail.calls)
                        .await
                }
            }
        };
        let answered = self.clock.timeout_at(deadline, call).await;
        if answered.is_err() {
            // Cut off before the client recorded it: the audit trail still gets the call, with
            // no answer, so it reads as one that may have landed.
            trail.calls.push(CallRecord {
                started_at,
                operation,
                method: "POST",
                endpoint,
                status: None,
                duration: std::time::Duration::from_millis(
                    u64::try_from(self.clock.now_ms().saturating_sub(started_at)).unwrap_or(0),
                ),
                error: Some(
                    "timed out: no answer within the step's share of TASK_LEASE".to_owned(),
                ),
            });
        }
        // Stored in its note's place with the step's result; no record means it was refused
        // before anything was sent (its URL could not be built), and the note is unused.
        if trail.calls.len() > index {
            trail.noted = Some((attempt, index));
        }
        let Ok(result) = answered else {
            return Ok(StepEnd::call_unanswered(format!(
                "no answer to the {} call within the step's share of TASK_LEASE; it may have \
                 taken effect, so the job will be re-read",
                task.action.operation().as_str()
            )));
        };
        if let Err(e) = &result {
            let _ = self.failed_call(e, task.action.operation().as_str());
        }
        Ok(decide::after_call(&next, self.hold_job(task), &result))
    }

    /// The first phase: read, decide, and for a call, note it durably under a renewed lease.
    /// A step due past its task's deadline only confirms what an unknown call did: it reads
    /// and never calls.
    async fn prepare(
        &self,
        task: &ClaimedTask,
        lease: &Lease,
        trail: &mut Trail,
        job: &mut JobInfo,
    ) -> Result<Prepared, Interrupted> {
        // On an approval's first step (the usual case: the hold job is on hold and is approved
        // now), the workflow's own record, which the approval notes, is read beside its jobs
        // instead of after them: one round trip less before the call. Later steps (polls,
        // re-reads) read it only when they do approve.
        let (read, mut info) = if task.action == TaskAction::Approve && task.attempts == 0 {
            let mut info_calls = Vec::new();
            let (read, info) = tokio::join!(
                self.read(task, trail, job),
                self.circleci
                    .workflow_info(task.workflow_id, &mut info_calls)
            );
            trail.calls.extend(info_calls);
            (read, Some(info))
        } else {
            (self.read(task, trail, job).await, None)
        };
        let view = match read {
            Ok(view) => view,
            Err(end) => return Ok(Prepared::End(end)),
        };
        // The intake's note is this step's own, and no call has been made under it yet.
        let next = match self.decide(task, &trail.unused_notes(), &view, trail).await {
            Ok(next) => next,
            Err(end) => return Ok(Prepared::End(end)),
        };
        let operation = match &next {
            Next::End(end) => return Ok(Prepared::End(end.clone())),
            _ if settle::is_confirming(task.next_attempt_at, task.deadline_at) => {
                return Ok(Prepared::End(StepEnd::failed(
                    Outcome::TimedOut,
                    format!(
                        "gave up after APPROVAL_TIMEOUT: the hold job {:?} is still {}; the \
                         call whose answer was lost did not take effect",
                        self.hold_job(task),
                        view.hold
                            .as_ref()
                            .map_or("missing".to_owned(), |h| h.state.to_string())
                    ),
                )))
            }
            Next::Approve(_) => {
                let info = match info.take() {
                    Some(info) => info,
                    None => {
                        self.circleci
                            .workflow_info(task.workflow_id, &mut trail.calls)
                            .await
                    }
                };
                note_workflow(info, job);
                Operation::Approve
            }
            Next::Cancel => Operation::Cancel,
        };
        let endpoint = match &next {
            Next::Approve(id) => CircleCiClient::approve_path(task.workflow_id, *id),
            _ => CircleCiClient::cancel_path(task.workflow_id),
        };
        if let Some(note) = self.intake_note_usable(task, lease, operation) {
            // Noted durably by the intake, under the lease it took then: the call needs no
            // commit before it, and runs in what is left of that lease's share. Its reads are
            // stored with the step's result.
            return Ok(Prepared::Call {
                next,
                attempt: note,
                deadline_ms: lease.claimed_ms.saturating_add(self.lease_share()),
                operation,
                endpoint,
            });
        }
        // The call's time is measured from before the renewal (the lease runs from a moment
        // after this, so the call ends inside it).
        let renewing = self.clock.now_ms();
        match self
            .prepare_call(task, lease, trail, operation, &endpoint)
            .await
        {
            Ok(attempt) => Ok(Prepared::Call {
                next,
                attempt,
                deadline_ms: renewing.saturating_add(self.lease_share()),
                operation,
                endpoint,
            }),
            Err(Ok(end)) => Ok(Prepared::End(end)),
            Err(Err(interrupted)) => Err(interrupted),
        }
    }

    /// The intake's note, when this step's call can be made under it: the same operation,
    /// and at least half of the lease's share left for the call (else the lease is renewed
    /// and the call noted afresh, and the intake's note is taken back with the result).
    fn intake_note_usable(
        &self,
        task: &ClaimedTask,
        lease: &Lease,
        operation: Operation,
    ) -> Option<AttemptId> {
        let note = lease.note?;
        let left = lease
            .claimed_ms
            .saturating_add(self.lease_share())
            .saturating_sub(self.clock.now_ms());
        (operation == task.action.operation() && left >= self.lease_share() / 2).then_some(note)
    }

    /// The approval job this task releases.
    pub(super) fn hold_job<'a>(&'a self, task: &'a ClaimedTask) -> &'a str {
        task.hold_job_name
            .as_deref()
            .unwrap_or(&self.default_hold_job)
    }

    /// Before a call that changes something at CircleCI, in one store transaction: renew the
    /// lease (or stop, if another process may have the task now), store the step's reads, and
    /// note the call durably, so that even if this process dies before the answer is stored,
    /// the audit trail shows the call may have landed.
    async fn prepare_call(
        &self,
        task: &ClaimedTask,
        lease: &Lease,
        trail: &mut Trail,
        operation: Operation,
        endpoint: &str,
    ) -> Result<AttemptId, Result<StepEnd, Interrupted>> {
        let store_error = |e: StoreError| {
            Ok(StepEnd::retry_error(format!(
                "the store is unavailable before calling CircleCI: {e}"
            )))
        };
        let note = CallNote {
            task: task.id,
            lease: lease.token.clone(),
            lease_for: self.config.task_lease,
            reads: trail.unsaved(),
            operation,
            method: "POST",
            endpoint: endpoint.to_owned(),
        };
        match self.writes.prepare_call(note).await {
            Ok(Some(attempt)) => {
                trail.mark_all_saved();
                trail.fresh = Some(attempt);
                Ok(attempt)
            }
            Ok(None) => Err(Err(Interrupted::LeaseLost)),
            Err(e) => Err(store_error(e)),
        }
    }

    /// The deadline passed while a call's outcome was unknown: one more read, and the decision
    /// on it, without calling anything.
    async fn last_look(&self, task: &ClaimedTask, trail: &mut Trail, job: &mut JobInfo) -> StepEnd {
        let view = match self.read(task, trail, job).await {
            Ok(view) => view,
            Err(end) => return end,
        };
        match self.decide(task, &trail.unused_notes(), &view, trail).await {
            Ok(Next::End(end)) => end,
            Ok(_) => StepEnd::failed(
                Outcome::TimedOut,
                format!(
                    "gave up after APPROVAL_TIMEOUT: the hold job {:?} is still on hold; the \
                     call whose answer was lost did not take effect",
                    self.hold_job(task)
                ),
            ),
            Err(end) => end,
        }
    }

    /// The step's end for a failed CircleCI exchange; a refused token is logged loudly.
    fn failed_call(&self, e: &UpstreamError, doing: &str) -> StepEnd {
        if e.token_refused() {
            tracing::error!(
                error = %e,
                "CircleCI refused the API token while {doing}: check CIRCLECI_TOKEN (API v2 \
                 needs a personal API token with access to the project); the task is given up"
            );
        }
        StepEnd::from_error(e, doing)
    }

    /// A phase's share of the lease, in ms.
    fn lease_share(&self) -> i64 {
        crate::clock::duration_ms(self.config.task_lease.mul_f64(LEASE_SHARE))
    }
}

/// Records the workflow's pipeline and name (`GET /workflow/{id}`) before approving, so a
/// later "rerun from failed" of it can be recognised by the verdict. Best effort: without it
/// a rerun is simply not recognised.
fn note_workflow(info: Result<WorkflowInfo, UpstreamError>, job: &mut JobInfo) {
    match info {
        Ok(info) => {
            job.pipeline_id = Some(info.pipeline_id);
            job.workflow_name = Some(info.name);
        }
        Err(e) => tracing::warn!(
            error = %e,
            "could not read the workflow's pipeline; a rerun of it will not be recognised"
        ),
    }
}
