//! Pacing (SPEC.md section 7): a `governor` limiter for the account rate with burst,
//! optional per-campaign limiters, the account rate shared among live workers, and
//! the backoff that `rate_limited` / `no_number_available` ask for.
//!
//! The rate arithmetic is the pure [`RateState`]; [`Pacer`] holds the limiters and
//! rebuilds them when the effective rate changes (a governor quota is fixed per
//! limiter). governor's limits are per process: the share of the account rate that
//! this process may use comes from [`Pacer::set_share`].
//!
//! Waiting uses tokio timers (not governor's futures-timer), so it is cancel-safe and
//! follows tokio's clock. [`Pacer::check`] is the non-blocking form, generic over the
//! governor clock so tests drive it with `FakeRelativeClock`.

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

type Limiter<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// An invalid pacing setting, named.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PacingError {
    #[error("rate.per_second must be a positive number, got {0}")]
    Rate(f64),
    #[error("rate.burst must be at least 1")]
    Burst,
    #[error("the rate of campaign {campaign} must be a positive number, got {rate}")]
    CampaignRate { campaign: String, rate: f64 },
}

/// Pacing settings (`rate.per_second`, `rate.burst`) and how the rate recovers.
#[derive(Debug, Clone, PartialEq)]
pub struct PacerConfig {
    /// The account's rate, for all workers together (`rate.per_second`).
    pub per_second: f64,
    /// The account's burst (`rate.burst`).
    pub burst: u32,
    /// The lowest rate a backoff goes down to (0.5/s), unless the share is lower.
    pub floor_per_second: f64,
    /// Successful dials per recovery step.
    pub recovery_window: u32,
    /// Each recovery step adds this fraction of the share back (additive increase).
    pub recovery_step: f64,
}

impl Default for PacerConfig {
    fn default() -> Self {
        PacerConfig {
            per_second: 10.0,
            burst: 10,
            floor_per_second: 0.5,
            recovery_window: 20,
            recovery_step: 0.1,
        }
    }
}

fn valid_rate(r: f64) -> bool {
    r.is_finite() && r > 0.0
}

impl PacerConfig {
    pub fn validate(&self) -> Result<(), PacingError> {
        if !valid_rate(self.per_second) {
            return Err(PacingError::Rate(self.per_second));
        }
        if self.burst == 0 {
            return Err(PacingError::Burst);
        }
        Ok(())
    }
}

/// The rate arithmetic, pure: this worker's share of the account rate, lowered by
/// half on each backoff (floor 0.5/s), raised by `recovery_step * share` after every
/// `recovery_window` successes, never above the share.
#[derive(Debug, Clone, PartialEq)]
pub struct RateState {
    config: PacerConfig,
    live_workers: u32,
    effective: f64,
    successes: u32,
}

impl RateState {
    pub fn new(config: PacerConfig) -> Result<RateState, PacingError> {
        config.validate()?;
        let effective = config.per_second;
        Ok(RateState {
            config,
            live_workers: 1,
            effective,
            successes: 0,
        })
    }

    /// This worker's share: `rate / live_workers`.
    pub fn share(&self) -> f64 {
        self.config.per_second / f64::from(self.live_workers.max(1))
    }

    /// The rate this worker uses now (share, or lower after a backoff).
    pub fn effective(&self) -> f64 {
        self.effective
    }

    /// The burst that goes with the effective rate: the configured burst split among
    /// workers and scaled down with the rate, at least 1.
    pub fn effective_burst(&self) -> u32 {
        let per_worker = f64::from(self.config.burst) / f64::from(self.live_workers.max(1));
        let scaled = per_worker * (self.effective / self.share()).min(1.0);
        // Bounded by the configured u32 burst, so the cast cannot overflow.
        (scaled.floor() as u32).max(1)
    }

    fn floor(&self) -> f64 {
        self.config.floor_per_second.min(self.share())
    }

    /// A new count of live workers. A worker running at its full share follows the
    /// new share; one that is recovering from a backoff keeps its lower rate (within
    /// the new share). Returns true when the effective rate changed.
    pub fn set_share(&mut self, live_workers: u32) -> bool {
        let at_full = self.effective >= self.share();
        self.live_workers = live_workers.max(1);
        let before = self.effective;
        self.effective = if at_full {
            self.share()
        } else {
            self.effective.clamp(self.floor(), self.share())
        };
        before != self.effective
    }

    /// A `rate_limited`/`no_number_available`: halve the rate (floor 0.5/s) and start
    /// recovering from there.
    pub fn on_backoff(&mut self) -> bool {
        let before = self.effective;
        self.effective = (self.effective / 2.0).max(self.floor());
        self.successes = 0;
        before != self.effective
    }

    /// A dial that was not rate limited. After every `recovery_window` of them the
    /// rate gains `recovery_step * share`, up to the share. Returns true when the
    /// effective rate changed.
    pub fn on_success(&mut self) -> bool {
        if self.effective >= self.share() {
            self.successes = 0;
            return false;
        }
        self.successes += 1;
        if self.successes < self.config.recovery_window.max(1) {
            return false;
        }
        self.successes = 0;
        self.effective =
            (self.effective + self.config.recovery_step * self.share()).min(self.share());
        true
    }
}

/// A governor quota of `per_second` (may be fractional) with `burst`.
pub fn quota(per_second: f64, burst: u32) -> Result<Quota, PacingError> {
    if !valid_rate(per_second) {
        return Err(PacingError::Rate(per_second));
    }
    let burst = NonZeroU32::new(burst).ok_or(PacingError::Burst)?;
    let period = Duration::from_secs_f64(1.0 / per_second).max(Duration::from_nanos(1));
    let q = Quota::with_period(period).ok_or(PacingError::Rate(per_second))?;
    Ok(q.allow_burst(burst))
}

struct Inner<C: Clock> {
    rate: RateState,
    account: Arc<Limiter<C>>,
    /// Campaign name -> (its configured rate for all workers, its limiter).
    campaigns: HashMap<String, (f64, Arc<Limiter<C>>)>,
    /// No dial before this instant (a `Retry-After`).
    paused_until: Option<C::Instant>,
}

/// The account limiter, per-campaign limiters and the 429 backoff of one worker.
pub struct Pacer<C: Clock = DefaultClock> {
    clock: C,
    inner: Mutex<Inner<C>>,
}

impl Pacer<DefaultClock> {
    pub fn new(config: PacerConfig) -> Result<Pacer<DefaultClock>, PacingError> {
        Pacer::with_clock(config, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Pacer<C> {
    pub fn with_clock(config: PacerConfig, clock: C) -> Result<Pacer<C>, PacingError> {
        let rate = RateState::new(config)?;
        let account = Arc::new(Self::limiter(
            &clock,
            rate.effective(),
            rate.effective_burst(),
        )?);
        Ok(Pacer {
            clock,
            inner: Mutex::new(Inner {
                rate,
                account,
                campaigns: HashMap::new(),
                paused_until: None,
            }),
        })
    }

    fn limiter(clock: &C, per_second: f64, burst: u32) -> Result<Limiter<C>, PacingError> {
        Ok(RateLimiter::direct_with_clock(
            quota(per_second, burst)?,
            clock.clone(),
        ))
    }

    fn lock(&self) -> MutexGuard<'_, Inner<C>> {
        // A panic while holding this lock leaves plain numbers behind: still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn rebuild_account(&self, inner: &mut Inner<C>) {
        if let Ok(l) = Self::limiter(
            &self.clock,
            inner.rate.effective(),
            inner.rate.effective_burst(),
        ) {
            inner.account = Arc::new(l);
        }
    }

    fn rebuild_campaigns(&self, inner: &mut Inner<C>) {
        let workers = f64::from(inner.rate.live_workers.max(1));
        for (rate, limiter) in inner.campaigns.values_mut() {
            let share = *rate / workers;
            // The burst of a campaign limiter is one second's worth of its share.
            let burst = (share.ceil() as u32).max(1);
            if let Ok(l) = Self::limiter(&self.clock, share, burst) {
                *limiter = Arc::new(l);
            }
        }
    }

    /// Sets (or with `None` removes) a campaign's own rate, for all workers together.
    pub fn set_campaign_rate(
        &self,
        campaign: &str,
        per_second: Option<f64>,
    ) -> Result<(), PacingError> {
        let mut inner = self.lock();
        match per_second {
            None => {
                inner.campaigns.remove(campaign);
            }
            Some(rate) if !valid_rate(rate) => {
                return Err(PacingError::CampaignRate {
                    campaign: campaign.to_owned(),
                    rate,
                });
            }
            Some(rate) => {
                let share = rate / f64::from(inner.rate.live_workers.max(1));
                let burst = (share.ceil() as u32).max(1);
                let limiter = Arc::new(Self::limiter(&self.clock, share, burst)?);
                inner.campaigns.insert(campaign.to_owned(), (rate, limiter));
            }
        }
        Ok(())
    }

    /// `live_workers` workers share the account rate: this one takes
    /// `rate / live_workers` (SPEC section 7).
    pub fn set_share(&self, live_workers: u32) {
        let mut inner = self.lock();
        let changed_workers = inner.rate.live_workers != live_workers.max(1);
        if inner.rate.set_share(live_workers) || changed_workers {
            self.rebuild_account(&mut inner);
        }
        if changed_workers {
            self.rebuild_campaigns(&mut inner);
        }
    }

    /// A `rate_limited` / `no_number_available`: no dial for `hold` (the clamped,
    /// jittered `Retry-After` or the account backoff, from `Decision::lower_rate`),
    /// and a lower rate afterwards.
    ///
    /// A 429 answered while the pacer already holds for one is the same event (the
    /// dials that were in flight when the vendor began refusing): it may lengthen
    /// the hold, but the rate is lowered once per event, not once per dial in
    /// flight (SPEC section 7: "lower its rate, recovering gradually").
    pub fn backoff(&self, hold: Duration) {
        let mut inner = self.lock();
        let now = self.clock.now();
        let until = now + Nanos::from(hold);
        let holding = inner.paused_until.is_some_and(|p| p > now);
        inner.paused_until = Some(match inner.paused_until {
            Some(p) if p > until => p,
            _ => until,
        });
        if !holding && inner.rate.on_backoff() {
            self.rebuild_account(&mut inner);
        }
    }

    /// A dial that was not rate limited: the rate recovers gradually.
    pub fn on_success(&self) {
        let mut inner = self.lock();
        if inner.rate.on_success() {
            self.rebuild_account(&mut inner);
        }
    }

    /// The current effective rate of this worker (dials per second).
    pub fn effective_rate(&self) -> f64 {
        self.lock().rate.effective()
    }

    /// Starts one dial's way through the limiters; see [`Acquire::try_now`].
    pub fn acquire<'a>(&'a self, campaign: Option<&'a str>) -> Acquire<'a, C> {
        Acquire {
            pacer: self,
            campaign,
            campaign_slot: false,
        }
    }

    /// One-shot form of [`Acquire::try_now`]: takes one dial slot now if the backoff,
    /// the campaign's limiter and the account's limiter all allow it; otherwise how
    /// long to wait. A campaign slot taken while the account refuses is spent: callers
    /// that retry should hold an [`Acquire`] instead.
    pub fn check(&self, campaign: Option<&str>) -> Result<(), Duration> {
        self.acquire(campaign).try_now()
    }

    /// Waits until a dial may go (backoff, campaign rate, account rate) and returns
    /// the time waited (zero when it could go at once), for
    /// `dialer_rate_limit_wait_seconds`. Sleeps on tokio time; cancel-safe (a
    /// cancelled wait at most spends one campaign slot).
    pub async fn until_ready(&self, campaign: Option<&str>) -> Duration {
        let start = tokio::time::Instant::now();
        let mut acquire = self.acquire(campaign);
        let mut waited = false;
        while let Err(wait) = acquire.try_now() {
            waited = true;
            // governor can report a zero wait at a boundary: never spin.
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
        if waited {
            start.elapsed()
        } else {
            Duration::ZERO
        }
    }
}

/// One dial's way through the pacer. The campaign's slot, once taken, is kept while
/// the account limiter or a backoff still holds the dial, so a slow account does not
/// burn a campaign's budget.
pub struct Acquire<'a, C: Clock + Clone> {
    pacer: &'a Pacer<C>,
    campaign: Option<&'a str>,
    campaign_slot: bool,
}

impl<C: Clock + Clone> Acquire<'_, C> {
    /// `Ok` when the dial may go now (its slots are taken); otherwise how long to wait
    /// before trying again.
    pub fn try_now(&mut self) -> Result<(), Duration> {
        let (account, campaign_limiter, paused_until) = {
            let inner = self.pacer.lock();
            let c = self
                .campaign
                .and_then(|c| inner.campaigns.get(c))
                .map(|(_, l)| Arc::clone(l));
            (Arc::clone(&inner.account), c, inner.paused_until)
        };
        let now = self.pacer.clock.now();
        if let Some(until) = paused_until {
            if until > now {
                return Err(Duration::from(until.duration_since(now)));
            }
        }
        if !self.campaign_slot {
            if let Some(l) = campaign_limiter {
                l.check().map_err(|nu| nu.wait_time_from(now))?;
            }
            self.campaign_slot = true;
        }
        account.check().map_err(|nu| nu.wait_time_from(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn config(per_second: f64, burst: u32) -> PacerConfig {
        PacerConfig {
            per_second,
            burst,
            ..PacerConfig::default()
        }
    }

    /// Dials the pacer allows in `secs` seconds of fake time, checking every 10ms.
    fn allowed_in(
        pacer: &Pacer<FakeRelativeClock>,
        clock: &FakeRelativeClock,
        secs: u64,
        campaign: Option<&str>,
    ) -> u32 {
        let mut n = 0;
        for _ in 0..secs * 100 {
            while pacer.check(campaign).is_ok() {
                n += 1;
            }
            clock.advance(Duration::from_millis(10));
        }
        n
    }

    #[test]
    fn each_live_worker_takes_its_share_of_the_account_rate() {
        let mut r = RateState::new(config(12.0, 12)).unwrap();
        assert_eq!(r.effective(), 12.0);
        r.set_share(4);
        assert_eq!(r.share(), 3.0);
        assert_eq!(r.effective(), 3.0);
        assert_eq!(r.effective_burst(), 3);
        r.set_share(0);
        assert_eq!(
            r.effective(),
            12.0,
            "zero live workers is read as this one alone"
        );
    }

    #[test]
    fn a_backoff_halves_the_rate_down_to_half_a_dial_per_second() {
        let mut r = RateState::new(config(4.0, 4)).unwrap();
        let rates: Vec<f64> = (0..5)
            .map(|_| {
                r.on_backoff();
                r.effective()
            })
            .collect();
        assert_eq!(rates, vec![2.0, 1.0, 0.5, 0.5, 0.5]);
    }

    #[test]
    fn the_rate_recovers_additively_per_success_window_up_to_the_share() {
        let mut r = RateState::new(PacerConfig {
            recovery_window: 2,
            recovery_step: 0.25,
            ..config(4.0, 4)
        })
        .unwrap();
        r.on_backoff();
        r.on_backoff();
        assert_eq!(r.effective(), 1.0);
        let mut rates = vec![];
        for _ in 0..10 {
            r.on_success();
            rates.push(r.effective());
        }
        assert_eq!(
            rates,
            vec![1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0, 4.0, 4.0, 4.0]
        );
    }

    #[test]
    fn a_recovering_worker_keeps_its_lower_rate_when_the_share_changes() {
        let mut r = RateState::new(config(8.0, 8)).unwrap();
        r.on_backoff();
        assert_eq!(r.effective(), 4.0);
        r.set_share(4);
        assert_eq!(r.effective(), 2.0, "clamped to the smaller share");
        r.on_backoff();
        assert_eq!(r.effective(), 1.0);
        r.set_share(2);
        assert_eq!(
            r.effective(),
            1.0,
            "still recovering: not raised to the new share"
        );
    }

    #[test]
    fn invalid_rates_are_refused_with_the_key_named() {
        assert_eq!(
            RateState::new(config(0.0, 1)).unwrap_err(),
            PacingError::Rate(0.0)
        );
        assert_eq!(
            RateState::new(config(f64::NAN, 1))
                .map(|_| ())
                .unwrap_err()
                .to_string(),
            "rate.per_second must be a positive number, got NaN"
        );
        assert_eq!(
            RateState::new(config(1.0, 0)).unwrap_err(),
            PacingError::Burst
        );
        let pacer = Pacer::new(config(1.0, 1)).unwrap();
        assert!(pacer.set_campaign_rate("c", Some(-1.0)).is_err());
    }

    #[test]
    fn the_account_limiter_lets_the_burst_through_then_the_rate() {
        let clock = FakeRelativeClock::default();
        let pacer = Pacer::with_clock(config(10.0, 5), clock.clone()).unwrap();
        // 5 at once, then 10/s for the 10 seconds (the first 10ms tick included).
        let n = allowed_in(&pacer, &clock, 10, None);
        assert!((104..=106).contains(&n), "{n} dials in 10s");
    }

    #[test]
    fn a_worker_among_four_dials_a_quarter_of_the_account_rate() {
        let clock = FakeRelativeClock::default();
        let pacer = Pacer::with_clock(config(20.0, 4), clock.clone()).unwrap();
        pacer.set_share(4);
        let n = allowed_in(&pacer, &clock, 10, None);
        assert!(
            (50..=52).contains(&n),
            "{n} dials in 10s at 5/s with burst 1"
        );
    }

    #[test]
    fn a_campaign_limiter_holds_its_campaign_below_the_account_rate() {
        let clock = FakeRelativeClock::default();
        let pacer = Pacer::with_clock(config(100.0, 100), clock.clone()).unwrap();
        pacer.set_campaign_rate("slow", Some(2.0)).unwrap();
        let slow = allowed_in(&pacer, &clock, 10, Some("slow"));
        assert!((20..=22).contains(&slow), "{slow} dials in 10s at 2/s");
        assert!(
            pacer.check(Some("other")).is_ok(),
            "other campaigns are not held by it"
        );
    }

    #[test]
    fn a_dial_held_by_the_account_keeps_its_campaign_slot() {
        let clock = FakeRelativeClock::default();
        // The account allows one dial every 0.5s; the campaign one per second.
        let pacer = Pacer::with_clock(config(2.0, 1), clock.clone()).unwrap();
        pacer.set_campaign_rate("c", Some(1.0)).unwrap();
        assert!(
            pacer.check(Some("other")).is_ok(),
            "another campaign takes the account slot"
        );
        let mut dial = pacer.acquire(Some("c"));
        let mut elapsed = Duration::ZERO;
        while dial.try_now().is_err() {
            clock.advance(Duration::from_millis(10));
            elapsed += Duration::from_millis(10);
        }
        assert_eq!(
            elapsed,
            Duration::from_millis(500),
            "goes when the account frees, not a campaign second later"
        );
    }

    #[test]
    fn a_backoff_holds_every_dial_until_it_ends_then_dials_at_the_lower_rate() {
        let clock = FakeRelativeClock::default();
        let pacer = Pacer::with_clock(config(8.0, 8), clock.clone()).unwrap();
        pacer.backoff(Duration::from_secs(30));
        let wait = pacer.check(None).unwrap_err();
        assert_eq!(wait, Duration::from_secs(30));
        assert!(pacer.check(Some("any")).is_err());
        clock.advance(Duration::from_secs(30));
        assert_eq!(pacer.effective_rate(), 4.0);
        let n = allowed_in(&pacer, &clock, 10, None);
        assert!((40..=45).contains(&n), "{n} dials in 10s at 4/s");
    }

    #[test]
    fn the_429s_of_the_dials_in_flight_lower_the_rate_once_and_a_later_one_again() {
        let clock = FakeRelativeClock::default();
        let pacer = Pacer::with_clock(config(8.0, 8), clock.clone()).unwrap();
        for _ in 0..20 {
            pacer.backoff(Duration::from_secs(5));
        }
        assert_eq!(pacer.effective_rate(), 4.0, "one event, halved once");
        clock.advance(Duration::from_secs(5));
        pacer.backoff(Duration::from_secs(5));
        assert_eq!(
            pacer.effective_rate(),
            2.0,
            "a 429 after the hold is a new event"
        );
    }

    #[test]
    fn a_shorter_backoff_does_not_cut_a_longer_one_short() {
        let clock = FakeRelativeClock::default();
        let pacer = Pacer::with_clock(config(8.0, 8), clock.clone()).unwrap();
        pacer.backoff(Duration::from_secs(60));
        pacer.backoff(Duration::from_secs(5));
        assert_eq!(pacer.check(None).unwrap_err(), Duration::from_secs(60));
    }

    #[tokio::test]
    async fn until_ready_returns_at_once_when_free_and_waits_out_a_backoff() {
        let pacer = Pacer::new(config(1000.0, 10)).unwrap();
        assert_eq!(pacer.until_ready(None).await, Duration::ZERO);
        pacer.backoff(Duration::from_millis(20));
        let waited = pacer.until_ready(None).await;
        assert!(waited > Duration::ZERO, "a held dial waits");
        assert!(
            pacer.check(None).is_ok(),
            "the hold is over once until_ready returns"
        );
    }
}
