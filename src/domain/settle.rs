//! Settling a step, as a pure function: finish the task, or schedule its next step by the
//! retry policy, never past the deadline, except to confirm a call whose outcome is unknown.
//!
//! The rule that keeps a landed approve from being recorded as a failure: a task whose approve
//! (or cancel) may have taken effect is never settled as failed on the strength of a step that
//! could not see the hold job. Past the deadline it gets a last look (one more read, in the same
//! step); if that read fails too, it is confirmed later ([`CONFIRM_GRACE_MS`]) by steps that
//! only read. A step scheduled past its task's deadline is such a confirming step.

use crate::domain::decide::StepEnd;
use crate::domain::retry::{RetryKind, RetryPolicy};
use crate::domain::task::{Outcome, TaskStatus};

/// How long after the deadline a task whose call may have landed is still re-read when
/// CircleCI cannot be read: an hour of an outage is ridden out; after that the task times out
/// with the outcome named unknown.
pub const CONFIRM_GRACE_MS: i64 = 3_600_000;

/// A task's counters and times, as the settling decision needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Steps ended by CircleCI (or store) errors so far.
    pub errors: i64,
    /// Steps ended by waiting for the hold job so far.
    pub polls: i64,
    pub created_at: i64,
    pub deadline_at: i64,
    /// An approve or cancel of this task (this step's or an earlier one's) may have taken
    /// effect without an answer saying so.
    pub call_may_have_landed: bool,
}

/// What is stored for a step: the task's new state (the one settlement type, from the
/// decision to the store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    Finish {
        status: TaskStatus,
        outcome: Outcome,
        detail: String,
    },
    /// Next step at `at` (unix ms).
    Reschedule {
        at: i64,
        kind: RetryKind,
        detail: String,
    },
}

/// What settling a step decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Store this.
    Now(Settlement),
    /// The deadline passed while a call's outcome is unknown: read the job once more before
    /// settling ([`after_last_look`]), so an approve that landed is not recorded as a failure.
    LastLook { detail: String },
}

/// Finish, or schedule the next step within the deadline. `jitter` is the backoff's random
/// factor (0.8–1.2), given so this stays a pure function.
pub fn settle(
    end: StepEnd,
    progress: &Progress,
    now: i64,
    policy: &RetryPolicy,
    jitter: f64,
) -> Settled {
    Settled::Now(match end {
        StepEnd::Done {
            status,
            outcome,
            detail,
        } => Settlement::Finish {
            status,
            outcome,
            detail,
        },
        StepEnd::Retry {
            detail,
            call_unknown: true,
            ..
        } if now >= progress.deadline_at => return Settled::LastLook { detail },
        StepEnd::Retry {
            retry_after,
            detail,
            ..
        } if now >= progress.deadline_at => past_deadline(
            progress,
            progress.call_may_have_landed,
            now,
            retry_after,
            &detail,
            policy,
            jitter,
        ),
        StepEnd::Retry {
            kind,
            retry_after,
            detail,
            ..
        } => {
            let done_before = match kind {
                RetryKind::Poll => progress.polls,
                RetryKind::Error => progress.errors,
            };
            let delay = policy.delay_with_jitter(kind, done_before, retry_after, jitter);
            let at = now
                .saturating_add(crate::clock::duration_ms(delay))
                .min(progress.deadline_at);
            Settlement::Reschedule { at, kind, detail }
        }
    })
}

/// The result of the [`Settled::LastLook`]: the re-read's own end if it settled the task
/// (approved, or anything final); if it could not tell, confirmation later.
pub fn after_last_look(
    look: StepEnd,
    progress: &Progress,
    now: i64,
    detail: &str,
    policy: &RetryPolicy,
    jitter: f64,
) -> Settlement {
    match look {
        StepEnd::Done {
            status,
            outcome,
            detail,
        } => Settlement::Finish {
            status,
            outcome,
            detail,
        },
        StepEnd::Retry {
            retry_after,
            detail: looked,
            ..
        } => past_deadline(
            progress,
            true,
            now,
            retry_after,
            &format!("{detail}; re-reading the job: {looked}"),
            policy,
            jitter,
        ),
    }
}

/// A step past the deadline that settled nothing: time out, unless a call of the task may have
/// landed and the grace to confirm it is not over (then read again later, never call).
fn past_deadline(
    progress: &Progress,
    call_may_have_landed: bool,
    now: i64,
    retry_after: Option<std::time::Duration>,
    detail: &str,
    policy: &RetryPolicy,
    jitter: f64,
) -> Settlement {
    let give_up_at = progress.deadline_at.saturating_add(CONFIRM_GRACE_MS);
    if !call_may_have_landed {
        return Settlement::Finish {
            status: TaskStatus::Failed,
            outcome: Outcome::TimedOut,
            detail: timed_out_detail(progress, detail),
        };
    }
    if now >= give_up_at {
        return Settlement::Finish {
            status: TaskStatus::Failed,
            outcome: Outcome::TimedOut,
            detail: format!(
                "{}; whether its last call took effect is unknown: CircleCI could not be read \
                 for an hour after the deadline",
                timed_out_detail(progress, detail)
            ),
        };
    }
    let delay = policy.delay_with_jitter(RetryKind::Error, progress.errors, retry_after, jitter);
    // Strictly after the deadline: that is what marks the next step as one that only reads.
    let at = now
        .saturating_add(crate::clock::duration_ms(delay))
        .max(progress.deadline_at.saturating_add(1))
        .min(give_up_at);
    Settlement::Reschedule {
        at,
        kind: RetryKind::Error,
        detail: format!(
            "APPROVAL_TIMEOUT passed while a call's outcome is unknown; the job will be re-read \
             to confirm it: {detail}"
        ),
    }
}

/// Is a step due at `next_attempt_at` one that only confirms (reads, never calls)?
pub fn is_confirming(next_attempt_at: i64, deadline_at: i64) -> bool {
    next_attempt_at > deadline_at
}

fn timed_out_detail(progress: &Progress, detail: &str) -> String {
    let minutes = (progress.deadline_at - progress.created_at) / 60_000;
    format!("gave up after APPROVAL_TIMEOUT ({minutes} min): {detail}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]
    use super::*;
    use crate::domain::decide::{after_call, Next};
    use crate::domain::upstream::{Failure, UpstreamError};

    const NAME: &str = "wait_for_sym_approval";
    const ID: &str = "0f9e8d7c-aaaa-4bbb-8ccc-ddddeeeeffff";

    /// What a settle() that decides at once stores.
    fn now(settled: Settled) -> Settlement {
        match settled {
            Settled::Now(s) => s,
            other => panic!("expected a settlement, got {other:?}"),
        }
    }

    fn progress() -> Progress {
        Progress {
            errors: 0,
            polls: 0,
            created_at: 0,
            deadline_at: 1_800_000,
            call_may_have_landed: false,
        }
    }

    #[test]
    fn retries_are_scheduled_by_their_own_counter_and_never_past_the_deadline() {
        let policy = RetryPolicy::default();
        let mut p = progress();
        p.polls = 6;
        // Six polls do not make the first error wait the 60 s cap.
        let first_error = now(settle(
            StepEnd::retry_error("boom"),
            &p,
            1_000,
            &policy,
            1.0,
        ));
        assert!(matches!(
            first_error,
            Settlement::Reschedule { at: 2_000, .. }
        ));
        let poll = now(settle(StepEnd::poll("not yet"), &p, 1_000, &policy, 1.0));
        assert!(matches!(poll, Settlement::Reschedule { at: 6_000, .. }));
        p.errors = 10;
        let capped = now(settle(
            StepEnd::retry_error("boom"),
            &p,
            1_000,
            &policy,
            1.0,
        ));
        assert!(matches!(capped, Settlement::Reschedule { at: 61_000, .. }));
        let near_deadline = now(settle(
            StepEnd::retry_error("boom"),
            &p,
            1_799_000,
            &policy,
            1.0,
        ));
        assert!(matches!(
            near_deadline,
            Settlement::Reschedule { at: 1_800_000, .. }
        ));
    }

    #[test]
    fn past_the_deadline_a_retry_times_out_unless_a_call_is_unknown() {
        let policy = RetryPolicy::default();
        let p = progress();
        let late = now(settle(
            StepEnd::poll("not yet"),
            &p,
            1_800_000,
            &policy,
            1.0,
        ));
        assert!(matches!(
            late,
            Settlement::Finish {
                outcome: Outcome::TimedOut,
                ..
            }
        ));

        let unknown = after_call(
            &Next::Approve(ID.parse().expect("uuid")),
            NAME,
            &Err(UpstreamError::circleci(Failure::Timeout)),
        );
        let look = settle(unknown, &p, 1_800_000, &policy, 1.0);
        let Settled::LastLook { detail } = look else {
            panic!("expected a last look, got {look:?}")
        };
        let confirmed = after_last_look(
            StepEnd::succeeded(Outcome::Approved, "confirmed"),
            &p,
            1_800_000,
            &detail,
            &policy,
            1.0,
        );
        assert!(matches!(
            confirmed,
            Settlement::Finish {
                outcome: Outcome::Approved,
                ..
            }
        ));
    }

    #[test]
    fn a_step_cut_off_by_its_own_time_limit_gets_the_last_look_too() {
        let p = progress();
        let cut = StepEnd::call_unanswered("no answer within the step's time");
        let s = settle(cut, &p, 1_800_001, &RetryPolicy::default(), 1.0);
        assert!(matches!(s, Settled::LastLook { .. }), "{s:?}");
    }

    #[test]
    fn an_unknown_call_is_confirmed_later_never_settled_failed_while_it_cannot_be_read() {
        let policy = RetryPolicy::default();
        let p = progress();
        // The last look's read failed: read again after the deadline, strictly past it.
        let s = after_last_look(
            StepEnd::retry_error("CircleCI 503"),
            &p,
            1_800_000,
            "approve unanswered",
            &policy,
            1.0,
        );
        let Settlement::Reschedule { at, .. } = s else {
            panic!("expected a confirming step, got {s:?}")
        };
        assert!(at > p.deadline_at && is_confirming(at, p.deadline_at));
        // A confirming step whose read fails again keeps confirming, up to the grace.
        let mut landed = p;
        landed.call_may_have_landed = true;
        let again = now(settle(
            StepEnd::retry_error("503"),
            &landed,
            at,
            &policy,
            1.0,
        ));
        assert!(matches!(again, Settlement::Reschedule { .. }), "{again:?}");
        let over = now(settle(
            StepEnd::retry_error("503"),
            &landed,
            p.deadline_at + CONFIRM_GRACE_MS,
            &policy,
            1.0,
        ));
        let Settlement::Finish {
            outcome: Outcome::TimedOut,
            detail,
            ..
        } = over
        else {
            panic!("expected a time-out, got {over:?}")
        };
        assert!(detail.contains("unknown"), "{detail}");
        // Steps within the deadline are never confirming ones.
        assert!(!is_confirming(p.deadline_at, p.deadline_at));
    }

    #[test]
    fn final_steps_finish_with_their_outcome() {
        let end = StepEnd::failed(Outcome::HoldJobFailed, "failed");
        let s = now(settle(end, &progress(), 0, &RetryPolicy::default(), 1.0));
        assert!(matches!(
            s,
            Settlement::Finish {
                status: TaskStatus::Failed,
                outcome: Outcome::HoldJobFailed,
                ..
            }
        ));
    }
}
