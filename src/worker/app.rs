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
use crate::revdesk::wire::{CallResource, DialRequest};
use crate::store::{
    AttemptRow, AuditRecord, CampaignRow, ClaimedJob, Dispatch, Dispatched, DynStore, Guard,
    InboxEvent, JobUpdate, JobWrite, NumberFacts, Placement, SendKind, SendRequest,
};
use crate::worker::batch::Batcher;
use crate::worker::breaker::CircuitBreaker;
use crate::worker::outcomes::WebhookResult;
use crate::worker::pacing::{Pacer, PacerConfig};
use chrono::{DateTime, Utc};
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
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
    /// The account's halt; `worker`: this worker's halt too (an account halt blocks
    /// a worker probe, so the account's probe tests both, and its success lifts both).
    Account {
        worker: bool,
    },
    /// A campaign's auto-pause; `worker`: this worker's halt too (a halted worker
    /// whose probe finds no job outside auto-paused campaigns probes with one of
    /// their probe dials, so that neither waits on the other for good).
    Campaign {
        id: i64,
        worker: bool,
    },
    Worker,
}

impl Probe {
    /// Whether this dial probes this worker's halt (alone or with another's).
    pub fn probes_worker(self) -> bool {
        matches!(
            self,
            Probe::Worker | Probe::Account { worker: true } | Probe::Campaign { worker: true, .. }
        )
    }
}

/// The pauses and halts in force when a claimed job is about to be sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Stops {
    pub operator_paused: bool,
    pub auto_paused: bool,
    pub account_halted: bool,
    pub worker_halted: bool,
}

/// Whether a claimed job of campaign `campaign_id` must go back to the queue
/// unchanged instead of being sent (SPEC section 8: "a job refused by a pause or
/// halt returns to `queued` unchanged"). A probe passes the one condition it probes
/// and no other: a campaign's probe its own campaign's automatic pause, the
/// account's probe the account halt (and this worker's halt when it probes that
/// too), the worker's probe this worker's halt. An operator's pause is never probed.
pub(crate) fn refused(probe: Option<Probe>, campaign_id: i64, s: Stops) -> bool {
    s.operator_paused
        || (s.auto_paused
            && !matches!(probe, Some(Probe::Campaign { id, .. }) if id == campaign_id))
        || (s.account_halted && !matches!(probe, Some(Probe::Account { .. })))
        || (s.worker_halted
            && !matches!(
                probe,
                Some(
                    Probe::Worker
                        | Probe::Account { worker: true }
                        | Probe::Campaign { worker: true, .. }
                )
            ))
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
    recent_outcomes: Mutex<HashMap<i64, crate::decision::RecentOutcomes>>,
    pause_counts: Mutex<PauseCounts>,
    /// Jobs this worker holds, released on shutdown if still held.
    pub(crate) held: Mutex<HashSet<i64>>,
    /// This worker saw the account halted (set on a halting answer, cleared when
    /// the claim loop finds no halt): claimed jobs go back unchanged.
    pub(crate) account_halted: std::sync::atomic::AtomicBool,
    /// The group commits of decisions and of webhook events (started on first use,
    /// inside the runtime).
    decisions: OnceLock<Batcher<JobWrite, bool>>,
    webhooks: OnceLock<Batcher<(InboxEvent, CallResource), WebhookResult>>,
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
            decisions: OnceLock::new(),
            webhooks: OnceLock::new(),
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

    pub(crate) fn decisions_cell(&self) -> &OnceLock<Batcher<JobWrite, bool>> {
        &self.decisions
    }
    pub(crate) fn webhooks_cell(
        &self,
    ) -> &OnceLock<Batcher<(InboxEvent, CallResource), WebhookResult>> {
        &self.webhooks
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
    pub(crate) fn recent_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<i64, crate::decision::RecentOutcomes>> {
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

    /// Whether `job` must go back to the queue unchanged rather than be sent now:
    /// its campaign is paused or the account or this worker is halted, and the job
    /// is not the probe of that condition ([`refused`]). Campaigns are read through
    /// the two-second cache; a campaign that cannot be read refuses.
    pub(crate) async fn refused_by_pause_or_halt(
        &self,
        job: &ClaimedJob,
        probe: Option<Probe>,
    ) -> bool {
        let (operator_paused, auto_paused) = match self.campaign(job.campaign_id).await {
            Ok(c) => (c.row.operator_paused, c.row.auto_pause_reason.is_some()),
            Err(e) => {
                tracing::warn!(job_id = job.id, error = %e, "cannot read the job's campaign; not sending");
                return true;
            }
        };
        let stops = Stops {
            operator_paused,
            auto_paused,
            account_halted: self.account_halted.load(Ordering::Relaxed),
            worker_halted: self.worker_halt().is_some(),
        };
        refused(probe, job.campaign_id, stops)
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

    /// The verdict right before a request (SPEC section 6: checked "at the moment of
    /// dialing"; the rules "evaluated again immediately before every request, provider
    /// retries included"): the full pre-flight, every rule in order, on the facts read
    /// at the claim (`facts`: DNC, opt-out, consent, counted calls; kept with the dial
    /// in flight) at `now`, the current time. So a consent that expired, or a calling
    /// day or window that ended, between the claim and this request blocks it.
    ///
    /// `None` when the request may go; else the blocking verdict (drop or requeue),
    /// the one the pre-flight would give at `now`. In memory: no query, and no verdict
    /// is built when every rule allows (the hot path: one per request).
    pub(crate) fn pre_request_verdict(
        &self,
        recipient: &Recipient,
        campaign: &CampaignCtx,
        facts: &Facts,
        now: DateTime<Utc>,
    ) -> Option<Verdict> {
        self.engine
            .blocking_verdict(recipient, &campaign.policy, facts, now)
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

/// A claimed job that passed pre-flight: it waits for the pacer, then is dispatched.
struct Allowed {
    job: ClaimedJob,
    campaign: Arc<CampaignCtx>,
    recipient: Recipient,
    /// The facts read at the claim, evaluated again right before every request.
    facts: Facts,
    probe: Option<Probe>,
    /// Its pre-flight verdict, recorded with its dispatch.
    audit: AuditRecord,
}

/// A job whose attempt was recorded and counted as sent: its request may leave.
pub(crate) struct Ready {
    pub job: ClaimedJob,
    pub campaign: Arc<CampaignCtx>,
    pub recipient: Recipient,
    /// The facts read at the claim (its own attempt left out of the counted calls):
    /// [`App::pre_request_verdict`] evaluates them again before every request.
    pub facts: Facts,
    pub attempt: AttemptRow,
    pub probe: Option<Probe>,
}

/// Pre-flight of a claimed batch, before anything is written: the audit rows and
/// decisions of the jobs it blocks, and the jobs it allows.
struct Preflight {
    audits: Vec<AuditRecord>,
    writes: Vec<(ClaimedJob, JobUpdate)>,
    allowed: Vec<Allowed>,
}

impl App {
    /// Decides one job under this worker's lease (a per-job path: retries, pauses,
    /// key settlement). The write joins the decision group commit.
    pub(crate) async fn update(
        self: &Arc<Self>,
        job: &ClaimedJob,
        u: &JobUpdate,
    ) -> anyhow::Result<bool> {
        let applied = self
            .decide(JobWrite {
                job_id: job.id,
                guard: Guard::Lease(self.worker_id.clone()),
                update: u.clone(),
                now_ms: self.now_ms(),
            })
            .await?;
        if !applied {
            tracing::warn!(
                job_id = job.id,
                "lease lost before the decision was stored; another worker owns the job"
            );
        }
        Ok(applied)
    }

    /// One claimed batch, from pre-flight to the last decision (issue 5: the writes of
    /// a batch are a few set-based statements, not a few per job). Pre-flight runs on
    /// facts read moments ago; then the allowed jobs pass the pacer in order, and each
    /// group that passed is dispatched in one transaction (verdicts, blocked jobs'
    /// decisions, attempts checked against the caps and counted as sent) right before
    /// its requests leave. Every job ends in a decision, a dial task or a release.
    /// `permits` holds one in-flight slot per claimed job; each is freed when its job
    /// is decided or its dial task ends.
    pub(crate) async fn run_batch(
        self: Arc<Self>,
        claimed: Vec<(ClaimedJob, Option<Probe>)>,
        facts: HashMap<(i64, String), NumberFacts>,
        mut permits: tokio::sync::OwnedSemaphorePermit,
    ) {
        let mut dials = tokio::task::JoinSet::new();
        let now = self.now();
        let mut pre = match self.preflight(claimed, facts, now).await {
            Ok(p) => p,
            Err((e, jobs)) => {
                tracing::warn!(error = %e, "pre-flight of the claimed batch failed; releasing it");
                self.release_all(jobs.iter().map(|j| j.id)).await;
                return;
            }
        };
        let mut group: Vec<Allowed> = Vec::new();
        let mut queue = std::mem::take(&mut pre.allowed).into_iter();
        let mut stopped = false;
        while let Some(a) = queue.next() {
            // Pacing: the account rate (shared by live workers) and the campaign's.
            let cname = a.campaign.row.name.clone();
            let mut acquire = self.pacer.acquire(Some(&cname));
            match acquire.try_now() {
                Ok(()) => metrics::histogram!(m::RATE_WAIT).record(0.0),
                Err(mut wait) => {
                    // Send what already passed before waiting for the rest.
                    if !group.is_empty() || !pre.writes.is_empty() {
                        self.flush(
                            &mut pre,
                            std::mem::take(&mut group),
                            &mut permits,
                            &mut dials,
                        )
                        .await;
                    }
                    let started = Instant::now();
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep(wait.max(Duration::from_millis(1))) => {},
                            _ = self.cancel.cancelled() => { stopped = true; break; }
                        }
                        match acquire.try_now() {
                            Ok(()) => break,
                            Err(w) => wait = w,
                        }
                    }
                    if stopped {
                        // Stopping: the rest goes back to the queue unchanged.
                        let rest: Vec<i64> = std::iter::once(a.job.id)
                            .chain(queue.by_ref().map(|a| a.job.id))
                            .collect();
                        self.release_all(rest.into_iter()).await;
                        break;
                    }
                    metrics::histogram!(m::RATE_WAIT).record(started.elapsed().as_secs_f64());
                }
            }
            group.push(a);
        }
        if !group.is_empty() || !pre.writes.is_empty() {
            self.flush(&mut pre, group, &mut permits, &mut dials).await;
        }
        drop(permits);
        while dials.join_next().await.is_some() {}
    }

    /// Gives claimed jobs back unchanged (best effort: if the database is gone, the
    /// leases expire and another claim takes them).
    async fn release_all(&self, ids: impl Iterator<Item = i64>) {
        for id in ids {
            if let Err(e) = self.store.release(id, &self.worker_id, self.now_ms()).await {
                tracing::warn!(job_id = id, error = %e, "release failed; the lease will expire");
            }
            self.held.lock().expect("poisoned").remove(&id);
        }
    }

    /// Pre-flight of every claimed job, in memory (SPEC section 6): all rules on the
    /// facts read at the claim. On an error the claimed jobs come back for release.
    async fn preflight(
        self: &Arc<Self>,
        claimed: Vec<(ClaimedJob, Option<Probe>)>,
        mut facts: HashMap<(i64, String), NumberFacts>,
        now: DateTime<Utc>,
    ) -> Result<Preflight, (anyhow::Error, Vec<ClaimedJob>)> {
        let mut campaigns = HashMap::new();
        for (job, _) in &claimed {
            if let std::collections::hash_map::Entry::Vacant(e) = campaigns.entry(job.campaign_id) {
                match self.campaign(job.campaign_id).await {
                    Ok(c) => {
                        e.insert(c);
                    }
                    Err(err) => return Err((err, claimed.into_iter().map(|(j, _)| j).collect())),
                }
            }
        }
        let mut pre = Preflight {
            audits: Vec::new(),
            writes: Vec::new(),
            allowed: Vec::with_capacity(claimed.len()),
        };
        for (job, probe) in claimed {
            let campaign = campaigns[&job.campaign_id].clone();
            let cname = campaign.row.name.as_str();

            // A placed attempt whose job came back to the queue (lease lost after
            // the 202): never dial again, wait for its outcome.
            if job
                .current_attempt
                .as_ref()
                .is_some_and(|a| a.placement == Placement::Placed)
            {
                let u = JobUpdate {
                    status: "awaiting_outcome",
                    ..Default::default()
                };
                pre.writes.push((job, u));
                continue;
            }

            // The special-number and validity rules on the digits, again at the
            // moment of dialing (47 CFR 64.1200; SPEC section 6).
            let recipient = match recipient(&self.engine, &job) {
                Ok((_, r)) => r,
                Err(e) => {
                    let reason = e.reason();
                    metrics::counter!(m::PREFLIGHT_BLOCKS, "campaign" => cname.to_owned(), "rule" => reason).increment(1);
                    let u = JobUpdate {
                        status: "dropped",
                        reason: Some(reason.to_owned()),
                        reason_source: Some("local"),
                        ..Default::default()
                    };
                    pre.writes.push((job, u));
                    continue;
                }
            };

            // A key kept past revdesk.key_ttl is never re-sent (the vendor may have
            // forgotten it): the attempt is settled as possibly placed, unknown outcome.
            if let Some(u) = self.settle_expired_key(&job, &campaign, now) {
                pre.writes.push((job, u));
                continue;
            }

            // A phone is in a campaign once: each entry serves one job, taken, not copied.
            let mut f = facts
                .remove(&(job.campaign_id, job.phone.clone()))
                .unwrap_or_default();
            // An unresolved attempt is re-sent under its key: not a new call, so it
            // does not count against itself (the dispatch checks caps for new
            // attempts only). Counted, it would hold its own "retry in 5m, same key"
            // (SPEC section 8) back until its key expired. Other calls still count.
            if let Some(own) = job
                .current_attempt
                .as_ref()
                .filter(|a| matches!(a.placement, Placement::Reserved | Placement::PossiblyPlaced))
            {
                let at = own.counted_at_ms();
                if let Some(i) = f.counted_calls_ms.iter().position(|t| *t == at) {
                    f.counted_calls_ms.remove(i);
                }
            }
            let facts = engine_facts(&f);
            let verdict = self
                .engine
                .evaluate(&recipient, &campaign.policy, &facts, now);
            let audit = self.audit(&job, &verdict, "claim");
            if let Some(u) = self.verdict_update(&job, cname, &verdict, false) {
                pre.audits.push(audit);
                pre.writes.push((job, u));
                continue;
            }
            pre.allowed.push(Allowed {
                job,
                campaign,
                recipient,
                facts,
                probe,
                audit,
            });
        }
        Ok(pre)
    }

    /// Dispatches one group that passed the pacer, with the batch's pending audit
    /// rows and decisions, then starts a dial task for each job sent. A job refused
    /// by a pause or halt that began meanwhile goes back unchanged (SPEC section 8).
    /// Time passed since the claim (the pacer's wait), so right before the dispatch a
    /// kept key is checked against `revdesk.key_ttl` again (SPEC section 7) and the
    /// whole pre-flight runs again on the claim's facts (SPEC section 6); the first
    /// request leaves right after the dispatch, and the dial task checks both again
    /// before each same-key retry.
    async fn flush(
        self: &Arc<Self>,
        pre: &mut Preflight,
        group: Vec<Allowed>,
        permits: &mut tokio::sync::OwnedSemaphorePermit,
        dials: &mut tokio::task::JoinSet<()>,
    ) {
        // Free the cells of this batch's dial tasks that have ended (about 2.9 KB
        // each) now rather than at the batch's end.
        while dials.try_join_next().is_some() {}
        let now = self.now();
        let now_ms = ms(now);
        let mut audits = std::mem::take(&mut pre.audits);
        let mut decided = std::mem::take(&mut pre.writes);
        let mut sends: Vec<(SendRequest, Allowed)> = Vec::with_capacity(group.len());
        let mut refused = Vec::new();
        for a in group {
            if self.refused_by_pause_or_halt(&a.job, a.probe).await {
                refused.push(a.job.id);
                continue;
            }
            audits.push(a.audit.clone());
            // A kept key that outlived revdesk.key_ttl while the job waited is never
            // re-sent (the vendor may have forgotten it): settled, as at the claim.
            if let Some(u) = self.settle_expired_key(&a.job, &a.campaign, now) {
                decided.push((a.job, u));
                continue;
            }
            // The whole pre-flight again, on the claim's facts, at this instant: a
            // consent that expired or a window that closed since the claim blocks.
            if let Some(v) = self.pre_request_verdict(&a.recipient, &a.campaign, &a.facts, now) {
                audits.push(self.audit(&a.job, &v, "pre_request"));
                let sent = a.job.current_attempt.as_ref().is_some_and(|x| x.sends > 0);
                if let Some(u) = self.verdict_update(&a.job, &a.campaign.row.name, &v, sent) {
                    decided.push((a.job, u));
                }
                continue;
            }
            let send = match &a.job.current_attempt {
                // The unresolved attempt: the same key and the exact stored body.
                Some(x)
                    if matches!(x.placement, Placement::Reserved | Placement::PossiblyPlaced) =>
                {
                    SendKind::Resend { attempt_id: x.id }
                }
                _ => {
                    let body = match serde_json::to_string(&DialRequest {
                        from_number: a.campaign.row.from_number.clone(),
                        to_number: a.job.phone.clone(),
                    }) {
                        Ok(b) => b,
                        Err(e) => {
                            tracing::error!(job_id = a.job.id, error = %e, "cannot encode the dial request");
                            refused.push(a.job.id);
                            continue;
                        }
                    };
                    SendKind::New {
                        key: format!("dl_{}", uuid::Uuid::new_v4().simple()),
                        body,
                        caps: self
                            .engine
                            .caps(&a.recipient, &a.campaign.policy, now)
                            .into_iter()
                            .map(|c| (c.calls, c.per.as_millis() as i64))
                            .collect(),
                        requeue_jitter_ms: jitter_ms(30_000),
                    }
                }
            };
            let req = SendRequest {
                job_id: a.job.id,
                campaign_id: a.job.campaign_id,
                phone: a.job.phone.clone(),
                send,
                now_ms,
            };
            sends.push((req, a));
        }
        if !refused.is_empty() {
            self.release_all(refused.into_iter()).await;
        }
        let d = Dispatch {
            owner: self.worker_id.clone(),
            audits,
            writes: decided
                .iter()
                .map(|(job, u)| JobWrite {
                    job_id: job.id,
                    guard: Guard::Lease(self.worker_id.clone()),
                    update: u.clone(),
                    now_ms,
                })
                .collect(),
            sends: sends.iter().map(|(r, _)| r.clone()).collect(),
        };
        let result = match self.store.dispatch(&d).await {
            Ok(r) => r,
            Err(e) => {
                // Nothing of the group was recorded (one transaction): give it back.
                tracing::warn!(error = %e, jobs = d.writes.len() + d.sends.len(), "dispatch failed; releasing the jobs");
                let ids: Vec<i64> = decided
                    .iter()
                    .map(|(j, _)| j.id)
                    .chain(sends.iter().map(|(r, _)| r.job_id))
                    .collect();
                self.release_all(ids.into_iter()).await;
                return;
            }
        };
        {
            let mut held = self.held.lock().expect("poisoned");
            for ((job, _), ok) in decided.iter().zip(&result.writes) {
                if !ok {
                    tracing::warn!(
                        job_id = job.id,
                        "lease lost before the decision was stored; another worker owns the job"
                    );
                }
                held.remove(&job.id);
            }
        }
        // Decided jobs free their in-flight slots now.
        if let Some(p) = permits.split(decided.len()) {
            drop(p);
        }
        for ((_, a), answer) in sends.into_iter().zip(result.sends) {
            match answer {
                Dispatched::Sent(attempt) => {
                    let permit = permits.split(1);
                    let app = self.clone();
                    let mut job = a.job;
                    if job.current_attempt.as_ref().map(|c| c.id) != Some(attempt.id) {
                        // A new attempt: its provider retries start at 0 (the store
                        // reset the column with the reservation).
                        job.provider_retries = 0;
                    }
                    job.current_attempt = Some(attempt.clone());
                    let ready = Box::new(Ready {
                        job,
                        campaign: a.campaign,
                        recipient: a.recipient,
                        facts: a.facts,
                        attempt,
                        probe: a.probe,
                    });
                    dials.spawn(async move {
                        app.dial_sent(ready).await;
                        drop(permit);
                    });
                }
                Dispatched::CapReached { .. } => {
                    metrics::counter!(m::PREFLIGHT_BLOCKS, "campaign" => a.campaign.row.name.clone(), "rule" => "frequency_cap").increment(1);
                    self.held.lock().expect("poisoned").remove(&a.job.id);
                    if let Some(p) = permits.split(1) {
                        drop(p);
                    }
                }
                Dispatched::LeaseLost => {
                    tracing::warn!(
                        job_id = a.job.id,
                        "lease lost before the request was sent; not sending"
                    );
                    self.held.lock().expect("poisoned").remove(&a.job.id);
                    if let Some(p) = permits.split(1) {
                        drop(p);
                    }
                }
            }
        }
    }

    /// Applies a blocking verdict (drop or requeue); returns true if it blocked.
    /// `sent_before`: the attempt was already sent (keep it, it is possibly placed).
    pub(crate) async fn apply_verdict(
        self: &Arc<Self>,
        job: &ClaimedJob,
        cname: &str,
        v: &Verdict,
        sent_before: bool,
    ) -> anyhow::Result<bool> {
        match self.verdict_update(job, cname, v, sent_before) {
            None => Ok(false),
            Some(u) => {
                self.update(job, &u).await?;
                Ok(true)
            }
        }
    }

    /// The job update a blocking verdict makes (drop or requeue), counted in the
    /// metrics; None when the verdict allows the dial.
    fn verdict_update(
        &self,
        job: &ClaimedJob,
        cname: &str,
        v: &Verdict,
        sent_before: bool,
    ) -> Option<JobUpdate> {
        match v.outcome {
            compliance::Outcome::Allow => None,
            compliance::Outcome::Drop { rule } => {
                metrics::counter!(m::PREFLIGHT_BLOCKS, "campaign" => cname.to_owned(), "rule" => rule.as_str()).increment(1);
                tracing::info!(job_id = job.id, phone = %self.show(&job.phone), rule = rule.as_str(), "pre-flight drop");
                Some(JobUpdate {
                    status: "dropped",
                    reason: Some(rule.as_str().to_owned()),
                    reason_source: Some("local"),
                    attempt: unsent_attempt(job, sent_before),
                    clear_current_attempt: true,
                    ..Default::default()
                })
            }
            compliance::Outcome::Requeue { rule, at } => {
                metrics::counter!(m::PREFLIGHT_BLOCKS, "campaign" => cname.to_owned(), "rule" => rule.as_str()).increment(1);
                let keep = sent_before || job.current_attempt.as_ref().is_some_and(|a| a.sends > 0);
                Some(JobUpdate {
                    status: "queued",
                    // Jitter: jobs requeued to one window opening must not fire in a burst.
                    due_at_ms: Some(ms(at) + jitter_ms(60_000)),
                    reason: Some(rule.as_str().to_owned()),
                    reason_source: Some("local"),
                    attempt: unsent_attempt(job, keep),
                    clear_current_attempt: !keep,
                    ..Default::default()
                })
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
