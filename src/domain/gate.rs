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

use crate::outbound::sym_api::{RunStatus, SymApiError};

/// Delay after the first read of a gate's run.
pub const POLL_INITIAL: Duration = Duration::from_secs(5);
/// Longest delay between two reads.
pub const POLL_MAX: Duration = Duration::from_secs(5 * 60);
/// Default `GATE_TIMEOUT`: how long after registration a gate is polled.
pub const DEFAULT_GATE_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// Where a gate is. Stored as text; `as_str` / `parse` are the one conversion each way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GateStatus {
    /// Waiting for the Sym run to be decided.
    Open,
    /// The run was approved (by the hook or the reconciler): the hold job is being or has
    /// been approved.
    Released,
    /// The run was denied or expired.
    Closed,
    /// No decision within `GATE_TIMEOUT`.
    TimedOut,
}

impl GateStatus {
    pub const ALL: &'static [GateStatus] =
        &[Self::Open, Self::Released, Self::Closed, Self::TimedOut];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Released => "released",
            Self::Closed => "closed",
            Self::TimedOut => "timed_out",
        }
    }

    /// The stored text back to the value; None for text this version does not know.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|s| s.as_str() == text)
    }

    /// Is the gate done (never polled again)?
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Open)
    }
}

impl std::fmt::Display for GateStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a gate closed without a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The Sym run was denied.
    Denied,
    /// The Sym run expired without a decision.
    Expired,
    /// `GATE_TIMEOUT` passed with the run still open (or unreadable).
    TimedOut,
}

impl CloseReason {
    pub const ALL: &'static [CloseReason] = &[Self::Denied, Self::Expired, Self::TimedOut];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Denied => "denied",
            Self::Expired => "expired",
            Self::TimedOut => "timed_out",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|s| s.as_str() == text)
    }

    /// The gate's status after closing for this reason.
    pub fn gate_status(self) -> GateStatus {
        match self {
            Self::Denied | Self::Expired => GateStatus::Closed,
            Self::TimedOut => GateStatus::TimedOut,
        }
    }

    /// Does the Sym side say no (so `ON_DENY=cancel` applies)? A timeout is not a denial.
    pub fn is_denial(self) -> bool {
        matches!(self, Self::Denied | Self::Expired)
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which path released a gate (the `path` label of `sym_approver_approvals_by_path_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApprovalPath {
    /// Sym's `after_approve` hook delivery (`POST /webhooks/sym`).
    Hook,
    /// The reconciler, from the run's status.
    Reconciler,
}

impl ApprovalPath {
    pub const ALL: &'static [ApprovalPath] = &[Self::Hook, Self::Reconciler];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hook => "hook",
            Self::Reconciler => "reconciler",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|s| s.as_str() == text)
    }
}

impl std::fmt::Display for ApprovalPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the reconciler does with a gate after one read of its run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateDecision {
    /// The run is approved or escalated: approve the hold job (through the same task, dedup
    /// and exactly-once rules as a hook delivery) and mark the gate released.
    Release { detail: String },
    /// The run is denied or expired, or the gate timed out: close it (and, for a denial with
    /// `ON_DENY=cancel`, cancel the workflow).
    Close { reason: CloseReason, detail: String },
    /// Not decided yet, or a failure worth retrying: read again after `after`.
    PollAgain { after: Duration, detail: String },
    /// Reading again cannot help (the token was refused, the request was refused): stop
    /// polling this gate. It stays open, so the hook path can still release it.
    StopPolling { detail: String },
}

impl GateDecision {
    /// The gate's status after this decision (`Open` while polling or stopped).
    pub fn gate_status(&self) -> GateStatus {
        match self {
            Self::Release { .. } => GateStatus::Released,
            Self::Close { reason, .. } => reason.gate_status(),
            Self::PollAgain { .. } | Self::StopPolling { .. } => GateStatus::Open,
        }
    }

    /// The human-readable reason (for the audit record and logs).
    pub fn detail(&self) -> &str {
        match self {
            Self::Release { detail }
            | Self::Close { detail, .. }
            | Self::PollAgain { detail, .. }
            | Self::StopPolling { detail } => detail,
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

/// Decides what follows one read of a gate's run.
///
/// `result` is the read's outcome, `polls` the number of reads made for this gate including
/// this one, `age` the time since the gate was registered, `timeout` the `GATE_TIMEOUT`.
pub fn decide(
    result: &Result<RunStatus, SymApiError>,
    polls: u32,
    age: Duration,
    timeout: Duration,
) -> GateDecision {
    // A definitive answer is acted on whenever it is read.
    let (retry_after, last) = match result {
        Ok(status @ (RunStatus::Approved | RunStatus::Escalated)) => {
            return GateDecision::Release {
                detail: format!("the Sym run is {status}"),
            }
        }
        Ok(RunStatus::Denied) => {
            return GateDecision::Close {
                reason: CloseReason::Denied,
                detail: "the Sym run was denied".into(),
            }
        }
        Ok(RunStatus::Expired) => {
            return GateDecision::Close {
                reason: CloseReason::Expired,
                detail: "the Sym run expired without approval".into(),
            }
        }
        Ok(RunStatus::Open(status)) => (None, format!("the Sym run is {status:?}")),
        Err(e) => (e.retry_after(), e.to_string()),
    };

    let remaining = timeout.saturating_sub(age);
    let timed_out = |why: String| GateDecision::Close {
        reason: CloseReason::TimedOut,
        detail: format!(
            "no decision on the Sym run within GATE_TIMEOUT ({}){why}; last: {last}",
            human(timeout)
        ),
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
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const DAY: Duration = DEFAULT_GATE_TIMEOUT;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn open(status: &str) -> Result<RunStatus, SymApiError> {
        Ok(RunStatus::Open(status.into()))
    }

    fn poll_after(d: &GateDecision) -> Duration {
        match d {
            GateDecision::PollAgain { after, .. } => *after,
            other => panic!("expected PollAgain, got {other:?}"),
        }
    }

    fn close_reason(d: &GateDecision) -> CloseReason {
        match d {
            GateDecision::Close { reason, .. } => *reason,
            other => panic!("expected Close, got {other:?}"),
        }
    }

    #[test]
    fn statuses_round_trip_as_text() {
        for s in GateStatus::ALL {
            assert_eq!(GateStatus::parse(s.as_str()), Some(*s));
            assert_eq!(s.to_string(), s.as_str());
        }
        for r in CloseReason::ALL {
            assert_eq!(CloseReason::parse(r.as_str()), Some(*r));
        }
        for p in ApprovalPath::ALL {
            assert_eq!(ApprovalPath::parse(p.as_str()), Some(*p));
        }
        assert_eq!(GateStatus::parse("OPEN"), None);
        assert_eq!(GateStatus::TimedOut.as_str(), "timed_out");
        assert!(!GateStatus::Open.is_final());
        assert!(GateStatus::Released.is_final() && GateStatus::Closed.is_final());
        assert_eq!(ApprovalPath::Hook.as_str(), "hook");
        assert_eq!(ApprovalPath::Reconciler.as_str(), "reconciler");
    }

    #[test]
    fn approved_and_escalated_release_the_gate() {
        for status in [RunStatus::Approved, RunStatus::Escalated] {
            let d = decide(&Ok(status.clone()), 3, secs(60), DAY);
            assert!(matches!(d, GateDecision::Release { .. }), "{d:?}");
            assert_eq!(d.gate_status(), GateStatus::Released);
            assert!(d.detail().contains(&status.to_string()));
        }
    }

    #[test]
    fn denied_and_expired_close_the_gate() {
        let d = decide(&Ok(RunStatus::Denied), 1, secs(10), DAY);
        assert_eq!(close_reason(&d), CloseReason::Denied);
        assert_eq!(d.gate_status(), GateStatus::Closed);
        let d = decide(&Ok(RunStatus::Expired), 1, secs(10), DAY);
        assert_eq!(close_reason(&d), CloseReason::Expired);
        assert_eq!(d.gate_status(), GateStatus::Closed);
        assert!(CloseReason::Denied.is_denial() && CloseReason::Expired.is_denial());
        assert!(!CloseReason::TimedOut.is_denial());
    }

    #[test]
    fn definitive_answers_count_even_after_the_timeout() {
        let late = DAY + secs(3600);
        assert!(matches!(
            decide(&Ok(RunStatus::Approved), 300, late, DAY),
            GateDecision::Release { .. }
        ));
        assert_eq!(
            close_reason(&decide(&Ok(RunStatus::Denied), 300, late, DAY)),
            CloseReason::Denied
        );
    }

    #[test]
    fn an_open_run_is_polled_on_the_schedule() {
        let d = decide(&open("requested"), 1, secs(1), DAY);
        assert_eq!(poll_after(&d), secs(5));
        assert!(d.detail().contains("requested"));
        assert_eq!(d.gate_status(), GateStatus::Open);
        assert_eq!(
            poll_after(&decide(&open("requested"), 4, secs(80), DAY)),
            secs(40)
        );
        assert_eq!(
            poll_after(&decide(&open("requested"), 50, secs(3600), DAY)),
            POLL_MAX
        );
    }

    #[test]
    fn the_schedule_runs_from_seconds_to_minutes() {
        let schedule: Vec<u64> = (1..=9).map(|n| poll_delay(n).as_secs()).collect();
        assert_eq!(schedule, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(poll_delay(0), POLL_INITIAL);
        assert_eq!(poll_delay(u32::MAX), POLL_MAX);
    }

    #[test]
    fn retryable_errors_are_polled_again() {
        for err in [
            SymApiError::NotFound,
            SymApiError::Timeout,
            SymApiError::Connect("refused".into()),
            SymApiError::InvalidResponse("html".into()),
            SymApiError::Server {
                status: 500,
                retry_after: None,
            },
            SymApiError::Client {
                status: 408,
                message: "slow".into(),
            },
        ] {
            let d = decide(&Err(err.clone()), 2, secs(30), DAY);
            assert_eq!(poll_after(&d), secs(10), "{err:?}");
            assert_eq!(d.detail(), err.to_string());
        }
    }

    #[test]
    fn retry_after_is_honoured_never_sooner_than_asked() {
        let limited = SymApiError::RateLimited {
            retry_after: Some(secs(120)),
        };
        assert_eq!(
            poll_after(&decide(&Err(limited), 1, secs(5), DAY)),
            secs(120)
        );
        let unavailable = SymApiError::Server {
            status: 503,
            retry_after: Some(secs(30)),
        };
        assert_eq!(
            poll_after(&decide(&Err(unavailable), 1, secs(5), DAY)),
            secs(30)
        );
        // A shorter Retry-After does not shorten the backoff.
        let short = SymApiError::RateLimited {
            retry_after: Some(secs(1)),
        };
        assert_eq!(
            poll_after(&decide(&Err(short), 8, secs(900), DAY)),
            POLL_MAX
        );
        // Rate limited without a Retry-After: the backoff.
        let bare = SymApiError::RateLimited { retry_after: None };
        assert_eq!(poll_after(&decide(&Err(bare), 3, secs(40), DAY)), secs(20));
    }

    #[test]
    fn a_refused_token_stops_polling_naming_the_variable() {
        for code in [401, 403] {
            let d = decide(&Err(SymApiError::Unauthorized(code)), 1, secs(5), DAY);
            let GateDecision::StopPolling { detail } = &d else {
                panic!("expected StopPolling, got {d:?}");
            };
            assert!(detail.contains("SYM_API_TOKEN"), "{detail}");
            assert_eq!(d.gate_status(), GateStatus::Open);
        }
    }

    #[test]
    fn a_refused_request_stops_polling() {
        let refused = SymApiError::Client {
            status: 400,
            message: "Invalid run (RunAPI:INVALID_RUN)".into(),
        };
        let d = decide(&Err(refused), 1, secs(5), DAY);
        assert!(matches!(d, GateDecision::StopPolling { .. }), "{d:?}");
        assert!(d.detail().contains("INVALID_RUN"));
        let d = decide(
            &Err(SymApiError::InvalidRunId("empty".into())),
            1,
            secs(5),
            DAY,
        );
        assert!(matches!(d, GateDecision::StopPolling { .. }), "{d:?}");
    }

    #[test]
    fn past_the_timeout_an_open_or_failing_gate_times_out() {
        let d = decide(&open("requested"), 290, DAY, DAY);
        assert_eq!(close_reason(&d), CloseReason::TimedOut);
        assert_eq!(d.gate_status(), GateStatus::TimedOut);
        assert!(d.detail().contains("GATE_TIMEOUT"), "{}", d.detail());
        assert!(d.detail().contains("requested"), "{}", d.detail());
        let d = decide(&Err(SymApiError::Timeout), 290, DAY + secs(1), DAY);
        assert_eq!(close_reason(&d), CloseReason::TimedOut);
        let d = decide(
            &Err(SymApiError::Unauthorized(401)),
            290,
            DAY + secs(1),
            DAY,
        );
        assert_eq!(close_reason(&d), CloseReason::TimedOut);
        assert!(d.detail().contains("SYM_API_TOKEN"), "{}", d.detail());
    }

    #[test]
    fn the_last_read_falls_on_the_deadline() {
        let timeout = secs(600);
        let d = decide(&open("requested"), 20, secs(590), timeout);
        assert_eq!(poll_after(&d), secs(10));
    }

    #[test]
    fn a_retry_after_past_the_deadline_times_the_gate_out_now() {
        let timeout = secs(600);
        let limited = SymApiError::RateLimited {
            retry_after: Some(secs(60)),
        };
        let d = decide(&Err(limited.clone()), 3, secs(570), timeout);
        assert_eq!(close_reason(&d), CloseReason::TimedOut);
        assert!(d.detail().contains("Retry-After"), "{}", d.detail());
        // Exactly at the deadline is still within it.
        assert_eq!(
            poll_after(&decide(&Err(limited), 3, secs(540), timeout)),
            secs(60)
        );
    }

    /// A small deterministic generator, so the property tests need no extra crate.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn property_the_schedule_is_monotone_and_capped() {
        let mut previous = Duration::ZERO;
        for polls in 0..=10_000u32 {
            let d = poll_delay(polls);
            assert!(d >= previous, "poll_delay({polls}) = {d:?} < {previous:?}");
            assert!(
                d >= POLL_INITIAL && d <= POLL_MAX,
                "poll_delay({polls}) = {d:?}"
            );
            previous = d;
        }
        for polls in [u32::MAX - 1, u32::MAX] {
            assert_eq!(poll_delay(polls), POLL_MAX);
        }
    }

    #[test]
    fn property_poll_again_is_never_past_the_timeout_nor_sooner_than_asked() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        for _ in 0..20_000 {
            let timeout = secs(1 + rng.below(2 * 86_400));
            let age = Duration::from_millis(rng.below(timeout.as_millis() as u64 * 2));
            let polls = rng.below(400) as u32;
            let retry_after = (rng.below(2) == 0).then(|| secs(rng.below(4000)));
            let result = match rng.below(4) {
                0 => open("requested"),
                1 => Err(SymApiError::RateLimited { retry_after }),
                2 => Err(SymApiError::Server {
                    status: 503,
                    retry_after,
                }),
                _ => Err(SymApiError::Timeout),
            };
            let asked = result.as_ref().err().and_then(SymApiError::retry_after);
            match decide(&result, polls, age, timeout) {
                GateDecision::PollAgain { after, .. } => {
                    assert!(age < timeout);
                    assert!(age + after <= timeout, "{age:?} + {after:?} > {timeout:?}");
                    assert!(after > Duration::ZERO);
                    assert!(after <= POLL_MAX.max(asked.unwrap_or_default()));
                    if let Some(asked) = asked {
                        assert!(after >= asked, "{after:?} sooner than asked {asked:?}");
                    }
                    let remaining = timeout - age;
                    assert!(after >= poll_delay(polls).min(remaining));
                }
                GateDecision::Close {
                    reason: CloseReason::TimedOut,
                    ..
                } => {
                    let remaining = timeout.saturating_sub(age);
                    assert!(remaining.is_zero() || asked.is_some_and(|a| a > remaining));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn property_an_open_run_is_read_about_300_times_a_day_and_never_past_the_deadline() {
        let mut age = Duration::ZERO;
        let mut polls = 0u32;
        loop {
            polls += 1;
            match decide(&open("requested"), polls, age, DAY) {
                GateDecision::PollAgain { after, .. } => age += after,
                GateDecision::Close {
                    reason: CloseReason::TimedOut,
                    ..
                } => break,
                other => panic!("unexpected {other:?}"),
            }
            assert!(age <= DAY);
        }
        assert_eq!(age, DAY, "the last read falls on the deadline");
        // 7 reads in the first ~10 minutes, then one every 5 minutes.
        assert!((280..=300).contains(&polls), "{polls} reads");
    }
}
