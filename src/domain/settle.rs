//! Settling a step, as a pure function: finish the task, or schedule its next step by the
//! retry policy, never past the deadline.

use crate::domain::decide::StepEnd;
use crate::domain::retry::{RetryKind, RetryPolicy};
use crate::domain::task::{Outcome, TaskStatus};

/// A task's counters and times, as the settling decision needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Steps ended by CircleCI (or store) errors so far.
    pub errors: i64,
    /// Steps ended by waiting for the hold job so far.
    pub polls: i64,
    pub created_at: i64,
    pub deadline_at: i64,
}

/// What to store for a step.
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
    /// The deadline passed while an approve's outcome is unknown: read the job once more
    /// before settling, so an approve that landed is not recorded as a failure.
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
) -> Settlement {
    match end {
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
            approve_unknown: true,
            ..
        } if now >= progress.deadline_at => Settlement::LastLook { detail },
        StepEnd::Retry { detail, .. } if now >= progress.deadline_at => Settlement::Finish {
            status: TaskStatus::Failed,
            outcome: Outcome::TimedOut,
            detail: timed_out_detail(progress, &detail),
        },
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
    }
}

/// The result of the [`Settlement::LastLook`]: the re-read's own end if it settled the task
/// (approved, or anything final), else timed out.
pub fn after_last_look(look: StepEnd, progress: &Progress, detail: &str) -> Settlement {
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
        StepEnd::Retry { .. } => Settlement::Finish {
            status: TaskStatus::Failed,
            outcome: Outcome::TimedOut,
            detail: timed_out_detail(progress, detail),
        },
    }
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
    use crate::outbound::circleci::CircleError;

    const NAME: &str = "wait_for_sym_approval";
    const ID: &str = "0f9e8d7c-aaaa-4bbb-8ccc-ddddeeeeffff";

    fn progress() -> Progress {
        Progress {
            errors: 0,
            polls: 0,
            created_at: 0,
            deadline_at: 1_800_000,
        }
    }

    #[test]
    fn retries_are_scheduled_by_their_own_counter_and_never_past_the_deadline() {
        let policy = RetryPolicy::default();
        let mut p = progress();
        p.polls = 6;
        // Six polls do not make the first error wait the 60 s cap.
        let first_error = settle(StepEnd::retry_error("boom"), &p, 1_000, &policy, 1.0);
        assert!(matches!(
            first_error,
            Settlement::Reschedule { at: 2_000, .. }
        ));
        let poll = settle(StepEnd::poll("not yet"), &p, 1_000, &policy, 1.0);
        assert!(matches!(poll, Settlement::Reschedule { at: 6_000, .. }));
        p.errors = 10;
        let capped = settle(StepEnd::retry_error("boom"), &p, 1_000, &policy, 1.0);
        assert!(matches!(capped, Settlement::Reschedule { at: 61_000, .. }));
        let near_deadline = settle(StepEnd::retry_error("boom"), &p, 1_799_000, &policy, 1.0);
        assert!(matches!(
            near_deadline,
            Settlement::Reschedule { at: 1_800_000, .. }
        ));
    }

    #[test]
    fn past_the_deadline_a_retry_times_out_unless_an_approve_is_unknown() {
        let policy = RetryPolicy::default();
        let p = progress();
        let late = settle(StepEnd::poll("not yet"), &p, 1_800_000, &policy, 1.0);
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
            &Err(CircleError::Timeout),
        );
        let look = settle(unknown, &p, 1_800_000, &policy, 1.0);
        let Settlement::LastLook { detail } = look else {
            panic!("expected a last look, got {look:?}")
        };
        let confirmed = after_last_look(
            StepEnd::succeeded(Outcome::Approved, "confirmed"),
            &p,
            &detail,
        );
        assert!(matches!(
            confirmed,
            Settlement::Finish {
                outcome: Outcome::Approved,
                ..
            }
        ));
        let still_unknown = after_last_look(StepEnd::retry_error("down"), &p, &detail);
        assert!(matches!(
            still_unknown,
            Settlement::Finish {
                outcome: Outcome::TimedOut,
                ..
            }
        ));
    }

    #[test]
    fn final_steps_finish_with_their_outcome() {
        let end = StepEnd::failed(Outcome::HoldJobFailed, "failed");
        let s = settle(end, &progress(), 0, &RetryPolicy::default(), 1.0);
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
