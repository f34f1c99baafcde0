//! The worker: claims due jobs, runs pre-flight at the moment of dialing, reserves
//! the attempt atomically against frequency caps, paces, dials, and applies one
//! decision per answer. Outcomes (webhooks, reconciliation) are applied here too.

use crate::campaign::{parse_days, parse_hhmm};
use crate::clock::Clock;
use crate::compliance::{
    self, ConsentFact, ConsentKind, Engine, Facts, Policy, Recipient, Verdict,
};
use crate::config::{Settings, VoicemailPolicy};
use crate::decision::{PauseCounts, RetrySettings, VoicemailRetry};
use crate::metrics as m;
use crate::phone::{PhoneNumber, mask};
use crate::revdesk::client::Client;
use crate::revdesk::wire::DialRequest;
use crate::store::{
    AuditRecord, CampaignRow, ClaimedJob, DynStore, Guard, JobUpdate, NumberFacts, Placement,
    Reservation,
};
use crate::worker::breaker::CircuitBreaker;
use crate::worker::pacing::{Pacer, PacerConfig};
use chrono::{DateTime, Utc};
use std::collections::{HashMap, HashSet, VecDeque};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The account whose halts this worker honours (one RevDesk account per deployment).
pub const ACCOUNT: &str = "default";

/// A campaign as the worker needs it, rebuilt when the row changes.
pub struct CampaignCtx {
    pub row: CampaignRow,
    pub policy: Policy,
    pub settings: RetrySettings,
}

/// Why a job is being dialed as a probe (one dial that decides whether a pause or
/// halt ends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Account,
    Campaign(i64),
    Worker,
}

pub struct App {
    pub store: DynStore,
    pub settings: Settings,
    pub engine: Engine,
    pub client: Client,
    pub clock: Clock,
    pub pacer: Pacer,
    pub worker_id: String,
    pub cancel: CancellationToken,
    breaker: Mutex<CircuitBreaker>,
    consecutive_429: AtomicU32,
    /// A configuration or credential fault: (reason, probe at).
    worker_halt: Mutex<Option<(String, DateTime<Utc>)>>,
    campaigns: Mutex<HashMap<i64, (Instant, Arc<CampaignCtx>)>>,
    /// Per campaign, whether each of the last 20 outcomes was `carrier_rejected`.
    recent_outcomes: Mutex<HashMap<i64, VecDeque<bool>>>,
    pause_counts: Mutex<PauseCounts>,
    /// Jobs this worker holds, released on shutdown if still held.
    pub(crate) held: Mutex<HashSet<i64>>,
    /// This worker saw the account halted (set on a halting answer, cleared when
    /// the claim loop finds no halt): claimed jobs go back unchanged.
    pub(crate) account_halted: std::sync::atomic::AtomicBool,
}

impl App {
    pub fn new(
        store: DynStore,
        settings: Settings,
        engine: Engine,
        client: Client,
        clock: Clock,
        cancel: CancellationToken,
    ) -> anyhow::Result<App> {
        let pacer = Pacer::new(PacerConfig {
            per_second: settings.rate.per_second,
            burst: settings.rate.burst,
            ..PacerConfig::default()
        })
        .map_err(|e| anyhow::anyhow!("rate: {e}"))?;
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
        let worker_id = format!("{host}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        m::install();
        Ok(App {
            store,
            settings,
            engine,
            client,
            clock,
            pacer,
            worker_id,
            cancel,
            breaker: Mutex::new(CircuitBreaker::new()),
            consecutive_429: AtomicU32::new(0),
            worker_halt: Mutex::new(None),
            campaigns: Mutex::new(HashMap::new()),
            recent_outcomes: Mutex::new(HashMap::new()),
            pause_counts: Mutex::new(PauseCounts::default()),
            held: Mutex::new(HashSet::new()),
            account_halted: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    fn now_ms(&self) -> i64 {
        self.clock.now().timestamp_millis()
    }

    /// A number for logs: masked unless `log.show_numbers`.
    pub fn show(&self, phone: &str) -> String {
        if self.settings.log.show_numbers {
            phone.to_owned()
        } else {
            mask(phone)
        }
    }

    pub(crate) fn breaker_mutex(&self) -> &Mutex<CircuitBreaker> {
        &self.breaker
    }
    pub(crate) fn pause_counts_mutex(&self) -> &Mutex<PauseCounts> {
        &self.pause_counts
    }
    pub(crate) fn worker_halt_mutex(&self) -> &Mutex<Option<(String, DateTime<Utc>)>> {
        &self.worker_halt
    }
    pub(crate) fn recent_lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, VecDeque<bool>>> {
        self.recent_outcomes.lock().expect("poisoned")
    }
    pub(crate) fn consecutive_429s(&self) -> u32 {
        self.consecutive_429.load(Ordering::Relaxed)
    }
    pub(crate) fn consecutive_429_bump(&self) {
        self.consecutive_429.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn consecutive_429_reset(&self) {
        self.consecutive_429.store(0, Ordering::Relaxed);
    }

    pub fn worker_halt(&self) -> Option<(String, DateTime<Utc>)> {
        self.worker_halt.lock().expect("poisoned").clone()
    }

    /// Forgets a cached campaign (after this worker paused it).
    pub(crate) fn invalidate_campaign(&self, id: i64) {
        self.campaigns.lock().expect("poisoned").remove(&id);
    }

    /// Campaign context, cached for two seconds (pauses and edits show up quickly).
    pub async fn campaign(&self, id: i64) -> anyhow::Result<Arc<CampaignCtx>> {
        if let Some((at, c)) = self.campaigns.lock().expect("poisoned").get(&id) {
            if at.elapsed() < Duration::from_secs(2) {
                return Ok(c.clone());
            }
        }
        let row = self
            .store
            .campaign_by_id(id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("campaign {id} vanished"))?;
        let ctx = Arc::new(campaign_ctx(row, &self.settings)?);
        if let Some(r) = ctx.row.rate_per_second {
            self.pacer.set_campaign_rate(&ctx.row.name, Some(r)).ok();
        }
        self.campaigns
            .lock()
            .expect("poisoned")
            .insert(id, (Instant::now(), ctx.clone()));
        Ok(ctx)
    }

    pub(crate) fn audit(
        &self,
        job: &ClaimedJob,
        verdict: &Verdict,
        stage: &'static str,
    ) -> AuditRecord {
        AuditRecord {
            job_id: Some(job.id),
            campaign_id: Some(job.campaign_id),
            phone: job.phone.clone(),
            at_ms: self.now_ms(),
            stage,
            verdict: verdict.outcome.as_str().to_owned(),
            rule: verdict.rule().map(|r| r.as_str().to_owned()),
            reason: verdict.reason.clone(),
            zones: verdict
                .zones
                .iter()
                .map(|z| z.name())
                .collect::<Vec<_>>()
                .join(";"),
            states: verdict.states.join(";"),
            local_times: serde_json::to_string(
                &verdict
                    .local_times
                    .iter()
                    .map(|(z, t)| (z.name().to_owned(), t.to_rfc3339()))
                    .collect::<Vec<_>>(),
            )
            .unwrap_or_default(),
            next_allowed_ms: verdict.next_allowed_at.map(|t| t.timestamp_millis()),
        }
    }
}

/// Builds the engine's policy and the decision settings from a campaign row.
pub fn campaign_ctx(row: CampaignRow, settings: &Settings) -> anyhow::Result<CampaignCtx> {
    let call_type = match row.call_type.as_str() {
        "live" => compliance::CallType::Live,
        _ => compliance::CallType::ArtificialVoice,
    };
    let policy = Policy {
        window_start: parse_hhmm(&row.window_start).map_err(anyhow::Error::msg)?,
        window_end: parse_hhmm(&row.window_end).map_err(anyhow::Error::msg)?,
        days: parse_days(&row.days),
        require_consent: match row.require_consent.as_deref() {
            Some("express") => Some(ConsentKind::Express),
            Some(_) => Some(ConsentKind::ExpressWritten),
            None => None,
        },
        frequency_cap: match (row.cap_calls, row.cap_per_ms) {
            (Some(c), Some(p)) if c > 0 && p > 0 => Some(compliance::Cap {
                calls: c as u32,
                per: Duration::from_millis(p as u64),
            }),
            _ => None,
        },
        call_type,
    };
    let overrides: crate::campaign::RetryOverrides =
        serde_json::from_str(&row.retry).unwrap_or_default();
    let r = &settings.retry;
    let voicemail = overrides.voicemail.unwrap_or(r.voicemail);
    let rs = RetrySettings {
        busy: overrides.busy.unwrap_or(r.busy).get(),
        no_answer: overrides.no_answer.unwrap_or(r.no_answer).get(),
        voicemail: match voicemail {
            VoicemailPolicy::Done => VoicemailRetry::Done,
            VoicemailPolicy::After(d) => VoicemailRetry::After(d.get()),
        },
        no_active_number: overrides
            .no_active_number
            .unwrap_or(r.no_active_number)
            .get(),
        compliance_min: overrides.compliance_min.unwrap_or(r.compliance_min).get(),
        cap_min: overrides.cap_min.unwrap_or(r.cap_min).get(),
        vendor_refusals: overrides.vendor_refusals.unwrap_or(r.vendor_refusals),
        account_halt: overrides.account_halt.unwrap_or(r.account_halt).get(),
        provider_max: overrides.provider_max.unwrap_or(r.provider_max),
        provider_requeues: overrides.provider_requeues.unwrap_or(r.provider_requeues),
        key_ttl: settings.revdesk.key_ttl.get(),
        ..RetrySettings::default()
    };
    Ok(CampaignCtx {
        row,
        policy,
        settings: rs,
    })
}

/// Store facts to engine facts.
pub fn engine_facts(f: &NumberFacts) -> Facts {
    let ms = |v: i64| DateTime::from_timestamp_millis(v).unwrap_or_default();
    Facts {
        dnc: f.dnc,
        opted_out: f.opted_out,
        consents: f
            .consents
            .iter()
            .map(|c| ConsentFact {
                kind: if c.kind == "express" {
                    ConsentKind::Express
                } else {
                    ConsentKind::ExpressWritten
                },
                granted_at: ms(c.granted_at_ms),
                expires_at: c.expires_at_ms.map(ms),
                revoked_at: c.revoked_at_ms.map(ms),
            })
            .collect(),
        counted_calls: f.counted_calls_ms.iter().copied().map(ms).collect(),
    }
}

/// The longest cap window any rule may use: facts are read that far back.
pub const FACTS_LOOKBACK: chrono::Duration = chrono::Duration::days(8);

/// The recipient of a job: re-parsed (special numbers are checked again at the
/// moment of dialing) and resolved to candidate zones.
pub fn recipient(
    engine: &Engine,
    job: &ClaimedJob,
) -> Result<(PhoneNumber, Recipient), crate::phone::PhoneError> {
    let phone = PhoneNumber::parse(&job.phone)?;
    let tz = job
        .timezone
        .as_deref()
        .and_then(|t| chrono_tz::Tz::from_str(t).ok());
    let r = engine.recipient(&phone, tz, job.state.as_deref(), job.postal_code.as_deref());
    Ok((phone, r))
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

impl App {
    /// One claimed job, from pre-flight to a decision. Never leaves the job held:
    /// every path ends in an update or a release.
    pub async fn process(
        self: &Arc<Self>,
        job: ClaimedJob,
        facts: NumberFacts,
        probe: Option<Probe>,
    ) {
        let id = job.id;
        if let Err(e) = self.process_inner(job, facts, probe).await {
            tracing::error!(job_id = id, error = %e, "job processing failed; releasing the job");
            if let Err(e) = self.store.release(id, &self.worker_id, self.now_ms()).await {
                tracing::error!(job_id = id, error = %e, "release failed; the lease will expire");
            }
        }
        self.held.lock().expect("poisoned").remove(&id);
    }

    pub(crate) async fn update(&self, job: &ClaimedJob, u: &JobUpdate) -> anyhow::Result<bool> {
        let applied = self
            .store
            .update_job(
                job.id,
                &Guard::Lease(self.worker_id.clone()),
                u,
                self.now_ms(),
            )
            .await?;
        if !applied {
            tracing::warn!(
                job_id = job.id,
                "lease lost before the decision was stored; another worker owns the job"
            );
        }
        Ok(applied)
    }

    async fn process_inner(
        self: &Arc<Self>,
        job: ClaimedJob,
        facts: NumberFacts,
        probe: Option<Probe>,
    ) -> anyhow::Result<()> {
        let campaign = self.campaign(job.campaign_id).await?;
        let cname = campaign.row.name.clone();
        let now = self.now();

        // A placed attempt whose job came back to the queue (lease lost after the
        // 202): never dial again, wait for its outcome.
        if let Some(a) = &job.current_attempt {
            if a.placement == Placement::Placed {
                self.update(
                    &job,
                    &JobUpdate {
                        status: "awaiting_outcome",
                        ..Default::default()
                    },
                )
                .await?;
                return Ok(());
            }
        }

        // Pre-flight, all rules, on facts read seconds ago.
        let (_phone, recipient) = match recipient(&self.engine, &job) {
            Ok(x) => x,
            Err(e) => {
                let reason = e.reason();
                metrics::counter!(m::PREFLIGHT_BLOCKS, "campaign" => cname.clone(), "rule" => reason).increment(1);
                self.update(
                    &job,
                    &JobUpdate {
                        status: "dropped",
                        reason: Some(reason.to_owned()),
                        reason_source: Some("local"),
                        ..Default::default()
                    },
                )
                .await?;
                return Ok(());
            }
        };
        let verdict =
            self.engine
                .evaluate(&recipient, &campaign.policy, &engine_facts(&facts), now);
        self.store
            .insert_audit(&[self.audit(&job, &verdict, "claim")])
            .await?;
        if self.apply_verdict(&job, &cname, &verdict, false).await? {
            return Ok(());
        }

        // The attempt: the unresolved one (same key, same body), or a new one
        // reserved atomically against every cap.
        let attempt = match job.current_attempt.clone() {
            Some(a) if matches!(a.placement, Placement::Reserved | Placement::PossiblyPlaced) => a,
            _ => {
                let body = serde_json::to_string(&DialRequest {
                    from_number: campaign.row.from_number.clone(),
                    to_number: job.phone.clone(),
                })?;
                let key = format!("dl_{}", uuid::Uuid::new_v4().simple());
                let caps: Vec<(u32, i64)> = self
                    .engine
                    .caps(&recipient, &campaign.policy, now)
                    .into_iter()
                    .map(|c| (c.calls, c.per.as_millis() as i64))
                    .collect();
                match self
                    .store
                    .reserve_attempt(&job, &key, &body, &caps, ms(now))
                    .await?
                {
                    Reservation::Reserved(a) => a,
                    Reservation::CapReached { retry_at_ms } => {
                        metrics::counter!(m::PREFLIGHT_BLOCKS, "campaign" => cname.clone(), "rule" => "frequency_cap").increment(1);
                        self.update(
                            &job,
                            &JobUpdate {
                                status: "queued",
                                due_at_ms: Some(retry_at_ms + jitter_ms(30_000)),
                                reason: Some("frequency_cap".into()),
                                reason_source: Some("local"),
                                ..Default::default()
                            },
                        )
                        .await?;
                        return Ok(());
                    }
                }
            }
        };
        self.dial_loop(job, campaign, recipient, attempt, probe)
            .await
    }

    /// Applies a blocking verdict (drop or requeue); returns true if it blocked.
    /// `sent_before`: the attempt was already sent (keep it, it is possibly placed).
    pub(crate) async fn apply_verdict(
        &self,
        job: &ClaimedJob,
        cname: &str,
        v: &Verdict,
        sent_before: bool,
    ) -> anyhow::Result<bool> {
        match v.outcome {
            compliance::Outcome::Allow => Ok(false),
            compliance::Outcome::Drop { rule } => {
                metrics::counter!(m::PREFLIGHT_BLOCKS, "campaign" => cname.to_owned(), "rule" => rule.as_str()).increment(1);
                tracing::info!(job_id = job.id, phone = %self.show(&job.phone), rule = rule.as_str(), "pre-flight drop");
                self.update(
                    job,
                    &JobUpdate {
                        status: "dropped",
                        reason: Some(rule.as_str().to_owned()),
                        reason_source: Some("local"),
                        attempt: unsent_attempt(job, sent_before),
                        clear_current_attempt: true,
                        ..Default::default()
                    },
                )
                .await?;
                Ok(true)
            }
            compliance::Outcome::Requeue { rule, at } => {
                metrics::counter!(m::PREFLIGHT_BLOCKS, "campaign" => cname.to_owned(), "rule" => rule.as_str()).increment(1);
                let keep = sent_before || job.current_attempt.as_ref().is_some_and(|a| a.sends > 0);
                self.update(
                    job,
                    &JobUpdate {
                        status: "queued",
                        // Jitter: jobs requeued to one window opening must not fire in a burst.
                        due_at_ms: Some(ms(at) + jitter_ms(60_000)),
                        reason: Some(rule.as_str().to_owned()),
                        reason_source: Some("local"),
                        attempt: unsent_attempt(job, keep),
                        clear_current_attempt: !keep,
                        ..Default::default()
                    },
                )
                .await?;
                Ok(true)
            }
        }
    }
}

/// A reserved attempt that was never sent is "not placed" when the job leaves it.
fn unsent_attempt(job: &ClaimedJob, sent: bool) -> Option<crate::store::AttemptUpdate> {
    match (&job.current_attempt, sent) {
        (Some(a), false) if a.sends == 0 => Some(crate::store::AttemptUpdate {
            id: a.id,
            placement: Some(Placement::NotPlaced),
            ..Default::default()
        }),
        _ => None,
    }
}

pub fn jitter_ms(max: i64) -> i64 {
    use rand::Rng;
    rand::rng().random_range(0..=max.max(0))
}
