//! Response -> [`Decision`], as a table (SPEC.md section 8). Pure: no clock, no I/O.
//!
//! Two entry points: [`decide_dial`] for the synchronous answer to
//! `POST /v1/calls/dial` and [`decide_outcome`] for a call's final outcome (webhook,
//! call resource, or a call the vendor no longer knows). Both return one [`Action`]
//! plus the side effects the worker must apply ([`Decision`]).
//!
//! Vocabulary (SPEC section 8): **retry** = send the same request again soon, same
//! key; **requeue** = put the job back in the queue with a due time; **drop** = final,
//! with a reason; **pause** = a campaign stops being claimed; **halt** = the account or
//! the worker stops dialing.
//!
//! Routing is data: [`sync_route`] maps every known [`Code`] (exhaustively, no
//! `_ =>`), [`category_route`] every [`Category`] for unknown codes, and
//! [`status_route`] the HTTP status for unknown categories.
//!
//! | SPEC row | action | effects |
//! |---|---|---|
//! | 202 | `Placed` | attempt counts |
//! | destination_invalid; validation_error on `to_number` | `Drop invalid_number` | pre-flight miss |
//! | destination_missing; validation_error otherwise | `PauseCampaign request_rejected`, until resume | |
//! | no_active_number | `PauseCampaign` for `retry.no_active_number` (doubling to 1h) | |
//! | caller_id_not_verified | `PauseCampaign`, until resume | |
//! | destination_blocked, dnc_suppressed, recipient_opted_out, no_consent | `Drop` (source vendor) | pre-flight miss, DNC / opt-out lists |
//! | window, day, cap refusals | `Requeue` at max(next allowed, now + min), 3rd: `Drop vendor_refused` | pre-flight miss, refusal counter |
//! | voice_usage_exhausted, no_active_subscription | `HaltAccount`, probe after `retry.account_halt` | |
//! | rate_limited, no_number_available | `Requeue` after clamped `Retry-After` or backoff | `lower_rate`, 429 counter |
//! | provider error, timeout, connection | `Retry` (same key) x `provider_max`, `Requeue` (5m..1h) x `provider_requeues`, `Drop provider_failed`; breaker tripped: `HaltAccount` | possibly placed, key kept |
//! | unauthorized, forbidden, not_found | `HaltWorker` | |
//! | idempotency_conflict | `Drop idempotency_conflict` | possibly placed |
//! | not the envelope | 5xx: as provider error; else `HaltWorker unexpected_response` | |
//! | unknown code | [`category_route`], then [`status_route`] | `unknown_code` |
//!
//! Keys (SPEC section 7): `keep_key` is true whenever the attempt is possibly placed;
//! an ambiguous attempt past `revdesk.key_ttl` is settled by [`settle_expired_key`]
//! (requeued like no_answer under a new key, or exhausted).

pub mod policy;

pub use policy::{
    RetryPolicy, RetrySettings, VoicemailRetry, after, clamp_retry_after, doubled_pause,
};

use crate::revdesk::codes::{Category, Code};
use crate::revdesk::wire::{ApiError, CallResource, DialResult};
use chrono::{DateTime, Utc};
use rand::Rng;
use std::collections::HashMap;
use std::time::Duration;

/// Who found the reason for a drop: the local pre-flight or the vendor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    Vendor,
    Local,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Vendor => "vendor",
            Source::Local => "local",
        }
    }
}

/// Why a job was dropped. One vocabulary with the local pre-flight (its rule names
/// `dnc`, `opted_out`, `no_consent`, `destination_blocked`, `invalid_number`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The number is on a Do-Not-Call list (vendor `dnc_suppressed`).
    Dnc,
    /// The contact opted out (vendor `recipient_opted_out`).
    OptedOut,
    /// No calling consent on file (vendor `no_consent`).
    NoConsent,
    /// Emergency or special-service number (vendor `destination_blocked`).
    DestinationBlocked,
    /// Not a valid, dialable number (`destination_invalid`, `validation_error` on
    /// `to_number`, `number_unreachable`, `carrier_rejected`).
    InvalidNumber,
    /// The recipient declined the call (`call_declined`).
    Declined,
    /// Labelled: the job kept failing with provider errors while other dials
    /// succeeded, after `retry.provider_requeues` requeues.
    ProviderFailed,
    /// Labelled: the vendor refused the job on compliance grounds
    /// `retry.vendor_refusals` times although pre-flight allowed it.
    VendorRefused,
    /// Labelled: the key already placed a call with a different body.
    IdempotencyConflict,
}

impl DropReason {
    pub const ALL: [DropReason; 9] = [
        DropReason::Dnc,
        DropReason::OptedOut,
        DropReason::NoConsent,
        DropReason::DestinationBlocked,
        DropReason::InvalidNumber,
        DropReason::Declined,
        DropReason::ProviderFailed,
        DropReason::VendorRefused,
        DropReason::IdempotencyConflict,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Dnc => "dnc",
            DropReason::OptedOut => "opted_out",
            DropReason::NoConsent => "no_consent",
            DropReason::DestinationBlocked => "destination_blocked",
            DropReason::InvalidNumber => "invalid_number",
            DropReason::Declined => "declined",
            DropReason::ProviderFailed => "provider_failed",
            DropReason::VendorRefused => "vendor_refused",
            DropReason::IdempotencyConflict => "idempotency_conflict",
        }
    }

    /// True for the three drops whose cause may not be the contact's: they are
    /// labelled and can be undone with `dialer campaign requeue` (SPEC section 8).
    pub fn is_labelled(self) -> bool {
        match self {
            DropReason::ProviderFailed
            | DropReason::VendorRefused
            | DropReason::IdempotencyConflict => true,
            DropReason::Dnc
            | DropReason::OptedOut
            | DropReason::NoConsent
            | DropReason::DestinationBlocked
            | DropReason::InvalidNumber
            | DropReason::Declined => false,
        }
    }
}

/// Why a campaign was paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PauseReason {
    /// Our request is wrong for every contact (`destination_missing`,
    /// `validation_error` not naming `to_number`, an unknown `invalid_request` code,
    /// an unknown 4xx).
    RequestRejected,
    /// The account has no active number yet (`no_active_number`).
    NoActiveNumber,
    /// The campaign's caller ID is not verified (`caller_id_not_verified`).
    CallerIdNotVerified,
    /// At least half of the campaign's recent outcomes are `carrier_rejected`: the
    /// caller ID, not the contacts.
    CallerIdReputation,
}

impl PauseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            PauseReason::RequestRejected => "request_rejected",
            PauseReason::NoActiveNumber => "no_active_number",
            PauseReason::CallerIdNotVerified => "caller_id_not_verified",
            PauseReason::CallerIdReputation => "caller_id_reputation",
        }
    }
}

/// Why dialing was halted for the whole account (every campaign).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccountHaltReason {
    /// `voice_usage_exhausted`.
    VoiceUsageExhausted,
    /// `no_active_subscription`.
    NoActiveSubscription,
    /// An unknown code in the `account_limit` category.
    AccountLimit,
    /// The circuit breaker: most recent dials failed ambiguously (an outage).
    ProviderOutage,
}

impl AccountHaltReason {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountHaltReason::VoiceUsageExhausted => "voice_usage_exhausted",
            AccountHaltReason::NoActiveSubscription => "no_active_subscription",
            AccountHaltReason::AccountLimit => "account_limit",
            AccountHaltReason::ProviderOutage => "provider_outage",
        }
    }
}

/// Why this worker stopped dialing (a configuration or credential fault).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkerHaltReason {
    /// 401 `unauthorized` (or an unknown code with an unknown category and 401).
    Unauthorized,
    /// 403 `forbidden` (or unknown code, unknown category, 403).
    Forbidden,
    /// 404 `not_found` on the dial (or unknown code, unknown category, 404).
    NotFound,
    /// A 4xx (or a non-error status) whose body is not the vendor's envelope, or a
    /// 2xx that breaks the contract.
    UnexpectedResponse,
}

impl WorkerHaltReason {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerHaltReason::Unauthorized => "unauthorized",
            WorkerHaltReason::Forbidden => "forbidden",
            WorkerHaltReason::NotFound => "not_found",
            WorkerHaltReason::UnexpectedResponse => "unexpected_response",
        }
    }
}

/// Why a job was requeued. The compliance words are the pre-flight's rule names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequeueReason {
    /// Vendor `outside_calling_window`.
    CallingWindow,
    /// Vendor `calling_day_not_allowed`.
    CallingDay,
    /// Vendor `frequency_cap_exceeded`.
    FrequencyCap,
    /// An unknown code in the `compliance_blocked` category (a window refusal).
    ComplianceBlocked,
    /// Vendor `rate_limited`.
    RateLimited,
    /// Vendor `no_number_available`.
    NoNumberAvailable,
    /// An unknown code with an unknown category and HTTP 429.
    TooManyRequests,
    /// Provider error, timeout or connection error after `retry.provider_max`
    /// same-key retries: requeued with the same key.
    ProviderError,
    /// Outcome `busy`.
    Busy,
    /// Outcome `no_answer`.
    NoAnswer,
    /// Outcome `voicemail_reached` with a campaign `voicemail` delay.
    Voicemail,
    /// An unknown failure code in the `unreachable` category.
    Unreachable,
    /// An unknown failure code and category, or a call the vendor no longer knows.
    UnknownOutcome,
    /// The attempt stayed ambiguous past `revdesk.key_ttl`: settled as possibly
    /// placed with an unknown outcome.
    KeyExpired,
}

impl RequeueReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RequeueReason::CallingWindow => "calling_window",
            RequeueReason::CallingDay => "calling_day",
            RequeueReason::FrequencyCap => "frequency_cap",
            RequeueReason::ComplianceBlocked => "compliance_blocked",
            RequeueReason::RateLimited => "rate_limited",
            RequeueReason::NoNumberAvailable => "no_number_available",
            RequeueReason::TooManyRequests => "too_many_requests",
            RequeueReason::ProviderError => "provider_error",
            RequeueReason::Busy => "busy",
            RequeueReason::NoAnswer => "no_answer",
            RequeueReason::Voicemail => "voicemail",
            RequeueReason::Unreachable => "unreachable",
            RequeueReason::UnknownOutcome => "unknown_outcome",
            RequeueReason::KeyExpired => "key_expired",
        }
    }
}

/// What happens to the job.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// 202: "attempt placed: job waits for its outcome" (`awaiting_outcome`). From
    /// [`decide_outcome`]: the call has not ended yet, keep waiting.
    Placed { call_id: String },
    /// Final `done`.
    Done,
    /// "Send the same request again soon, same key (only after an ambiguous or
    /// retryable answer)", after `after`. The job stays claimed.
    Retry { after: Duration },
    /// "Put the job back in the queue with a due time" `at` (>= now, jittered).
    Requeue {
        at: DateTime<Utc>,
        reason: RequeueReason,
    },
    /// "Final, with a reason", and who found it.
    Drop { reason: DropReason, source: Source },
    /// Final `exhausted`: `max_attempts` reached.
    Exhausted,
    /// "A campaign stops being claimed." `until: None` = until an operator's
    /// `campaign resume`; otherwise an automatic pause that ends with one probe dial.
    /// The job returns to `queued`, due at `job_due`.
    PauseCampaign {
        reason: PauseReason,
        until: Option<DateTime<Utc>>,
        job_due: DateTime<Utc>,
    },
    /// "The account stops dialing" (every campaign) until one probe dial at
    /// `probe_at` succeeds. The job returns to `queued`, due at `job_due`.
    HaltAccount {
        reason: AccountHaltReason,
        probe_at: DateTime<Utc>,
        job_due: DateTime<Utc>,
    },
    /// "The worker stops dialing" (configuration or credential fault) until restart
    /// or a probe dial at `probe_at` succeeds; nothing dropped. The job returns to
    /// `queued`, due at `job_due`.
    HaltWorker {
        reason: WorkerHaltReason,
        probe_at: DateTime<Utc>,
        job_due: DateTime<Utc>,
    },
}

impl Action {
    /// Whether this decision on a probe dial's answer is the probe's success, which
    /// alone lifts the pause or halt it probed (SPEC section 8: "an automatic pause
    /// or halt ends with one probe dial, and only its success releases the rest").
    ///
    /// A success is a definite answer that neither pauses nor halts: a 202, or a
    /// refusal about the contact alone (a drop, a compliance or 429 requeue), which
    /// shows the vendor got past the account and the campaign. An answer that itself
    /// pauses a campaign or halts the account or the worker (whichever condition was
    /// probed) lifts nothing; nor does a provider error, timeout or connection error
    /// (`Retry`, the `provider_error` requeue, `provider_failed`, or the settlement
    /// of a key past its ttl): the vendor did not answer, so an outage may go on.
    pub fn is_probe_success(&self) -> bool {
        match self {
            Action::Placed { .. }
            | Action::Done
            | Action::Requeue {
                reason:
                    RequeueReason::CallingWindow
                    | RequeueReason::CallingDay
                    | RequeueReason::FrequencyCap
                    | RequeueReason::ComplianceBlocked
                    | RequeueReason::RateLimited
                    | RequeueReason::NoNumberAvailable
                    | RequeueReason::TooManyRequests
                    | RequeueReason::Busy
                    | RequeueReason::NoAnswer
                    | RequeueReason::Voicemail
                    | RequeueReason::Unreachable
                    | RequeueReason::UnknownOutcome,
                ..
            } => true,
            Action::Drop { reason, .. } => *reason != DropReason::ProviderFailed,
            Action::Requeue {
                reason: RequeueReason::ProviderError | RequeueReason::KeyExpired,
                ..
            }
            | Action::Retry { .. }
            | Action::Exhausted
            | Action::PauseCampaign { .. }
            | Action::HaltAccount { .. }
            | Action::HaltWorker { .. } => false,
        }
    }
}

/// A job counter the worker bumps when it applies the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// `provider_retries` of the current attempt += 1.
    ProviderRetry,
    /// `provider_requeues` of the job += 1 and `provider_retries` reset to 0.
    ProviderRequeue,
    /// `vendor_refusals` of the job += 1.
    VendorRefusal,
    /// The account's consecutive 429s += 1 (reset to 0 by any [`Action::Placed`]).
    Consecutive429,
}

/// One decision: the action plus the side effects the worker applies with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub action: Action,
    /// The job's next dial re-sends the stored request under the same idempotency
    /// key. False means the next dial is a new attempt with a new key.
    pub keep_key: bool,
    /// The attempt counts toward `max_attempts` and frequency caps (placed or
    /// possibly placed). Idempotent state of the attempt, not an increment: an
    /// attempt counts once. False = no call was placed (definitive 4xx).
    pub attempt_counts: bool,
    /// Mark the attempt possibly placed, for good (SPEC section 7).
    pub possibly_placed: bool,
    /// The vendor refused what pre-flight allowed: `dialer_preflight_misses_total{code}`.
    pub preflight_miss: bool,
    /// Add the number to the local DNC list.
    pub add_to_dnc: bool,
    /// Add the number to the local opt-out list.
    pub add_to_opt_outs: bool,
    /// Hold all dials for this long and lower the rate (`Pacer::backoff`).
    pub lower_rate: Option<Duration>,
    /// A job or account counter to bump.
    pub counter: Option<Counter>,
    /// The code (or category) was not in the reference: count it in a metric.
    pub unknown_code: bool,
}

impl Decision {
    fn new(action: Action) -> Decision {
        Decision {
            action,
            keep_key: false,
            attempt_counts: false,
            possibly_placed: false,
            preflight_miss: false,
            add_to_dnc: false,
            add_to_opt_outs: false,
            lower_rate: None,
            counter: None,
            unknown_code: false,
        }
    }

    /// Every time this decision schedules (requeue, retry, probe, pause end, job due),
    /// as instants; a retry is `now + after`.
    pub fn due_times(&self, now: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        match &self.action {
            Action::Placed { .. } | Action::Done | Action::Drop { .. } | Action::Exhausted => {
                vec![]
            }
            Action::Retry { after: d } => vec![after(now, *d)],
            Action::Requeue { at, .. } => vec![*at],
            Action::PauseCampaign { until, job_due, .. } => {
                until.iter().copied().chain([*job_due]).collect()
            }
            Action::HaltAccount {
                probe_at, job_due, ..
            }
            | Action::HaltWorker {
                probe_at, job_due, ..
            } => vec![*probe_at, *job_due],
        }
    }
}

/// How many times each cause has paused or halted in a row, keyed by the reason's
/// `as_str()`; repeated pauses for the same cause double their length (to 1h).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PauseCounts(pub HashMap<String, u32>);

impl PauseCounts {
    pub fn get(&self, reason: &str) -> u32 {
        self.0.get(reason).copied().unwrap_or(0)
    }
}

/// What [`decide_dial`] needs to know about the job, the campaign and the account.
#[derive(Debug, Clone)]
pub struct DialContext<'a> {
    /// The campaign's retry settings.
    pub settings: &'a RetrySettings,
    /// Counted attempts of this job before the current one.
    pub prior_attempts: u32,
    /// The campaign's `max_attempts`.
    pub max_attempts: u32,
    /// The current attempt already had an ambiguous answer.
    pub possibly_placed: bool,
    /// When the current attempt's key was first sent.
    pub attempt_started_at: DateTime<Utc>,
    /// Same-key retries of the current attempt so far.
    pub provider_retries: u32,
    /// Provider requeues of the job so far.
    pub provider_requeues: u32,
    /// Vendor compliance refusals of the job so far.
    pub vendor_refusals: u32,
    /// The next locally allowed time from the compliance engine, if it gave one.
    pub next_allowed: Option<DateTime<Utc>>,
    /// The account's consecutive 429s before this answer.
    pub consecutive_429s: u32,
    /// The circuit breaker, with this answer recorded: >= 10 of the last 20 dials
    /// ambiguous.
    pub breaker_tripped: bool,
    /// Consecutive pauses/halts per cause.
    pub pauses: &'a PauseCounts,
}

/// The final outcome to decide on.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// The call resource (webhook `data` or `GET /v1/calls/{id}`).
    Call(&'a CallResource),
    /// `not_found` on reconciliation: the vendor no longer knows the call.
    NotFound,
}

/// What [`decide_outcome`] needs to know.
#[derive(Debug, Clone)]
pub struct OutcomeContext<'a> {
    pub settings: &'a RetrySettings,
    /// Counted attempts of the job, including the one this outcome ends.
    pub attempts: u32,
    /// The campaign's `max_attempts`.
    pub max_attempts: u32,
    /// The campaign's last outcomes (up to 20), including this one.
    pub recent_outcomes: u32,
    /// How many of those are `carrier_rejected` (including this one if it is).
    pub recent_carrier_rejected: u32,
}

/// The window of the `carrier_rejected` rule and the circuit breaker.
pub const RECENT_WINDOW: u32 = 20;

/// "At least half of a campaign's last 20 outcomes are `carrier_rejected`". With fewer
/// than 20 outcomes so far, half of a full window's worth (10) is still required
/// against a short history of at least 10, so that two unlucky first calls do not
/// pause a campaign, yet a small campaign whose caller ID is being rejected is
/// paused before every contact is dropped.
pub fn carrier_reputation_bad(recent_outcomes: u32, carrier_rejected: u32) -> bool {
    let total = recent_outcomes.clamp(RECENT_WINDOW / 2, RECENT_WINDOW);
    carrier_rejected.min(RECENT_WINDOW) * 2 >= total
}

/// A campaign's last [`RECENT_WINDOW`] final outcomes, one per attempt: whether each
/// was `carrier_rejected`. The same attempt's outcome recorded twice (a webhook
/// delivered twice at once, a webhook racing reconciliation: only one of their
/// guarded writes applies) counts once, so duplicates cannot pause a campaign for
/// rejections that did not happen.
#[derive(Debug, Default, Clone)]
pub struct RecentOutcomes(std::collections::VecDeque<(i64, bool)>);

impl RecentOutcomes {
    /// Records the outcome of `attempt_id`; returns (outcomes, carrier_rejected) in
    /// the window, for [`carrier_reputation_bad`].
    pub fn record(&mut self, attempt_id: i64, carrier_rejected: bool) -> (u32, u32) {
        if !self.0.iter().any(|(id, _)| *id == attempt_id) {
            self.0.push_back((attempt_id, carrier_rejected));
            while self.0.len() > RECENT_WINDOW as usize {
                self.0.pop_front();
            }
        }
        let rejected = self.0.iter().filter(|(_, r)| *r).count();
        (self.0.len() as u32, rejected as u32)
    }
}

/// How a synchronous answer is handled. One row per behaviour of SPEC section 8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncRoute {
    /// Drop for a fault of the contact, source vendor, counted as a pre-flight miss.
    DropContact(DropReason),
    /// Pause the campaign; `timed` = for `retry.no_active_number` (doubling),
    /// otherwise until an operator resumes it.
    Pause { reason: PauseReason, timed: bool },
    /// Requeue at the next locally allowed time (a vendor compliance refusal).
    ComplianceRefusal(RequeueReason),
    /// Halt the account, probe after `retry.account_halt`.
    HaltAccount(AccountHaltReason),
    /// Requeue after `Retry-After` or the account's backoff; `lower_rate` for the
    /// two codes of SPEC section 7.
    Throttled {
        reason: RequeueReason,
        lower_rate: bool,
    },
    /// Retry with the same key, then requeue, or halt the account (breaker).
    Provider,
    /// Halt the worker's dialing.
    HaltWorker(WorkerHaltReason),
    /// `validation_error`: depends on `fields`.
    Validation,
    /// `idempotency_conflict`.
    IdempotencyConflict,
    /// Not a dial answer (an asynchronous code): decide by the HTTP status.
    ByStatus,
}

/// Every known code on the dial request. Exhaustive: a new [`Code`] does not compile
/// until someone decides what it means.
pub fn sync_route(code: Code) -> SyncRoute {
    use SyncRoute as R;
    match code {
        Code::DestinationInvalid => R::DropContact(DropReason::InvalidNumber),
        Code::DestinationMissing => R::Pause {
            reason: PauseReason::RequestRejected,
            timed: false,
        },
        Code::NoActiveNumber => R::Pause {
            reason: PauseReason::NoActiveNumber,
            timed: true,
        },
        Code::CallerIdNotVerified => R::Pause {
            reason: PauseReason::CallerIdNotVerified,
            timed: false,
        },
        Code::DestinationBlocked => R::DropContact(DropReason::DestinationBlocked),
        Code::DncSuppressed => R::DropContact(DropReason::Dnc),
        Code::RecipientOptedOut => R::DropContact(DropReason::OptedOut),
        Code::NoConsent => R::DropContact(DropReason::NoConsent),
        Code::OutsideCallingWindow => R::ComplianceRefusal(RequeueReason::CallingWindow),
        Code::CallingDayNotAllowed => R::ComplianceRefusal(RequeueReason::CallingDay),
        Code::FrequencyCapExceeded => R::ComplianceRefusal(RequeueReason::FrequencyCap),
        Code::VoiceUsageExhausted => R::HaltAccount(AccountHaltReason::VoiceUsageExhausted),
        Code::NoActiveSubscription => R::HaltAccount(AccountHaltReason::NoActiveSubscription),
        Code::NoNumberAvailable => R::Throttled {
            reason: RequeueReason::NoNumberAvailable,
            lower_rate: true,
        },
        Code::RateLimited => R::Throttled {
            reason: RequeueReason::RateLimited,
            lower_rate: true,
        },
        Code::RoomCreationFailed
        | Code::AgentDispatchFailed
        | Code::SipGatewayFailed
        | Code::ProviderApiError
        | Code::InternalError => R::Provider,
        Code::ValidationError => R::Validation,
        Code::Unauthorized => R::HaltWorker(WorkerHaltReason::Unauthorized),
        Code::Forbidden => R::HaltWorker(WorkerHaltReason::Forbidden),
        Code::NotFound => R::HaltWorker(WorkerHaltReason::NotFound),
        Code::IdempotencyConflict => R::IdempotencyConflict,
        Code::Busy
        | Code::NoAnswer
        | Code::NumberUnreachable
        | Code::CallDeclined
        | Code::CarrierRejected
        | Code::VoicemailReached => R::ByStatus,
    }
}

/// An unknown code "by its category". The two outcome categories never come on a
/// dial: they fall through to the HTTP status.
pub fn category_route(category: Category) -> SyncRoute {
    match category {
        Category::InvalidRequest => SyncRoute::Pause {
            reason: PauseReason::RequestRejected,
            timed: false,
        },
        Category::ComplianceBlocked => {
            SyncRoute::ComplianceRefusal(RequeueReason::ComplianceBlocked)
        }
        Category::AccountLimit => SyncRoute::HaltAccount(AccountHaltReason::AccountLimit),
        Category::ProviderError => SyncRoute::Provider,
        Category::Unreachable | Category::Voicemail => SyncRoute::ByStatus,
    }
}

/// An unknown category "by HTTP status": 401/403/404 halt the worker; 429 requeue;
/// other 4xx pause the campaign; 5xx as provider_error. A non-error status with an
/// error body breaks the contract: halt the worker (`unexpected_response`).
pub fn status_route(status: u16) -> SyncRoute {
    match status {
        401 => SyncRoute::HaltWorker(WorkerHaltReason::Unauthorized),
        403 => SyncRoute::HaltWorker(WorkerHaltReason::Forbidden),
        404 => SyncRoute::HaltWorker(WorkerHaltReason::NotFound),
        429 => SyncRoute::Throttled {
            reason: RequeueReason::TooManyRequests,
            lower_rate: false,
        },
        400..=499 => SyncRoute::Pause {
            reason: PauseReason::RequestRejected,
            timed: false,
        },
        500..=599 => SyncRoute::Provider,
        _ => SyncRoute::HaltWorker(WorkerHaltReason::UnexpectedResponse),
    }
}

/// The route of an error envelope, and whether its code was unknown.
pub fn route_api_error(status: u16, error: &ApiError) -> (SyncRoute, bool) {
    match error.known_code() {
        Some(code) => match sync_route(code) {
            SyncRoute::ByStatus => (status_route(status), true),
            route => (route, false),
        },
        None => {
            let by_category = error.known_category().map(category_route);
            match by_category {
                Some(SyncRoute::ByStatus) | None => (status_route(status), true),
                Some(route) => (route, true),
            }
        }
    }
}

fn requeue_at(
    now: DateTime<Utc>,
    delay: Duration,
    settings: &RetrySettings,
    rng: &mut impl Rng,
) -> DateTime<Utc> {
    jittered(after(now, delay), settings, rng)
}

fn jittered(at: DateTime<Utc>, settings: &RetrySettings, rng: &mut impl Rng) -> DateTime<Utc> {
    after(at, policy::jitter_up_to(settings.requeue_jitter, rng))
}

/// True when the current attempt's key is past `revdesk.key_ttl` and must not be
/// re-sent (SPEC section 7).
pub fn key_expired(ctx: &DialContext<'_>, now: DateTime<Utc>) -> bool {
    after(ctx.attempt_started_at, ctx.settings.key_ttl) <= now
}

/// The worker calls this before re-sending a kept key (a retry or a requeued
/// possibly placed attempt): `Some` when the key is past `revdesk.key_ttl`. The
/// attempt is "settled as possibly placed with an unknown outcome and requeued like
/// `no_answer`, never re-sent under a new key sooner" (SPEC section 7).
pub fn settle_expired_key(
    ctx: &DialContext<'_>,
    now: DateTime<Utc>,
    rng: &mut impl Rng,
) -> Option<Decision> {
    if !key_expired(ctx, now) {
        return None;
    }
    let attempts = ctx.prior_attempts.saturating_add(1);
    let action = if attempts < ctx.max_attempts {
        Action::Requeue {
            at: requeue_at(now, ctx.settings.no_answer, ctx.settings, rng),
            reason: RequeueReason::KeyExpired,
        }
    } else {
        Action::Exhausted
    };
    Some(Decision {
        attempt_counts: true,
        possibly_placed: true,
        ..Decision::new(action)
    })
}

/// Decides on the synchronous answer to one dial request (SPEC section 8, first
/// table). `ctx.breaker_tripped` must already include this answer.
pub fn decide_dial(
    result: &DialResult,
    ctx: &DialContext<'_>,
    now: DateTime<Utc>,
    rng: &mut impl Rng,
) -> Decision {
    let (route, unknown, retry_after, status) = match result {
        DialResult::Accepted { call_id } => {
            // A 202 is the one answer that settles an ambiguous attempt as placed.
            let mut d = Decision::new(Action::Placed {
                call_id: call_id.clone(),
            });
            d.attempt_counts = true;
            return d;
        }
        DialResult::Api {
            status,
            error,
            retry_after,
        } => {
            let (route, unknown) = route_api_error(*status, error);
            let route = match route {
                SyncRoute::Validation if error.names_field("to_number") => {
                    SyncRoute::DropContact(DropReason::InvalidNumber)
                }
                SyncRoute::Validation => SyncRoute::Pause {
                    reason: PauseReason::RequestRejected,
                    timed: false,
                },
                other => other,
            };
            (route, unknown, *retry_after, Some(*status))
        }
        DialResult::NotEnvelope { status, .. } => {
            // Not the envelope: 5xx as provider_error; 4xx (and anything else) halts
            // the worker's dialing (`unexpected_response`).
            let route = if (500..=599).contains(status) {
                SyncRoute::Provider
            } else {
                SyncRoute::HaltWorker(WorkerHaltReason::UnexpectedResponse)
            };
            (route, false, None, Some(*status))
        }
        DialResult::Timeout | DialResult::Connection { .. } => {
            (SyncRoute::Provider, false, None, None)
        }
    };

    // The vendor may have placed the call: a 5xx, timeout or connection error, a
    // provider-error code whatever its status, or a 2xx/3xx we could not read.
    let ambiguous_now =
        result.is_ambiguous() || route == SyncRoute::Provider || status.is_some_and(|s| s < 400);
    let possibly_placed = ctx.possibly_placed || ambiguous_now;

    // A retry or provider requeue would re-send the key: never past `revdesk.key_ttl`.
    // Other kept keys are checked by the worker with `settle_expired_key` right
    // before they are re-sent.
    if route == SyncRoute::Provider && !ctx.breaker_tripped {
        if let Some(settled) = settle_expired_key(ctx, now, rng) {
            return Decision {
                unknown_code: unknown,
                ..settled
            };
        }
    }

    // A code the reference marks non-retryable is never retried, even when it comes
    // with a 5xx (an outcome code on the dial): it goes straight to a requeue.
    let retry_allowed = match result {
        DialResult::Api { error, .. } => error.known_code().is_none_or(Code::retryable),
        DialResult::Accepted { .. }
        | DialResult::NotEnvelope { .. }
        | DialResult::Timeout
        | DialResult::Connection { .. } => true,
    };

    let s = ctx.settings;
    let mut d = match route {
        SyncRoute::DropContact(reason) => {
            let mut d = Decision::new(Action::Drop {
                reason,
                source: Source::Vendor,
            });
            d.preflight_miss = true;
            d.add_to_dnc = reason == DropReason::Dnc;
            d.add_to_opt_outs = reason == DropReason::OptedOut;
            d
        }
        SyncRoute::Pause { reason, timed } => {
            let until = timed.then(|| {
                after(
                    now,
                    doubled_pause(s.no_active_number, ctx.pauses.get(reason.as_str())),
                )
            });
            // Requeued "unchanged" (untimed) or "to then" (timed), jittered so a
            // resumed campaign does not fire all at once.
            let job_due = jittered(until.unwrap_or(now), s, rng);
            Decision::new(Action::PauseCampaign {
                reason,
                until,
                job_due,
            })
        }
        SyncRoute::ComplianceRefusal(reason) => {
            let mut d = if ctx.vendor_refusals.saturating_add(1) >= s.vendor_refusals {
                Decision::new(Action::Drop {
                    reason: DropReason::VendorRefused,
                    source: Source::Vendor,
                })
            } else {
                let min = if reason == RequeueReason::FrequencyCap {
                    s.cap_min
                } else {
                    s.compliance_min
                };
                let earliest = after(now, min);
                let at = ctx.next_allowed.map_or(earliest, |t| t.max(earliest));
                Decision::new(Action::Requeue {
                    at: jittered(at, s, rng),
                    reason,
                })
            };
            d.preflight_miss = true;
            d.counter = Some(Counter::VendorRefusal);
            d
        }
        SyncRoute::HaltAccount(reason) => halt_account(reason, ctx, now, rng),
        SyncRoute::Throttled { reason, lower_rate } => {
            let hold = s.rate_limit_delay(retry_after, ctx.consecutive_429s, rng);
            let mut d = Decision::new(Action::Requeue {
                at: requeue_at(now, hold, s, rng),
                reason,
            });
            d.counter = Some(Counter::Consecutive429);
            d.lower_rate = lower_rate.then_some(hold);
            d
        }
        SyncRoute::Provider => {
            if ctx.breaker_tripped {
                // An outage drops nothing: halt the account instead.
                halt_account(AccountHaltReason::ProviderOutage, ctx, now, rng)
            } else if retry_allowed && ctx.provider_retries < s.provider_max {
                let mut d = Decision::new(Action::Retry {
                    after: s.provider_backoff(ctx.provider_retries, rng),
                });
                d.counter = Some(Counter::ProviderRetry);
                d
            } else if ctx.provider_requeues < s.provider_requeues {
                let delay = s.provider_requeue_delay(ctx.provider_requeues, rng);
                let mut d = Decision::new(Action::Requeue {
                    at: requeue_at(now, delay, s, rng),
                    reason: RequeueReason::ProviderError,
                });
                d.counter = Some(Counter::ProviderRequeue);
                d
            } else {
                // Only a job that keeps failing while others succeed (the breaker is
                // not tripped) is dropped, labelled.
                Decision::new(Action::Drop {
                    reason: DropReason::ProviderFailed,
                    source: Source::Vendor,
                })
            }
        }
        SyncRoute::HaltWorker(reason) => {
            let probe = doubled_pause(s.account_halt, ctx.pauses.get(reason.as_str()));
            Decision::new(Action::HaltWorker {
                reason,
                probe_at: after(now, probe),
                job_due: jittered(now, s, rng),
            })
        }
        SyncRoute::IdempotencyConflict => {
            // The key already placed a call: count it as possibly placed.
            let mut d = Decision::new(Action::Drop {
                reason: DropReason::IdempotencyConflict,
                source: Source::Vendor,
            });
            d.possibly_placed = true;
            d.attempt_counts = true;
            d.keep_key = true;
            d
        }
        SyncRoute::Validation | SyncRoute::ByStatus => unreachable_route(ctx, now, rng),
    };
    if possibly_placed {
        d.possibly_placed = true;
        d.attempt_counts = true;
        d.keep_key = true;
    }
    d.unknown_code |= unknown;
    d
}

/// `Validation` and `ByStatus` are resolved before the table; should a future edit
/// let one through, the safest answer is to stop this worker, not to drop anyone.
fn unreachable_route(ctx: &DialContext<'_>, now: DateTime<Utc>, rng: &mut impl Rng) -> Decision {
    let reason = WorkerHaltReason::UnexpectedResponse;
    let probe = doubled_pause(ctx.settings.account_halt, ctx.pauses.get(reason.as_str()));
    Decision::new(Action::HaltWorker {
        reason,
        probe_at: after(now, probe),
        job_due: jittered(now, ctx.settings, rng),
    })
}

fn halt_account(
    reason: AccountHaltReason,
    ctx: &DialContext<'_>,
    now: DateTime<Utc>,
    rng: &mut impl Rng,
) -> Decision {
    let probe_at = after(
        now,
        doubled_pause(ctx.settings.account_halt, ctx.pauses.get(reason.as_str())),
    );
    Decision::new(Action::HaltAccount {
        reason,
        probe_at,
        job_due: jittered(probe_at, ctx.settings, rng),
    })
}

/// How a final outcome is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeRoute {
    Done,
    /// Requeue after the delay while attempts < `max_attempts`, else exhausted.
    RequeueCapped(RequeueReason),
    /// Done, or requeue after the campaign's `voicemail` delay (same cap).
    Voicemail,
    /// Drop `invalid_number`, unless the campaign's caller ID looks rejected.
    DropInvalidUnlessReputation,
    Drop(DropReason),
    /// An unknown failure code: by its `failure_category`.
    ByCategory,
}

/// Every known code as a final outcome. Exhaustive: the synchronous and HTTP codes
/// are not outcomes, so they are treated as an unknown failure code.
pub fn outcome_route(code: Code) -> OutcomeRoute {
    match code {
        Code::Busy => OutcomeRoute::RequeueCapped(RequeueReason::Busy),
        Code::NoAnswer => OutcomeRoute::RequeueCapped(RequeueReason::NoAnswer),
        Code::VoicemailReached => OutcomeRoute::Voicemail,
        Code::NumberUnreachable | Code::CarrierRejected => {
            OutcomeRoute::DropInvalidUnlessReputation
        }
        Code::CallDeclined => OutcomeRoute::Drop(DropReason::Declined),
        Code::DestinationMissing
        | Code::DestinationInvalid
        | Code::NoActiveNumber
        | Code::CallerIdNotVerified
        | Code::DestinationBlocked
        | Code::DncSuppressed
        | Code::RecipientOptedOut
        | Code::NoConsent
        | Code::OutsideCallingWindow
        | Code::CallingDayNotAllowed
        | Code::FrequencyCapExceeded
        | Code::VoiceUsageExhausted
        | Code::NoActiveSubscription
        | Code::NoNumberAvailable
        | Code::RateLimited
        | Code::RoomCreationFailed
        | Code::AgentDispatchFailed
        | Code::SipGatewayFailed
        | Code::ProviderApiError
        | Code::InternalError
        | Code::ValidationError
        | Code::Unauthorized
        | Code::Forbidden
        | Code::NotFound
        | Code::IdempotencyConflict => OutcomeRoute::ByCategory,
    }
}

/// An unknown failure code "by its `failure_category`": `unreachable` like
/// no_answer, `voicemail` like voicemail_reached; any other or unknown category like
/// no_answer (same cap).
pub fn outcome_category_route(category: Option<Category>) -> OutcomeRoute {
    match category {
        Some(Category::Unreachable) => OutcomeRoute::RequeueCapped(RequeueReason::Unreachable),
        Some(Category::Voicemail) => OutcomeRoute::Voicemail,
        Some(Category::InvalidRequest)
        | Some(Category::ComplianceBlocked)
        | Some(Category::AccountLimit)
        | Some(Category::ProviderError)
        | None => OutcomeRoute::RequeueCapped(RequeueReason::UnknownOutcome),
    }
}

const COMPLETED: &str = "completed";

/// Decides on a call's final outcome (SPEC section 8, second table). A call that has
/// not ended yet gives [`Action::Placed`] (keep waiting). The attempt already counts
/// (it was placed), and any next attempt gets a new key.
pub fn decide_outcome(
    outcome: Outcome<'_>,
    ctx: &OutcomeContext<'_>,
    now: DateTime<Utc>,
    rng: &mut impl Rng,
) -> Decision {
    let (route, unknown) = match outcome {
        Outcome::NotFound => (
            OutcomeRoute::RequeueCapped(RequeueReason::UnknownOutcome),
            false,
        ),
        Outcome::Call(call) if !call.is_final() => {
            let mut d = Decision::new(Action::Placed {
                call_id: call.id.clone(),
            });
            d.attempt_counts = true;
            return d;
        }
        Outcome::Call(call) => {
            let code = call
                .failure_code
                .as_deref()
                .or(call.call_outcome.as_deref())
                .or(call.status.as_deref());
            let category = call.failure_category.as_deref().and_then(Category::parse);
            match code {
                Some(COMPLETED) if call.failure_code.is_none() => (OutcomeRoute::Done, false),
                Some(c) => match Code::parse(c).map(outcome_route) {
                    Some(OutcomeRoute::ByCategory) | None => {
                        (outcome_category_route(category), true)
                    }
                    Some(route) => (route, false),
                },
                None => (outcome_category_route(category), true),
            }
        }
    };
    let s = ctx.settings;
    let capped = |reason: RequeueReason, delay: Duration, rng: &mut _| {
        if ctx.attempts < ctx.max_attempts {
            Action::Requeue {
                at: requeue_at(now, delay, s, rng),
                reason,
            }
        } else {
            Action::Exhausted
        }
    };
    let action = match route {
        OutcomeRoute::Done => Action::Done,
        OutcomeRoute::RequeueCapped(reason) => {
            let delay = if reason == RequeueReason::Busy {
                s.busy
            } else {
                s.no_answer
            };
            capped(reason, delay, rng)
        }
        OutcomeRoute::Voicemail => match s.voicemail {
            VoicemailRetry::Done => Action::Done,
            VoicemailRetry::After(delay) => capped(RequeueReason::Voicemail, delay, rng),
        },
        OutcomeRoute::DropInvalidUnlessReputation => {
            if carrier_reputation_bad(ctx.recent_outcomes, ctx.recent_carrier_rejected) {
                // The caller ID, not the contacts: nobody is dropped; the campaign
                // waits for an operator to fix its caller ID.
                Action::PauseCampaign {
                    reason: PauseReason::CallerIdReputation,
                    until: None,
                    job_due: jittered(now, s, rng),
                }
            } else {
                Action::Drop {
                    reason: DropReason::InvalidNumber,
                    source: Source::Vendor,
                }
            }
        }
        OutcomeRoute::Drop(reason) => Action::Drop {
            reason,
            source: Source::Vendor,
        },
        OutcomeRoute::ByCategory => {
            // outcome_category_route never yields ByCategory; treat as unknown.
            capped(RequeueReason::UnknownOutcome, s.no_answer, rng)
        }
    };
    let mut d = Decision::new(action);
    d.attempt_counts = true;
    d.unknown_code = unknown;
    d
}

#[cfg(test)]
mod tests;
