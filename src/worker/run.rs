//! `dialer run`: the claim loop, heartbeats and lease recovery, reconciliation,
//! gauges, and a clean stop on SIGTERM/SIGINT.

use super::app::{ACCOUNT, App, FACTS_LOOKBACK, Probe};
use crate::decision::PauseCounts;
use crate::metrics as m;
use crate::store::{Backend, ClaimedJob, NumberFacts};
use crate::worker::breaker::CircuitBreaker;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// How long a taken probe holds off other probes (the probe dial itself decides).
const PROBE_HOLD_MS: i64 = 60_000;
/// A probe that found no due job is given back for this long, so that the next due
/// job probes instead of waiting out [`PROBE_HOLD_MS`].
const PROBE_GIVE_BACK_MS: i64 = 5_000;

/// What the claim loop may do in one round, given the halts in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    /// Nothing halted: claim as usual (campaign probes included).
    Open,
    /// Halted, and no probe this worker may send is due: claim nothing.
    Closed,
    /// Send this worker's probe dial (`Probe::Worker`).
    WorkerProbe,
    /// Send the account's probe dial, if this worker wins it in the store
    /// (`Probe::Account`); `worker`: it probes this worker's halt too.
    AccountProbe { worker: bool },
}

/// The claim loop's gate (SPEC section 8: a halt ends with one probe dial).
/// `worker_probe_at`: this worker's halt and when it probes; `account_probe_at_ms`:
/// the account's halt and when it probes. A halt whose probe is not due claims
/// nothing. An account halt blocks a due worker probe (that dial would be made on a
/// halted account) until the account's probe is due; then that one dial probes both
/// (`Probe::Account { worker: true }`), so neither halt waits on the other for good.
/// A worker whose own probe is not due sends no account probe either.
pub(crate) fn gate(
    worker_probe_at: Option<DateTime<Utc>>,
    account_probe_at_ms: Option<i64>,
    now: DateTime<Utc>,
) -> Gate {
    let worker = match worker_probe_at {
        Some(at) if at > now => return Gate::Closed,
        Some(_) => true,
        None => false,
    };
    match account_probe_at_ms {
        Some(at) if at > now.timestamp_millis() => Gate::Closed,
        Some(_) => Gate::AccountProbe { worker },
        None if worker => Gate::WorkerProbe,
        None => Gate::Open,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "another worker ({0}) is live on this SQLite database; several workers need PostgreSQL"
    )]
    SqliteBusy(String),
}

impl App {
    pub(crate) fn breaker_lock(&self) -> MutexGuard<'_, CircuitBreaker> {
        self.breaker_mutex().lock().expect("poisoned")
    }

    /// The repeat counts a dial's decision doubles pauses and halts by. "Repeated
    /// pauses for the same cause double their length" (SPEC section 8) is read as
    /// pauses with no success between them, as any backoff resets on success: a
    /// pause or halt ends with one probe dial, and only that probe's failure
    /// repeats it. Any other dial either begins one (the base length) or, while
    /// one is in force, is part of it: the hundreds of dials in flight when an
    /// outage began are one halt, not hundreds of doublings to the cap. So a dial
    /// that probes nothing doubles nothing, and a probe dial gets the count of what
    /// it probes: the database's for account halts (`halt_count`) and campaign
    /// pauses (`auto_pause_count`), shared by every worker; this process's own for
    /// its worker halt.
    pub(crate) async fn pause_counts_for(
        &self,
        probe: Option<Probe>,
    ) -> anyhow::Result<PauseCounts> {
        let mut counts = PauseCounts::default();
        let Some(probe) = probe else {
            return Ok(counts);
        };
        if probe.probes_worker() {
            counts = self.pause_counts_mutex().lock().expect("poisoned").clone();
        }
        match probe {
            Probe::Account { .. } => {
                if let Some(h) = self.store.account_halt(ACCOUNT).await? {
                    counts.0.insert(h.reason, h.halt_count.max(0) as u32);
                }
            }
            Probe::Campaign { id, .. } => {
                if let Some(c) = self.store.campaign_by_id(id).await? {
                    if let Some(reason) = c.auto_pause_reason {
                        counts.0.insert(reason, c.auto_pause_count.max(0) as u32);
                    }
                }
            }
            Probe::Worker => {}
        }
        Ok(counts)
    }

    /// This worker halts for `reason`: the first halt of a cause counts 1, and a
    /// failed probe of it (`repeat`) one more.
    pub(crate) fn count_worker_halt(&self, reason: &str, repeat: bool) {
        let mut counts = self.pause_counts_mutex().lock().expect("poisoned");
        let previous = if repeat { counts.get(reason) } else { 0 };
        counts.0.clear();
        counts.0.insert(reason.to_owned(), previous + 1);
    }

    /// This worker's halt ended (its probe succeeded): the next one starts again
    /// from the base length.
    pub(crate) fn reset_worker_halt_count(&self) {
        self.pause_counts_mutex()
            .lock()
            .expect("poisoned")
            .0
            .clear();
    }

    pub(crate) async fn set_worker_halt(&self, halt: Option<(String, DateTime<Utc>)>) {
        let previous = std::mem::replace(
            &mut *self.worker_halt_mutex().lock().expect("poisoned"),
            halt.clone(),
        );
        if let Some((r, _)) = &previous {
            metrics::gauge!(m::DIALING_HALTED, "reason" => r.clone()).set(0.0);
        }
        if let Some((r, _)) = &halt {
            metrics::gauge!(m::DIALING_HALTED, "reason" => r.clone()).set(1.0);
        }
        let reason = halt.as_ref().map(|(r, _)| r.as_str());
        if let Err(e) = self.store.set_worker_halt(&self.worker_id, reason).await {
            tracing::warn!(error = %e, "could not record the worker halt");
        }
    }

    /// One due job of each auto-paused campaign whose probe is due, to probe with,
    /// at most `max` (the free in-flight slots: more would wait for slots that never
    /// come) and, with `worker` (the dial probes this worker's halt too), one. A
    /// campaign with no due job, or past those bounds, gets its probe back in 5 s,
    /// so that it probes soon instead of waiting out the hold.
    async fn campaign_probe_jobs(
        &self,
        now_ms: i64,
        lease_ms: i64,
        worker: bool,
        max: usize,
    ) -> anyhow::Result<Vec<(ClaimedJob, Option<Probe>)>> {
        let max = if worker { max.min(1) } else { max };
        let mut out = Vec::new();
        for cid in self
            .store
            .take_campaign_probes(now_ms, PROBE_HOLD_MS)
            .await?
        {
            if out.len() >= max {
                // One dial probes this worker's halt (one failed probe is one
                // repeat, not one per campaign), and no more probes than free
                // slots: the other campaigns' probes are due again in 5 s.
                let _ = self
                    .store
                    .defer_campaign_probe(cid, now_ms + PROBE_GIVE_BACK_MS, now_ms)
                    .await;
                continue;
            }
            tracing::info!(
                campaign_id = cid,
                worker,
                "campaign pause ended: sending one probe dial"
            );
            let jobs = self
                .store
                .claim(&self.worker_id, 1, now_ms, lease_ms, Some(cid))
                .await?;
            if jobs.is_empty() {
                // No due job to probe with: the probe is due again within 5 s
                // (not after its hold), and nothing else changes.
                let _ = self
                    .store
                    .defer_campaign_probe(cid, now_ms + PROBE_GIVE_BACK_MS, now_ms)
                    .await;
            }
            out.extend(
                jobs.into_iter()
                    .map(|j| (j, Some(Probe::Campaign { id: cid, worker }))),
            );
        }
        Ok(out)
    }

    /// Claims and processes jobs until cancelled (or, with `until_idle`, until no job
    /// is due and nothing is in flight or awaiting an outcome). Returns after
    /// in-flight jobs finished or were released.
    pub async fn claim_loop(self: &Arc<Self>, until_idle: bool) -> anyhow::Result<()> {
        let s = &self.settings.worker;
        let sem = Arc::new(Semaphore::new(s.max_in_flight as usize));
        // Claim again once half a batch's worth of in-flight slots is free.
        let min_room = (s.batch_size.min(s.max_in_flight) / 2).max(1);
        // One task per claimed batch; each owns its jobs' dial tasks.
        let mut batches: JoinSet<()> = JoinSet::new();
        let poll = s.poll_interval.get();
        let lease_ms = s.lease.get().as_millis() as i64;
        let mut idle_rounds = 0u32;
        let mut db_failures = 0u32;
        // A database error (failover, restart) must not stop the worker: log it,
        // back off, and claim again; leases protect the jobs meanwhile.
        macro_rules! db {
            ($e:expr) => {
                match $e {
                    Ok(v) => {
                        db_failures = 0;
                        v
                    }
                    Err(e) => {
                        db_failures += 1;
                        tracing::warn!(error = %e, failures = db_failures, "database unavailable; retrying");
                        self.nap(Duration::from_millis(200 * u64::from(db_failures.min(25)))).await;
                        continue;
                    }
                }
            };
        }
        loop {
            if self.cancel.is_cancelled() {
                break;
            }
            while batches.try_join_next().is_some() {}
            if (sem.available_permits() as u32) < min_room {
                // In flight at the cap: wait until a useful batch's worth is free,
                // before any probe is taken or job claimed (a probe taken and then
                // set aside would hold its pause or halt for PROBE_HOLD_MS, and its
                // job would stay leased to no task until the lease ran out).
                tokio::select! {
                    p = sem.clone().acquire_many_owned(min_room) => drop(p),
                    _ = self.cancel.cancelled() => {},
                }
                continue;
            }
            let now = self.now();
            let now_ms = now.timestamp_millis();
            let mut probe = None;
            let mut limit = s.batch_size;
            let worker_halt = self.worker_halt();
            let halt = db!(self.store.account_halt(ACCOUNT).await);
            let was_halted = self
                .account_halted
                .swap(halt.is_some(), std::sync::atomic::Ordering::Relaxed);
            if was_halted && halt.is_none() {
                // The account's halt ended, whichever worker's probe succeeded: this
                // worker's breaker still holds the failures from before it, and must
                // not trip (a new account-wide halt) at the first failure after it.
                self.breaker_lock().reset();
            }
            if let Some(h) = &halt {
                metrics::gauge!(m::DIALING_HALTED, "reason" => h.reason.clone()).set(1.0);
            }
            match gate(
                worker_halt.as_ref().map(|(_, at)| *at),
                halt.as_ref().map(|h| h.probe_at_ms),
                now,
            ) {
                Gate::Open => {}
                Gate::Closed => {
                    self.nap(poll).await;
                    continue;
                }
                Gate::AccountProbe { worker } => {
                    if !db!(self
                        .store
                        .take_account_probe(ACCOUNT, now_ms, PROBE_HOLD_MS)
                        .await)
                    {
                        // Another worker took it.
                        self.nap(poll).await;
                        continue;
                    }
                    // A worker halt keeps its (due) probe time: the account probe's
                    // hold keeps a second probe from starting meanwhile.
                    let reason = halt.as_ref().map(|h| h.reason.as_str()).unwrap_or("");
                    tracing::info!(reason, worker, "account halt: sending one probe dial");
                    probe = Some(Probe::Account { worker });
                    limit = 1;
                }
                Gate::WorkerProbe => {
                    // One probe dial decides whether the fault cleared.
                    if let Some((reason, _)) = worker_halt {
                        self.set_worker_halt(Some((
                            reason,
                            now + chrono::Duration::milliseconds(PROBE_HOLD_MS),
                        )))
                        .await;
                    }
                    probe = Some(Probe::Worker);
                    limit = 1;
                }
            }
            let mut claimed: Vec<(ClaimedJob, Option<Probe>)> = Vec::new();
            if probe.is_none() {
                let free = sem.available_permits();
                claimed = db!(self
                    .campaign_probe_jobs(now_ms, lease_ms, false, free)
                    .await);
            }
            // Only this loop takes permits: at least `min_room` are still free.
            let permits = sem.available_permits() as u32;
            let room = permits.saturating_sub(claimed.len() as u32).min(limit);
            if room > 0 {
                match self
                    .store
                    .claim(&self.worker_id, room, now_ms, lease_ms, None)
                    .await
                {
                    Ok(jobs) => {
                        db_failures = 0;
                        claimed.extend(jobs.into_iter().map(|j| (j, probe)));
                    }
                    // The campaign probes claimed above are this worker's now: they
                    // go on (set aside, they would wait out their leases).
                    Err(e) if !claimed.is_empty() => {
                        tracing::warn!(error = %e, "claim failed; dialing the probes already claimed");
                    }
                    Err(e) => {
                        db_failures += 1;
                        tracing::warn!(error = %e, failures = db_failures, "database unavailable; retrying");
                        self.nap(Duration::from_millis(200 * u64::from(db_failures.min(25))))
                            .await;
                        continue;
                    }
                }
            }
            if claimed.is_empty() && probe == Some(Probe::Worker) {
                // The worker's probe found no due job outside auto-paused campaigns:
                // their probe dials probe this worker's halt too. Otherwise a halted
                // worker whose campaigns are all auto-paused would wait on them for
                // good, and they on it (their probes are skipped while it is halted).
                let free = sem.available_permits();
                claimed = db!(self.campaign_probe_jobs(now_ms, lease_ms, true, free).await);
                if claimed.is_empty() {
                    // No due job at all: the next due job probes, within 5 s, not
                    // after the probe's one-minute hold.
                    if let Some((reason, _)) = self.worker_halt() {
                        self.set_worker_halt(Some((
                            reason,
                            now + chrono::Duration::milliseconds(PROBE_GIVE_BACK_MS),
                        )))
                        .await;
                    }
                }
            }
            if claimed.is_empty() && matches!(probe, Some(Probe::Account { .. })) {
                // The account probe found no due job: give it back likewise.
                let _ = self
                    .store
                    .defer_account_probe(ACCOUNT, now_ms + PROBE_GIVE_BACK_MS)
                    .await;
            }
            if claimed.is_empty() {
                if until_idle && batches.is_empty() && db!(self.quiescent().await) {
                    idle_rounds += 1;
                    if idle_rounds >= 2 {
                        break;
                    }
                } else {
                    idle_rounds = 0;
                }
                self.nap(poll).await;
                continue;
            }
            idle_rounds = 0;
            // A job this worker claims again while one of its own tasks still holds
            // it: its lease expired under that task (another worker recovered it)
            // and the claim made this worker its owner again, so the old task's
            // decision would pass the lease guard and act on what it last knew of
            // the attempt (e.g. a new key after a definitive answer, while the new
            // claim re-sends the possibly placed one: two calls). Given back at
            // once, the old task's writes fail their guard, and the job is claimed
            // again once that task has ended (SPEC section 7: no lease expiry may
            // cause a second call).
            let stale: Vec<i64> = {
                let mut held = self.held.lock().expect("poisoned");
                let stale: Vec<i64> = claimed
                    .iter()
                    .map(|(j, _)| j.id)
                    .filter(|id| held.contains(id))
                    .collect();
                claimed.retain(|(j, _)| !stale.contains(&j.id));
                held.extend(claimed.iter().map(|(j, _)| j.id));
                stale
            };
            for id in stale {
                tracing::warn!(
                    job_id = id,
                    "claimed a job this worker's earlier task still holds (its lease expired): giving it back"
                );
                if let Err(e) = self.store.release(id, &self.worker_id, now_ms).await {
                    tracing::warn!(job_id = id, error = %e, "release failed; the lease will expire");
                }
            }
            if claimed.is_empty() {
                self.nap(poll).await;
                continue;
            }
            let facts = match self.facts_for(&claimed).await {
                Ok(f) => f,
                Err(e) => {
                    // Claimed but facts unreadable: give the jobs back (or let the
                    // leases expire if the database is gone) and retry.
                    tracing::warn!(error = %e, "cannot read pre-flight facts; releasing the claimed jobs");
                    for (j, _) in &claimed {
                        let _ = self.store.release(j.id, &self.worker_id, now_ms).await;
                        self.held.lock().expect("poisoned").remove(&j.id);
                    }
                    self.nap(Duration::from_millis(500)).await;
                    continue;
                }
            };
            // One in-flight slot per claimed job (the claim took no more than are free).
            let permits = sem.clone().acquire_many_owned(claimed.len() as u32).await?;
            batches.spawn(self.clone().run_batch(claimed, facts, permits));
        }
        // Stop: finish in-flight jobs within the grace period, then release the rest.
        let grace = self.settings.worker.shutdown_grace.get();
        let drained = tokio::time::timeout(grace, async {
            while batches.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            batches.abort_all();
            while batches.join_next().await.is_some() {}
        }
        let held: Vec<i64> = self.held.lock().expect("poisoned").drain().collect();
        for id in held {
            self.store
                .release(id, &self.worker_id, self.now().timestamp_millis())
                .await?;
        }
        Ok(())
    }

    async fn nap(&self, d: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(d) => {},
            _ = self.cancel.cancelled() => {},
        }
    }

    /// Nothing due, nothing in flight, nothing awaiting an outcome (the demo's end).
    async fn quiescent(&self) -> anyhow::Result<bool> {
        let report = self
            .store
            .status(None, self.now().timestamp_millis())
            .await?;
        let busy: i64 = report
            .campaigns
            .iter()
            .map(|c| c.jobs["running"] + c.jobs["dialing"] + c.jobs["awaiting_outcome"])
            .sum();
        Ok(busy == 0)
    }

    async fn facts_for(
        &self,
        jobs: &[(ClaimedJob, Option<Probe>)],
    ) -> anyhow::Result<HashMap<(i64, String), NumberFacts>> {
        let mut by_campaign: HashMap<i64, Vec<String>> = HashMap::new();
        for (j, _) in jobs {
            by_campaign
                .entry(j.campaign_id)
                .or_default()
                .push(j.phone.clone());
        }
        let since = (self.now() - FACTS_LOOKBACK).timestamp_millis();
        let mut out = HashMap::new();
        for (cid, phones) in by_campaign {
            let name = self.campaign(cid).await?.row.name.clone();
            for f in self.store.facts(&phones, Some(&name), since).await? {
                out.insert((cid, f.phone.clone()), f);
            }
        }
        Ok(out)
    }

    /// Heartbeats, lease recovery, the live-worker share of the rate, the inbox
    /// sweeper and gauges, until cancelled. Nothing here waits on the API:
    /// reconciliation, which does, has its own task ([`App::reconcile_loop`]), so a
    /// slow or failing vendor can never hold the heartbeat back past the lease.
    pub async fn maintenance_loop(self: &Arc<Self>) {
        let lease = self.settings.worker.lease.get();
        let beat = lease / 3;
        let mut last_gauges = std::time::Instant::now() - Duration::from_secs(60);
        let mut last_beat: Option<std::time::Instant> = None;
        let mut last_set_aside = std::time::Instant::now();
        let tick = beat.min(Duration::from_secs(1));
        loop {
            if last_beat.is_none_or(|t| t.elapsed() >= beat) {
                last_beat = Some(std::time::Instant::now());
                self.beat_once(lease).await;
            }
            if let Err(e) = self.sweep_inbox().await {
                tracing::warn!(error = %e, "inbox sweep failed");
            }
            if last_set_aside.elapsed() >= Duration::from_secs(60) {
                last_set_aside = std::time::Instant::now();
                if let Err(e) = self.set_aside_unknown_events().await {
                    tracing::warn!(error = %e, "setting aside webhook events of unknown calls failed");
                }
            }
            if last_gauges.elapsed() >= Duration::from_secs(5) {
                last_gauges = std::time::Instant::now();
                self.update_gauges().await;
            }
            crate::metrics::upkeep();
            tokio::select! {
                _ = tokio::time::sleep(tick) => {},
                _ = self.cancel.cancelled() => break,
            }
        }
    }

    /// Reconciliation of calls with no outcome after `outcome_timeout` (SPEC
    /// section 9), every 10 s (or `outcome_timeout`, if shorter), until cancelled.
    pub async fn reconcile_loop(self: &Arc<Self>) {
        let every = Duration::from_secs(10).min(self.settings.outcome_timeout.get());
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {},
                _ = self.cancel.cancelled() => break,
            }
            if let Err(e) = self.reconcile_once().await {
                tracing::warn!(error = %e, "reconciliation failed");
            }
        }
    }

    /// The heartbeat, the live-worker share of the rate, and lease recovery.
    async fn beat_once(&self, lease: Duration) {
        let now_ms = self.now().timestamp_millis();
        let held: Vec<i64> = self
            .held
            .lock()
            .expect("poisoned")
            .iter()
            .copied()
            .collect();
        if let Err(e) = self
            .store
            .heartbeat(&self.worker_id, &held, lease.as_millis() as i64, now_ms)
            .await
        {
            // The database is failing us: no recovery of others' leases on this
            // beat either (a worker that cannot renew its own should not be the
            // one to judge others dead).
            tracing::warn!(error = %e, "heartbeat failed");
            return;
        }
        match self
            .store
            .live_workers(now_ms - lease.as_millis() as i64)
            .await
        {
            Ok(live) => self.pacer.set_share(live.len().max(1) as u32),
            Err(e) => tracing::warn!(error = %e, "cannot count live workers"),
        }
        match self.store.recover_expired_leases(now_ms).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::warn!(jobs = n, "recovered expired leases of a dead worker");
                metrics::counter!(m::LEASES_RECOVERED).increment(n);
            }
            Err(e) => tracing::warn!(error = %e, "lease recovery failed"),
        }
    }

    async fn update_gauges(&self) {
        if let Ok(report) = self.store.status(None, self.now().timestamp_millis()).await {
            for c in report.campaigns {
                for (state, n) in c.jobs {
                    metrics::gauge!(m::JOBS, "campaign" => c.name.clone(), "state" => state)
                        .set(n as f64);
                }
            }
            if report.halted.is_empty() {
                for r in [
                    "voice_usage_exhausted",
                    "no_active_subscription",
                    "provider_outage",
                ] {
                    metrics::gauge!(m::DIALING_HALTED, "reason" => r).set(0.0);
                }
            }
        }
    }

    /// Refuses a second worker process on SQLite (SPEC section 7).
    pub async fn check_single_sqlite_worker(&self) -> anyhow::Result<()> {
        if self.store.backend() == Backend::Sqlite {
            let lease = self.settings.worker.lease.get().as_millis() as i64;
            let live = self
                .store
                .live_workers(self.now().timestamp_millis() - lease)
                .await?;
            if let Some(other) = live.into_iter().find(|w| *w != self.worker_id) {
                return Err(RunError::SqliteBusy(other).into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::app::{Stops, refused};
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 18, 20, 0, 0).unwrap()
    }

    fn secs(s: i64) -> DateTime<Utc> {
        now() + chrono::Duration::seconds(s)
    }

    fn ms(s: i64) -> Option<i64> {
        Some(secs(s).timestamp_millis())
    }

    #[test]
    fn with_nothing_halted_the_claim_loop_claims_as_usual() {
        assert_eq!(gate(None, None, now()), Gate::Open);
    }

    #[test]
    fn an_account_halt_sends_its_probe_when_due_and_nothing_before() {
        assert_eq!(gate(None, ms(1), now()), Gate::Closed);
        assert_eq!(
            gate(None, ms(0), now()),
            Gate::AccountProbe { worker: false }
        );
        assert_eq!(
            gate(None, ms(-5), now()),
            Gate::AccountProbe { worker: false }
        );
    }

    #[test]
    fn a_worker_halt_sends_its_probe_when_due_and_nothing_before() {
        assert_eq!(gate(Some(secs(1)), None, now()), Gate::Closed);
        assert_eq!(gate(Some(secs(0)), None, now()), Gate::WorkerProbe);
    }

    #[test]
    fn an_account_halt_blocks_a_due_worker_probe_until_the_account_probe_is_due() {
        // The worker's probe is due, the account's is not: no dial at all.
        assert_eq!(gate(Some(secs(-10)), ms(30), now()), Gate::Closed);
        // Both due: one probe tests both, so neither waits on the other for good.
        assert_eq!(
            gate(Some(secs(-10)), ms(-1), now()),
            Gate::AccountProbe { worker: true }
        );
    }

    #[test]
    fn a_worker_halt_whose_probe_is_not_due_sends_no_account_probe() {
        // A worker with a credential fault does not spend the account's probe.
        assert_eq!(gate(Some(secs(10)), ms(-1), now()), Gate::Closed);
    }

    #[test]
    fn a_job_refused_by_a_pause_or_halt_unless_it_is_that_conditions_probe() {
        let none = Stops::default();
        let op = Stops {
            operator_paused: true,
            ..none
        };
        let auto = Stops {
            auto_paused: true,
            ..none
        };
        let account = Stops {
            account_halted: true,
            ..none
        };
        let worker = Stops {
            worker_halted: true,
            ..none
        };
        let both = Stops {
            account_halted: true,
            worker_halted: true,
            ..none
        };
        let campaign = Some(Probe::Campaign {
            id: 7,
            worker: false,
        });
        let acct = Some(Probe::Account { worker: false });
        let acct_worker = Some(Probe::Account { worker: true });
        let wprobe = Some(Probe::Worker);
        for p in [None, campaign, acct, acct_worker, wprobe] {
            assert!(!refused(p, 7, none), "{p:?}: nothing in force");
            assert!(
                refused(p, 7, op),
                "{p:?}: an operator's pause is never probed"
            );
        }
        // Each probe passes its own condition and no other.
        assert!(refused(None, 7, auto));
        assert!(!refused(campaign, 7, auto));
        assert!(
            refused(
                Some(Probe::Campaign {
                    id: 8,
                    worker: false
                }),
                7,
                auto
            ),
            "another campaign's probe"
        );
        assert!(refused(acct, 7, auto));
        assert!(refused(wprobe, 7, auto));
        assert!(refused(None, 7, account));
        assert!(refused(campaign, 7, account));
        assert!(!refused(acct, 7, account));
        assert!(!refused(acct_worker, 7, account));
        assert!(
            refused(wprobe, 7, account),
            "a worker probe while the account is halted"
        );
        assert!(refused(None, 7, worker));
        assert!(refused(campaign, 7, worker));
        assert!(
            refused(acct, 7, worker),
            "a worker halt that began meanwhile"
        );
        assert!(!refused(acct_worker, 7, worker));
        assert!(!refused(wprobe, 7, worker));
        assert!(!refused(acct_worker, 7, both));
        assert!(refused(wprobe, 7, both));
        assert!(refused(acct, 7, both));
        // A campaign probe that also probes the worker's halt passes both of them,
        // and nothing else.
        let camp_worker = Some(Probe::Campaign {
            id: 7,
            worker: true,
        });
        let auto_worker = Stops {
            auto_paused: true,
            worker_halted: true,
            ..none
        };
        assert!(!refused(camp_worker, 7, auto_worker));
        assert!(refused(campaign, 7, auto_worker));
        assert!(refused(wprobe, 7, auto_worker));
        assert!(
            refused(camp_worker, 7, both),
            "not while the account is halted"
        );
        assert!(
            refused(camp_worker, 8, auto_worker),
            "another campaign's pause"
        );
    }
}
