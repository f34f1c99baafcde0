//! Final outcomes: webhook events (at-least-once, possibly before the 202 is
//! stored) and reconciliation of calls with no outcome after `outcome_timeout`, each
//! applied in batches; and the group commits of the worker's decisions and of
//! incoming webhook events (`batch::Batcher`).

use super::app::{ACCOUNT, App, Probe, jitter_ms};
use super::batch::{BatchError, Batcher};
use crate::decision::{self, Action, OutcomeContext};
use crate::metrics as m;
use crate::revdesk::client::CallLookupError;
use crate::revdesk::wire::{CallResource, WebhookEvent};
use crate::store::{
    AttemptUpdate, DncRecord, Guard, InboxEvent, InboxMark, JobUpdate, JobWrite, OptOutRecord,
    OutcomeBatch, OutcomeTarget,
};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Most writes one group commit takes (a batch is one transaction).
const GROUP_MAX: usize = 512;
/// Group commits of one kind written at once.
const GROUP_PARALLEL: usize = 2;
/// Calls one reconciliation pass asks the vendor about.
const RECONCILE_BATCH: u32 = 200;
/// Reconciliation lookups in flight at once.
const RECONCILE_PARALLEL: usize = 4;
/// A stored event not applied after this long is applied by the inbox sweeper.
const SWEEP_AFTER_MS: i64 = 2_000;

/// A final outcome, owned (from a webhook body or a call lookup).
#[derive(Debug, Clone)]
pub enum OwnedOutcome {
    Call(CallResource),
    /// `not_found` on reconciliation: the vendor no longer knows the call.
    NotFound,
}

impl OwnedOutcome {
    fn as_outcome(&self) -> decision::Outcome<'_> {
        match self {
            OwnedOutcome::Call(c) => decision::Outcome::Call(c),
            OwnedOutcome::NotFound => decision::Outcome::NotFound,
        }
    }
}

/// One outcome to apply; `event_id` names the stored webhook event it comes from
/// (settled in the inbox with its result), none for reconciliation.
#[derive(Debug, Clone)]
pub struct OutcomeInput {
    pub call_id: String,
    pub outcome: OwnedOutcome,
    pub event_id: Option<String>,
}

/// What became of one webhook delivery (the `result` label of
/// `dialer_webhook_events_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookResult {
    /// An event id seen before: acknowledged, not applied again.
    Duplicate,
    /// Stored and applied: `applied`, `duplicate_outcome` (the call already had its
    /// outcome), `not_final`, or `pending` (its 202 is not recorded yet: applied
    /// when it is).
    Stored(&'static str),
    /// Stored, but applying it failed: the inbox sweeper applies it.
    StoredNotApplied,
}

impl App {
    /// The decisions' group commit: each dial task's decision joins the next batch
    /// (`Store::update_jobs`, set-based on PostgreSQL). After a batch with 202s,
    /// the events that arrived before those 202s were stored are applied.
    fn decisions(self: &Arc<Self>) -> &Batcher<JobWrite, bool> {
        self.decisions_cell().get_or_init(|| {
            let app = Arc::downgrade(self);
            Batcher::spawn(
                "decision",
                GROUP_MAX,
                GROUP_PARALLEL,
                move |writes: Vec<JobWrite>| {
                    let app = app.upgrade();
                    async move {
                        let app = app.ok_or("the worker stopped")?;
                        let applied = app
                            .store
                            .update_jobs(&writes)
                            .await
                            .map_err(|e| e.to_string())?;
                        let calls: Vec<String> = writes
                            .iter()
                            .filter_map(|w| w.update.attempt.as_ref()?.call_id.clone())
                            .collect();
                        if !calls.is_empty() {
                            tokio::spawn(async move { app.apply_pending(calls).await });
                        }
                        Ok(applied)
                    }
                },
            )
        })
    }

    /// Writes one decision through the group commit; true if its job part applied.
    pub(crate) async fn decide(self: &Arc<Self>, write: JobWrite) -> anyhow::Result<bool> {
        Ok(self.decisions().submit(write).await?)
    }

    /// The webhook events' group commit: events are stored in the inbox in one
    /// statement per batch, then the new ones are applied in one more transaction.
    fn webhooks(self: &Arc<Self>) -> &Batcher<(InboxEvent, CallResource), WebhookResult> {
        self.webhooks_cell().get_or_init(|| {
            let app = Arc::downgrade(self);
            Batcher::spawn(
                "webhook",
                GROUP_MAX,
                GROUP_PARALLEL,
                move |items: Vec<(InboxEvent, CallResource)>| {
                    let app = app.upgrade();
                    async move {
                        let app = app.ok_or("the worker stopped")?;
                        app.store_and_apply(items).await
                    }
                },
            )
        })
    }

    /// Receives one verified webhook event: stored (at-least-once: a repeated id is
    /// a duplicate), then applied. An error means it was not stored.
    pub async fn receive_webhook(
        self: &Arc<Self>,
        stored: InboxEvent,
        call: CallResource,
    ) -> Result<WebhookResult, BatchError> {
        self.webhooks().submit((stored, call)).await
    }

    async fn store_and_apply(
        self: &Arc<Self>,
        items: Vec<(InboxEvent, CallResource)>,
    ) -> Result<Vec<WebhookResult>, String> {
        let (events, calls): (Vec<InboxEvent>, Vec<CallResource>) = items.into_iter().unzip();
        let new = self
            .store
            .inbox_insert_many(&events, self.now().timestamp_millis())
            .await
            .map_err(|e| e.to_string())?;
        let mut out = vec![WebhookResult::Duplicate; events.len()];
        let mut inputs = Vec::new();
        let mut index = Vec::new();
        for (i, ((e, call), is_new)) in events.into_iter().zip(calls).zip(new).enumerate() {
            if is_new {
                inputs.push(OutcomeInput {
                    call_id: e.call_id,
                    outcome: OwnedOutcome::Call(call),
                    event_id: Some(e.event_id),
                });
                index.push(i);
            }
        }
        if inputs.is_empty() {
            return Ok(out);
        }
        match self.apply_outcomes(inputs, "webhook").await {
            Ok(labels) => {
                for (i, l) in index.into_iter().zip(labels) {
                    out[i] = WebhookResult::Stored(l);
                }
            }
            Err(e) => {
                // Stored: the sweeper applies them (or the 202's pending check).
                tracing::error!(error = %e, events = index.len(), "webhook: applying stored outcomes failed");
                for i in index {
                    out[i] = WebhookResult::StoredNotApplied;
                }
            }
        }
        Ok(out)
    }

    /// Applies the stored events of calls whose 202s were just recorded.
    async fn apply_pending(self: Arc<Self>, calls: Vec<String>) {
        let events = match self.store.inbox_pending_many(&calls).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read events that arrived before their 202; the sweeper applies them");
                return;
            }
        };
        if let Err(e) = self.apply_stored(events).await {
            tracing::warn!(error = %e, "applying events that arrived before their 202 failed; the sweeper applies them");
        }
    }

    /// Applies stored inbox events (their bodies were verified before they were stored).
    async fn apply_stored(self: &Arc<Self>, events: Vec<InboxEvent>) -> anyhow::Result<usize> {
        let mut inputs = Vec::with_capacity(events.len());
        for e in events {
            match serde_json::from_str::<WebhookEvent>(&e.body) {
                Ok(ev) => inputs.push(OutcomeInput {
                    call_id: e.call_id,
                    outcome: OwnedOutcome::Call(ev.data),
                    event_id: Some(e.event_id),
                }),
                Err(err) => {
                    tracing::error!(event_id = %e.event_id, error = %err, "a stored webhook event no longer parses; left in the inbox")
                }
            }
        }
        if inputs.is_empty() {
            return Ok(0);
        }
        let labels = self.apply_outcomes(inputs, "webhook").await?;
        for l in &labels {
            metrics::counter!(m::WEBHOOK_EVENTS, "type" => crate::revdesk::wire::PHONE_CALL_ENDED, "result" => *l)
                .increment(1);
        }
        Ok(labels.iter().filter(|l| **l == "applied").count())
    }

    /// Stored events left unapplied (an apply that failed after the event was
    /// stored, a race with its 202): applied now. Returns how many applied.
    pub async fn sweep_inbox(self: &Arc<Self>) -> anyhow::Result<usize> {
        let before = self.now().timestamp_millis() - SWEEP_AFTER_MS;
        let events = self.store.inbox_unapplied(before, GROUP_MAX as u32).await?;
        if events.is_empty() {
            return Ok(0);
        }
        tracing::info!(
            events = events.len(),
            "applying stored webhook events left unapplied"
        );
        self.apply_stored(events).await
    }

    /// Webhook events of calls that no attempt of ours has, received longer ago
    /// than any 202 of ours could still be recorded (`revdesk.key_ttl`, the last
    /// time a key may be re-sent, plus `outcome_timeout`): set aside as
    /// `unknown_call` (kept in the inbox, not deleted), so the sweeper's scan does
    /// not grow with them for ever. Returns how many.
    pub async fn set_aside_unknown_events(self: &Arc<Self>) -> anyhow::Result<u64> {
        let now = self.now();
        let horizon =
            self.settings.revdesk.key_ttl.chrono() + self.settings.outcome_timeout.chrono();
        let n = self
            .store
            .inbox_set_aside_unknown((now - horizon).timestamp_millis(), now.timestamp_millis())
            .await?;
        if n > 0 {
            tracing::warn!(
                events = n,
                "webhook events for calls this dialer never placed were set aside as unknown_call"
            );
            metrics::counter!(m::WEBHOOK_EVENTS, "type" => crate::revdesk::wire::PHONE_CALL_ENDED, "result" => "unknown_call")
                .increment(n);
        }
        Ok(n)
    }

    /// Applies outcomes in one transaction (`Store::apply_outcomes`), returning each
    /// input's result label in order: `applied` (its job moved), `duplicate_outcome`
    /// (recorded on the attempt only: the job already had an outcome or is final),
    /// `not_final`, or `pending` (no 202 recorded for the call yet: the event stays
    /// in the inbox). One decision per call: a second outcome for a call in the same
    /// batch is a duplicate.
    pub async fn apply_outcomes(
        self: &Arc<Self>,
        inputs: Vec<OutcomeInput>,
        source: &'static str,
    ) -> anyhow::Result<Vec<&'static str>> {
        let now = self.now();
        let now_ms = now.timestamp_millis();
        let mut calls: Vec<String> = inputs.iter().map(|i| i.call_id.clone()).collect();
        calls.sort_unstable();
        calls.dedup();
        let targets: HashMap<String, OutcomeTarget> = self
            .store
            .outcome_targets(&calls)
            .await?
            .into_iter()
            .filter_map(|t| t.attempt.call_id.clone().map(|c| (c, t)))
            .collect();
        let mut batch = OutcomeBatch {
            now_ms,
            ..Default::default()
        };
        // Per input: a fixed label, or the index of its job write.
        let mut labels: Vec<Result<&'static str, usize>> = Vec::with_capacity(inputs.len());
        // Per job write: the metric labels counted if it applies.
        let mut counted: Vec<(String, String, String)> = Vec::new();
        let mut decided: HashSet<String> = HashSet::new();
        for input in &inputs {
            let Some(t) = targets.get(&input.call_id) else {
                labels.push(Ok("pending"));
                continue;
            };
            let (label, write) = self
                .plan_outcome(t, &input.outcome, source, &mut decided, &mut batch, now)
                .await?;
            if let Some((w, metric)) = write {
                batch.writes.push(w);
                counted.push(metric);
                labels.push(Err(batch.writes.len() - 1));
            } else {
                labels.push(Ok(label));
            }
            let waits = matches!(labels.last(), Some(Ok("pending")));
            if let (Some(event_id), false) = (&input.event_id, waits) {
                let (result, write) = match labels.last().expect("just pushed") {
                    Ok(l) => (Some(*l), None),
                    Err(i) => (None, Some(*i)),
                };
                batch.marks.push(InboxMark {
                    event_id: event_id.clone(),
                    result,
                    write,
                });
            }
        }
        let applied =
            if batch.writes.is_empty() && batch.recorded.is_empty() && batch.marks.is_empty() {
                Vec::new()
            } else {
                self.store.apply_outcomes(&batch).await?
            };
        for ((campaign, code, category), ok) in counted.into_iter().zip(&applied) {
            if *ok {
                metrics::counter!(m::CALL_OUTCOMES, "campaign" => campaign, "code" => code, "category" => category)
                    .increment(1);
            }
        }
        Ok(labels
            .into_iter()
            .map(|l| match l {
                Ok(l) => l,
                Err(i) if applied.get(i).copied().unwrap_or(false) => "applied",
                Err(_) => "duplicate_outcome",
            })
            .collect())
    }

    /// The decision for one outcome of a known call (SPEC section 8, final
    /// outcomes): a job write guarded by "still awaiting this attempt", or an
    /// outcome recorded on the attempt only. Pauses and halts it causes are stored
    /// here. Returns the fixed label, or the write with its metric labels.
    #[allow(clippy::type_complexity)]
    async fn plan_outcome(
        self: &Arc<Self>,
        t: &OutcomeTarget,
        outcome: &OwnedOutcome,
        source: &'static str,
        decided: &mut HashSet<String>,
        batch: &mut OutcomeBatch,
        now: chrono::DateTime<chrono::Utc>,
    ) -> anyhow::Result<(&'static str, Option<(JobWrite, (String, String, String))>)> {
        let now_ms = now.timestamp_millis();
        let attempt = &t.attempt;
        let (code, category) = match outcome {
            OwnedOutcome::Call(c) => {
                if !c.is_final() {
                    return Ok(("not_final", None));
                }
                (
                    c.failure_code
                        .clone()
                        .or_else(|| c.call_outcome.clone())
                        .or_else(|| c.status.clone())
                        .unwrap_or_else(|| "completed".into()),
                    c.failure_category.clone(),
                )
            }
            OwnedOutcome::NotFound => ("not_found".to_owned(), None),
        };
        let call_id = attempt.call_id.clone().unwrap_or_default();
        if t.before_202 && !decided.contains(&call_id) {
            // The job has not taken this call's 202 (its worker lost the lease
            // first); its next claim moves it to awaiting_outcome without dialing.
            // The event waits in the inbox, as one that arrives before its 202,
            // and the sweeper applies it then. Recorded as a duplicate now, it
            // would leave the job to reconciliation after outcome_timeout.
            return Ok(("pending", None));
        }
        if !t.awaiting || decided.contains(&call_id) {
            // A second outcome, or one for a job that is final or no longer awaits
            // this attempt: recorded on the attempt, nothing else changes.
            batch.recorded.push(AttemptUpdate {
                id: attempt.id,
                outcome_code: Some(code),
                outcome_category: category,
                outcome_source: Some(source),
                ..Default::default()
            });
            return Ok(("duplicate_outcome", None));
        }
        let campaign = self.campaign(attempt.campaign_id).await?;
        let label_code = match crate::revdesk::codes::Code::parse(&code) {
            Some(c) => c.as_str().to_owned(),
            None if code == "completed" || code == "not_found" => code.clone(),
            None => "unknown".to_owned(),
        };
        let label_cat = category
            .as_deref()
            .map(|c| {
                if crate::revdesk::codes::Category::parse(c).is_some() {
                    c.to_owned()
                } else {
                    "unknown".into()
                }
            })
            .unwrap_or_else(|| "none".into());
        let (recent, rejected) =
            self.record_recent_outcome(attempt.campaign_id, attempt.id, code == "carrier_rejected");
        let ctx = OutcomeContext {
            settings: &campaign.settings,
            attempts: t.job_attempts.max(1) as u32,
            max_attempts: campaign.row.max_attempts.max(1) as u32,
            recent_outcomes: recent,
            recent_carrier_rejected: rejected,
        };
        let d = decision::decide_outcome(outcome.as_outcome(), &ctx, now, &mut rand::rng());
        if d.unknown_code {
            metrics::counter!(m::UNKNOWN_CODES).increment(1);
        }
        let au = AttemptUpdate {
            id: attempt.id,
            outcome_code: Some(code.clone()),
            outcome_category: category.clone(),
            outcome_source: Some(source),
            ..Default::default()
        };
        let mut u = JobUpdate {
            status: "queued",
            last_code: Some(code.clone()),
            last_category: category.clone(),
            attempt: Some(au),
            clear_current_attempt: true,
            ..Default::default()
        };
        match &d.action {
            Action::Placed { .. } => return Ok(("not_final", None)),
            Action::Done => u.status = "done",
            Action::Requeue { at, reason } => {
                u.due_at_ms = Some(at.timestamp_millis());
                u.reason = Some(reason.as_str().to_owned());
                u.reason_source = Some("vendor");
            }
            Action::Drop { reason, source: s } => {
                u.status = "dropped";
                u.reason = Some(reason.as_str().to_owned());
                u.reason_source = Some(s.as_str());
            }
            Action::Exhausted => {
                u.status = "exhausted";
                u.reason = Some(code.clone());
            }
            Action::PauseCampaign {
                reason,
                until,
                job_due,
            } => {
                tracing::warn!(campaign = %campaign.row.name, reason = reason.as_str(), "pausing the campaign: its caller ID is being rejected");
                self.store
                    .pause_campaign(
                        attempt.campaign_id,
                        reason.as_str(),
                        until.map(|t| t.timestamp_millis()),
                        now_ms,
                    )
                    .await?;
                self.invalidate_campaign(attempt.campaign_id);
                u.due_at_ms = Some(job_due.timestamp_millis() + jitter_ms(30_000));
                u.reason = Some(reason.as_str().to_owned());
                u.reason_source = Some("vendor");
            }
            Action::HaltAccount {
                reason,
                probe_at,
                job_due,
            } => {
                self.store
                    .halt_account(
                        ACCOUNT,
                        reason.as_str(),
                        probe_at.timestamp_millis(),
                        now_ms,
                    )
                    .await?;
                u.due_at_ms = Some(job_due.timestamp_millis());
                u.reason = Some(reason.as_str().to_owned());
            }
            Action::HaltWorker {
                reason, job_due, ..
            } => {
                u.due_at_ms = Some(job_due.timestamp_millis());
                u.reason = Some(reason.as_str().to_owned());
            }
            Action::Retry { .. } => {
                // Not an outcome decision; requeue soon rather than lose the job.
                u.due_at_ms = Some(now_ms + 60_000);
                u.reason = Some("unknown_outcome".into());
            }
        }
        decided.insert(call_id);
        let write = JobWrite {
            job_id: attempt.job_id,
            guard: Guard::Awaiting(attempt.id),
            update: u,
            now_ms,
        };
        Ok((
            "applied",
            Some((write, (campaign.row.name.clone(), label_code, label_cat))),
        ))
    }

    /// Calls placed longer than `outcome_timeout` ago whose jobs still await an
    /// outcome: ask the vendor (a few lookups at once), and apply the answers in one
    /// batch. A call not ended yet, or whose lookup failed, waits another
    /// `outcome_timeout` so the calls behind it get their turn. The first failed
    /// lookup (rate limit, outage, credentials) ends the pass: the rest are asked
    /// on a later pass rather than sent into the same fault.
    pub async fn reconcile_once(self: &Arc<Self>) -> anyhow::Result<usize> {
        use futures::StreamExt;
        let now = self.now();
        let before = now - self.settings.outcome_timeout.chrono();
        let attempts = self
            .store
            .unsettled_attempts(before.timestamp_millis(), RECONCILE_BATCH)
            .await?;
        let mut lookups = futures::stream::iter(attempts.into_iter().filter_map(|a| {
            let call_id = a.call_id.clone()?;
            let client = self.client.clone();
            Some(async move {
                let answer = client.get_call(&call_id).await;
                (a.job_id, call_id, answer)
            })
        }))
        .buffer_unordered(RECONCILE_PARALLEL);
        let mut inputs = Vec::new();
        let mut deferred = Vec::new();
        loop {
            let next = tokio::select! {
                next = lookups.next() => next,
                _ = self.cancel.cancelled() => None,
            };
            let Some((job_id, call_id, answer)) = next else {
                break;
            };
            let outcome = match answer {
                Ok(call) => {
                    if !call.is_final() {
                        deferred.push(job_id);
                    }
                    OwnedOutcome::Call(call)
                }
                Err(CallLookupError::NotFound) => OwnedOutcome::NotFound,
                Err(e) => {
                    tracing::warn!(call_id = %call_id, error = %e,
                        "reconciliation lookup failed; the rest of this pass waits for the next");
                    deferred.push(job_id);
                    break;
                }
            };
            inputs.push(OutcomeInput {
                call_id,
                outcome,
                event_id: None,
            });
        }
        drop(lookups);
        self.store
            .defer_reconcile(&deferred, now.timestamp_millis())
            .await?;
        if inputs.is_empty() {
            return Ok(0);
        }
        let labels = self.apply_outcomes(inputs, "reconcile").await?;
        Ok(labels.iter().filter(|l| **l == "applied").count())
    }

    pub(crate) async fn add_local_dnc(&self, phone: &str, now_ms: i64) -> anyhow::Result<()> {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tx.send(vec![DncRecord::Number {
            phone: phone.to_owned(),
            source: "vendor".into(),
        }])
        .await?;
        tx.send(Vec::new()).await?;
        drop(tx);
        self.store.import_dnc(rx, now_ms).await?;
        Ok(())
    }

    pub(crate) async fn add_local_opt_out(&self, phone: &str, now_ms: i64) -> anyhow::Result<()> {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        // The vendor's opt-out is the contact's word: it applies to every campaign.
        tx.send(vec![OptOutRecord {
            phone: phone.to_owned(),
            campaign: String::new(),
            opted_out_at_ms: now_ms,
            source: "vendor".into(),
        }])
        .await?;
        tx.send(Vec::new()).await?;
        drop(tx);
        self.store.import_opt_outs(rx).await?;
        Ok(())
    }

    /// A probe dial succeeded (`Action::is_probe_success`): release the rest.
    pub(crate) async fn probe_succeeded(
        &self,
        probe: Probe,
        campaign_id: i64,
    ) -> anyhow::Result<()> {
        match probe {
            Probe::Account { worker } => {
                tracing::info!("account probe dial succeeded: dialing resumes");
                // Lifted with its count: the next halt starts from the base length.
                self.store.lift_account_halt(ACCOUNT).await?;
                // The failures before an outage halt must not trip the breaker again
                // at the first failure after it.
                self.breaker_lock().reset();
                if worker {
                    // The same dial probed this worker's halt too.
                    self.lift_worker_halt().await;
                }
            }
            Probe::Campaign { id, worker } => {
                tracing::info!(
                    campaign_id = id,
                    "campaign probe dial succeeded: the pause ends"
                );
                // The next pause begins at count 1 (`Store::pause_campaign`).
                self.store
                    .lift_auto_pause(campaign_id, self.now().timestamp_millis())
                    .await?;
                self.invalidate_campaign(campaign_id);
                if worker {
                    // The same dial probed this worker's halt too.
                    self.lift_worker_halt().await;
                }
            }
            Probe::Worker => {
                tracing::info!("worker probe dial succeeded: dialing resumes");
                self.lift_worker_halt().await;
            }
        }
        Ok(())
    }

    /// A probe for this worker's halt succeeded: the halt ends, and the doubling of
    /// its cause starts over.
    async fn lift_worker_halt(&self) {
        self.reset_worker_halt_count();
        self.set_worker_halt(None).await;
    }

    /// Remembers one outcome of the campaign, once per attempt; returns (outcomes,
    /// carrier_rejected) of the last 20 (see [`decision::RecentOutcomes`]).
    fn record_recent_outcome(
        &self,
        campaign: i64,
        attempt_id: i64,
        carrier_rejected: bool,
    ) -> (u32, u32) {
        self.recent_lock()
            .entry(campaign)
            .or_default()
            .record(attempt_id, carrier_rejected)
    }
}
