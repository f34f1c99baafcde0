//! The circuit breaker of SPEC.md section 8: "when most recent dials fail this way
//! (at least 10 of the last 20), halt the account for `retry.account_halt` instead:
//! an outage drops nothing".
//!
//! A sliding window over the last 20 dial results (ambiguous or not). The worker
//! records every dial answer, then passes `is_tripped()` to
//! `decision::decide_dial` as `DialContext::breaker_tripped`.

use std::collections::VecDeque;

/// Dial results remembered.
pub const WINDOW: usize = 20;
/// Ambiguous results within the window that trip the breaker.
pub const THRESHOLD: usize = 10;

#[derive(Debug, Clone, Default)]
pub struct CircuitBreaker {
    /// `true` = ambiguous (5xx, timeout, connection error); newest at the back.
    recent: VecDeque<bool>,
    ambiguous: usize,
}

impl CircuitBreaker {
    pub fn new() -> CircuitBreaker {
        CircuitBreaker {
            recent: VecDeque::with_capacity(WINDOW),
            ambiguous: 0,
        }
    }

    /// Records one dial result; the oldest falls out of the window.
    pub fn record(&mut self, ambiguous: bool) {
        if self.recent.len() == WINDOW && self.recent.pop_front() == Some(true) {
            self.ambiguous -= 1;
        }
        self.recent.push_back(ambiguous);
        if ambiguous {
            self.ambiguous += 1;
        }
    }

    /// At least 10 of the last 20 dials were ambiguous.
    pub fn is_tripped(&self) -> bool {
        self.ambiguous >= THRESHOLD
    }

    /// Ambiguous results in the window.
    pub fn ambiguous_count(&self) -> usize {
        self.ambiguous
    }

    /// Forgets the window: after a successful probe ends an outage halt, the old
    /// failures must not trip the breaker again at once.
    pub fn reset(&mut self) {
        self.recent.clear();
        self.ambiguous = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ten_ambiguous_results_among_the_last_twenty_trip_the_breaker() {
        let mut b = CircuitBreaker::new();
        for i in 0..20 {
            b.record(i % 2 == 0);
        }
        assert_eq!(b.ambiguous_count(), 10);
        assert!(b.is_tripped());
    }

    #[test]
    fn nine_ambiguous_results_do_not_trip_the_breaker() {
        let mut b = CircuitBreaker::new();
        for _ in 0..9 {
            b.record(true);
        }
        for _ in 0..11 {
            b.record(false);
        }
        assert!(!b.is_tripped());
    }

    #[test]
    fn old_failures_slide_out_of_the_window() {
        let mut b = CircuitBreaker::new();
        for _ in 0..10 {
            b.record(true);
        }
        assert!(b.is_tripped());
        for _ in 0..10 {
            b.record(false);
        }
        assert!(b.is_tripped(), "20 results, 10 of them ambiguous");
        b.record(false);
        assert!(
            !b.is_tripped(),
            "the 21st result pushes the oldest failure out"
        );
    }

    #[test]
    fn reset_forgets_the_window() {
        let mut b = CircuitBreaker::new();
        for _ in 0..20 {
            b.record(true);
        }
        b.reset();
        assert!(!b.is_tripped());
        assert_eq!(b.ambiguous_count(), 0);
    }

    proptest! {
        #[test]
        fn the_breaker_counts_exactly_the_ambiguous_results_of_the_last_twenty(
            results in proptest::collection::vec(any::<bool>(), 0..100),
        ) {
            let mut b = CircuitBreaker::new();
            for &r in &results {
                b.record(r);
            }
            let start = results.len().saturating_sub(WINDOW);
            let expected = results[start..].iter().filter(|&&r| r).count();
            prop_assert_eq!(b.ambiguous_count(), expected);
            prop_assert_eq!(b.is_tripped(), expected >= THRESHOLD);
        }
    }
}
