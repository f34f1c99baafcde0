//! Rows and records the store reads and writes.

use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        }
    }
}

/// Job states (SPEC section 8).
pub const JOB_STATES: &[&str] = &[
    "queued",
    "running",
    "dialing",
    "awaiting_outcome",
    "done",
    "dropped",
    "exhausted",
];

#[derive(Debug, Clone, PartialEq)]
pub struct CampaignRow {
    pub id: i64,
    pub name: String,
    pub from_number: String,
    pub call_type: String,
    pub require_consent: Option<String>,
    pub max_attempts: i32,
    pub cap_calls: Option<i32>,
    pub cap_per_ms: Option<i64>,
    pub rate_per_second: Option<f64>,
    pub window_start: String,
    pub window_end: String,
    pub days: String,
    pub retry: String,
    pub spec: String,
    pub operator_paused: bool,
    pub auto_pause_reason: Option<String>,
    pub auto_paused_until_ms: Option<i64>,
    pub auto_pause_count: i32,
}

impl CampaignRow {
    /// `active`, `paused` (operator) or `paused:REASON` (automatic).
    pub fn state_label(&self, now_ms: i64) -> String {
        if self.operator_paused {
            "paused".into()
        } else if let Some(r) = &self.auto_pause_reason {
            match self.auto_paused_until_ms {
                Some(until) if until <= now_ms => format!("probing:{r}"),
                _ => format!("paused:{r}"),
            }
        } else {
            "active".into()
        }
    }
}

/// One valid contact row, ready to load.
#[derive(Debug, Clone, PartialEq)]
pub struct ContactRecord {
    pub phone: String,
    pub external_id: Option<String>,
    pub timezone: Option<String>,
    pub state: Option<String>,
    pub postal_code: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    /// Other columns, as a JSON object (None when there are none).
    pub attributes: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DncRecord {
    Number { phone: String, source: String },
    AreaCode { npa: String, source: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct OptOutRecord {
    pub phone: String,
    /// Empty = every campaign.
    pub campaign: String,
    pub opted_out_at_ms: i64,
    pub source: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConsentRecord {
    pub phone: String,
    /// Empty = every campaign.
    pub campaign: String,
    pub kind: String,
    pub granted_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConsentFactRow {
    pub kind: String,
    pub granted_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
}

/// What the store knows about one number, for pre-flight.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NumberFacts {
    pub phone: String,
    pub dnc: bool,
    pub dnc_source: Option<String>,
    pub opted_out: bool,
    pub consents: Vec<ConsentFactRow>,
    /// Times of counted calls (placed, possibly placed, or reserved) since the
    /// requested instant, across all campaigns, oldest first.
    pub counted_calls_ms: Vec<i64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CampaignStatus {
    pub name: String,
    pub state: String,
    pub jobs: BTreeMap<String, i64>,
    pub reasons: BTreeMap<String, i64>,
    pub attempts: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HaltStatus {
    pub account: String,
    pub reason: String,
    pub since: String,
    pub probe_at: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StatusReport {
    pub campaigns: Vec<CampaignStatus>,
    pub halted: Vec<HaltStatus>,
}

/// A job claimed under a lease, with its contact and current attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedJob {
    pub id: i64,
    pub campaign_id: i64,
    pub phone: String,
    pub timezone: Option<String>,
    pub state: Option<String>,
    pub postal_code: Option<String>,
    pub attempts: i32,
    pub provider_retries: i32,
    pub provider_requeues: i32,
    pub vendor_refusals: i32,
    /// The attempt still unresolved (ambiguous or not yet answered): its key and
    /// body are re-sent as they are.
    pub current_attempt: Option<AttemptRow>,
    /// True when this claim took over a lease that had expired (a dead worker's).
    pub recovered: bool,
}

/// Where an attempt stands with respect to a placed call (SPEC section 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Recorded, not yet answered: counts toward caps (it may be placed any moment).
    Reserved,
    /// 202 received.
    Placed,
    /// An ambiguous answer and no 202 since: counts for good, keeps its key.
    PossiblyPlaced,
    /// A definitive 4xx with no ambiguous predecessor: no call was placed.
    NotPlaced,
}

impl Placement {
    pub fn as_str(self) -> &'static str {
        match self {
            Placement::Reserved => "reserved",
            Placement::Placed => "placed",
            Placement::PossiblyPlaced => "possibly_placed",
            Placement::NotPlaced => "not_placed",
        }
    }
    pub fn parse(s: &str) -> Placement {
        match s {
            "placed" => Placement::Placed,
            "possibly_placed" => Placement::PossiblyPlaced,
            "not_placed" => Placement::NotPlaced,
            // Unknown values are treated as the most conservative live state.
            _ => Placement::Reserved,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRow {
    pub id: i64,
    pub job_id: i64,
    pub campaign_id: i64,
    pub phone: String,
    pub attempt_no: i32,
    pub idempotency_key: String,
    pub request_body: String,
    pub placement: Placement,
    pub sends: i32,
    pub created_at_ms: i64,
    pub first_sent_at_ms: Option<i64>,
    pub last_sent_at_ms: Option<i64>,
    pub call_id: Option<String>,
    pub placed_at_ms: Option<i64>,
    pub outcome_code: Option<String>,
}

impl AttemptRow {
    /// When the attempt counts toward frequency caps (SPEC section 6): its last
    /// send, the latest moment it can have been placed; its creation if never sent.
    /// The stores' counted-calls queries time it the same way.
    pub fn counted_at_ms(&self) -> i64 {
        self.last_sent_at_ms.unwrap_or(self.created_at_ms)
    }
}

/// Which condition the job part of an update requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guard {
    /// The worker still holds the job's lease.
    Lease(String),
    /// The job still awaits the outcome of this attempt (webhooks, reconciliation).
    Awaiting(i64),
}

/// The change one decision makes to a job and its current attempt, applied in one
/// transaction. An attempt moving from `reserved` to placed or possibly placed
/// counts once toward `max_attempts`; `possibly_placed` never goes back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobUpdate {
    /// New job status (`queued`, `awaiting_outcome`, `done`, `dropped`, `exhausted`).
    pub status: &'static str,
    pub due_at_ms: Option<i64>,
    pub reason: Option<String>,
    pub reason_source: Option<&'static str>,
    pub last_code: Option<String>,
    pub last_category: Option<String>,
    pub provider_retries: CounterChange,
    pub provider_requeues: CounterChange,
    pub vendor_refusals: CounterChange,
    /// Changes to the current attempt, when there is one.
    pub attempt: Option<AttemptUpdate>,
    /// Forget the current attempt: the next dial makes a new one (new key).
    pub clear_current_attempt: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CounterChange {
    #[default]
    Keep,
    Increment,
    Reset,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttemptUpdate {
    pub id: i64,
    pub placement: Option<Placement>,
    pub call_id: Option<String>,
    pub response_status: Option<i32>,
    pub response_code: Option<String>,
    pub response_category: Option<String>,
    pub outcome_code: Option<String>,
    pub outcome_category: Option<String>,
    pub outcome_source: Option<&'static str>,
}

/// One row of the compliance audit trail.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    pub job_id: Option<i64>,
    pub campaign_id: Option<i64>,
    pub phone: String,
    pub at_ms: i64,
    /// `claim` (all rules, facts just read) or `pre_request` (time rules again).
    pub stage: &'static str,
    pub verdict: String,
    pub rule: Option<String>,
    pub reason: String,
    pub zones: String,
    pub states: String,
    pub local_times: String,
    pub next_allowed_ms: Option<i64>,
}

/// An account-wide halt of dialing.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountHalt {
    pub account: String,
    pub reason: String,
    pub halted_at_ms: i64,
    pub probe_at_ms: i64,
    pub halt_count: i32,
    pub probe_job_id: Option<i64>,
}

/// A webhook event kept in the inbox.
#[derive(Debug, Clone, PartialEq)]
pub struct InboxEvent {
    pub event_id: String,
    pub call_id: String,
    pub body: String,
}

/// One decision of a batch (`Store::update_jobs`).
#[derive(Debug, Clone, PartialEq)]
pub struct JobWrite {
    pub job_id: i64,
    pub guard: Guard,
    pub update: JobUpdate,
    pub now_ms: i64,
}

/// What is sent for one job of a dispatch (`Store::dispatch`).
#[derive(Debug, Clone, PartialEq)]
pub enum SendKind {
    /// A new attempt: checked against every cap and recorded, with its first send
    /// counted, in one atomic step. When a cap is reached the job is requeued (rule
    /// `frequency_cap`) to when the oldest counted call leaves the window, plus
    /// `requeue_jitter_ms`.
    New {
        key: String,
        body: String,
        caps: Vec<(u32, i64)>,
        requeue_jitter_ms: i64,
    },
    /// One more send of the job's unresolved attempt (same key, same stored body).
    Resend { attempt_id: i64 },
}

/// One job of a dispatch about to be dialed.
#[derive(Debug, Clone, PartialEq)]
pub struct SendRequest {
    pub job_id: i64,
    pub campaign_id: i64,
    pub phone: String,
    pub send: SendKind,
    pub now_ms: i64,
}

/// What a dispatch did with one [`SendRequest`].
#[derive(Debug, Clone, PartialEq)]
// One per send of a dispatch, short-lived: boxing the attempt would cost an
// allocation per dial to save a few hundred bytes for the rare other variants.
#[allow(clippy::large_enum_variant)]
pub enum Dispatched {
    /// Recorded and counted as sent: the request may leave now.
    Sent(AttemptRow),
    /// A cap was reached; the job was requeued in the same transaction.
    CapReached { retry_at_ms: i64 },
    /// The caller no longer holds the job's lease: it must not send.
    LeaseLost,
}

/// Everything the worker records for a group of claimed jobs before any of them is
/// dialed, in one transaction: the pre-flight verdicts (audit rows), the decisions
/// for jobs pre-flight blocked, and the attempts about to be sent. Job ids are
/// distinct across `writes` and `sends`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dispatch {
    pub owner: String,
    pub audits: Vec<AuditRecord>,
    pub writes: Vec<JobWrite>,
    pub sends: Vec<SendRequest>,
}

/// The result of a [`Dispatch`], in the order given.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DispatchResult {
    pub writes: Vec<bool>,
    pub sends: Vec<Dispatched>,
}

/// The attempt a call id belongs to, and where its job stands
/// (`Store::outcome_targets`).
#[derive(Debug, Clone, PartialEq)]
pub struct OutcomeTarget {
    pub attempt: AttemptRow,
    /// The job's counted attempts (`jobs.attempts`).
    pub job_attempts: i32,
    /// The job awaits this attempt's outcome (`awaiting_outcome`, and this attempt
    /// is its current one): an outcome decides the job.
    pub awaiting: bool,
    /// This attempt is still the job's current one but the job does not await its
    /// outcome yet (`queued`, `running` or `dialing`: the worker that got the 202
    /// lost its lease before the job took it; the job's next claim moves it to
    /// `awaiting_outcome` without dialing). An outcome for it waits in the inbox
    /// until then, and the sweeper applies it.
    pub before_202: bool,
}

/// Outcomes applied in one transaction (`Store::apply_outcomes`): job decisions
/// (guarded by `Guard::Awaiting`), outcomes recorded on attempts only (the job
/// already had its outcome or is final), and the inbox events they settle with
/// their result labels (`None` means "applied" if the event's job write applied,
/// else "duplicate_outcome").
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutcomeBatch {
    pub writes: Vec<JobWrite>,
    pub recorded: Vec<AttemptUpdate>,
    pub marks: Vec<InboxMark>,
    pub now_ms: i64,
}

/// An inbox event settled by an [`OutcomeBatch`].
#[derive(Debug, Clone, PartialEq)]
pub struct InboxMark {
    pub event_id: String,
    /// The fixed result label, or None to take it from `write` (index into
    /// `OutcomeBatch::writes`): "applied" when it applied, else "duplicate_outcome".
    pub result: Option<&'static str>,
    pub write: Option<usize>,
}

impl InboxMark {
    /// The result label stored for this event, given which writes applied.
    pub fn label(&self, applied: &[bool]) -> &'static str {
        match (self.result, self.write) {
            (Some(r), _) => r,
            (None, Some(i)) if applied.get(i).copied().unwrap_or(false) => "applied",
            (None, _) => "duplicate_outcome",
        }
    }
}

impl JobUpdate {
    /// A frequency cap was reached at the moment of dialing: back to the queue until
    /// the oldest counted call leaves the window (SPEC section 6).
    pub fn cap_requeue(due_at_ms: i64) -> JobUpdate {
        JobUpdate {
            status: "queued",
            due_at_ms: Some(due_at_ms),
            reason: Some("frequency_cap".into()),
            reason_source: Some("local"),
            ..Default::default()
        }
    }
}
