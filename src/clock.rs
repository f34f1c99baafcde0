//! Time source. Production uses the system clock; the demo runs on a clock set to a
//! fixed instant that then advances with real time, so it behaves the same at any hour.
//! Tests may also move such a clock forward at once ([`Clock::advance`]) to make time
//! pass between two steps of the worker (a claim and its send, a retry's backoff).

use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

/// A shared time source: clones read (and advance) the same clock.
#[derive(Clone)]
pub struct Clock(Arc<Inner>);

enum Inner {
    System,
    Offset {
        start: DateTime<Utc>,
        origin: Instant,
        /// Added by [`Clock::advance`], in microseconds.
        skew_us: AtomicI64,
    },
}

impl Clock {
    pub fn system() -> Clock {
        Clock(Arc::new(Inner::System))
    }

    /// A clock that reads `start` now and advances with real time.
    pub fn starting_at(start: DateTime<Utc>) -> Clock {
        Clock(Arc::new(Inner::Offset {
            start,
            origin: Instant::now(),
            skew_us: AtomicI64::new(0),
        }))
    }

    pub fn now(&self) -> DateTime<Utc> {
        match &*self.0 {
            Inner::System => Utc::now(),
            Inner::Offset {
                start,
                origin,
                skew_us,
            } => {
                *start
                    + chrono::Duration::from_std(origin.elapsed()).unwrap_or_default()
                    + chrono::Duration::microseconds(skew_us.load(Ordering::Relaxed))
            }
        }
    }

    /// Moves this clock (and every clone of it) forward by `by` at once; it then goes
    /// on advancing with real time. For tests and fixed-start clocks only.
    ///
    /// # Panics
    ///
    /// On the system clock, which only real time moves.
    pub fn advance(&self, by: std::time::Duration) {
        match &*self.0 {
            Inner::System => panic!("Clock::advance: the system clock cannot be advanced"),
            Inner::Offset { skew_us, .. } => {
                let us = i64::try_from(by.as_micros()).unwrap_or(i64::MAX);
                skew_us.fetch_add(us, Ordering::Relaxed);
            }
        }
    }

    pub fn is_system(&self) -> bool {
        matches!(&*self.0, Inner::System)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn advance_moves_every_clone_forward_at_once() {
        let start = DateTime::parse_from_rfc3339("2026-11-18T20:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let clock = Clock::starting_at(start);
        let other = clock.clone();
        let before = clock.now();
        assert!(before >= start && before < start + chrono::Duration::seconds(5));
        other.advance(Duration::from_secs(7200));
        let after = clock.now();
        assert!(
            after >= before + chrono::Duration::hours(2),
            "{before} -> {after}"
        );
        assert!(after < start + chrono::Duration::hours(2) + chrono::Duration::seconds(5));
    }

    #[test]
    #[should_panic(expected = "system clock")]
    fn the_system_clock_cannot_be_advanced() {
        Clock::system().advance(Duration::from_secs(1));
    }
}
