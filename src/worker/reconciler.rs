//! The reconciler: the second path to an approval. For every open gate it reads the Sym
//! run's status (`GET {SYM_API_URL}/runs/{run_id}`, as the orb's `sym/validate` does) and
//! acts on it, but only for a run bound to that very gate by data Sym signed
//! (`domain::binding`): approved or escalated → the hold job's approve task (the same task,
//! dedup and exactly-once rules as a hook delivery; whichever path comes first makes it);
//! denied or expired → the gate closes (and its workflow is canceled with `ON_DENY=cancel`).
//! A run bound to another workflow or hold job closes the gate, never releasing anything. The
//! decisions are `domain::gate`'s; this module claims gates and does the I/O.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::clock::{duration_ms, Clock};
use crate::domain::binding::{self, run_key, BindingCheck, BindingSource, RunBinding};
use crate::domain::gate::{self, ApprovalPath, CloseReason, GateDecision, GateProblem, GateStatus};
use crate::domain::ids::{LeaseToken, WorkflowId};
use crate::domain::task::{NewTask, OnDeny, TaskAction, TaskRules};
use crate::domain::upstream::Failure;
use crate::metrics::Metrics;
use crate::outbound::sym_api::SymApiClient;
use crate::store::{ClaimedGate, GateEnd, Store, StoreError};

/// Longest wait between looks at the store for due gates.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// How long a claimed gate is reserved for this process.
const GATE_LEASE: Duration = Duration::from_secs(30);
/// Most gates [`Reconciler::run_due`] reads in one call.
const MAX_PER_RUN: usize = 1_000;
/// After Sym refuses the token (401): the first pause before trying again, doubling to the
/// longest.
const PAUSE_FIRST: Duration = Duration::from_secs(30);
const PAUSE_LONGEST: Duration = Duration::from_secs(600);

pub struct Reconciler {
    store: Store,
    sym: SymApiClient,
    rules: Arc<TaskRules>,
    gate_timeout: Duration,
    metrics: Metrics,
    clock: Clock,
    owner: String,
    /// Wakes the approval worker when a gate's task is made.
    worker_wake: Arc<Notify>,
    /// While Sym refuses the token: polling waits until this time (unix ms; 0 = not paused)...
    paused_until: AtomicI64,
    /// ...and the next refusal pauses this long (ms).
    next_pause: AtomicI64,
}

impl Reconciler {
    pub fn new(
        store: Store,
        sym: SymApiClient,
        rules: Arc<TaskRules>,
        gate_timeout: Duration,
        metrics: Metrics,
        worker_wake: Arc<Notify>,
    ) -> Self {
        Self {
            clock: store.clock().clone(),
            store,
            sym,
            rules,
            gate_timeout,
            metrics,
            owner: format!("reconciler-{}", Uuid::new_v4()),
            worker_wake,
            paused_until: AtomicI64::new(0),
            next_pause: AtomicI64::new(duration_ms(PAUSE_FIRST)),
        }
    }

    /// Runs until `shutdown`.
    pub async fn run(self: Arc<Self>, wake: Arc<Notify>, shutdown: CancellationToken) {
        tracing::info!(sym_api = %self.sym.base(), "gate reconciler started");
        loop {
            if let Err(e) = self.run_due().await {
                tracing::warn!(error = %e, "store unavailable; the reconciler will retry");
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = wake.notified() => {}
                () = tokio::time::sleep(IDLE_POLL) => {}
            }
        }
        tracing::info!("gate reconciler stopped");
    }

    /// Reads every gate due now once; returns how many. Nothing while paused.
    pub async fn run_due(&self) -> Result<usize, StoreError> {
        let mut read = 0;
        while read < MAX_PER_RUN && !self.paused() {
            let lease = LeaseToken::new(&self.owner);
            let Some((gate, bound_to)) = self.store.claim_due_gate(&lease, GATE_LEASE).await?
            else {
                break;
            };
            let span = tracing::info_span!(
                "gate",
                workflow_id = %gate.workflow_id,
                sym_run_id = %gate.sym_run_id,
                hold_job = %gate.hold_job_name,
            );
            self.reconcile(&gate, bound_to, &lease)
                .instrument(span)
                .await?;
            read += 1;
        }
        Ok(read)
    }

    fn paused(&self) -> bool {
        self.clock.now_ms() < self.paused_until.load(Ordering::SeqCst)
    }

    /// Sym refused the token: pause, for longer each time in a row.
    fn pause(&self) -> Duration {
        let pause = self.next_pause.load(Ordering::SeqCst);
        self.paused_until
            .store(self.clock.now_ms().saturating_add(pause), Ordering::SeqCst);
        self.next_pause.store(
            pause.saturating_mul(2).min(duration_ms(PAUSE_LONGEST)),
            Ordering::SeqCst,
        );
        self.metrics.set_reconciler_paused(true);
        Duration::from_millis(u64::try_from(pause).unwrap_or(0))
    }

    /// Sym read a run with the token: any pause is over.
    fn token_works(&self) {
        if self.paused_until.swap(0, Ordering::SeqCst) != 0 {
            tracing::info!("Sym accepts SYM_API_TOKEN again; the gate reconciler resumes");
        }
        self.next_pause
            .store(duration_ms(PAUSE_FIRST), Ordering::SeqCst);
        self.metrics.set_reconciler_paused(false);
    }

    async fn reconcile(
        &self,
        gate: &ClaimedGate,
        bound_to: Option<(WorkflowId, String)>,
        lease: &LeaseToken,
    ) -> Result<(), StoreError> {
        let check = |b: &Option<(WorkflowId, String)>| {
            binding::check(
                gate.workflow_id,
                &gate.hold_job_name,
                b.as_ref().map(|(w, h)| (*w, h.as_str())),
            )
        };
        // A gate naming a run Sym bound elsewhere is refused without asking Sym anything.
        if check(&bound_to) == BindingCheck::Elsewhere {
            return self
                .act(gate, lease, gate::refuse_run_bound_elsewhere(), "unknown")
                .await;
        }
        let result = self.sym.run(&gate.sym_run_id).await;
        // Any answer but a refused token ends a pause (a 5xx says nothing against the token).
        if !matches!(&result, Err(e) if e.failure == Failure::Unauthorized) {
            self.token_works();
        }
        let mut bound_to = bound_to;
        if let (None, Ok(info)) = (&bound_to, &result) {
            // Sym's own answer for the run carries the request's fields: that binds it too.
            if let Some(request) = &info.request {
                let from_sym = RunBinding {
                    run_key: run_key(&gate.sym_run_id),
                    workflow_id: WorkflowId(request.workflow_id),
                    hold_job_name: request
                        .hold_job_name
                        .clone()
                        .unwrap_or_else(|| self.rules.default_hold_job().to_owned()),
                    source: BindingSource::SymApi,
                };
                bound_to = self.store.bind_run(&from_sym).await?;
            }
        }
        let now = self.clock.now_ms();
        let polls = u32::try_from(gate.polls.saturating_add(1)).unwrap_or(u32::MAX);
        let age = Duration::from_millis(u64::try_from(now - gate.created_at).unwrap_or(0));
        let status = result.map(|info| info.status);
        let run_status = match &status {
            Ok(status) => status.to_string(),
            Err(_) => "unknown".to_owned(),
        };
        let decision = gate::decide(&status, check(&bound_to), polls, age, self.gate_timeout);
        self.act(gate, lease, decision, &run_status).await
    }

    /// Carries a decision out.
    async fn act(
        &self,
        gate: &ClaimedGate,
        lease: &LeaseToken,
        decision: GateDecision,
        run_status: &str,
    ) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let new_task = |action: TaskAction| NewTask {
            action,
            workflow_id: gate.workflow_id,
            hold_job_name: gate.hold_job_name.clone(),
            deadline_at: now.saturating_add(duration_ms(self.rules.approval_timeout)),
        };
        match &decision {
            GateDecision::Release { detail } => {
                let path = self
                    .store
                    .end_gate(
                        gate,
                        lease,
                        GateStatus::Released,
                        run_status,
                        detail,
                        None,
                        Some(&new_task(TaskAction::Approve)),
                    )
                    .await?;
                if let GateEnd::Ended { .. } = path {
                    self.metrics.gate_ended(GateStatus::Released);
                }
                match path {
                    GateEnd::Ended {
                        released_by: Some(ApprovalPath::Reconciler),
                    } => {
                        tracing::info!(detail = %detail, "gate released by the reconciler: the hold job will be approved");
                        self.worker_wake.notify_one();
                    }
                    GateEnd::Ended {
                        released_by: Some(ApprovalPath::Hook),
                    } => {
                        tracing::info!("gate already released by the hook delivery; nothing to do")
                    }
                    _ => {}
                }
            }
            GateDecision::Close {
                reason,
                detail,
                cancel,
            } => {
                let cancel = (*cancel && self.rules.on_deny == OnDeny::Cancel)
                    .then(|| new_task(TaskAction::Cancel));
                let problem = (*reason == CloseReason::RunBoundElsewhere)
                    .then_some(GateProblem::RunBoundElsewhere);
                let ended = self
                    .store
                    .end_gate(
                        gate,
                        lease,
                        reason.gate_status(),
                        run_status,
                        detail,
                        problem,
                        cancel.as_ref(),
                    )
                    .await?;
                if ended != GateEnd::LeaseLost {
                    self.metrics.gate_ended(reason.gate_status());
                    if problem.is_some() {
                        self.metrics.gate_refused();
                    }
                }
                if cancel.is_some() {
                    self.worker_wake.notify_one();
                }
                if problem.is_some() {
                    tracing::error!(detail = %detail, "gate refused: its Sym run was requested for another workflow or hold job");
                } else {
                    tracing::info!(reason = %reason, detail = %detail, "gate closed");
                }
            }
            GateDecision::PollAgain {
                after,
                detail,
                problem,
            } => {
                let next = now.saturating_add(duration_ms(*after));
                self.store
                    .gate_polled(gate, lease, Some(next), Some(run_status), detail, *problem)
                    .await?;
                match problem {
                    Some(problem) => {
                        tracing::warn!(problem = problem.as_str(), detail = %detail, retry_in_s = after.as_secs(), "gate not released")
                    }
                    None => {
                        tracing::debug!(detail = %detail, retry_in_s = after.as_secs(), "gate still open")
                    }
                }
            }
            GateDecision::StopPolling { detail, problem } => {
                self.store
                    .gate_polled(gate, lease, None, None, detail, Some(*problem))
                    .await?;
                tracing::error!(detail = %detail, "gate polling stopped");
            }
            GateDecision::TokenRefused { detail } => {
                self.store.release_gate(gate, lease).await?;
                let pause = self.pause();
                tracing::error!(
                    detail = %detail,
                    retry_in_s = pause.as_secs(),
                    "Sym refused SYM_API_TOKEN (HTTP 401): the gate reconciler pauses and checks \
                     the token again later; hook deliveries still approve"
                );
            }
        }
        Ok(())
    }
}
