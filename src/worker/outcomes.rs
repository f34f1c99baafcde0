//! Final outcomes: webhook events (at-least-once, possibly before the 202 is
//! stored) and reconciliation of calls with no outcome after `outcome_timeout`.

use super::app::{ACCOUNT, App, Probe, jitter_ms};
use crate::decision::{self, Action, OutcomeContext};
use crate::metrics as m;
use crate::revdesk::client::CallLookupError;
use crate::revdesk::wire::{CallResource, WebhookEvent};
use crate::store::{
    AttemptRow, AttemptUpdate, DncRecord, Guard, InboxEvent, JobUpdate, OptOutRecord,
};

/// What happened to one outcome, for logs and the webhook metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The job moved (done, requeued, dropped, exhausted, campaign paused).
    Applied,
    /// The job already had its outcome or is final: recorded on the attempt only.
    Recorded,
    /// The call has not ended yet: nothing to do.
    NotFinal,
}

impl App {
    /// Applies an outcome to the attempt and, when it still awaits one, its job.
    pub async fn apply_outcome(
        &self,
        attempt: &AttemptRow,
        outcome: decision::Outcome<'_>,
        source: &'static str,
    ) -> anyhow::Result<Applied> {
        let now = self.now();
        let now_ms = now.timestamp_millis();
        let (code, category) = match outcome {
            decision::Outcome::Call(c) => (
                c.failure_code
                    .clone()
                    .or_else(|| c.call_outcome.clone())
                    .or_else(|| c.status.clone())
                    .unwrap_or_else(|| "completed".into()),
                c.failure_category.clone(),
            ),
            decision::Outcome::NotFound => ("not_found".to_owned(), None),
        };
        if let decision::Outcome::Call(c) = outcome {
            if !c.is_final() {
                return Ok(Applied::NotFinal);
            }
        }
        let Some(job) = self.store.job(attempt.job_id).await? else {
            return Ok(Applied::Recorded);
        };
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

        let awaiting = job
            .current_attempt
            .as_ref()
            .is_some_and(|a| a.id == attempt.id);
        if !awaiting {
            // A second outcome, or one for a final job: record it, change nothing else.
            self.store
                .record_outcome_only(attempt.id, &code, category.as_deref(), source, now_ms)
                .await?;
            return Ok(Applied::Recorded);
        }
        let (recent, rejected) =
            self.record_recent_outcome(attempt.campaign_id, code == "carrier_rejected");
        let ctx = OutcomeContext {
            settings: &campaign.settings,
            attempts: job.attempts.max(1) as u32,
            max_attempts: campaign.row.max_attempts.max(1) as u32,
            recent_outcomes: recent,
            recent_carrier_rejected: rejected,
        };
        let d = decision::decide_outcome(outcome, &ctx, now, &mut rand::rng());
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
            Action::Placed { .. } => return Ok(Applied::NotFinal),
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
        let applied = self
            .store
            .update_job(job.id, &Guard::Awaiting(attempt.id), &u, now_ms)
            .await?;
        if applied {
            metrics::counter!(m::CALL_OUTCOMES, "campaign" => campaign.row.name.clone(), "code" => label_code, "category" => label_cat)
                .increment(1);
            Ok(Applied::Applied)
        } else {
            Ok(Applied::Recorded)
        }
    }

    /// Applies webhook events that arrived before this call's 202 was stored.
    pub(crate) async fn apply_pending_events(&self, call_id: &str) -> anyhow::Result<()> {
        for e in self.store.inbox_pending(call_id).await? {
            self.apply_inbox_event(&e).await?;
        }
        Ok(())
    }

    /// Applies one stored event if its call's 202 is recorded; returns the result label.
    pub async fn apply_inbox_event(&self, e: &InboxEvent) -> anyhow::Result<&'static str> {
        let Some(attempt) = self.store.attempt_by_call_id(&e.call_id).await? else {
            return Ok("pending");
        };
        let event: WebhookEvent = serde_json::from_str(&e.body)?;
        let result = match self
            .apply_outcome(&attempt, decision::Outcome::Call(&event.data), "webhook")
            .await?
        {
            Applied::Applied => "applied",
            Applied::Recorded => "duplicate_outcome",
            Applied::NotFinal => "not_final",
        };
        self.store
            .inbox_mark_applied(&e.event_id, result, self.now().timestamp_millis())
            .await?;
        Ok(result)
    }

    /// Calls placed longer than `outcome_timeout` ago with no outcome: ask the vendor.
    pub async fn reconcile_once(&self) -> anyhow::Result<usize> {
        let before = self.now() - self.settings.outcome_timeout.chrono();
        let attempts = self
            .store
            .unsettled_attempts(before.timestamp_millis(), 200)
            .await?;
        let mut settled = 0;
        for a in attempts {
            let Some(call_id) = a.call_id.clone() else {
                continue;
            };
            let outcome_owned: Option<CallResource>;
            let outcome = match self.client.get_call(&call_id).await {
                Ok(call) => {
                    outcome_owned = Some(call);
                    decision::Outcome::Call(outcome_owned.as_ref().expect("just set"))
                }
                Err(CallLookupError::NotFound) => decision::Outcome::NotFound,
                Err(e) => {
                    tracing::warn!(call_id = %call_id, error = %e, "reconciliation lookup failed; will retry");
                    continue;
                }
            };
            if self.apply_outcome(&a, outcome, "reconcile").await? == Applied::Applied {
                settled += 1;
            }
        }
        Ok(settled)
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

    pub(crate) async fn add_local_opt_out(
        &self,
        phone: &str,
        campaign: &str,
        now_ms: i64,
    ) -> anyhow::Result<()> {
        let _ = campaign;
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

    /// A probe dial got an answer that does not re-pause or re-halt: release the rest.
    pub(crate) async fn probe_succeeded(
        &self,
        probe: Probe,
        campaign_id: i64,
    ) -> anyhow::Result<()> {
        match probe {
            Probe::Account => {
                tracing::info!("account probe dial succeeded: dialing resumes");
                self.store.lift_account_halt(ACCOUNT).await?;
            }
            Probe::Campaign(id) => {
                tracing::info!(
                    campaign_id = id,
                    "campaign probe dial succeeded: the pause ends"
                );
                self.store
                    .lift_auto_pause(campaign_id, self.now().timestamp_millis())
                    .await?;
            }
            Probe::Worker => {
                tracing::info!("worker probe dial succeeded: dialing resumes");
                self.set_worker_halt(None).await;
            }
        }
        Ok(())
    }

    /// Remembers one outcome of the campaign; returns (outcomes, carrier_rejected) of the last 20.
    fn record_recent_outcome(&self, campaign: i64, carrier_rejected: bool) -> (u32, u32) {
        let mut map = self.recent_lock();
        let q = map.entry(campaign).or_default();
        q.push_back(carrier_rejected);
        while q.len() > decision::RECENT_WINDOW as usize {
            q.pop_front();
        }
        (q.len() as u32, q.iter().filter(|b| **b).count() as u32)
    }
}
