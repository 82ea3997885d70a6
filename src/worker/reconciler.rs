//! The reconciler: the second path to an approval. For every open gate it reads the Sym
//! run's status (`GET {SYM_API_URL}/runs/{run_id}`, as the orb's `sym/validate` does) and
//! acts on it: approved or escalated → the hold job's approve task (the same task, dedup and
//! exactly-once rules as a hook delivery; whichever path comes first makes it); denied or
//! expired → the gate closes (and the workflow is canceled with `ON_DENY=cancel`). The
//! decisions are `domain::gate`'s; this module claims gates and does the I/O.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::clock::{duration_ms, Clock};
use crate::domain::gate::{self, ApprovalPath, GateDecision, GateStatus};
use crate::domain::ids::LeaseToken;
use crate::domain::task::{NewTask, OnDeny, TaskAction, TaskRules};
use crate::metrics::Metrics;
use crate::outbound::sym_api::{SymApiClient, SymApiError};
use crate::store::{ClaimedGate, GateEnd, Store, StoreError};

/// Longest wait between looks at the store for due gates.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// How long a claimed gate is reserved for this process.
const GATE_LEASE: Duration = Duration::from_secs(30);
/// Most gates [`Reconciler::run_due`] reads in one call.
const MAX_PER_RUN: usize = 1_000;

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
    /// Set once Sym refused the token: polling stops until the next start.
    refused: AtomicBool,
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
            refused: AtomicBool::new(false),
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

    /// Reads every gate due now once; returns how many.
    pub async fn run_due(&self) -> Result<usize, StoreError> {
        let mut read = 0;
        while read < MAX_PER_RUN && !self.refused.load(Ordering::SeqCst) {
            let lease = LeaseToken::new(&self.owner);
            let Some(gate) = self.store.claim_due_gate(&lease, GATE_LEASE).await? else {
                break;
            };
            self.reconcile(&gate, &lease).await?;
            read += 1;
        }
        Ok(read)
    }

    async fn reconcile(&self, gate: &ClaimedGate, lease: &LeaseToken) -> Result<(), StoreError> {
        let result = self.sym.run_status(&gate.sym_run_id).await;
        let now = self.clock.now_ms();
        let polls = u32::try_from(gate.polls.saturating_add(1)).unwrap_or(u32::MAX);
        let age = Duration::from_millis(u64::try_from(now - gate.created_at).unwrap_or(0));
        let decision = gate::decide(&result, polls, age, self.gate_timeout);
        let run_status = match &result {
            Ok(status) => status.to_string(),
            Err(_) => "unknown".to_owned(),
        };
        let span = tracing::info_span!(
            "gate",
            workflow_id = %gate.workflow_id,
            sym_run_id = %gate.sym_run_id,
            hold_job = %gate.hold_job_name,
        );
        let _entered = span.enter();
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
                        &run_status,
                        detail,
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
            GateDecision::Close { reason, detail } => {
                let cancel = (reason.is_denial() && self.rules.on_deny == OnDeny::Cancel)
                    .then(|| new_task(TaskAction::Cancel));
                let ended = self
                    .store
                    .end_gate(
                        gate,
                        lease,
                        reason.gate_status(),
                        &run_status,
                        detail,
                        cancel.as_ref(),
                    )
                    .await?;
                if ended != GateEnd::LeaseLost {
                    self.metrics.gate_ended(reason.gate_status());
                }
                if cancel.is_some() {
                    self.worker_wake.notify_one();
                }
                tracing::info!(reason = %reason, detail = %detail, "gate closed");
            }
            GateDecision::PollAgain { after, detail } => {
                let next = now.saturating_add(duration_ms(*after));
                self.store
                    .gate_polled(
                        gate.workflow_id,
                        lease,
                        Some(next),
                        Some(&run_status),
                        detail,
                    )
                    .await?;
                tracing::debug!(detail = %detail, retry_in_s = after.as_secs(), "gate still open");
            }
            GateDecision::StopPolling { detail } => {
                self.store
                    .gate_polled(gate.workflow_id, lease, None, None, detail)
                    .await?;
                if let Err(SymApiError::Unauthorized(status)) = &result {
                    self.refused.store(true, Ordering::SeqCst);
                    tracing::error!(
                        status,
                        "Sym refused SYM_API_TOKEN (HTTP {status}): the reconciler stops polling \
                         gates until restarted with a valid token; hook deliveries still approve"
                    );
                } else {
                    tracing::error!(detail = %detail, "gate polling stopped");
                }
            }
        }
        Ok(())
    }
}
