//! The dial of one attempt: pacing, then right before every request the key's age
//! (`revdesk.key_ttl`) and the whole pre-flight again on the claim's facts, the
//! request, and the decision on its answer (retries included).

use super::app::{ACCOUNT, App, CampaignCtx, Probe, jitter_ms};
use crate::decision::{self, Action, Counter, DialContext};
use crate::metrics as m;
use crate::revdesk::wire::DialResult;
use crate::store::{AttemptRow, AttemptUpdate, ClaimedJob, CounterChange, JobUpdate, Placement};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Instant;

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

impl App {
    /// The decision table's view of a job and its current attempt (SPEC sections 7
    /// and 8), with no next allowed time and the breaker not tripped.
    fn dial_context<'a>(
        &self,
        job: &ClaimedJob,
        attempt: &AttemptRow,
        campaign: &'a CampaignCtx,
        pauses: &'a decision::PauseCounts,
        now: DateTime<Utc>,
    ) -> DialContext<'a> {
        DialContext {
            settings: &campaign.settings,
            prior_attempts: prior_attempts(job, attempt),
            max_attempts: campaign.row.max_attempts.max(1) as u32,
            possibly_placed: attempt.placement == Placement::PossiblyPlaced,
            attempt_started_at: attempt
                .first_sent_at_ms
                .and_then(DateTime::from_timestamp_millis)
                .unwrap_or(now),
            provider_retries: job.provider_retries.max(0) as u32,
            provider_requeues: job.provider_requeues.max(0) as u32,
            vendor_refusals: job.vendor_refusals.max(0) as u32,
            next_allowed: None,
            consecutive_429s: self.consecutive_429s(),
            breaker_tripped: false,
            pauses,
        }
    }

    /// The job's key is older than `revdesk.key_ttl`: the decision that settles its
    /// possibly placed attempt (never re-sent: the vendor may have forgotten the key).
    /// Checked at the claim and again immediately before every re-send of the key
    /// (the dispatch after the pacer's wait, each provider retry after its backoff):
    /// the key ages while the job waits (SPEC section 7). `None`: the key may go.
    pub(crate) fn settle_expired_key(
        &self,
        job: &ClaimedJob,
        campaign: &CampaignCtx,
        now: DateTime<Utc>,
    ) -> Option<JobUpdate> {
        let attempt = job.current_attempt.as_ref()?;
        if attempt.placement != Placement::PossiblyPlaced {
            return None;
        }
        // Settling never pauses: no pause counts needed (an empty map allocates nothing).
        let pauses = decision::PauseCounts::default();
        let ctx = self.dial_context(job, attempt, campaign, &pauses, now);
        let d = decision::settle_expired_key(&ctx, now, &mut rand::rng())?;
        tracing::warn!(
            job_id = job.id,
            "idempotency key older than revdesk.key_ttl: settling the attempt as possibly placed"
        );
        let mut u = JobUpdate {
            status: "exhausted",
            reason: Some("key_expired".into()),
            reason_source: Some("local"),
            clear_current_attempt: true,
            ..Default::default()
        };
        if let Action::Requeue { at, .. } = d.action {
            u.status = "queued";
            u.due_at_ms = Some(ms(at));
        }
        Some(u)
    }

    /// Dials one dispatched job to a decision. Never leaves the job held: every path
    /// ends in a decision or a release.
    ///
    /// The job's state stays in its box (`r`): a dial task's future holds a pointer
    /// to it instead of copies at every level, which is what a thousand dials in
    /// flight cost in memory (docs/benchmarks.md, Load).
    pub(crate) async fn dial_sent(self: &Arc<Self>, mut r: Box<super::app::Ready>) {
        let id = r.job.id;
        if let Err(e) = self.dial_loop(&mut r).await {
            tracing::error!(job_id = id, error = %e, "job processing failed; releasing the job");
            if let Err(e) = self
                .store
                .release(id, &self.worker_id, ms(self.now()))
                .await
            {
                tracing::error!(job_id = id, error = %e, "release failed; the lease will expire");
            }
        }
        self.held.lock().expect("poisoned").remove(&id);
    }

    /// The request of an attempt whose send the dispatch already counted, its
    /// answer's decision, and the same-key retries that decision may ask for (each
    /// paced, checked against pauses, the key's age and the whole pre-flight, and
    /// counted before it leaves).
    async fn dial_loop(self: &Arc<Self>, r: &mut super::app::Ready) -> anyhow::Result<()> {
        let super::app::Ready {
            job,
            campaign,
            recipient,
            facts,
            attempt,
            probe,
        } = r;
        let cname = campaign.row.name.clone();
        job.current_attempt = Some(attempt.clone());
        // The dispatch counted the first send, right after the claim's checks ran
        // again in `flush`: the first request leaves at once.
        let mut counted = true;
        loop {
            if !counted {
                // A retry: pacing, pauses and halts, then the send is counted.
                let waited = tokio::select! {
                    w = Box::pin(self.pacer.until_ready(Some(&cname))) => w,
                    _ = self.cancel.cancelled() => {
                        self.store.release(job.id, &self.worker_id, ms(self.now())).await?;
                        return Ok(());
                    }
                };
                metrics::histogram!(m::RATE_WAIT).record(waited.as_secs_f64());
                // A pause or halt that began meanwhile: the job goes back unchanged
                // (a probe passes only the condition it probes).
                if Box::pin(self.refused_by_pause_or_halt(job, *probe)).await {
                    self.store
                        .release(job.id, &self.worker_id, ms(self.now()))
                        .await?;
                    return Ok(());
                }

                // Immediately before the request: time passed since the previous one
                // (the request itself, the retry's backoff, the pacer). A key past
                // revdesk.key_ttl is never re-sent (SPEC section 7) ...
                let now = self.now();
                if let Some(u) = self.settle_expired_key(job, campaign, now) {
                    Box::pin(self.update(job, &u)).await?;
                    return Ok(());
                }
                // ... and the whole pre-flight runs again on the claim's facts (SPEC
                // section 6): a consent that expired or a window that closed blocks.
                if let Some(v) = self.pre_request_verdict(recipient, campaign, facts, now) {
                    self.store
                        .insert_audit(&[self.audit(job, &v, "pre_request")])
                        .await?;
                    // A sent attempt keeps its key: it may be re-sent later.
                    Box::pin(self.apply_verdict(job, &cname, &v, true)).await?;
                    return Ok(());
                }

                if !self
                    .store
                    .mark_sending(job.id, attempt.id, &self.worker_id, ms(now))
                    .await?
                {
                    tracing::warn!(
                        job_id = job.id,
                        "lease lost before the request was sent; not sending"
                    );
                    return Ok(());
                }
                attempt.sends += 1;
                if attempt.first_sent_at_ms.is_none() {
                    attempt.first_sent_at_ms = Some(ms(now));
                }
                job.current_attempt = Some(attempt.clone());
            }
            counted = false;
            let started = Instant::now();
            let result = self
                .client
                .dial(&attempt.idempotency_key, attempt.request_body.as_bytes())
                .await;
            metrics::histogram!(m::DIAL_DURATION).record(started.elapsed().as_secs_f64());
            let (code, category) = labels(&result);
            metrics::counter!(m::DIAL_REQUESTS, "campaign" => cname.clone(), "code" => code.clone(), "category" => category.clone())
                .increment(1);

            let tripped = {
                let mut b = self.breaker_lock();
                b.record(result.is_ambiguous());
                b.is_tripped()
            };
            let now = self.now();
            let pauses = Box::pin(self.pause_counts_for(*probe)).await?;
            let next_allowed = {
                // The next locally allowed time after the earliest vendor floor.
                let floor = now
                    + chrono::Duration::from_std(campaign.settings.compliance_min)
                        .unwrap_or_default();
                self.engine.next_allowed(recipient, &campaign.policy, floor)
            };
            let ctx = DialContext {
                next_allowed,
                breaker_tripped: tripped,
                ..self.dial_context(job, attempt, campaign, &pauses, now)
            };
            let d = decision::decide_dial(&result, &ctx, now, &mut rand::rng());
            Box::pin(self.side_effects(&d, job, &result)).await?;

            let (status, response_code, response_category) = response_fields(&result);
            let placement = if d.possibly_placed {
                Some(Placement::PossiblyPlaced)
            } else if matches!(d.action, Action::Placed { .. }) {
                Some(Placement::Placed)
            } else if !d.attempt_counts && !d.keep_key {
                Some(Placement::NotPlaced)
            } else {
                None
            };
            if placement == Some(Placement::PossiblyPlaced) {
                attempt.placement = Placement::PossiblyPlaced;
            }
            let mut au = AttemptUpdate {
                id: attempt.id,
                placement,
                response_status: status,
                response_code: response_code.clone(),
                response_category: response_category.clone(),
                ..Default::default()
            };
            let mut u = JobUpdate {
                status: "queued",
                last_code: Some(code.clone()),
                last_category: response_category.clone(),
                clear_current_attempt: !d.keep_key,
                ..Default::default()
            };
            match d.counter {
                Some(Counter::ProviderRetry) => u.provider_retries = CounterChange::Increment,
                Some(Counter::ProviderRequeue) => {
                    u.provider_requeues = CounterChange::Increment;
                    u.provider_retries = CounterChange::Reset;
                }
                Some(Counter::VendorRefusal) => u.vendor_refusals = CounterChange::Increment,
                Some(Counter::Consecutive429) | None => {}
            }
            // Only a probe's success lifts what it probed (an answer that itself
            // pauses or halts lifts nothing).
            let probe_ok = d.action.is_probe_success();
            match &d.action {
                Action::Retry { after } => {
                    u.status = "running";
                    u.attempt = Some(au);
                    u.clear_current_attempt = false;
                    Box::pin(self.update(job, &u)).await?;
                    if d.counter == Some(Counter::ProviderRetry) {
                        job.provider_retries += 1;
                    }
                    if d.possibly_placed
                        && job
                            .current_attempt
                            .as_ref()
                            .is_some_and(|a| a.placement == Placement::Reserved)
                    {
                        job.attempts += 1;
                    }
                    if d.possibly_placed {
                        attempt.placement = Placement::PossiblyPlaced;
                    }
                    job.current_attempt = Some(attempt.clone());
                    tracing::debug!(job_id = job.id, code = %code, after_ms = after.as_millis() as u64, "retrying with the same key");
                    tokio::select! {
                        _ = tokio::time::sleep(*after) => continue,
                        _ = self.cancel.cancelled() => {
                            self.store.release(job.id, &self.worker_id, ms(self.now())).await?;
                            return Ok(());
                        }
                    }
                }
                Action::Placed { call_id } => {
                    au.call_id = Some(call_id.clone());
                    u.status = "awaiting_outcome";
                    u.attempt = Some(au);
                    u.clear_current_attempt = false;
                    Box::pin(self.update(job, &u)).await?;
                    self.pacer.on_success();
                    self.consecutive_429_reset();
                    // Events that arrived before this 202 was stored are applied by
                    // the decision's group commit (`App::decide`).
                }
                Action::Done => {
                    u.status = "done";
                    u.attempt = Some(au);
                    u.clear_current_attempt = true;
                    Box::pin(self.update(job, &u)).await?;
                }
                Action::Requeue { at, reason } => {
                    u.due_at_ms = Some(ms(*at));
                    u.reason = Some(reason.as_str().to_owned());
                    u.reason_source = Some("vendor");
                    u.attempt = Some(au);
                    Box::pin(self.update(job, &u)).await?;
                }
                Action::Drop { reason, source } => {
                    u.status = "dropped";
                    u.reason = Some(reason.as_str().to_owned());
                    u.reason_source = Some(source.as_str());
                    u.attempt = Some(au);
                    u.clear_current_attempt = true;
                    if reason.is_labelled() {
                        tracing::warn!(
                            job_id = job.id,
                            reason = reason.as_str(),
                            "dropped for a reason that may not be the contact's; `dialer campaign requeue` undoes it"
                        );
                    }
                    Box::pin(self.update(job, &u)).await?;
                }
                Action::Exhausted => {
                    u.status = "exhausted";
                    u.reason = Some("max_attempts".into());
                    u.attempt = Some(au);
                    u.clear_current_attempt = true;
                    Box::pin(self.update(job, &u)).await?;
                }
                Action::PauseCampaign {
                    reason,
                    until,
                    job_due,
                } => {
                    tracing::warn!(campaign = %cname, reason = reason.as_str(), until = ?until, "pausing the campaign");
                    // Only this pause's probe repeats it (the length doubles);
                    // another dial begins one, or is part of the one in force.
                    if matches!(*probe, Some(Probe::Campaign { id, .. }) if id == job.campaign_id) {
                        self.store
                            .repause_campaign(
                                job.campaign_id,
                                reason.as_str(),
                                until.map(ms),
                                ms(now),
                            )
                            .await?;
                    } else {
                        self.store
                            .pause_campaign(
                                job.campaign_id,
                                reason.as_str(),
                                until.map(ms),
                                ms(now),
                            )
                            .await?;
                    }
                    self.invalidate_campaign(job.campaign_id);
                    u.due_at_ms = Some(ms(*job_due));
                    u.reason = Some(reason.as_str().to_owned());
                    u.reason_source = Some("vendor");
                    u.attempt = Some(au);
                    Box::pin(self.update(job, &u)).await?;
                }
                Action::HaltAccount {
                    reason,
                    probe_at,
                    job_due,
                } => {
                    tracing::error!(reason = reason.as_str(), probe_at = %probe_at, "halting dialing for the account");
                    if matches!(*probe, Some(Probe::Account { .. })) {
                        self.store
                            .rehalt_account(ACCOUNT, reason.as_str(), ms(*probe_at), ms(now))
                            .await?;
                    } else {
                        self.store
                            .halt_account(ACCOUNT, reason.as_str(), ms(*probe_at), ms(now))
                            .await?;
                    }
                    self.account_halted
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    u.due_at_ms = Some(ms(*job_due) + jitter_ms(30_000));
                    u.reason = Some(reason.as_str().to_owned());
                    u.reason_source = Some("vendor");
                    u.attempt = Some(au);
                    Box::pin(self.update(job, &u)).await?;
                }
                Action::HaltWorker {
                    reason,
                    probe_at,
                    job_due,
                } => {
                    tracing::error!(reason = reason.as_str(), code = %code, "halting this worker's dialing: configuration or credential fault");
                    // Repeated halts for the same cause double (SPEC section 8): the
                    // probe's failure repeats the halt; the dials that were in flight
                    // when it began are part of it (they neither double it nor move
                    // its probe).
                    let repeat = probe.is_some_and(|p| p.probes_worker());
                    if repeat || self.worker_halt().is_none() {
                        self.count_worker_halt(reason.as_str(), repeat);
                        Box::pin(
                            self.set_worker_halt(Some((reason.as_str().to_owned(), *probe_at))),
                        )
                        .await;
                    }
                    u.due_at_ms = Some(ms(*job_due));
                    u.reason = Some(reason.as_str().to_owned());
                    u.reason_source = Some("vendor");
                    u.attempt = Some(au);
                    Box::pin(self.update(job, &u)).await?;
                }
            }
            if let Some(p) = *probe {
                if probe_ok {
                    Box::pin(self.probe_succeeded(p, job.campaign_id)).await?;
                }
            }
            return Ok(());
        }
    }

    /// Metrics, local list updates and pacing changes that come with a decision.
    async fn side_effects(
        &self,
        d: &decision::Decision,
        job: &ClaimedJob,
        result: &DialResult,
    ) -> anyhow::Result<()> {
        if d.preflight_miss {
            let (code, _) = labels(result);
            metrics::counter!(m::PREFLIGHT_MISSES, "code" => code).increment(1);
            tracing::warn!(
                job_id = job.id,
                "the vendor refused a call that pre-flight allowed"
            );
        }
        if d.unknown_code {
            metrics::counter!(m::UNKNOWN_CODES).increment(1);
        }
        if let Some(hold) = d.lower_rate {
            self.pacer.backoff(hold);
        }
        if d.counter == Some(Counter::Consecutive429) {
            self.consecutive_429_bump();
        }
        let now = ms(self.now());
        if d.add_to_dnc {
            Box::pin(self.add_local_dnc(&job.phone, now)).await?;
        }
        if d.add_to_opt_outs {
            Box::pin(self.add_local_opt_out(&job.phone, now)).await?;
        }
        Ok(())
    }
}

/// Counted attempts before the current one (the current one counts once it is
/// placed or possibly placed).
fn prior_attempts(job: &ClaimedJob, attempt: &AttemptRow) -> u32 {
    let counted_current = matches!(
        attempt.placement,
        Placement::PossiblyPlaced | Placement::Placed
    );
    (job.attempts.max(0) as u32).saturating_sub(counted_current as u32)
}

/// Metric labels of an answer: code and category (bounded values).
pub fn labels(r: &DialResult) -> (String, String) {
    match r {
        DialResult::Accepted { .. } => ("accepted".into(), "none".into()),
        DialResult::Api { error, .. } => {
            let code = if error.known_code().is_some() {
                error.code.clone()
            } else {
                "unknown".into()
            };
            let cat = match (error.known_category(), error.category.as_deref()) {
                (Some(c), _) => c.as_str().to_owned(),
                (None, Some(_)) => "unknown".into(),
                (None, None) => error
                    .known_code()
                    .and_then(|c| c.category())
                    .map(|c| c.as_str().to_owned())
                    .unwrap_or_else(|| "none".into()),
            };
            (code, cat)
        }
        DialResult::NotEnvelope { status, .. } => (
            "not_envelope".into(),
            if *status >= 500 {
                "provider_error".into()
            } else {
                "none".into()
            },
        ),
        DialResult::Timeout => ("timeout".into(), "provider_error".into()),
        DialResult::Connection { .. } => ("connection_error".into(), "provider_error".into()),
    }
}

fn response_fields(r: &DialResult) -> (Option<i32>, Option<String>, Option<String>) {
    match r {
        DialResult::Accepted { .. } => (Some(202), None, None),
        DialResult::Api { status, error, .. } => (
            Some(*status as i32),
            Some(error.code.clone()),
            error.category.clone(),
        ),
        DialResult::NotEnvelope { status, .. } => {
            (Some(*status as i32), Some("not_envelope".into()), None)
        }
        DialResult::Timeout => (None, Some("timeout".into()), None),
        DialResult::Connection { .. } => (None, Some("connection_error".into()), None),
    }
}
