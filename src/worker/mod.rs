//! The approval worker: takes due tasks from the store and moves each one step forward.
//!
//! A step always starts by reading the workflow's jobs, then acts on what it finds (the
//! decisions are pure functions in [`crate::domain::decide`]; this module does the I/O around
//! them). Because every step re-reads first, an approve whose outcome was unknown (timeout,
//! dropped connection, a 5xx) is never blindly repeated: the next step sees it approved and
//! stops. Between steps the task lives only in the store, so a crash or deploy loses nothing;
//! a restarted process (or another replica, once the lease runs out) takes the next step.

pub mod reconciler;
mod settling;
mod step;
pub mod token_check;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::clock::Clock;
use crate::config::WorkerConfig;
use crate::domain::ids::{LeaseToken, TaskId};
use crate::metrics::Metrics;
use crate::outbound::circleci::CircleCiClient;
use crate::store::{
    AttemptId, BatchOptions, ClaimedTask, Handed, Handoff, StepWrites, Store, StoreError,
};
use token_check::TokenCheck;

/// Longest idle wait between looks at the store (covers tasks made by other replicas).
const IDLE_POLL: Duration = Duration::from_secs(1);
/// How long in-flight steps may run on after shutdown is requested: well inside the usual
/// 10 s stop grace period of `docker stop`, so the process still exits 0 on its own.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Most steps [`ApprovalWorker::run_due`] takes in one call (a guard, not a limit in use).
const MAX_STEPS_PER_RUN: usize = 10_000;

/// A step in flight, as shutdown needs to know it.
struct InFlight {
    lease: LeaseToken,
    /// The intake's note of a handed task.
    intake_note: Option<AttemptId>,
    /// Whether the step has started its call (under any note).
    calling: bool,
    /// Shutdown cut the step off: it must not start its call.
    cut_off: bool,
}

/// One claim of a task: its lease token (every write of the step is guarded by it) and when
/// it was taken (the step must end well before the lease runs out).
struct Lease {
    token: LeaseToken,
    /// When it was taken, on the service's clock (unix ms).
    claimed_ms: i64,
    /// The call the intake noted when it handed the task over (None for a claim): the
    /// step's call may be made under it with no commit first (docs/writes.md, "The intake's
    /// note").
    note: Option<AttemptId>,
}

pub struct ApprovalWorker {
    store: Store,
    circleci: CircleCiClient,
    config: WorkerConfig,
    /// The hold job of tasks that do not name one (stored before names were recorded).
    default_hold_job: String,
    metrics: Metrics,
    clock: Clock,
    /// Identifies this process's leases.
    owner: String,
    /// Signalled when a new task is stored, so it is picked up at once.
    wake: Arc<Notify>,
    /// Steps in flight, so their leases can be given back if shutdown cuts them off.
    in_flight: std::sync::Mutex<HashMap<TaskId, InFlight>>,
    /// Where notes of calls and step results are stored: on SQLite, concurrent steps share
    /// a commit.
    writes: StepWrites,
    /// Whose CircleCI token this is: an approve of ours shows its user as `approved_by`.
    token: TokenCheck,
    /// Told (all waiters) each time a step's result is stored: lets a caller await a task's
    /// end instead of polling the store.
    settled: Arc<Notify>,
    /// Free step slots (WORKER_CONCURRENCY while running, none otherwise), shared with the
    /// intake, which hands new tasks straight to free slots.
    slots: Arc<Semaphore>,
    /// Tasks the intake handed over (leased in its own transaction).
    handed: (
        mpsc::UnboundedSender<Handed>,
        tokio::sync::Mutex<mpsc::UnboundedReceiver<Handed>>,
    ),
}

impl ApprovalWorker {
    pub fn new(
        store: Store,
        circleci: CircleCiClient,
        config: WorkerConfig,
        default_hold_job: String,
        metrics: Metrics,
        wake: Arc<Notify>,
        token: TokenCheck,
    ) -> Self {
        let observer = metrics.clone();
        let writes = StepWrites::start(
            store.clone(),
            BatchOptions::default(),
            Arc::new(move |size, waited| observer.step_batch(size, waited)),
        );
        Self {
            writes,
            default_hold_job,
            clock: store.clock().clone(),
            store,
            circleci,
            config,
            metrics,
            owner: format!("worker-{}", Uuid::new_v4()),
            wake,
            in_flight: std::sync::Mutex::default(),
            token,
            settled: Arc::default(),
            slots: Arc::new(Semaphore::new(0)),
            handed: {
                let (send, receive) = mpsc::unbounded_channel();
                (send, tokio::sync::Mutex::new(receive))
            },
        }
    }

    /// Where the intake hands new tasks to this worker. Nothing is handed until [`Self::spawn`]
    /// opens its slots, nor after it stops, so a worker driven step by step gets none.
    pub fn handoff(&self) -> Handoff {
        Handoff {
            slots: Arc::clone(&self.slots),
            inbox: self.handed.0.clone(),
            owner: self.owner.clone(),
            lease_for: self.config.task_lease,
            endpoint: CircleCiClient::noted_path,
        }
    }

    /// Opens the worker's slots, then runs it on a task of its own until `shutdown`; pending
    /// tasks stay in the store for the next start. The slots are open when this returns, so
    /// a delivery that arrives before the task first runs is handed over, not left to a claim.
    pub fn spawn(self: Arc<Self>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        self.slots.add_permits(self.config.concurrency);
        tokio::spawn(self.run(shutdown))
    }

    async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        tracing::info!(owner = %self.owner, "approval worker started");
        let mut inbox = self.handed.1.lock().await;
        let mut running = JoinSet::new();
        // Whether to look at the store: not after a hand-off alone (those tasks came leased;
        // anything else stored with them was signalled by a wake).
        let mut look = true;
        let mut next_look = tokio::time::Instant::now();
        loop {
            if look {
                let mut store_ok = true;
                let mut claimed_all_due = false;
                while self.slots.available_permits() > 0 && !shutdown.is_cancelled() {
                    // Every free slot is filled by one claim (one commit), not one claim each.
                    // The slots are taken after the claim, not held during it: the intake may
                    // hand a new task to one meanwhile, and should not find them all taken.
                    let free = self.slots.available_permits();
                    match self.claim(free).await {
                        Ok(batch) => {
                            claimed_all_due = batch.len() < free;
                            for (task, lease) in batch {
                                let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() else {
                                    // The intake filled the slot in between: give the task
                                    // back, it is claimed again when a slot frees up.
                                    let _ = self.store.release_lease(task.id, &lease.token).await;
                                    claimed_all_due = false;
                                    continue;
                                };
                                self.metrics.step_started("claim");
                                self.start_step(&mut running, task, lease, slot);
                            }
                            if claimed_all_due {
                                break;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "store unavailable; worker will retry");
                            store_ok = false;
                            break;
                        }
                    }
                }
                // Slots full: a finishing step wakes us. Nothing claimable: sleep until the
                // next task is due (tasks due but not claimable, e.g. waiting behind another
                // task of their workflow, are looked at again after IDLE_POLL, not in a busy
                // loop).
                let wait = if store_ok && claimed_all_due {
                    self.idle_wait().await
                } else {
                    IDLE_POLL
                };
                next_look = tokio::time::Instant::now() + wait;
            }
            look = true;
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(handed) = inbox.recv() => {
                    // Handed over by the intake: already leased, no claim needed. Whatever
                    // else arrived with it starts too.
                    let mut handed = Some(handed);
                    while let Some(Handed { task, lease, note, claimed_ms, slot }) = handed {
                        let lease = Lease { token: lease, claimed_ms, note: Some(note) };
                        self.metrics.step_started("handoff");
                        self.start_step(&mut running, task, lease, slot);
                        handed = inbox.try_recv().ok();
                    }
                    look = false;
                }
                () = self.wake.notified() => {}
                Some(_) = running.join_next(), if !running.is_empty() => {}
                () = tokio::time::sleep_until(next_look) => {}
            }
        }
        // No more hand-offs; tasks handed but not started get their leases back.
        self.slots.close();
        inbox.close();
        while let Ok(handed) = inbox.try_recv() {
            let _ = self
                .store
                .release_unstarted(handed.task.id, &handed.lease)
                .await;
        }
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while running.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            running.abort_all();
            let cut_off = self.cut_off_steps();
            for (task, lease, intake_note, calling) in &cut_off {
                // Best effort: another replica (or the next start) may take it at once. The
                // store keeps the lease of a task whose call is in flight: that call may still
                // land, and no one may read the hold job and call again until the lease ends.
                // A handed task whose step never started its call is not such a task, though
                // the intake marked it so: its lease is given back and its note taken back.
                let _ = match (intake_note, calling) {
                    (Some(_), false) => self.store.release_unstarted(*task, lease).await,
                    _ => self.store.release_lease(*task, lease).await,
                };
            }
            tracing::warn!(
                tasks = cut_off.len(),
                "worker stopped with steps in flight; their tasks stay pending"
            );
        }
        tracing::info!("approval worker stopped");
    }

    /// One step of `task` in the background, holding `slot` until it ends.
    fn start_step(
        self: &Arc<Self>,
        running: &mut JoinSet<()>,
        task: ClaimedTask,
        lease: Lease,
        slot: OwnedSemaphorePermit,
    ) {
        self.track(task.id, Some(&lease));
        let worker = Arc::clone(self);
        running.spawn(async move {
            worker.work(&task, &lease).await;
            worker.track(task.id, None);
            drop(slot);
        });
    }

    /// Claims every task that is due now and takes one step of each, one after the other;
    /// returns how many steps were taken. For driving the worker step by step (tests, with a
    /// manual clock) instead of running it in the background.
    pub async fn run_due(&self) -> Result<usize, StoreError> {
        let mut steps = 0;
        while steps < MAX_STEPS_PER_RUN {
            let Some((task, lease)) = self.claim(1).await?.pop() else {
                break;
            };
            self.work(&task, &lease).await;
            steps += 1;
        }
        Ok(steps)
    }

    /// Claims up to `max` due tasks. Each claim has its own lease token: writes of a step
    /// whose lease ran out (even in this same process) are refused, and so is its approve.
    async fn claim(&self, max: usize) -> Result<Vec<(ClaimedTask, Lease)>, StoreError> {
        let token = LeaseToken::new(&self.owner);
        let claimed_ms = self.clock.now_ms();
        Ok(self
            .store
            .claim_due_tasks(&token, self.config.task_lease, max)
            .await?
            .into_iter()
            .map(|task| {
                let lease = Lease {
                    token: token.clone(),
                    claimed_ms,
                    note: None,
                };
                (task, lease)
            })
            .collect())
    }

    /// Notified each time a step's result is stored (tests await a task's end with it).
    pub fn settled(&self) -> Arc<Notify> {
        Arc::clone(&self.settled)
    }

    fn track(&self, task: TaskId, lease: Option<&Lease>) {
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        match lease {
            Some(lease) => map.insert(
                task,
                InFlight {
                    lease: lease.token.clone(),
                    intake_note: lease.note,
                    calling: false,
                    cut_off: false,
                },
            ),
            None => map.remove(&task),
        };
    }

    /// The step of `task` is about to send its call: false when shutdown has cut it off (its
    /// lease may be given back), and then it must not. A step not tracked (driven step by
    /// step) may always call.
    fn calling(&self, task: TaskId) -> bool {
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(&task) {
            Some(step) if step.cut_off => false,
            Some(step) => {
                step.calling = true;
                true
            }
            None => true,
        }
    }

    /// The steps still in flight, each marked cut off: from now on none of them starts its
    /// call, so one that has not started it can be given back.
    fn cut_off_steps(&self) -> Vec<(TaskId, LeaseToken, Option<AttemptId>, bool)> {
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        map.iter_mut()
            .map(|(task, step)| {
                step.cut_off = true;
                (*task, step.lease.clone(), step.intake_note, step.calling)
            })
            .collect()
    }

    /// Until the next task is due, at most [`IDLE_POLL`].
    async fn idle_wait(&self) -> Duration {
        match self.store.next_due_at().await {
            Ok(Some(due)) => {
                let ms = due.saturating_sub(self.clock.now_ms());
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
}
