//! Gates: a CircleCI workflow registered right after `sym/request`, with the Sym run it waits
//! for, so an approval is not lost when Sym's hook delivery never arrives. The reconciler
//! reads the run's status (`outbound::sym_api`) and this module decides what follows, free of
//! I/O.
//!
//! The polling schedule: 5 s after the first read, doubling per read (5, 10, 20, 40, 80,
//! 160 s), then every 5 minutes, for at most `GATE_TIMEOUT` (24 h by default) from the gate's
//! registration. An approval is usually given within minutes, so the first reads come
//! quickly; a request left waiting for hours costs one call per gate every 5 minutes. A
//! `Retry-After` (429, 5xx) is honoured: the next read is never sooner than Sym asked. No read
//! is ever scheduled past the timeout: the last one falls on the deadline, and when Sym asks
//! to wait beyond it the gate times out at once.
//!
//! A definitive answer (approved, escalated, denied, expired) is acted on whenever it is read,
//! even after the timeout (a reconciler that was down reads late; the human decision stands).

use std::time::Duration;

use crate::domain::binding::BindingCheck;
use crate::domain::run::RunStatus;
use crate::domain::upstream::{Failure, UpstreamError};

/// Delay after the first read of a gate's run.
pub const POLL_INITIAL: Duration = Duration::from_secs(5);
/// Longest delay between two reads.
pub const POLL_MAX: Duration = Duration::from_secs(5 * 60);
/// Default `GATE_TIMEOUT`: how long after registration a gate is polled.
pub const DEFAULT_GATE_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// Where a gate is. Stored as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GateStatus {
    /// Waiting for the Sym run to be decided.
    Open,
    /// The run was approved (by the hook or the reconciler): the hold job is being or has
    /// been approved.
    Released,
    /// The run was denied or expired, or it belongs to another workflow.
    Closed,
    /// No decision within `GATE_TIMEOUT`.
    TimedOut,
}
text_enum!(GateStatus {
    Open => "open",
    Released => "released",
    Closed => "closed",
    TimedOut => "timed_out",
});

impl GateStatus {
    /// Is the gate done (never polled again)?
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Open)
    }
}

/// Why a gate closed without a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The Sym run was denied.
    Denied,
    /// The Sym run expired without a decision.
    Expired,
    /// `GATE_TIMEOUT` passed with the run still open (or unreadable, or approved but never
    /// bound to this gate).
    TimedOut,
    /// The run was requested for another workflow or hold job (Sym signed that): this gate
    /// is never released by it.
    RunBoundElsewhere,
}
text_enum!(CloseReason {
    Denied => "denied",
    Expired => "expired",
    TimedOut => "timed_out",
    RunBoundElsewhere => "run_bound_elsewhere",
});

impl CloseReason {
    /// The gate's status after closing for this reason.
    pub fn gate_status(self) -> GateStatus {
        match self {
            Self::Denied | Self::Expired | Self::RunBoundElsewhere => GateStatus::Closed,
            Self::TimedOut => GateStatus::TimedOut,
        }
    }

    /// Does the Sym side say no (so `ON_DENY=cancel` applies, to a bound gate)? A timeout or
    /// a foreign run is not a denial.
    pub fn is_denial(self) -> bool {
        matches!(self, Self::Denied | Self::Expired)
    }
}

/// What is wrong with an open gate, visibly (the audit record, a metric, an alert).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GateProblem {
    /// Its run is approved, but nothing Sym signed binds the run to this gate's workflow and
    /// hold job: it is not released.
    Unbound,
    /// Its run was requested for another workflow or hold job (the gate is closed).
    RunBoundElsewhere,
    /// Sym answers 403 for its run: the token may not read it.
    SymForbidden,
    /// Sym answers 404 for its run.
    SymNotFound,
    /// Sym refuses the request for its run for good (another 4xx); polling it stopped.
    SymRefused,
}
text_enum!(GateProblem {
    Unbound => "unbound",
    RunBoundElsewhere => "run_bound_elsewhere",
    SymForbidden => "sym_forbidden",
    SymNotFound => "sym_not_found",
    SymRefused => "sym_refused",
});

/// Which path released a gate (the `path` label of `sym_approver_approvals_by_path_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApprovalPath {
    /// Sym's `after_approve` hook delivery (`POST /webhooks/sym`).
    Hook,
    /// The reconciler, from the run's status.
    Reconciler,
}
text_enum!(ApprovalPath {
    Hook => "hook",
    Reconciler => "reconciler",
});

/// What the reconciler does with a gate after one read of its run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateDecision {
    /// The run is approved or escalated and bound to this gate: approve the hold job (through
    /// the same task, dedup and exactly-once rules as a hook delivery) and mark the gate
    /// released.
    Release { detail: String },
    /// The run is denied or expired, belongs to another gate, or the gate timed out: close it.
    /// `cancel`: a denial of a run bound to this gate, so with `ON_DENY=cancel` the workflow
    /// is canceled (never a workflow the run was not requested for).
    Close {
        reason: CloseReason,
        detail: String,
        cancel: bool,
    },
    /// Not decided yet, not bound yet, or a failure worth retrying: read again after `after`.
    PollAgain {
        after: Duration,
        detail: String,
        problem: Option<GateProblem>,
    },
    /// Reading again cannot help (the request was refused): stop polling this gate. It stays
    /// open, so the hook path can still release it.
    StopPolling {
        detail: String,
        problem: GateProblem,
    },
    /// Sym refused the API token itself (401): nothing is learnt about this gate; the
    /// reconciler pauses and checks the token again later.
    TokenRefused { detail: String },
}

impl GateDecision {
    /// The gate's status after this decision (`Open` while polling, stopped or paused).
    pub fn gate_status(&self) -> GateStatus {
        match self {
            Self::Release { .. } => GateStatus::Released,
            Self::Close { reason, .. } => reason.gate_status(),
            Self::PollAgain { .. } | Self::StopPolling { .. } | Self::TokenRefused { .. } => {
                GateStatus::Open
            }
        }
    }

    /// The human-readable reason (for the audit record and logs).
    pub fn detail(&self) -> &str {
        match self {
            Self::Release { detail }
            | Self::Close { detail, .. }
            | Self::PollAgain { detail, .. }
            | Self::StopPolling { detail, .. }
            | Self::TokenRefused { detail } => detail,
        }
    }
}

/// The delay after `polls` reads of a gate's run (0 counts as 1): 5 s doubling per read,
/// capped at 5 minutes. Non-decreasing in `polls`.
pub fn poll_delay(polls: u32) -> Duration {
    let exponent = polls.saturating_sub(1).min(16);
    POLL_INITIAL
        .saturating_mul(2u32.saturating_pow(exponent))
        .min(POLL_MAX)
}

fn human(d: Duration) -> String {
    // Whole seconds read better in details than humantime's milliseconds.
    humantime::format_duration(Duration::from_secs(d.as_secs().max(1))).to_string()
}

/// A gate whose run is bound to another workflow or hold job: closed, never released, never
/// canceling anything. Decided before Sym is even asked.
pub fn refuse_run_bound_elsewhere() -> GateDecision {
    GateDecision::Close {
        reason: CloseReason::RunBoundElsewhere,
        detail: "the Sym run was requested for another workflow or hold job (Sym signed that); \
                 this gate is never released by it"
            .into(),
        cancel: false,
    }
}

/// Decides what follows one read of a gate's run.
///
/// `result` is the read's outcome, `binding` how the run stands with this gate, `polls` the
/// number of reads made for this gate including this one, `age` the time since the gate was
/// registered, `timeout` the `GATE_TIMEOUT`.
pub fn decide(
    result: &Result<RunStatus, UpstreamError>,
    binding: BindingCheck,
    polls: u32,
    age: Duration,
    timeout: Duration,
) -> GateDecision {
    if binding == BindingCheck::Elsewhere {
        return refuse_run_bound_elsewhere();
    }
    let bound = binding == BindingCheck::Bound;
    // A definitive answer is acted on whenever it is read.
    let (retry_after, problem, last) = match result {
        Ok(status @ (RunStatus::Approved | RunStatus::Escalated)) if bound => {
            return GateDecision::Release {
                detail: format!("the Sym run is {status}"),
            }
        }
        Ok(status @ (RunStatus::Approved | RunStatus::Escalated)) => (
            None,
            Some(GateProblem::Unbound),
            format!(
                "the Sym run is {status}, but nothing Sym signed binds it to this workflow and \
                 hold job (no request event of the run): not released"
            ),
        ),
        Ok(RunStatus::Denied) => {
            return GateDecision::Close {
                reason: CloseReason::Denied,
                detail: "the Sym run was denied".into(),
                cancel: bound,
            }
        }
        Ok(RunStatus::Expired) => {
            return GateDecision::Close {
                reason: CloseReason::Expired,
                detail: "the Sym run expired without approval".into(),
                cancel: bound,
            }
        }
        Ok(RunStatus::Open(status)) => (None, None, format!("the Sym run is {status:?}")),
        Err(e) => match e.failure {
            Failure::Unauthorized => {
                return GateDecision::TokenRefused {
                    detail: e.to_string(),
                }
            }
            Failure::Forbidden => (None, Some(GateProblem::SymForbidden), e.to_string()),
            Failure::NotFound => (None, Some(GateProblem::SymNotFound), e.to_string()),
            _ => (e.retry_after(), None, e.to_string()),
        },
    };

    let remaining = timeout.saturating_sub(age);
    let timed_out = |why: String| GateDecision::Close {
        reason: CloseReason::TimedOut,
        detail: format!(
            "no decision on the Sym run within GATE_TIMEOUT ({}){why}; last: {last}",
            human(timeout)
        ),
        cancel: false,
    };
    if remaining.is_zero() {
        return timed_out(String::new());
    }
    if let Err(e) = result {
        if !e.is_retryable() {
            return GateDecision::StopPolling {
                detail: format!(
                    "{e}; polling of this gate stopped (the hook path can still release it)"
                ),
                problem: GateProblem::SymRefused,
            };
        }
    }
    if let Some(asked) = retry_after {
        if asked > remaining {
            return timed_out(format!(
                ": the Sym API asked to wait {} (Retry-After), past the deadline",
                human(asked)
            ));
        }
    }
    let after = poll_delay(polls)
        .max(retry_after.unwrap_or_default())
        .min(remaining);
    GateDecision::PollAgain {
        after,
        detail: last,
        problem,
    }
}

#[cfg(test)]
#[path = "gate_tests.rs"]
mod tests;
