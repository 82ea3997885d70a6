//! The approval worker: takes due tasks from the store and moves each one step forward.
//!
//! A step always starts by reading the workflow's jobs, then acts on what it finds: approve an
//! `on_hold` hold job, finish on one already approved, poll again while it is not on hold yet,
//! give up on a canceled/failed job, a foreign project or a refused token. Because every step
//! re-reads first, an approve whose outcome was unknown (timeout, dropped connection, a 4xx)
//! is never blindly repeated: the next step sees `success` and stops. Between steps the task
//! lives only in the store, so a crash or deploy loses nothing; a restarted process (or another
//! replica, once the lease runs out) takes the next step.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::circleci::{CallRecord, CircleCiClient, CircleError, Job};
use crate::config::WorkerConfig;
use crate::metrics::Metrics;
use crate::retry::RetryKind;
use crate::store::{duration_ms, now_ms, FinalStatus, JobInfo, Store, Task, TaskAction};

/// Longest idle wait between looks at the store (covers tasks made by other replicas).
const IDLE_POLL: Duration = Duration::from_secs(1);
/// How long in-flight steps may run on after shutdown is requested: well inside the usual
/// 10 s stop grace period of `docker stop`, so the process still exits 0 on its own.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long a step's result is retried while the store is away.
const PERSIST_PATIENCE: Duration = Duration::from_secs(60);

/// One claim of a task: its lease token (every write of the step is guarded by it) and when
/// it was taken (the step must end well before the lease runs out).
struct Lease {
    token: String,
    claimed: tokio::time::Instant,
}

/// What one step decided.
#[derive(Debug, Clone)]
enum Step {
    /// The lease ran out before a call to CircleCI that changes something; nothing was done.
    LeaseLost,
    Succeeded {
        outcome: &'static str,
        detail: String,
    },
    Failed {
        outcome: &'static str,
        detail: String,
    },
    Retry {
        kind: RetryKind,
        retry_after: Option<Duration>,
        detail: String,
    },
}

impl Step {
    fn from_error(err: CircleError, doing: &str) -> Self {
        match err {
            CircleError::Unauthorized(status) => {
                tracing::error!(
                    status,
                    "CircleCI refused the API token while {doing}: check CIRCLECI_TOKEN \
                     (it needs access to the project); the task is given up"
                );
                Self::Failed {
                    outcome: "circleci_unauthorized",
                    detail: format!("{err} while {doing}"),
                }
            }
            other => Self::Retry {
                kind: RetryKind::Error,
                retry_after: other.retry_after(),
                detail: format!("{other} while {doing}"),
            },
        }
    }
}

pub struct ApprovalWorker {
    store: Store,
    circleci: CircleCiClient,
    config: WorkerConfig,
    metrics: Metrics,
    /// Identifies this process's leases.
    owner: String,
    /// Signalled when a new task is stored, so it is picked up at once.
    wake: Arc<Notify>,
    /// Steps in flight (task id → lease token), so their leases can be given back if shutdown
    /// cuts them off.
    in_flight: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

impl ApprovalWorker {
    pub fn new(
        store: Store,
        circleci: CircleCiClient,
        config: WorkerConfig,
        metrics: Metrics,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            store,
            circleci,
            config,
            metrics,
            owner: format!("worker-{}", Uuid::new_v4()),
            wake,
            in_flight: std::sync::Mutex::default(),
        }
    }

    /// Runs until `shutdown`; pending tasks stay in the store for the next start.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        tracing::info!(owner = %self.owner, "approval worker started");
        let mut running = JoinSet::new();
        loop {
            let mut store_ok = true;
            let mut claimed_all_due = false;
            while running.len() < self.config.concurrency && !shutdown.is_cancelled() {
                // Each claim has its own lease token: writes of a step whose lease ran out
                // (even in this same process) are refused, and so is its approve.
                let lease = Lease {
                    token: format!("{}/{}", self.owner, Uuid::new_v4().simple()),
                    claimed: tokio::time::Instant::now(),
                };
                match self
                    .store
                    .claim_next_task(&lease.token, now_ms(), self.config.task_lease)
                    .await
                {
                    Ok(Some(task)) => {
                        self.track(&task.id, Some(&lease.token));
                        let worker = Arc::clone(&self);
                        running.spawn(async move {
                            worker.work(&task, &lease).await;
                            worker.track(&task.id, None);
                        });
                    }
                    Ok(None) => {
                        claimed_all_due = true;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "store unavailable; worker will retry");
                        store_ok = false;
                        break;
                    }
                }
            }
            // Slots full: a finishing step wakes us. Nothing claimable: sleep until the next
            // task is due (tasks due but not claimable, e.g. waiting behind another task of
            // their workflow, are looked at again after IDLE_POLL, not in a busy loop).
            let wait = if store_ok && claimed_all_due {
                self.idle_wait().await
            } else {
                IDLE_POLL
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.wake.notified() => {}
                Some(_) = running.join_next(), if !running.is_empty() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while running.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            running.abort_all();
            let cut_off = self.in_flight_leases();
            for (task_id, token) in &cut_off {
                // Best effort: another replica (or the next start) may take it at once.
                let _ = self.store.release_lease(task_id, token).await;
            }
            tracing::warn!(
                tasks = cut_off.len(),
                "worker stopped with steps in flight; their tasks stay pending"
            );
        }
        tracing::info!("approval worker stopped");
    }

    fn track(&self, task_id: &str, lease_token: Option<&str>) {
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        match lease_token {
            Some(token) => map.insert(task_id.to_owned(), token.to_owned()),
            None => map.remove(task_id),
        };
    }

    fn in_flight_leases(&self) -> Vec<(String, String)> {
        let map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(t, l)| (t.clone(), l.clone())).collect()
    }

    /// Until the next task is due, at most [`IDLE_POLL`].
    async fn idle_wait(&self) -> Duration {
        match self.store.next_due_at().await {
            Ok(Some(due)) => {
                let ms = due.saturating_sub(now_ms());
                if ms <= 0 {
                    // Due yet not claimable just now: look again after IDLE_POLL.
                    IDLE_POLL
                } else {
                    Duration::from_millis(u64::try_from(ms).unwrap_or(0)).min(IDLE_POLL)
                }
            }
            _ => IDLE_POLL,
        }
    }

    /// One step of one task, with its outcome stored.
    async fn work(&self, task: &Task, lease: &Lease) {
        // The whole step stays inside the lease (measured from the claim, with a margin), so
        // no other replica can take the task while this one still works on it.
        let step_deadline = lease.claimed + self.config.task_lease.mul_f64(0.8);
        let (sym_event_id, approver) = match tokio::time::timeout_at(
            step_deadline,
            crate::audit::event_context(&self.store, &task.delivery_id),
        )
        .await
        {
            Ok(Ok((id, approver))) => (id, approver.unwrap_or_default()),
            _ => (String::new(), String::new()),
        };
        // Every log line of the step (each CircleCI call included) carries these.
        let span = tracing::info_span!(
            "task",
            task_id = %task.id,
            delivery_id = %task.delivery_id,
            sym_event_id = %sym_event_id,
            workflow_id = %task.workflow_id,
            approver = %approver,
            action = task.action.as_str(),
            attempt = task.attempts + 1,
        );
        async {
            let mut calls = Vec::new();
            let mut job = JobInfo::default();
            let step = match tokio::time::timeout_at(
                step_deadline,
                self.step(task, lease, &mut calls, &mut job),
            )
            .await
            {
                Ok(step) => step,
                Err(_) => Step::Retry {
                    kind: RetryKind::Error,
                    retry_after: None,
                    detail: "step timed out; the job will be re-read before any approve".into(),
                },
            };
            for call in &calls {
                self.metrics.circleci_call(call);
            }
            if let Step::LeaseLost = step {
                tracing::warn!("the task's lease ran out mid-step; its next step is another's");
                return;
            }
            calls.retain(|c| !c.stored);
            self.persist(task, lease, &calls, step, &job).await;
        }
        .instrument(span)
        .await;
    }

    /// Stores the step's CircleCI calls and result. A store that is away (a restart, a
    /// failover) is retried for up to [`PERSIST_PATIENCE`], so an approve that landed during
    /// the outage is still recorded as this task's; after that the lease runs out and the step
    /// is taken again: steps re-read first, so this can cost a call but never a second approve.
    async fn persist(
        &self,
        task: &Task,
        lease: &Lease,
        calls: &[CallRecord],
        step: Step,
        job: &JobInfo,
    ) {
        let give_up = tokio::time::Instant::now() + PERSIST_PATIENCE;
        let mut calls_stored = false;
        let mut pause = Duration::from_millis(200);
        loop {
            let result = async {
                if !calls_stored {
                    self.store.record_attempts(&task.id, calls).await?;
                    calls_stored = true;
                }
                self.settle(task, lease, step.clone(), job).await
            }
            .await;
            match result {
                Ok(()) => return,
                Err(e) if tokio::time::Instant::now() + pause < give_up => {
                    tracing::warn!(error = %e, "could not store the step result; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not store the step result; it will be retried");
                    return;
                }
            }
        }
    }

    /// Stores the step's result: finished, or scheduled again within the deadline.
    async fn settle(
        &self,
        task: &Task,
        lease: &Lease,
        step: Step,
        job: &JobInfo,
    ) -> Result<(), crate::store::StoreError> {
        let now = now_ms();
        let (status, outcome, detail) = match step {
            Step::LeaseLost => return Ok(()),
            Step::Succeeded { outcome, detail } => (FinalStatus::Succeeded, outcome, detail),
            Step::Failed { outcome, detail } => (FinalStatus::Failed, outcome, detail),
            Step::Retry {
                kind,
                retry_after,
                detail,
            } => {
                if now >= task.deadline_at {
                    let minutes = (task.deadline_at - task.created_at) / 60_000;
                    (
                        FinalStatus::Failed,
                        "timed_out",
                        format!("gave up after APPROVAL_TIMEOUT ({minutes} min): {detail}"),
                    )
                } else {
                    let delay = self.config.retry.delay(kind, task.attempts, retry_after);
                    let next = now.saturating_add(duration_ms(delay)).min(task.deadline_at);
                    let kept = self
                        .store
                        .reschedule(&task.id, &lease.token, next, &detail, job)
                        .await?;
                    tracing::info!(
                        retry_in_ms = next - now,
                        reason = %detail,
                        lease_kept = kept,
                        "task will be retried"
                    );
                    return Ok(());
                }
            }
        };
        let kept = self
            .store
            .finish(&task.id, &lease.token, status, outcome, &detail, job, now)
            .await?;
        let seconds = (now - task.created_at) as f64 / 1000.0;
        self.metrics.task_finished(task.action, outcome, seconds);
        match status {
            FinalStatus::Succeeded => tracing::info!(
                outcome,
                detail = %detail,
                total_seconds = seconds,
                lease_kept = kept,
                "task succeeded"
            ),
            FinalStatus::Failed => tracing::error!(
                outcome,
                detail = %detail,
                total_seconds = seconds,
                lease_kept = kept,
                "task failed"
            ),
        }
        Ok(())
    }

    async fn step(
        &self,
        task: &Task,
        lease: &Lease,
        calls: &mut Vec<CallRecord>,
        info: &mut JobInfo,
    ) -> Step {
        let jobs = match self.circleci.workflow_jobs(task.workflow_id, calls).await {
            Ok(jobs) => jobs,
            Err(e) => return Step::from_error(e, "listing the workflow's jobs"),
        };
        let name = &self.config.hold_job_name;
        let hold = jobs
            .iter()
            .find(|j| &j.name == name && j.job_type == "approval");
        if let Some(job) = hold {
            *info = JobInfo {
                job_id: job.id.clone(),
                job_number: job.job_number,
                project_slug: job.project_slug.clone(),
            };
        }
        // The project check comes first: a foreign project's jobs are never touched.
        let project = hold
            .and_then(|j| j.project_slug.clone())
            .or_else(|| jobs.iter().find_map(|j| j.project_slug.clone()));
        if let Some(allowed) = &self.config.allowed_projects {
            match &project {
                Some(slug) if allowed.iter().any(|a| same_project(a, slug)) => {}
                Some(slug) => {
                    return Step::Failed {
                        outcome: "project_not_allowed",
                        detail: format!("project {slug} is not in ALLOWED_PROJECTS"),
                    }
                }
                None if jobs.is_empty() => {
                    return Step::Retry {
                        kind: RetryKind::Poll,
                        retry_after: None,
                        detail: "the workflow has no jobs yet".into(),
                    }
                }
                None => {
                    return Step::Failed {
                        outcome: "project_not_allowed",
                        detail: "CircleCI did not say which project the workflow belongs to".into(),
                    }
                }
            }
        }
        match task.action {
            TaskAction::Approve => self.approve_step(task, lease, hold, calls).await,
            TaskAction::Cancel => self.cancel_step(task, lease, hold, calls).await,
        }
    }

    /// Before a call that changes something at CircleCI: renew the lease (or stop, if another
    /// process may have the task now) and note the call durably, so that even if this process
    /// dies before the answer is stored, the audit trail shows the call may have landed.
    /// Returns the noted attempt's id, or the step to end with instead of calling.
    async fn prepare_call(
        &self,
        task: &Task,
        lease: &Lease,
        calls: &mut [CallRecord],
        method: &str,
        endpoint: &str,
    ) -> Result<i64, Step> {
        let store_error = |e: crate::store::StoreError| Step::Retry {
            kind: RetryKind::Error,
            retry_after: None,
            detail: format!("the store is unavailable before calling CircleCI: {e}"),
        };
        let now = now_ms();
        match self
            .store
            .renew_lease(&task.id, &lease.token, now, self.config.task_lease)
            .await
        {
            Ok(true) => {}
            Ok(false) => return Err(Step::LeaseLost),
            Err(e) => return Err(store_error(e)),
        }
        // The reads of this step first, so the audit trail stays in the order things happened.
        let earlier: Vec<CallRecord> = calls.iter().filter(|c| !c.stored).cloned().collect();
        self.store
            .record_attempts(&task.id, &earlier)
            .await
            .map_err(store_error)?;
        calls.iter_mut().for_each(|c| c.stored = true);
        self.store
            .begin_attempt(&task.id, method, endpoint, now)
            .await
            .map_err(store_error)
    }

    /// Stores the answer of a call noted by `prepare_call` (the last one in `calls`).
    async fn complete_call(&self, attempt_id: i64, calls: &mut [CallRecord]) {
        let Some(call) = calls.last_mut() else { return };
        match self.store.complete_attempt(attempt_id, call).await {
            Ok(()) => call.stored = true,
            // Left unmarked, it is stored with the step's other calls instead.
            Err(e) => tracing::warn!(error = %e, "could not store the CircleCI answer yet"),
        }
    }

    async fn approve_step(
        &self,
        task: &Task,
        lease: &Lease,
        hold: Option<&Job>,
        calls: &mut Vec<CallRecord>,
    ) -> Step {
        let name = &self.config.hold_job_name;
        let Some(job) = hold else {
            return Step::Retry {
                kind: RetryKind::Poll,
                retry_after: None,
                detail: format!("approval job {name:?} is not in the workflow (yet)"),
            };
        };
        match job.status.as_str() {
            // Ours if an earlier approve of this task may have landed (its answer was lost);
            // otherwise someone approved it by other means (e.g. in the CircleCI UI).
            "success" => match crate::audit::approve_may_have_landed(&self.store, &task.id).await {
                Ok(true) => Step::Succeeded {
                    outcome: "approved",
                    detail: format!(
                        "approved hold job {name:?}; confirmed by re-reading the job after \
                         the approve call's answer was lost"
                    ),
                },
                Ok(false) => Step::Succeeded {
                    outcome: "already_approved",
                    detail: format!("hold job {name:?} was already approved (not by this service)"),
                },
                Err(e) => Step::Retry {
                    kind: RetryKind::Error,
                    retry_after: None,
                    detail: format!("cannot read this task's attempts: {e}"),
                },
            },
            "on_hold" => {
                let Some(approval_id) = job.approval_id().and_then(|id| Uuid::try_parse(id).ok())
                else {
                    return Step::Failed {
                        outcome: "invalid_job",
                        detail: "the hold job has no usable approval_request_id or id".into(),
                    };
                };
                let endpoint = format!("/workflow/{}/approve/{approval_id}", task.workflow_id);
                let attempt = match self
                    .prepare_call(task, lease, calls, "POST", &endpoint)
                    .await
                {
                    Ok(attempt) => attempt,
                    Err(step) => return step,
                };
                let result = self
                    .circleci
                    .approve_job(task.workflow_id, approval_id, calls)
                    .await;
                self.complete_call(attempt, calls).await;
                match result {
                    Ok(()) => Step::Succeeded {
                        outcome: "approved",
                        detail: format!("approved hold job {name:?} ({approval_id})"),
                    },
                    // Unknown outcome: the next step re-reads the job before anything else.
                    Err(e) => Step::from_error(e, "approving the hold job"),
                }
            }
            status if is_terminal(status) => Step::Failed {
                outcome: if status == "canceled" {
                    "hold_job_canceled"
                } else {
                    "hold_job_failed"
                },
                detail: format!("hold job {name:?} is {status}; nothing to approve"),
            },
            status => Step::Retry {
                kind: RetryKind::Poll,
                retry_after: None,
                detail: format!("hold job {name:?} is {status}, not on hold yet"),
            },
        }
    }

    async fn cancel_step(
        &self,
        task: &Task,
        lease: &Lease,
        hold: Option<&Job>,
        calls: &mut Vec<CallRecord>,
    ) -> Step {
        match hold.map(|j| j.status.as_str()) {
            Some("success") => {
                return Step::Failed {
                    outcome: "already_approved",
                    detail: "the hold job was already approved; the workflow is not canceled"
                        .into(),
                }
            }
            Some(status) if is_terminal(status) => {
                return Step::Succeeded {
                    outcome: "already_stopped",
                    detail: format!("the hold job is already {status}"),
                }
            }
            _ => {}
        }
        let endpoint = format!("/workflow/{}/cancel", task.workflow_id);
        let attempt = match self
            .prepare_call(task, lease, calls, "POST", &endpoint)
            .await
        {
            Ok(attempt) => attempt,
            Err(step) => return step,
        };
        let result = self.circleci.cancel_workflow(task.workflow_id, calls).await;
        self.complete_call(attempt, calls).await;
        match result {
            Ok(()) => Step::Succeeded {
                outcome: "canceled",
                detail: "workflow canceled".into(),
            },
            Err(CircleError::Client { status, message }) => Step::Failed {
                outcome: "cancel_refused",
                detail: format!("CircleCI refused to cancel (HTTP {status}): {message}"),
            },
            Err(e) => Step::from_error(e, "canceling the workflow"),
        }
    }
}

/// Project slugs compare case-insensitively, with the long VCS names CircleCI also accepts
/// (`github/acme/api` is `gh/acme/api`, `bitbucket/…` is `bb/…`).
fn same_project(a: &str, b: &str) -> bool {
    fn normal(slug: &str) -> String {
        let slug = slug.trim().to_ascii_lowercase();
        for (long, short) in [("github/", "gh/"), ("bitbucket/", "bb/")] {
            if let Some(rest) = slug.strip_prefix(long) {
                return format!("{short}{rest}");
            }
        }
        slug
    }
    normal(a) == normal(b)
}

/// Job statuses after which the hold job can never be approved.
fn is_terminal(status: &str) -> bool {
    matches!(
        status,
        "canceled"
            | "failed"
            | "not_run"
            | "infrastructure_fail"
            | "timedout"
            | "terminated-unknown"
            | "unauthorized"
    )
}

#[cfg(test)]
mod tests {
    use super::same_project;

    #[test]
    fn project_slugs_match_case_insensitively_and_by_long_vcs_name() {
        assert!(same_project("gh/Acme/API", "gh/acme/api"));
        assert!(same_project("github/acme/api", "gh/acme/api"));
        assert!(same_project("bb/acme/api", "bitbucket/acme/api"));
        assert!(!same_project("gh/acme/api", "gh/acme/api-evil"));
        assert!(!same_project("gh/acme/api", "bb/acme/api"));
    }
}
