//! Prometheus metrics, served at `GET /metrics`.
//!
//! One registry per running service (no global recorder), so tests can run several services in
//! one process and read each one's numbers. Gauges about the store (pending tasks, age of the
//! oldest) are read from the database at scrape time, so they agree across replicas.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::domain::task::{Outcome, TaskAction};
use crate::domain::upstream::{CallRecord, Operation, TokenState};

/// Every outcome label `sym_approver_deliveries_total` can carry: the stored ones and each
/// rejection reason. All exist from startup at 0, so `increase()` sees the first one.
pub const DELIVERY_OUTCOMES: &[&str] = &[
    "queued",
    "duplicate",
    "ignored",
    "bound",
    "rejected_signature",
    "rejected_invalid_body",
    "rejected_invalid_workflow_id",
    "rejected_hold_job_not_allowed",
    "rejected_too_large",
    "rejected_body_timeout",
    "rejected_overloaded",
    "rejected_other",
    "store_unavailable",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    action: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    endpoint: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    deliveries: Family<OutcomeLabels, Counter>,
    delivery_counters: Arc<std::collections::HashMap<&'static str, Counter>>,
    tasks_finished: Family<TaskLabels, Counter>,
    task_duration: HistogramFamily<ActionLabels>,
    circleci_requests: Family<CallLabels, Counter>,
    circleci_duration: HistogramFamily<EndpointLabels>,
    pending_tasks: Gauge,
    oldest_pending_age: Gauge<f64, AtomicU64>,
    token_state: Family<StateLabels, Gauge>,
    connections_closed: Family<ReasonLabels, Counter>,
    open_connections: Gauge,
    approvals_by_path: Family<PathLabels, Counter>,
    gates_ended: Family<StateLabels, Counter>,
    open_gates: Gauge,
    oldest_open_gate_age: Gauge<f64, AtomicU64>,
    gate_problems: Family<ProblemLabels, Gauge>,
    gates_refused: Counter,
    reconciler_paused: Gauge,
    ci_auth_refused: Family<ReasonLabels, Counter>,
    verdict_lookups_limited: Counter,
    intake_batch_size: Histogram,
    intake_batch_wait: Histogram,
    step_batch_size: Histogram,
    steps_started: Family<ViaLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ViaLabels {
    via: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabels {
    path: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProblemLabels {
    problem: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn call_buckets() -> Histogram {
    // 5 ms .. ~20 s
    Histogram::new(exponential_buckets(0.005, 2.0, 13))
}

fn task_buckets() -> Histogram {
    // 0.1 s .. ~55 min: approvals can wait for a hold job for a long time.
    Histogram::new(exponential_buckets(0.1, 2.0, 16))
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sym_approver");
        let deliveries = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "deliveries",
            "Webhook deliveries by outcome (queued, duplicate, ignored, or the rejection reason)",
            deliveries.clone(),
        );
        let tasks_finished = Family::<TaskLabels, Counter>::default();
        registry.register(
            "tasks_finished",
            "Approval and cancel tasks by final outcome",
            tasks_finished.clone(),
        );
        let task_duration: HistogramFamily<ActionLabels> =
            Family::new_with_constructor(task_buckets);
        registry.register(
            "task_duration_seconds",
            "Time from delivery to a task's final outcome",
            task_duration.clone(),
        );
        let circleci_requests = Family::<CallLabels, Counter>::default();
        registry.register(
            "circleci_requests",
            "CircleCI API requests by endpoint and HTTP status (or error kind)",
            circleci_requests.clone(),
        );
        let circleci_duration: HistogramFamily<EndpointLabels> =
            Family::new_with_constructor(call_buckets);
        registry.register(
            "circleci_request_duration_seconds",
            "CircleCI API request latency",
            circleci_duration.clone(),
        );
        let pending_tasks = Gauge::default();
        registry.register(
            "pending_tasks",
            "Tasks accepted and not finished yet",
            pending_tasks.clone(),
        );
        let oldest_pending_age = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "oldest_pending_task_age_seconds",
            "Age of the oldest pending task (0 when none)",
            oldest_pending_age.clone(),
        );
        let delivery_counters: std::collections::HashMap<&'static str, Counter> = DELIVERY_OUTCOMES
            .iter()
            .map(|outcome| {
                let counter = deliveries
                    .get_or_create(&OutcomeLabels {
                        outcome: (*outcome).to_owned(),
                    })
                    .clone();
                (*outcome, counter)
            })
            .collect();
        for action in TaskAction::ALL {
            for outcome in Outcome::possible_for(*action) {
                tasks_finished
                    .get_or_create(&TaskLabels {
                        action: action.as_str().to_owned(),
                        outcome: outcome.as_str().to_owned(),
                    })
                    .inc_by(0);
            }
        }
        for operation in Operation::ALL {
            drop(circleci_duration.get_or_create(&EndpointLabels {
                endpoint: operation.as_str().to_owned(),
            }));
        }
        let token_state = Family::<StateLabels, Gauge>::default();
        registry.register(
            "circleci_token",
            "State of CIRCLECI_TOKEN as GET /me answered (1 for the current state): unchecked, \
             valid, refused (not a personal API token, or revoked), unreachable",
            token_state.clone(),
        );
        let connections_closed = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "connections_closed",
            "Connections the server closed by reason: header_timeout, idle, body_timeout, \
             over_capacity (MAX_CONNECTIONS), shutdown_forced (open after SHUTDOWN_GRACE)",
            connections_closed.clone(),
        );
        for reason in connection_reason::ALL {
            connections_closed
                .get_or_create(&ReasonLabels {
                    reason: (*reason).to_owned(),
                })
                .inc_by(0);
        }
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "HTTP connections open now",
            open_connections.clone(),
        );
        let approvals_by_path = Family::<PathLabels, Counter>::default();
        registry.register(
            "approvals_by_path",
            "Hold jobs this service approved, by the path that brought the approval: hook (Sym's \
             delivery) or reconciler (Sym's run status, for a registered gate)",
            approvals_by_path.clone(),
        );
        for path in crate::domain::gate::ApprovalPath::ALL {
            approvals_by_path
                .get_or_create(&PathLabels {
                    path: path.as_str().to_owned(),
                })
                .inc_by(0);
        }
        let gates_ended = Family::<StateLabels, Counter>::default();
        registry.register(
            "gates_ended",
            "Gates the reconciler ended, by final status: released, closed (denied or expired), \
             timed_out",
            gates_ended.clone(),
        );
        for status in crate::domain::gate::GateStatus::ALL {
            if status.is_final() {
                gates_ended
                    .get_or_create(&StateLabels {
                        state: status.as_str().to_owned(),
                    })
                    .inc_by(0);
            }
        }
        let open_gates = Gauge::default();
        registry.register(
            "gates_open",
            "Gates registered and not ended yet (read from the store)",
            open_gates.clone(),
        );
        let oldest_open_gate_age = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "oldest_open_gate_age_seconds",
            "Age of the oldest open gate (0 when none)",
            oldest_open_gate_age.clone(),
        );
        let gate_problems = Family::<ProblemLabels, Gauge>::default();
        registry.register(
            "gate_problems",
            "Open gates with a problem (read from the store), by problem: unbound (its Sym run is \
             approved but nothing Sym signed binds it to the gate's workflow and hold job), \
             sym_forbidden (403 for its run), sym_not_found (404), sym_refused (another 4xx; \
             polling stopped), run_bound_elsewhere",
            gate_problems.clone(),
        );
        for problem in crate::domain::gate::GateProblem::ALL {
            gate_problems
                .get_or_create(&ProblemLabels {
                    problem: problem.as_str().to_owned(),
                })
                .set(0);
        }
        let gates_refused = Counter::default();
        registry.register(
            "gates_refused",
            "Gates refused because Sym signed that their run was requested for another workflow \
             or hold job (at registration, or closed by the reconciler): a CI job naming someone \
             else's Sym run",
            gates_refused.clone(),
        );
        let reconciler_paused = Gauge::default();
        registry.register(
            "reconciler_paused",
            "1 while the gate reconciler is paused because Sym refused SYM_API_TOKEN (HTTP 401); \
             it checks the token again with backoff",
            reconciler_paused.clone(),
        );
        let ci_auth_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "ci_auth_refused",
            "Gate registrations and verdict requests refused by reason: missing_token, \
             bad_token (signature, issuer, audience, expiry), wrong_pipeline, \
             project_not_allowed, ssh_rerun",
            ci_auth_refused.clone(),
        );
        for reason in [
            "missing_token",
            "bad_token",
            "wrong_pipeline",
            "project_not_allowed",
            "ssh_rerun",
        ] {
            ci_auth_refused
                .get_or_create(&ReasonLabels {
                    reason: reason.to_owned(),
                })
                .inc_by(0);
        }
        let verdict_lookups_limited = Counter::default();
        registry.register(
            "circleci_lookups_limited",
            "CircleCI lookups for API callers (verdicts of unseen workflows, OIDC pipeline \
             checks) refused by their rate limit (5 a second over all workflows)",
            verdict_lookups_limited.clone(),
        );
        let intake_batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        registry.register(
            "intake_batch_size",
            "Deliveries stored together in one transaction (group commit)",
            intake_batch_size.clone(),
        );
        let intake_batch_wait = Histogram::new(exponential_buckets(0.0001, 2.0, 14));
        registry.register(
            "intake_batch_wait_seconds",
            "How long a batch's first delivery waited for its transaction to start",
            intake_batch_wait.clone(),
        );
        let step_batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        registry.register(
            "step_results_batch_size",
            "Worker writes (step results, notes of calls about to be made) stored together in one \
             transaction (group commit)",
            step_batch_size.clone(),
        );
        let steps_started = Family::<ViaLabels, Counter>::default();
        registry.register(
            "worker_steps_started",
            "Worker steps started, by how the task reached the worker: handoff (leased by the \
             intake in the delivery's own transaction) or claim (taken from the store)",
            steps_started.clone(),
        );
        for via in ["handoff", "claim"] {
            let _ = steps_started.get_or_create(&ViaLabels { via });
        }
        let metrics = Self {
            steps_started,
            delivery_counters: Arc::new(delivery_counters),
            intake_batch_size,
            intake_batch_wait,
            step_batch_size,
            approvals_by_path,
            gates_ended,
            open_gates,
            oldest_open_gate_age,
            gate_problems,
            gates_refused,
            reconciler_paused,
            ci_auth_refused,
            verdict_lookups_limited,
            connections_closed,
            open_connections,
            token_state,
            registry: Arc::new(registry),
            deliveries,
            tasks_finished,
            task_duration,
            circleci_requests,
            circleci_duration,
            pending_tasks,
            oldest_pending_age,
        };
        metrics.set_token_state("unchecked");
        metrics
    }

    pub fn delivery(&self, outcome: &str) {
        // The known outcomes are looked up without building a label (no allocation per
        // request, forged ones included).
        if let Some(counter) = self.delivery_counters.get(outcome) {
            counter.inc();
            return;
        }
        self.deliveries
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn task_finished(&self, action: TaskAction, outcome: Outcome, seconds: f64) {
        self.tasks_finished
            .get_or_create(&TaskLabels {
                action: action.as_str().to_owned(),
                outcome: outcome.as_str().to_owned(),
            })
            .inc();
        self.task_duration
            .get_or_create(&ActionLabels {
                action: action.as_str().to_owned(),
            })
            .observe(seconds.max(0.0));
    }

    pub fn circleci_call(&self, call: &CallRecord) {
        let status = match (call.status, &call.error) {
            (Some(code), _) => code.to_string(),
            (None, Some(e)) if e.contains("timed out") => "timeout".to_owned(),
            (None, _) => "error".to_owned(),
        };
        self.circleci_requests
            .get_or_create(&CallLabels {
                endpoint: call.operation.as_str().to_owned(),
                status,
            })
            .inc();
        self.circleci_duration
            .get_or_create(&EndpointLabels {
                endpoint: call.operation.as_str().to_owned(),
            })
            .observe(call.duration.as_secs_f64());
    }

    pub fn connection_closed(&self, reason: &str) {
        self.connections_closed
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn approval_by_path(&self, path: crate::domain::gate::ApprovalPath) {
        self.approvals_by_path
            .get_or_create(&PathLabels {
                path: path.as_str().to_owned(),
            })
            .inc();
    }

    pub fn gate_ended(&self, status: crate::domain::gate::GateStatus) {
        self.gates_ended
            .get_or_create(&StateLabels {
                state: status.as_str().to_owned(),
            })
            .inc();
    }

    /// Sets the gate gauges (called at scrape time).
    pub fn set_open_gates(&self, count: i64, oldest_age_seconds: f64) {
        self.open_gates.set(count);
        self.oldest_open_gate_age.set(oldest_age_seconds.max(0.0));
    }

    /// Sets the gate-problem gauges (called at scrape time).
    pub fn set_gate_problems(&self, counts: &[(crate::domain::gate::GateProblem, i64)]) {
        for (problem, count) in counts {
            self.gate_problems
                .get_or_create(&ProblemLabels {
                    problem: problem.as_str().to_owned(),
                })
                .set(*count);
        }
    }

    pub fn gate_refused(&self) {
        self.gates_refused.inc();
    }

    pub fn set_reconciler_paused(&self, paused: bool) {
        self.reconciler_paused.set(i64::from(paused));
    }

    /// A gate registration or verdict request refused by its caller check.
    pub fn ci_auth_refused(&self, reason: &str) {
        self.ci_auth_refused
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn lookup_limited(&self) {
        self.verdict_lookups_limited.inc();
    }

    /// A worker step started for a task that came `via` "handoff" or "claim".
    pub fn step_started(&self, via: &'static str) {
        self.steps_started.get_or_create(&ViaLabels { via }).inc();
    }

    pub fn step_batch(&self, size: usize, _waited: std::time::Duration) {
        self.step_batch_size.observe(size as f64);
    }

    pub fn intake_batch(&self, size: usize, waited: std::time::Duration) {
        self.intake_batch_size.observe(size as f64);
        self.intake_batch_wait.observe(waited.as_secs_f64());
    }

    pub fn connection_opened(&self) {
        self.open_connections.inc();
    }

    pub fn connection_finished(&self) {
        self.open_connections.dec();
    }

    /// One-hot: the token's current state is 1, the others 0.
    pub fn set_token_state(&self, current: &str) {
        for state in TokenState::LABELS {
            self.token_state
                .get_or_create(&StateLabels {
                    state: (*state).to_owned(),
                })
                .set(i64::from(*state == current));
        }
    }

    /// Sets the store gauges (called at scrape time).
    pub fn set_pending(&self, count: i64, oldest_age_seconds: f64) {
        self.pending_tasks.set(count);
        self.oldest_pending_age.set(oldest_age_seconds.max(0.0));
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Why the server closed a connection: the `reason` label of
/// `sym_approver_connections_closed_total`.
pub mod connection_reason {
    pub const HEADER_TIMEOUT: &str = "header_timeout";
    pub const IDLE: &str = "idle";
    pub const BODY_TIMEOUT: &str = "body_timeout";
    pub const OVER_CAPACITY: &str = "over_capacity";
    pub const SHUTDOWN_FORCED: &str = "shutdown_forced";
    pub const ALL: &[&str] = &[
        HEADER_TIMEOUT,
        IDLE,
        BODY_TIMEOUT,
        OVER_CAPACITY,
        SHUTDOWN_FORCED,
    ];
}
