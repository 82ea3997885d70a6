#![allow(clippy::unwrap_used)]
use super::*;

const DAY: Duration = DEFAULT_GATE_TIMEOUT;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn sym(failure: Failure) -> UpstreamError {
    UpstreamError::sym(failure)
}

fn sym_text(failure: fn(String) -> Failure, text: String) -> UpstreamError {
    UpstreamError::sym(failure(text))
}

fn open(status: &str) -> Result<RunStatus, UpstreamError> {
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
    for p in GateProblem::ALL {
        assert_eq!(GateProblem::parse(p.as_str()), Some(*p));
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
        let d = decide(&Ok(status.clone()), BindingCheck::Bound, 3, secs(60), DAY);
        assert!(matches!(d, GateDecision::Release { .. }), "{d:?}");
        assert_eq!(d.gate_status(), GateStatus::Released);
        assert!(d.detail().contains(&status.to_string()));
    }
}

#[test]
fn denied_and_expired_close_the_gate() {
    let d = decide(
        &Ok(RunStatus::Denied),
        BindingCheck::Bound,
        1,
        secs(10),
        DAY,
    );
    assert_eq!(close_reason(&d), CloseReason::Denied);
    assert_eq!(d.gate_status(), GateStatus::Closed);
    let d = decide(
        &Ok(RunStatus::Expired),
        BindingCheck::Bound,
        1,
        secs(10),
        DAY,
    );
    assert_eq!(close_reason(&d), CloseReason::Expired);
    assert_eq!(d.gate_status(), GateStatus::Closed);
    assert!(CloseReason::Denied.is_denial() && CloseReason::Expired.is_denial());
    assert!(!CloseReason::TimedOut.is_denial());
}

#[test]
fn definitive_answers_count_even_after_the_timeout() {
    let late = DAY + secs(3600);
    assert!(matches!(
        decide(
            &Ok(RunStatus::Approved),
            BindingCheck::Bound,
            300,
            late,
            DAY
        ),
        GateDecision::Release { .. }
    ));
    assert_eq!(
        close_reason(&decide(
            &Ok(RunStatus::Denied),
            BindingCheck::Bound,
            300,
            late,
            DAY
        )),
        CloseReason::Denied
    );
}

#[test]
fn an_open_run_is_polled_on_the_schedule() {
    let d = decide(&open("requested"), BindingCheck::Bound, 1, secs(1), DAY);
    assert_eq!(poll_after(&d), secs(5));
    assert!(d.detail().contains("requested"));
    assert_eq!(d.gate_status(), GateStatus::Open);
    assert_eq!(
        poll_after(&decide(
            &open("requested"),
            BindingCheck::Bound,
            4,
            secs(80),
            DAY
        )),
        secs(40)
    );
    assert_eq!(
        poll_after(&decide(
            &open("requested"),
            BindingCheck::Bound,
            50,
            secs(3600),
            DAY
        )),
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
        sym(Failure::Timeout),
        sym_text(Failure::Connect, "refused".into()),
        sym_text(Failure::InvalidResponse, "html".into()),
        sym(Failure::Server {
            status: 500,
            retry_after: None,
        }),
        sym(Failure::Client {
            status: 408,
            message: "slow".into(),
        }),
    ] {
        let d = decide(&Err(err.clone()), BindingCheck::Bound, 2, secs(30), DAY);
        assert_eq!(poll_after(&d), secs(10), "{err:?}");
        assert_eq!(d.detail(), err.to_string());
    }
}

#[test]
fn retry_after_is_honoured_never_sooner_than_asked() {
    let limited = sym(Failure::RateLimited {
        retry_after: Some(secs(120)),
    });
    assert_eq!(
        poll_after(&decide(&Err(limited), BindingCheck::Bound, 1, secs(5), DAY)),
        secs(120)
    );
    let unavailable = sym(Failure::Server {
        status: 503,
        retry_after: Some(secs(30)),
    });
    assert_eq!(
        poll_after(&decide(
            &Err(unavailable),
            BindingCheck::Bound,
            1,
            secs(5),
            DAY
        )),
        secs(30)
    );
    // A shorter Retry-After does not shorten the backoff.
    let short = sym(Failure::RateLimited {
        retry_after: Some(secs(1)),
    });
    assert_eq!(
        poll_after(&decide(&Err(short), BindingCheck::Bound, 8, secs(900), DAY)),
        POLL_MAX
    );
    // Rate limited without a Retry-After: the backoff.
    let bare = sym(Failure::RateLimited { retry_after: None });
    assert_eq!(
        poll_after(&decide(&Err(bare), BindingCheck::Bound, 3, secs(40), DAY)),
        secs(20)
    );
}

#[test]
fn a_refused_token_pauses_the_reconciler_and_a_forbidden_run_marks_its_gate() {
    let d = decide(
        &Err(sym(Failure::Unauthorized)),
        BindingCheck::Bound,
        1,
        secs(5),
        DAY,
    );
    let GateDecision::TokenRefused { detail } = &d else {
        panic!("expected TokenRefused, got {d:?}");
    };
    assert!(detail.contains("SYM_API_TOKEN"), "{detail}");
    assert_eq!(d.gate_status(), GateStatus::Open);
    for (err, problem) in [
        (sym(Failure::Forbidden), GateProblem::SymForbidden),
        (sym(Failure::NotFound), GateProblem::SymNotFound),
    ] {
        let d = decide(&Err(err), BindingCheck::Bound, 1, secs(5), DAY);
        assert!(
            matches!(d, GateDecision::PollAgain { problem: Some(p), .. } if p == problem),
            "{d:?}"
        );
    }
}

#[test]
fn an_approved_run_releases_only_a_gate_it_is_bound_to() {
    let approved = Ok(RunStatus::Approved);
    let d = decide(&approved, BindingCheck::Unbound, 3, secs(60), DAY);
    assert!(
        matches!(
            d,
            GateDecision::PollAgain {
                problem: Some(GateProblem::Unbound),
                ..
            }
        ),
        "{d:?}"
    );
    let d = decide(&approved, BindingCheck::Unbound, 300, DAY, DAY);
    assert_eq!(close_reason(&d), CloseReason::TimedOut);
    assert!(d.detail().contains("binds"), "{}", d.detail());
    let d = decide(&approved, BindingCheck::Elsewhere, 3, secs(60), DAY);
    assert_eq!(close_reason(&d), CloseReason::RunBoundElsewhere);
    assert_eq!(d.gate_status(), GateStatus::Closed);
}

#[test]
fn a_denied_run_cancels_only_a_workflow_it_is_bound_to() {
    for (binding, cancels) in [
        (BindingCheck::Bound, true),
        (BindingCheck::Unbound, false),
        (BindingCheck::Elsewhere, false),
    ] {
        let d = decide(&Ok(RunStatus::Denied), binding, 1, secs(5), DAY);
        let GateDecision::Close { cancel, .. } = d else {
            panic!("expected Close, got {d:?}");
        };
        assert_eq!(cancel, cancels, "{binding:?}");
    }
}

#[test]
fn a_refused_request_stops_polling() {
    let refused = sym(Failure::Client {
        status: 400,
        message: "Invalid run (RunAPI:INVALID_RUN)".into(),
    });
    let d = decide(&Err(refused), BindingCheck::Bound, 1, secs(5), DAY);
    assert!(matches!(d, GateDecision::StopPolling { .. }), "{d:?}");
    assert!(d.detail().contains("INVALID_RUN"));
    let d = decide(
        &Err(sym_text(Failure::InvalidRequest, "empty".into())),
        BindingCheck::Bound,
        1,
        secs(5),
        DAY,
    );
    assert!(matches!(d, GateDecision::StopPolling { .. }), "{d:?}");
}

#[test]
fn past_the_timeout_an_open_or_failing_gate_times_out() {
    let d = decide(&open("requested"), BindingCheck::Bound, 290, DAY, DAY);
    assert_eq!(close_reason(&d), CloseReason::TimedOut);
    assert_eq!(d.gate_status(), GateStatus::TimedOut);
    assert!(d.detail().contains("GATE_TIMEOUT"), "{}", d.detail());
    assert!(d.detail().contains("requested"), "{}", d.detail());
    let d = decide(
        &Err(sym(Failure::Timeout)),
        BindingCheck::Bound,
        290,
        DAY + secs(1),
        DAY,
    );
    assert_eq!(close_reason(&d), CloseReason::TimedOut);
    let d = decide(
        &Err(sym(Failure::Forbidden)),
        BindingCheck::Bound,
        290,
        DAY + secs(1),
        DAY,
    );
    assert_eq!(close_reason(&d), CloseReason::TimedOut);
    assert!(d.detail().contains("403"), "{}", d.detail());
}

#[test]
fn the_last_read_falls_on_the_deadline() {
    let timeout = secs(600);
    let d = decide(
        &open("requested"),
        BindingCheck::Bound,
        20,
        secs(590),
        timeout,
    );
    assert_eq!(poll_after(&d), secs(10));
}

#[test]
fn a_retry_after_past_the_deadline_times_the_gate_out_now() {
    let timeout = secs(600);
    let limited = sym(Failure::RateLimited {
        retry_after: Some(secs(60)),
    });
    let d = decide(
        &Err(limited.clone()),
        BindingCheck::Bound,
        3,
        secs(570),
        timeout,
    );
    assert_eq!(close_reason(&d), CloseReason::TimedOut);
    assert!(d.detail().contains("Retry-After"), "{}", d.detail());
    // Exactly at the deadline is still within it.
    assert_eq!(
        poll_after(&decide(
            &Err(limited),
            BindingCheck::Bound,
            3,
            secs(540),
            timeout
        )),
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
            1 => Err(sym(Failure::RateLimited { retry_after })),
            2 => Err(sym(Failure::Server {
                status: 503,
                retry_after,
            })),
            _ => Err(sym(Failure::Timeout)),
        };
        let asked = result.as_ref().err().and_then(UpstreamError::retry_after);
        match decide(&result, BindingCheck::Bound, polls, age, timeout) {
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
        match decide(&open("requested"), BindingCheck::Bound, polls, age, DAY) {
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
