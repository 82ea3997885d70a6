//! The retry policy: how long the worker waits before the next step of a task.
//!
//! Exponential backoff from `initial` (about 1 s), doubling per step, with ±20 % jitter so
//! many tasks failing together do not retry in lockstep. Two caps: a short one while the hold
//! job is simply not on hold yet (polling), a longer one after CircleCI errors. A server's
//! `Retry-After` wins over the computed delay. The task's deadline (`APPROVAL_TIMEOUT`)
//! bounds it all; that check lives with the worker.

use std::time::Duration;

/// Why a step is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryKind {
    /// Nothing failed; the hold job is not on hold yet.
    Poll,
    /// CircleCI failed, timed out, rate limited or the outcome is unknown.
    Error,
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// First delay; doubles per attempt.
    pub initial: Duration,
    /// Cap after errors.
    pub max: Duration,
    /// Cap while polling.
    pub poll_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            poll_max: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// Delay before the next step after `attempts` steps, with random jitter.
    pub fn delay(&self, kind: RetryKind, attempts: i64, retry_after: Option<Duration>) -> Duration {
        self.delay_with_jitter(kind, attempts, retry_after, rand::random_range(0.8..=1.2))
    }

    /// [`Self::delay`] with the jitter factor given (tests).
    pub fn delay_with_jitter(
        &self,
        kind: RetryKind,
        attempts: i64,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Duration {
        if let Some(requested) = retry_after {
            // The server knows best; never hammer it sooner than it asked.
            return requested.max(Duration::from_millis(100));
        }
        let cap = match kind {
            RetryKind::Poll => self.poll_max,
            RetryKind::Error => self.max,
        };
        let exponent = u32::try_from(attempts.clamp(0, 20)).unwrap_or(20);
        let base = self
            .initial
            .saturating_mul(2u32.saturating_pow(exponent))
            .min(cap);
        base.mul_f64(jitter.clamp(0.5, 1.5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_retry_is_about_a_second_and_delays_double_up_to_the_cap() {
        let policy = RetryPolicy::default();
        let d = |n| policy.delay_with_jitter(RetryKind::Error, n, None, 1.0);
        assert_eq!(d(0), Duration::from_secs(1));
        assert_eq!(d(1), Duration::from_secs(2));
        assert_eq!(d(3), Duration::from_secs(8));
        assert_eq!(d(30), Duration::from_secs(60));
        let poll = policy.delay_with_jitter(RetryKind::Poll, 10, None, 1.0);
        assert_eq!(poll, Duration::from_secs(5));
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let policy = RetryPolicy::default();
        for _ in 0..1000 {
            let d = policy.delay(RetryKind::Error, 0, None);
            assert!(d >= Duration::from_millis(800) && d <= Duration::from_millis(1200));
        }
    }

    #[test]
    fn retry_after_overrides_the_backoff() {
        let policy = RetryPolicy::default();
        let d = policy.delay_with_jitter(RetryKind::Error, 0, Some(Duration::from_secs(7)), 1.0);
        assert_eq!(d, Duration::from_secs(7));
    }
}
