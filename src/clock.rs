//! Wall-clock time for the worker and the store, as unix milliseconds (the form every stored
//! time takes).
//!
//! Production uses the system clock, corrected by the offset to the database's clock when
//! the store is shared (PostgreSQL): every replica then reads the same time, so a lease one
//! replica writes runs out when the others think it does, whatever their own clocks say.
//! Tests use a manual clock they move forward themselves, so a retry due in a minute is due
//! after `advance(60 s)`, with no sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of "now". Cheap to clone; clones share the same time.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    manual: Option<Arc<AtomicI64>>,
    /// Added to the system clock: the database's clock minus ours.
    offset_ms: Arc<AtomicI64>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self::default()
    }

    /// A clock that stands still at `start_ms` until [`Clock::advance`]d (tests).
    pub fn manual(start_ms: i64) -> Self {
        Self {
            manual: Some(Arc::new(AtomicI64::new(start_ms))),
            offset_ms: Arc::default(),
        }
    }

    /// Unix milliseconds now.
    pub fn now_ms(&self) -> i64 {
        match &self.manual {
            Some(now) => now.load(Ordering::SeqCst),
            None => to_ms(SystemTime::now()).saturating_add(self.offset_ms.load(Ordering::SeqCst)),
        }
    }

    /// The system clock's own reading, without the offset.
    pub fn local_ms(&self) -> i64 {
        to_ms(SystemTime::now())
    }

    /// Follow another clock (the database's) that is `offset_ms` ahead of ours; a manual
    /// clock ignores it.
    pub fn set_offset(&self, offset_ms: i64) {
        if self.manual.is_none() {
            self.offset_ms.store(offset_ms, Ordering::SeqCst);
        }
    }

    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::SeqCst)
    }

    /// Moves a manual clock forward; the system clock ignores it.
    pub fn advance(&self, by: Duration) {
        if let Some(now) = &self.manual {
            now.fetch_add(duration_ms(by), Ordering::SeqCst);
        }
    }

    pub fn is_manual(&self) -> bool {
        self.manual.is_some()
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

/// Unix seconds now, from the system clock (webhook timestamps are in seconds).
pub fn unix_secs() -> i64 {
    to_ms(SystemTime::now()) / 1000
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
    }

    #[test]
    fn a_system_clock_follows_the_offset_it_is_given_and_a_manual_one_does_not() {
        let clock = Clock::system();
        clock.set_offset(60_000);
        assert!((clock.now_ms() - to_ms(SystemTime::now()) - 60_000).abs() < 1_000);
        let manual = Clock::manual(5);
        manual.set_offset(60_000);
        assert_eq!(manual.now_ms(), 5);
    }

    #[test]
    fn the_system_clock_is_close_to_now() {
        let now = Clock::system().now_ms();
        assert!((now - to_ms(SystemTime::now())).abs() < 1_000);
    }
}
