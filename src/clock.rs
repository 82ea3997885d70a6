//! The one clock of the service's own time: stored times, leases, step deadlines, backoff,
//! the webhook timestamp tolerance and the call records all read it, as unix milliseconds
//! (the form every stored time takes), and the timers that decide something (a step's time
//! limit, the wait before a stored result is tried again) sleep on it.
//!
//! Production uses the system clock, measured on tokio's monotonic clock from a wall-clock
//! reading at start, and corrected by the offset to the database's clock when the store is
//! shared (PostgreSQL): every replica then reads the same time, so a lease one replica writes
//! runs out when the others think it does. Being tokio's, it stands still under tokio's paused
//! time in unit tests. Integration tests that drive the worker step by step use a manual clock
//! they move forward themselves: a retry due in a minute is due after `advance(60 s)`, and a
//! step's time limit fires when the test moves the clock past it, with no sleeping.
//!
//! Time limits on I/O (an HTTP request, a store operation, a slow client) are not decisions:
//! they stay on tokio's timers.

use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

/// A source of "now". Cheap to clone; clones share the same time.
#[derive(Debug, Clone)]
pub struct Clock {
    source: Source,
    /// Added to the system clock: the database's clock minus ours.
    offset_ms: Arc<AtomicI64>,
}

#[derive(Debug, Clone)]
enum Source {
    /// Wall-clock ms at `since`, then tokio's monotonic clock.
    System {
        start_ms: i64,
        since: tokio::time::Instant,
    },
    /// Moves only on `advance`; sleepers watch it.
    Manual(Arc<watch::Sender<i64>>),
}

/// A timer on the clock ran out before the work did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self {
            source: Source::System {
                start_ms: to_ms(SystemTime::now()),
                since: tokio::time::Instant::now(),
            },
            offset_ms: Arc::default(),
        }
    }

    /// A clock that stands still at `start_ms` until [`Clock::advance`]d (tests).
    pub fn manual(start_ms: i64) -> Self {
        Self {
            source: Source::Manual(Arc::new(watch::Sender::new(start_ms))),
            offset_ms: Arc::default(),
        }
    }

    /// Unix milliseconds now.
    pub fn now_ms(&self) -> i64 {
        match &self.source {
            Source::Manual(now) => *now.borrow(),
            Source::System { .. } => self
                .local_ms()
                .saturating_add(self.offset_ms.load(Ordering::SeqCst)),
        }
    }

    /// Unix seconds now (webhook timestamps are in seconds).
    pub fn unix_secs(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }

    /// The clock's own reading, without the offset to the database's.
    pub fn local_ms(&self) -> i64 {
        match &self.source {
            Source::Manual(now) => *now.borrow(),
            Source::System { start_ms, since } => {
                start_ms.saturating_add(duration_ms(since.elapsed()))
            }
        }
    }

    /// Follow another clock (the database's) that is `offset_ms` ahead of ours; a manual
    /// clock ignores it.
    pub fn set_offset(&self, offset_ms: i64) {
        if !self.is_manual() {
            self.offset_ms.store(offset_ms, Ordering::SeqCst);
        }
    }

    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::SeqCst)
    }

    /// Moves a manual clock forward, waking the timers it passes; the system clock ignores it.
    pub fn advance(&self, by: Duration) {
        if let Source::Manual(now) = &self.source {
            now.send_modify(|now| *now = now.saturating_add(duration_ms(by)));
        }
    }

    pub fn is_manual(&self) -> bool {
        matches!(self.source, Source::Manual(_))
    }

    /// Sleeps until the clock reads `at_ms` or later.
    pub async fn sleep_until(&self, at_ms: i64) {
        match &self.source {
            Source::Manual(now) => {
                let mut watching = now.subscribe();
                // Only an error if the sender is gone, which a clone of it prevents.
                let _ = watching.wait_for(|now| *now >= at_ms).await;
            }
            Source::System { .. } => loop {
                let left = at_ms.saturating_sub(self.now_ms());
                if left <= 0 {
                    return;
                }
                // The offset may move while asleep (a clock sync): look again on waking.
                tokio::time::sleep(Duration::from_millis(u64::try_from(left).unwrap_or(0))).await;
            },
        }
    }

    /// Sleeps for `d` of this clock's time.
    pub async fn sleep(&self, d: Duration) {
        self.sleep_until(self.now_ms().saturating_add(duration_ms(d)))
            .await;
    }

    /// Runs `work` until the clock reads `at_ms`; `Err(Elapsed)` if the clock got there first.
    pub async fn timeout_at<F: Future>(&self, at_ms: i64, work: F) -> Result<F::Output, Elapsed> {
        tokio::select! {
            biased;
            out = work => Ok(out),
            () = self.sleep_until(at_ms) => Err(Elapsed),
        }
    }
}

/// Unix milliseconds of a system time (0 before 1970).
pub fn to_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A duration in whole milliseconds, saturating.
pub fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_advanced_and_clones_share_it() {
        let clock = Clock::manual(1_000);
        let other = clock.clone();
        assert_eq!(clock.now_ms(), 1_000);
        other.advance(Duration::from_secs(2));
        assert_eq!(clock.now_ms(), 3_000);
        assert_eq!(clock.unix_secs(), 3);
    }

    #[tokio::test]
    async fn a_system_clock_follows_the_offset_it_is_given_and_a_manual_one_does_not() {
        let clock = Clock::system();
        clock.set_offset(60_000);
        assert!((clock.now_ms() - to_ms(SystemTime::now()) - 60_000).abs() < 1_000);
        let manual = Clock::manual(5);
        manual.set_offset(60_000);
        assert_eq!(manual.now_ms(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn the_system_clock_stands_still_under_paused_time_and_moves_with_it() {
        let clock = Clock::system();
        let before = clock.now_ms();
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(clock.now_ms() - before, 90_000);
        let sleeping = clock.sleep(Duration::from_secs(30));
        // Auto-advance lets the paused runtime reach the timer at once.
        sleeping.await;
        assert_eq!(clock.now_ms() - before, 120_000);
    }

    #[tokio::test]
    async fn timers_on_a_manual_clock_fire_when_it_is_moved_past_them() {
        let clock = Clock::manual(0);
        let waiting = tokio::spawn({
            let clock = clock.clone();
            async move { clock.timeout_at(10_000, std::future::pending::<()>()).await }
        });
        clock.advance(Duration::from_secs(5));
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "not yet at 5 s");
        clock.advance(Duration::from_secs(5));
        assert_eq!(waiting.await.ok(), Some(Err(Elapsed)));
        // Work that ends first wins.
        assert_eq!(clock.timeout_at(0, async { 7 }).await, Ok(7));
    }
}
