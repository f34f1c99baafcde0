//! Retry settings and backoff policies as values (SPEC.md section 8, `retry.*`).
//!
//! Everything here is arithmetic on durations: no clock, no I/O. Randomness (jitter)
//! comes from the caller's `rng`, so tests can seed it.

use chrono::{DateTime, Utc};
use rand::Rng;
use std::time::Duration;

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// SPEC section 7: `Retry-After` is honoured but clamped to 1s..10m.
pub const RETRY_AFTER_MIN: Duration = SECOND;
/// SPEC section 7: `Retry-After` is honoured but clamped to 1s..10m.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(600);
/// SPEC section 8: repeated pauses for the same cause double their length, to 1h.
pub const PAUSE_DOUBLING_CAP: Duration = HOUR;

/// What a `voicemail_reached` outcome does (the campaign's `voicemail` setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VoicemailRetry {
    /// The job is done (SPEC default).
    #[default]
    Done,
    /// Requeue after this delay, within `max_attempts`.
    After(Duration),
}

/// Exponential backoff as a value: `base * factor^n`, capped, plus up to `jitter`
/// (a fraction of the delay) of random extra wait so that many jobs that failed
/// together do not come back together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub base: Duration,
    pub factor: u32,
    pub cap: Duration,
    /// Fraction of the delay added at random, `0.0..=1.0`.
    pub jitter: f64,
}

impl RetryPolicy {
    /// The delay before try `n` (0-based), without jitter: `min(base * factor^n, cap)`.
    /// Saturates instead of overflowing for any `n`.
    pub fn delay(&self, n: u32) -> Duration {
        let mut d = self.base;
        for _ in 0..n {
            if d >= self.cap {
                break;
            }
            d = d.saturating_mul(self.factor.max(1));
        }
        d.min(self.cap)
    }

    /// [`RetryPolicy::delay`] plus jitter.
    pub fn delay_with_jitter(&self, n: u32, rng: &mut impl Rng) -> Duration {
        add_jitter(self.delay(n), self.jitter, rng)
    }
}

/// Adds up to `fraction * d` of random extra wait.
pub fn add_jitter(d: Duration, fraction: f64, rng: &mut impl Rng) -> Duration {
    let fraction = if fraction.is_finite() {
        fraction.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let max = d.mul_f64(fraction);
    d.saturating_add(jitter_up_to(max, rng))
}

/// A uniformly random duration in `0..=max` (millisecond resolution).
pub fn jitter_up_to(max: Duration, rng: &mut impl Rng) -> Duration {
    let ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(rng.random_range(0..=ms))
}

/// `Retry-After` clamped to 1s..10m (SPEC section 7); jitter is added by the caller.
pub fn clamp_retry_after(d: Duration) -> Duration {
    d.clamp(RETRY_AFTER_MIN, RETRY_AFTER_MAX)
}

/// Length of an automatic pause or halt whose cause has already paused `repeats`
/// times in a row: `base` doubling per repeat, to 1h (SPEC section 8). A configured
/// base longer than 1h is kept as is.
pub fn doubled_pause(base: Duration, repeats: u32) -> Duration {
    RetryPolicy {
        base,
        factor: 2,
        cap: base.max(PAUSE_DOUBLING_CAP),
        jitter: 0.0,
    }
    .delay(repeats)
}

/// `now + d`, saturating at the far future instead of overflowing.
pub fn after(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// A campaign's retry settings: the `retry.*` keys of SPEC section 8 with their
/// defaults (a campaign's `[retry]` values override the configuration's), plus the
/// backoff policies the SPEC describes in words.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrySettings {
    /// `retry.busy`: requeue delay after a busy line (default 10m).
    pub busy: Duration,
    /// `retry.no_answer`: requeue delay after no answer (default 1h).
    pub no_answer: Duration,
    /// The campaign's `voicemail` setting (default done).
    pub voicemail: VoicemailRetry,
    /// `retry.no_active_number`: campaign pause when the account has no active
    /// number (default 5m).
    pub no_active_number: Duration,
    /// `retry.compliance_min`: a vendor window/day refusal never requeues sooner
    /// than this (default 1h).
    pub compliance_min: Duration,
    /// `retry.cap_min`: a vendor frequency-cap refusal never requeues sooner than
    /// this (default 24h).
    pub cap_min: Duration,
    /// `retry.vendor_refusals`: compliance refusals of one job before it is dropped
    /// `vendor_refused` (default 3).
    pub vendor_refusals: u32,
    /// `retry.account_halt`: account halt before the probe dial (default 15m).
    pub account_halt: Duration,
    /// `retry.provider_max`: same-key retries of one attempt before a requeue
    /// (default 5).
    pub provider_max: u32,
    /// `retry.provider_requeues`: provider requeues of one job before it is dropped
    /// `provider_failed` (default 10).
    pub provider_requeues: u32,
    /// `revdesk.key_ttl`: an idempotency key is re-sent only within this age
    /// (default 24h).
    pub key_ttl: Duration,
    /// Backoff between same-key retries of a provider error, timeout or connection
    /// error ("exponential backoff and jitter").
    pub provider_retry: RetryPolicy,
    /// Provider requeues: 5m doubling to 1h, same key.
    pub provider_requeue: RetryPolicy,
    /// The account's 429 backoff when no `Retry-After` came: doubling on each
    /// consecutive 429, reset by a success; jitter for the clamped `Retry-After` too.
    pub rate_limit: RetryPolicy,
    /// Every requeue gets up to this much random extra delay, so that jobs requeued to a
    /// shared time (a window opening, a pause end) do not fire in a burst.
    pub requeue_jitter: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            busy: 10 * MINUTE,
            no_answer: HOUR,
            voicemail: VoicemailRetry::Done,
            no_active_number: 5 * MINUTE,
            compliance_min: HOUR,
            cap_min: 24 * HOUR,
            vendor_refusals: 3,
            account_halt: 15 * MINUTE,
            provider_max: 5,
            provider_requeues: 10,
            key_ttl: 24 * HOUR,
            provider_retry: RetryPolicy {
                base: Duration::from_millis(500),
                factor: 2,
                cap: 10 * SECOND,
                jitter: 0.5,
            },
            provider_requeue: RetryPolicy {
                base: 5 * MINUTE,
                factor: 2,
                cap: HOUR,
                jitter: 0.1,
            },
            rate_limit: RetryPolicy {
                base: SECOND,
                factor: 2,
                cap: RETRY_AFTER_MAX,
                jitter: 0.2,
            },
            requeue_jitter: MINUTE,
        }
    }
}

impl RetrySettings {
    /// Delay before same-key retry number `retry_n` (0-based) of a provider failure.
    pub fn provider_backoff(&self, retry_n: u32, rng: &mut impl Rng) -> Duration {
        self.provider_retry.delay_with_jitter(retry_n, rng)
    }

    /// Delay of provider requeue number `requeue_n` (0-based): 5m doubling to 1h.
    pub fn provider_requeue_delay(&self, requeue_n: u32, rng: &mut impl Rng) -> Duration {
        self.provider_requeue.delay_with_jitter(requeue_n, rng)
    }

    /// How long to hold dials after a `rate_limited`/`no_number_available`: the
    /// clamped `Retry-After` plus jitter, or else the account's backoff after
    /// `consecutive_429s` earlier 429s.
    pub fn rate_limit_delay(
        &self,
        retry_after: Option<Duration>,
        consecutive_429s: u32,
        rng: &mut impl Rng,
    ) -> Duration {
        let base = match retry_after {
            Some(d) => clamp_retry_after(d),
            None => self.rate_limit.delay(consecutive_429s),
        };
        add_jitter(base, self.rate_limit.jitter, rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn defaults_are_the_spec_defaults() {
        let s = RetrySettings::default();
        assert_eq!(s.busy, Duration::from_secs(600));
        assert_eq!(s.no_answer, Duration::from_secs(3600));
        assert_eq!(s.voicemail, VoicemailRetry::Done);
        assert_eq!(s.no_active_number, Duration::from_secs(300));
        assert_eq!(s.compliance_min, Duration::from_secs(3600));
        assert_eq!(s.cap_min, Duration::from_secs(86_400));
        assert_eq!(s.vendor_refusals, 3);
        assert_eq!(s.account_halt, Duration::from_secs(900));
        assert_eq!(s.provider_max, 5);
        assert_eq!(s.provider_requeues, 10);
        assert_eq!(s.key_ttl, Duration::from_secs(86_400));
    }

    #[test]
    fn provider_requeue_starts_at_five_minutes_and_doubles_to_one_hour() {
        let p = RetrySettings::default().provider_requeue;
        let mins: Vec<u64> = (0..6).map(|n| p.delay(n).as_secs() / 60).collect();
        assert_eq!(mins, vec![5, 10, 20, 40, 60, 60]);
        assert_eq!(p.delay(u32::MAX), HOUR);
    }

    #[test]
    fn retry_after_is_clamped_to_one_second_through_ten_minutes() {
        assert_eq!(clamp_retry_after(Duration::ZERO), SECOND);
        assert_eq!(
            clamp_retry_after(Duration::from_secs(30)),
            Duration::from_secs(30)
        );
        assert_eq!(
            clamp_retry_after(Duration::from_secs(86_400)),
            RETRY_AFTER_MAX
        );
    }

    #[test]
    fn account_backoff_doubles_with_each_consecutive_429_when_no_retry_after_came() {
        let s = RetrySettings {
            rate_limit: RetryPolicy {
                jitter: 0.0,
                ..RetrySettings::default().rate_limit
            },
            ..RetrySettings::default()
        };
        let mut rng = StdRng::seed_from_u64(1);
        let secs: Vec<u64> = (0..4)
            .map(|n| s.rate_limit_delay(None, n, &mut rng).as_secs())
            .collect();
        assert_eq!(secs, vec![1, 2, 4, 8]);
        assert_eq!(s.rate_limit_delay(None, 40, &mut rng), RETRY_AFTER_MAX);
        assert_eq!(
            s.rate_limit_delay(Some(Duration::from_secs(7)), 40, &mut rng)
                .as_secs(),
            7
        );
    }

    #[test]
    fn repeated_pauses_for_one_cause_double_to_one_hour() {
        let base = Duration::from_secs(300);
        let mins: Vec<u64> = (0..6)
            .map(|n| doubled_pause(base, n).as_secs() / 60)
            .collect();
        assert_eq!(mins, vec![5, 10, 20, 40, 60, 60]);
        let long = Duration::from_secs(2 * 3600);
        assert_eq!(doubled_pause(long, 3), long);
    }

    proptest! {
        #[test]
        fn jittered_delays_stay_between_the_delay_and_the_delay_plus_its_jitter(
            n in 0u32..64, seed in any::<u64>(), jitter in 0.0f64..=1.0,
        ) {
            let p = RetryPolicy { jitter, ..RetrySettings::default().provider_retry };
            let mut rng = StdRng::seed_from_u64(seed);
            let d = p.delay_with_jitter(n, &mut rng);
            prop_assert!(d >= p.delay(n));
            prop_assert!(d <= p.delay(n).mul_f64(1.0 + jitter) + Duration::from_millis(1));
            prop_assert!(p.delay(n) <= p.cap);
        }

        #[test]
        fn a_clamped_retry_after_plus_jitter_is_at_least_one_second(
            secs in any::<u32>(), seed in any::<u64>(), consecutive in 0u32..100,
        ) {
            let s = RetrySettings::default();
            let mut rng = StdRng::seed_from_u64(seed);
            let d = s.rate_limit_delay(Some(Duration::from_secs(secs.into())), consecutive, &mut rng);
            prop_assert!(d >= RETRY_AFTER_MIN);
            prop_assert!(d <= RETRY_AFTER_MAX.mul_f64(1.0 + s.rate_limit.jitter) + Duration::from_millis(1));
        }
    }
}
