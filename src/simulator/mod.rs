//! The RevDesk simulator (SPEC.md section 10): an axum server that answers like the
//! vendor's reference (`docs/revdesk-api-errors.md`) and does what a scenario says.
//!
//! Start it in-process with [`Simulator::start`] (binds `127.0.0.1:0`, for tests and
//! the demo) or run it on a listener with [`serve`] (for `dialer simulate`).
//!
//! Order of checks on `POST /v1/calls/dial`: auth (401/403), the request-rate cap
//! (429 `rate_limited`), the body (400), the idempotency key (replay or 409), the
//! number's script, random faults, the server-side DNC / opt-out / window checks,
//! the minutes budget (402), the concurrency cap (429 `no_number_available`), then
//! the call is placed. A key's first success is stored and replayed; errors are not
//! stored (SPEC.md section 7).
//!
//! State is sharded (idempotency keys, calls) and lock-light; the request log is an
//! append-only `Vec` behind one mutex, held only for the push.

mod conn;
pub mod scenario;
mod webhook;

pub use scenario::{Action, Outcome, Rule, Scenario, ScenarioError};
pub use webhook::DeliveryRecord;

use crate::clock::Clock;
use crate::revdesk::wire::{CallResource, PHONE_CALL_ENDED, WebhookEvent};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Datelike, Utc};
use conn::KillSwitch;
use governor::clock::{Clock as _, DefaultClock};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const SHARDS: usize = 64;
/// Pre-sized so the first 256k keys and calls of a load run cause no rehash.
const SHARD_CAPACITY: usize = 4096;
/// A dial body is two phone numbers; anything far larger is refused.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// FNV-1a as a `Hasher` for the shard maps: keys are short ids and keys chosen by
/// our own tests and load runs, and SipHash showed up in the load profile.
#[derive(Default)]
struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        // Murmur3's finalizer: spreads every bit, and decorrelates the map's buckets
        // from `shard_of`, which uses the raw FNV value's low bits.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }
}

type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<Fnv>>;

/// One dial request as the simulator saw it (`GET /_sim/requests`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Arrival order, from 0.
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub to: Option<String>,
    pub from: Option<String>,
    pub idempotency_key: Option<String>,
    /// The HTTP status answered (after any stall); none when the connection was dropped.
    pub status: Option<u16>,
    /// The error code answered; none for a 202 or a body that is not the envelope.
    pub code: Option<String>,
    /// Set when this request placed a new call.
    pub placed_call_id: Option<String>,
    /// Set when this request replayed the stored 202 of an earlier one with its key.
    pub replay_of: Option<String>,
    /// `answered`, `replayed`, `stalled`, `dropped`.
    pub action: Cow<'static, str>,
    /// The request's protocol: `HTTP/1.1`, or `HTTP/2.0` (`revdesk.http2`).
    pub http_version: Cow<'static, str>,
}

/// A placed call (`GET /_sim/calls`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    pub id: String,
    pub to: String,
    pub from: String,
    pub idempotency_key: Option<String>,
    pub placed_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    /// The outcome it has or will have (`completed`, `busy`, ...).
    pub outcome: String,
    /// What `GET /v1/calls/{id}` shows now.
    pub status: String,
    pub forgotten: bool,
}

struct Call {
    id: Arc<str>,
    seq: u64,
    to: String,
    from: String,
    idempotency_key: Option<String>,
    placed_at: DateTime<Utc>,
    ends_at: DateTime<Utc>,
    outcome: Outcome,
    forget: bool,
    webhook: bool,
}

impl Call {
    fn resource(&self, now: DateTime<Utc>) -> CallResource {
        let mut r = CallResource {
            id: self.id.to_string(),
            status: Some("in_progress".to_owned()),
            call_outcome: None,
            failure_code: None,
            failure_category: None,
            disconnection_reason: None,
            to_number: Some(self.to.clone()),
            from_number: Some(self.from.clone()),
        };
        if now < self.ends_at {
            return r;
        }
        match &self.outcome {
            Outcome::Completed => {
                r.status = Some("completed".to_owned());
                r.call_outcome = Some("completed".to_owned());
                r.disconnection_reason = Some("hangup".to_owned());
            }
            Outcome::Failed { code, category } => {
                r.status = Some(code.clone());
                r.call_outcome = Some(code.clone());
                r.failure_code = Some(code.clone());
                r.failure_category = Some(category.clone());
                r.disconnection_reason = Some(disconnection_reason(code).to_owned());
            }
        }
        r
    }

    fn record(&self, now: DateTime<Utc>) -> CallRecord {
        let resource = self.resource(now);
        CallRecord {
            id: self.id.to_string(),
            to: self.to.clone(),
            from: self.from.clone(),
            idempotency_key: self.idempotency_key.clone(),
            placed_at: self.placed_at,
            ends_at: self.ends_at,
            outcome: self.outcome.code().to_owned(),
            status: resource.status.unwrap_or_default(),
            forgotten: self.forget,
        }
    }
}

fn disconnection_reason(code: &str) -> &'static str {
    match code {
        "busy" => "user_busy",
        "no_answer" => "no_answer",
        "voicemail_reached" => "voicemail",
        "number_unreachable" => "invalid_destination",
        "call_declined" => "user_declined",
        "carrier_rejected" => "carrier_rejected",
        // Codes written `code:category` in a scenario: the vendor's own reason is unknown.
        _ => "unknown",
    }
}

/// Append-only, in fixed-size chunks: a push never moves (and re-faults) the
/// hundreds of megabytes a long load run logs.
#[derive(Default)]
struct RequestLog {
    chunks: Vec<Vec<RequestRecord>>,
    len: usize,
}

impl RequestLog {
    const CHUNK: usize = 1 << 16;

    fn push(&mut self, rec: RequestRecord) {
        match self.chunks.last_mut() {
            Some(chunk) if chunk.len() < Self::CHUNK => chunk.push(rec),
            _ => {
                let mut chunk = Vec::with_capacity(Self::CHUNK);
                chunk.push(rec);
                self.chunks.push(chunk);
            }
        }
        self.len += 1;
    }

    fn snapshot(&self) -> Vec<RequestRecord> {
        self.chunks.iter().flatten().cloned().collect()
    }

    fn clear(&mut self) {
        self.chunks.clear();
        self.len = 0;
    }
}

struct Stored {
    /// A copy: the request's `Bytes` may share (and would pin) hyper's read buffer.
    body: Box<[u8]>,
    call_id: Arc<str>,
}

/// Exact numbers plus prefixes written with a trailing `*`.
struct NumberList {
    exact: HashSet<String>,
    prefixes: Vec<String>,
}

impl NumberList {
    fn new(entries: &[String]) -> NumberList {
        let mut exact = HashSet::new();
        let mut prefixes = Vec::new();
        for e in entries {
            match e.strip_suffix('*') {
                Some(p) => prefixes.push(p.to_owned()),
                None => {
                    exact.insert(e.clone());
                }
            }
        }
        NumberList { exact, prefixes }
    }

    fn contains(&self, number: &str) -> bool {
        self.exact.contains(number) || self.prefixes.iter().any(|p| number.starts_with(p.as_str()))
    }
}

#[derive(Default)]
struct Counters {
    script: usize,
    outcome: usize,
}

/// The simulator's state, shared by every handler.
struct Sim {
    sc: Scenario,
    clock: Clock,
    cancel: CancellationToken,
    instance: u32,
    seq: AtomicU64,
    call_seq: AtomicU64,
    exact_rules: HashMap<String, usize>,
    /// Longest prefix first.
    prefix_rules: Vec<(String, usize)>,
    counters: Mutex<HashMap<(usize, String), Counters>>,
    idem: Vec<Mutex<FastMap<String, Stored>>>,
    calls: Vec<Mutex<FastMap<Arc<str>, Arc<Call>>>>,
    log: Mutex<RequestLog>,
    in_progress: Arc<AtomicUsize>,
    minutes_used: AtomicU64,
    limiter: Option<governor::DefaultDirectRateLimiter>,
    webhooks: Option<Arc<webhook::Sender>>,
    dnc: NumberList,
    opt_outs: NumberList,
    mix: Vec<(Outcome, u64)>,
    mix_total: u64,
}

/// A poisoned lock only means another handler panicked; the data is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn shard_of(key: &[u8]) -> usize {
    // FNV-1a: cheap and good enough to spread keys over the shards.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h as usize) % SHARDS
}

/// SplitMix64: a seeded, lock-free random draw per (seed, request, purpose).
fn draw(seed: u64, seq: u64, purpose: u64) -> f64 {
    let mut z = seed
        .wrapping_add(seq.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .wrapping_add(purpose.wrapping_mul(0xd1b5_4a32_d192_ed03));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// What the simulator decided for one dial request.
enum Answer {
    Error {
        status: u16,
        code: Cow<'static, str>,
        category: Option<Cow<'static, str>>,
        fields: Option<(&'static str, &'static str)>,
        /// Seconds for `Retry-After`; 429 `rate_limited` / `no_number_available`
        /// without one get the scenario's `retry_after_secs`.
        retry_after: Option<u64>,
    },
    Placed(Arc<Call>),
    Replay(Arc<str>),
    Stall,
    PlacedThenStall(Arc<Call>),
    Drop,
    Html502,
    Empty500,
    TruncatedJson,
    Redirect(u16),
}

impl Answer {
    fn known(code: crate::revdesk::codes::Code) -> Answer {
        let info = code.info();
        Answer::Error {
            status: info.http_status.unwrap_or(400),
            code: Cow::Borrowed(info.name),
            category: info.category.map(|c| Cow::Borrowed(c.as_str())),
            fields: None,
            retry_after: None,
        }
    }

    fn validation(field: &'static str, why: &'static str) -> Answer {
        Answer::Error {
            status: 400,
            code: Cow::Borrowed("validation_error"),
            category: None,
            fields: Some((field, why)),
            retry_after: None,
        }
    }
}

use crate::revdesk::codes::Code;

#[derive(Deserialize)]
struct RawDial<'a> {
    #[serde(borrow, default)]
    from_number: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    to_number: Option<Cow<'a, str>>,
}

/// `+` and 8 to 15 digits, no leading zero; +1 numbers must be NANP-shaped.
fn is_e164(n: &str) -> bool {
    let Some(digits) = n.strip_prefix('+') else {
        return false;
    };
    if !(8..=15).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    if digits.starts_with('0') {
        return false;
    }
    match digits.strip_prefix('1') {
        Some(nanp) => nanp.len() == 10 && nanp.as_bytes()[0] >= b'2' && nanp.as_bytes()[3] >= b'2',
        None => true,
    }
}

/// The vendor refuses emergency and special-service numbers (`destination_blocked`):
/// 911/112/988, N11 service codes, 555-0100..0199 and 555-1212, premium 900
/// (the same classes as SPEC.md section 6's local rule).
fn is_special(n: &str) -> bool {
    let digits = n.trim_start_matches('+');
    if matches!(digits, "911" | "112" | "988" | "1911" | "1112" | "1988") {
        return true;
    }
    let Some(nanp) = digits.strip_prefix('1').filter(|d| d.len() == 10) else {
        return false;
    };
    let (npa, nxx, line) = (&nanp[0..3], &nanp[3..6], &nanp[6..10]);
    npa == "900"
        || npa.ends_with("11")
        || (nxx == "555" && (("0100"..="0199").contains(&line) || line == "1212"))
}

impl Sim {
    fn new(sc: Scenario, clock: Clock, cancel: CancellationToken) -> anyhow::Result<Sim> {
        sc.validate()?;
        let mut exact_rules = HashMap::new();
        let mut prefix_rules = Vec::new();
        for (i, rule) in sc.rules.iter().enumerate() {
            if let Some(n) = &rule.number {
                exact_rules.insert(n.clone(), i);
            }
            if let Some(p) = &rule.prefix {
                prefix_rules.push((p.clone(), i));
            }
        }
        prefix_rules.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
        let mut mix = Vec::new();
        let mut total = 0u64;
        for (name, weight) in &sc.outcomes.mix {
            if *weight > 0 {
                total += u64::from(*weight);
                mix.push((Outcome::parse(name)?, total));
            }
        }
        let limiter = sc
            .rate_per_second
            .and_then(NonZeroU32::new)
            .map(|r| governor::RateLimiter::direct(governor::Quota::per_second(r)));
        let webhooks = match &sc.webhook_url {
            Some(url) => Some(Arc::new(webhook::Sender::new(
                url.clone(),
                &sc.webhook_secret,
                sc.webhook.clone(),
                clock.clone(),
                cancel.clone(),
            )?)),
            None => None,
        };
        Ok(Sim {
            dnc: NumberList::new(&sc.dnc),
            opt_outs: NumberList::new(&sc.opt_outs),
            instance: (draw(sc.seed, u64::from(std::process::id()), 99) * f64::from(u32::MAX))
                as u32
                ^ (Utc::now().timestamp_subsec_nanos()),
            sc,
            clock,
            cancel,
            seq: AtomicU64::new(0),
            call_seq: AtomicU64::new(0),
            exact_rules,
            prefix_rules,
            counters: Mutex::new(HashMap::new()),
            idem: (0..SHARDS)
                .map(|_| {
                    Mutex::new(FastMap::with_capacity_and_hasher(
                        SHARD_CAPACITY,
                        Default::default(),
                    ))
                })
                .collect(),
            calls: (0..SHARDS)
                .map(|_| {
                    Mutex::new(FastMap::with_capacity_and_hasher(
                        SHARD_CAPACITY,
                        Default::default(),
                    ))
                })
                .collect(),
            log: Mutex::new(RequestLog::default()),
            in_progress: Arc::new(AtomicUsize::new(0)),
            minutes_used: AtomicU64::new(0),
            limiter,
            webhooks,
            mix,
            mix_total: total,
        })
    }

    fn rule_for(&self, to: &str) -> Option<usize> {
        self.exact_rules.get(to).copied().or_else(|| {
            self.prefix_rules
                .iter()
                .find(|(p, _)| to.starts_with(p.as_str()))
                .map(|(_, i)| *i)
        })
    }

    /// Next script answer for `to` under rule `i` (the last one repeats).
    fn next_script(&self, i: usize, to: &str) -> Option<Action> {
        let script = &self.sc.rules[i].script;
        if script.is_empty() {
            return None;
        }
        let mut counters = lock(&self.counters);
        let c = counters.entry((i, to.to_owned())).or_default();
        let action = script[c.script.min(script.len() - 1)].clone();
        c.script += 1;
        Some(action)
    }

    fn next_outcome(&self, rule: Option<usize>, to: &str, seq: u64) -> Outcome {
        if let Some(i) = rule {
            let outcomes = &self.sc.rules[i].outcomes;
            if !outcomes.is_empty() {
                let mut counters = lock(&self.counters);
                let c = counters.entry((i, to.to_owned())).or_default();
                let o = outcomes[c.outcome.min(outcomes.len() - 1)].clone();
                c.outcome += 1;
                return o;
            }
        }
        let pick = (draw(self.sc.seed, seq, 2) * self.mix_total as f64) as u64;
        self.mix
            .iter()
            .find(|(_, upto)| pick < *upto)
            .or(self.mix.last())
            .map_or(Outcome::Completed, |(o, _)| o.clone())
    }

    fn authorize(&self, headers: &HeaderMap) -> Result<(), Answer> {
        let key = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().split_once(' '))
            // The auth scheme is case-insensitive (RFC 9110 section 11.1).
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map_or("", |(_, key)| key.trim());
        if key.is_empty() {
            return Err(Answer::known(Code::Unauthorized));
        }
        if self.sc.forbidden_keys.iter().any(|k| k == key) {
            return Err(Answer::known(Code::Forbidden));
        }
        if !self.sc.api_keys.is_empty() && !self.sc.api_keys.iter().any(|k| k == key) {
            return Err(Answer::known(Code::Unauthorized));
        }
        Ok(())
    }

    /// Everything after validation and the idempotency lookup. Synchronous, so it
    /// runs under the key's shard lock and two requests with one key cannot both place.
    fn decide(&self, seq: u64, to: &str, from: &str, key: Option<&str>) -> Answer {
        let rule = self.rule_for(to);
        let scripted = rule.and_then(|i| self.next_script(i, to));
        let action = match scripted {
            Some(a) => a,
            None => self.random_fault(seq),
        };
        let then_stall = match action {
            Action::Accept => false,
            Action::AcceptThenStall => true,
            Action::Stall => return Answer::Stall,
            Action::Drop => return Answer::Drop,
            Action::Html502 => return Answer::Html502,
            Action::Empty500 => return Answer::Empty500,
            Action::TruncatedJson => return Answer::TruncatedJson,
            Action::Redirect(status) => return Answer::Redirect(status),
            Action::Error {
                code,
                category,
                status,
            } => {
                return Answer::Error {
                    status,
                    code: Cow::Owned(code),
                    category: category.map(Cow::Owned),
                    fields: None,
                    retry_after: None,
                };
            }
        };
        if let Some(refusal) = self.server_side_checks(to) {
            return refusal;
        }
        if let Some(budget) = self.sc.minutes_budget {
            let per = self.sc.minutes_per_call;
            let used = self.minutes_used.fetch_add(per, Ordering::AcqRel);
            if used.saturating_add(per) > budget {
                self.minutes_used.fetch_sub(per, Ordering::AcqRel);
                return Answer::known(Code::VoiceUsageExhausted);
            }
        }
        if let Some(cap) = self.sc.max_concurrent_calls {
            if self.in_progress.fetch_add(1, Ordering::AcqRel) >= cap {
                self.in_progress.fetch_sub(1, Ordering::AcqRel);
                return Answer::known(Code::NoNumberAvailable);
            }
        }
        let call = self.place(seq, rule, to, from, key);
        if then_stall {
            Answer::PlacedThenStall(call)
        } else {
            Answer::Placed(call)
        }
    }

    fn random_fault(&self, seq: u64) -> Action {
        let f = &self.sc.faults;
        if f.error_rate + f.stall_rate + f.accept_then_stall_rate + f.drop_rate == 0.0 {
            return Action::Accept;
        }
        let r = draw(self.sc.seed, seq, 1);
        let mut edge = f.error_rate;
        if r < edge {
            const PROVIDER: [Code; 5] = [
                Code::InternalError,
                Code::SipGatewayFailed,
                Code::ProviderApiError,
                Code::RoomCreationFailed,
                Code::AgentDispatchFailed,
            ];
            let which = (draw(self.sc.seed, seq, 3) * PROVIDER.len() as f64) as usize;
            let code = PROVIDER[which.min(PROVIDER.len() - 1)];
            let info = code.info();
            return Action::Error {
                code: info.name.to_owned(),
                category: info.category.map(|c| c.as_str().to_owned()),
                status: info.http_status.unwrap_or(500),
            };
        }
        edge += f.stall_rate;
        if r < edge {
            return Action::Stall;
        }
        edge += f.accept_then_stall_rate;
        if r < edge {
            return Action::AcceptThenStall;
        }
        edge += f.drop_rate;
        if r < edge {
            return Action::Drop;
        }
        Action::Accept
    }

    fn server_side_checks(&self, to: &str) -> Option<Answer> {
        if self.dnc.contains(to) {
            return Some(Answer::known(Code::DncSuppressed));
        }
        if self.opt_outs.contains(to) {
            return Some(Answer::known(Code::RecipientOptedOut));
        }
        if let Some(w) = &self.sc.calling_window {
            let local = self.clock.now().with_timezone(&w.timezone);
            if !w.days.contains(&local.weekday()) {
                return Some(Answer::known(Code::CallingDayNotAllowed));
            }
            // Half-open, like the local rule: a call may start at `start`, never at `end`.
            let t = local.time();
            if t < w.start || t >= w.end {
                return Some(Answer::known(Code::OutsideCallingWindow));
            }
        }
        None
    }

    fn place(
        &self,
        seq: u64,
        rule: Option<usize>,
        to: &str,
        from: &str,
        key: Option<&str>,
    ) -> Arc<Call> {
        let n = self.call_seq.fetch_add(1, Ordering::Relaxed);
        let id: Arc<str> = Arc::from(format!("call_{:08x}{n:08x}", self.instance));
        let placed_at = self.clock.now();
        let delay = rule
            .and_then(|i| self.sc.rules[i].duration)
            .unwrap_or(self.sc.outcomes.delay);
        let ends_at = placed_at + chrono::Duration::from_std(delay).unwrap_or_default();
        let (forget, webhook) = rule.map_or((false, true), |i| {
            (self.sc.rules[i].forget, self.sc.rules[i].webhook)
        });
        let call = Arc::new(Call {
            id: id.clone(),
            seq: n,
            to: to.to_owned(),
            from: from.to_owned(),
            idempotency_key: key.map(str::to_owned),
            placed_at,
            ends_at,
            outcome: self.next_outcome(rule, to, seq),
            forget,
            webhook,
        });
        lock(&self.calls[shard_of(id.as_bytes())]).insert(id, call.clone());
        self.schedule_end(&call, seq);
        call
    }

    /// Ends the call after the outcome delay: frees its concurrency slot and sends
    /// its webhook. Nothing is spawned when neither is needed (the load-test path).
    fn schedule_end(&self, call: &Arc<Call>, seq: u64) {
        let sender = self.webhooks.clone().filter(|_| call.webhook);
        let capped = self.sc.max_concurrent_calls.is_some();
        if sender.is_none() && !capped {
            return;
        }
        let delay = self.sc.outcomes.delay;
        let in_progress = self.in_progress.clone();
        let cancel = self.cancel.clone();
        let call = call.clone();
        let jitter = self
            .sc
            .webhook
            .reorder_jitter
            .mul_f64(draw(self.sc.seed, seq, 4));
        let duplicate = draw(self.sc.seed, seq, 5) < self.sc.webhook.duplicate_rate;
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = cancel.cancelled() => return,
            }
            if capped {
                in_progress.fetch_sub(1, Ordering::AcqRel);
            }
            if let Some(sender) = sender {
                let event = WebhookEvent {
                    id: format!("evt_{}", call.id.trim_start_matches("call_")),
                    kind: PHONE_CALL_ENDED.to_owned(),
                    created_at: call.ends_at.to_rfc3339(),
                    data: call.resource(call.ends_at),
                };
                sender.deliver(event, jitter, duplicate).await;
            }
        });
    }

    fn push_log(&self, rec: RequestRecord) {
        if self.sc.log_requests {
            lock(&self.log).push(rec);
        }
    }

    fn call(&self, id: &str) -> Option<Arc<Call>> {
        lock(&self.calls[shard_of(id.as_bytes())]).get(id).cloned()
    }

    fn all_calls(&self) -> Vec<CallRecord> {
        let now = self.clock.now();
        let mut calls: Vec<Arc<Call>> = self
            .calls
            .iter()
            .flat_map(|s| lock(s).values().cloned().collect::<Vec<_>>())
            .collect();
        calls.sort_by_key(|c| c.seq);
        calls.iter().map(|c| c.record(now)).collect()
    }

    fn reset(&self) {
        for s in &self.idem {
            lock(s).clear();
        }
        for s in &self.calls {
            lock(s).clear();
        }
        lock(&self.log).clear();
        lock(&self.counters).clear();
        self.minutes_used.store(0, Ordering::Release);
        if let Some(w) = &self.webhooks {
            lock(&w.log).clear();
        }
    }
}

fn envelope(
    status: u16,
    code: &str,
    category: Option<&str>,
    fields: Option<(&str, &str)>,
) -> Response {
    let mut error = serde_json::json!({
        "code": code,
        "message": format!("Simulated RevDesk error: {code}."),
        "doc_url": format!(
            "https://docs.revdesk.com/api-reference/errors#{}",
            category.unwrap_or("http-errors").replace('_', "-")
        ),
    });
    if let Some(c) = category {
        error["category"] = serde_json::Value::from(c);
    }
    if let Some((field, why)) = fields {
        error["fields"] = serde_json::json!({ field: why });
    }
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "error": error }).to_string(),
    )
        .into_response()
}

fn accepted(shape: scenario::AcceptShape, id: &str) -> Response {
    let body = match shape {
        scenario::AcceptShape::DataId => format!(r#"{{"data":{{"id":"{id}","status":"queued"}}}}"#),
        scenario::AcceptShape::DataCallId => {
            format!(r#"{{"data":{{"call_id":"{id}","status":"queued"}}}}"#)
        }
        scenario::AcceptShape::CallId => format!(r#"{{"call_id":"{id}","status":"queued"}}"#),
    };
    (
        StatusCode::ACCEPTED,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

const HTML_502: &str = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n\
<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

/// Takes the whole request (not `HeaderMap` + `Bytes` extractors) so the headers are
/// not cloned on this hot path.
async fn dial(State(sim): State<Arc<Sim>>, request: axum::extract::Request) -> Response {
    let (parts, body) = request.into_parts();
    let Some(ConnectInfo(kill)) = parts.extensions.get::<ConnectInfo<KillSwitch>>().cloned() else {
        return envelope(500, "internal_error", Some("provider_error"), None);
    };
    let body = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(_) => {
            return envelope(
                400,
                "validation_error",
                None,
                Some(("body", "is too large or unreadable")),
            );
        }
    };
    let headers = parts.headers;
    let seq = sim.seq.fetch_add(1, Ordering::Relaxed);
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty());
    let mut rec = RequestRecord {
        seq,
        at: sim.clock.now(),
        to: None,
        from: None,
        idempotency_key: key.map(str::to_owned),
        status: None,
        code: None,
        placed_call_id: None,
        replay_of: None,
        action: Cow::Borrowed("answered"),
        http_version: Cow::Borrowed(match parts.version {
            axum::http::Version::HTTP_2 => "HTTP/2.0",
            axum::http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        }),
    };
    let answer = answer_dial(&sim, seq, &headers, key, &body, &mut rec);
    respond(&sim, answer, rec, kill).await
}

fn answer_dial(
    sim: &Sim,
    seq: u64,
    headers: &HeaderMap,
    key: Option<&str>,
    body: &Bytes,
    rec: &mut RequestRecord,
) -> Answer {
    if let Err(refused) = sim.authorize(headers) {
        return refused;
    }
    if let Some(limiter) = &sim.limiter {
        if let Err(not_until) = limiter.check() {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return Answer::Error {
                status: 429,
                code: Cow::Borrowed("rate_limited"),
                category: Some(Cow::Borrowed("account_limit")),
                fields: None,
                // Whole seconds, at least 1: `Retry-After` has no fractions.
                retry_after: Some(wait.as_secs_f64().ceil().max(1.0) as u64),
            };
        }
    }
    let raw = match serde_json::from_slice::<RawDial<'_>>(body) {
        Ok(raw) => raw,
        Err(_) => return invalid_body(body),
    };
    let from = raw.from_number.as_deref().map(str::trim).unwrap_or("");
    let to = raw.to_number.as_deref().map(str::trim).unwrap_or("");
    rec.from = (!from.is_empty()).then(|| from.to_owned());
    rec.to = (!to.is_empty()).then(|| to.to_owned());
    if from.is_empty() {
        return Answer::validation("from_number", "is required");
    }
    if !is_e164(from) {
        return Answer::validation("from_number", "must be an E.164 number");
    }
    if to.is_empty() {
        return Answer::known(Code::DestinationMissing);
    }
    if sim.sc.block_special_numbers && is_special(to) {
        return Answer::known(Code::DestinationBlocked);
    }
    if !is_e164(to) {
        return Answer::known(Code::DestinationInvalid);
    }
    let Some(key) = key else {
        return sim.decide(seq, to, from, None);
    };
    let mut shard = lock(&sim.idem[shard_of(key.as_bytes())]);
    if let Some(stored) = shard.get(key) {
        // Only successes are stored (SPEC.md section 7): same body, same 202;
        // another body under a key that succeeded is a conflict.
        return if *stored.body == **body {
            Answer::Replay(stored.call_id.clone())
        } else {
            Answer::known(Code::IdempotencyConflict)
        };
    }
    let answer = sim.decide(seq, to, from, Some(key));
    if let Answer::Placed(call) | Answer::PlacedThenStall(call) = &answer {
        shard.insert(
            key.to_owned(),
            Stored {
                body: Box::from(&body[..]),
                call_id: call.id.clone(),
            },
        );
    }
    answer
}

/// A body that did not parse: say which field is wrong when it is a JSON object.
fn invalid_body(body: &[u8]) -> Answer {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(map)) => {
            if map
                .get("to_number")
                .is_some_and(|v| !v.is_string() && !v.is_null())
            {
                Answer::validation("to_number", "must be a string")
            } else {
                Answer::validation("from_number", "must be a string")
            }
        }
        Ok(_) => Answer::validation("body", "must be a JSON object"),
        Err(_) => Answer::validation("body", "is not valid JSON"),
    }
}

async fn respond(sim: &Sim, answer: Answer, mut rec: RequestRecord, kill: KillSwitch) -> Response {
    let stall = |sim: &Sim| {
        let cancel = sim.cancel.clone();
        let d = sim.sc.stall_for;
        async move {
            tokio::select! {
                () = tokio::time::sleep(d) => {}
                () = cancel.cancelled() => {}
            }
        }
    };
    let response = match answer {
        Answer::Error {
            status,
            code,
            category,
            fields,
            retry_after,
        } => {
            rec.status = Some(status);
            rec.code = Some(code.to_string());
            let retry_after = retry_after.or_else(|| {
                matches!(code.as_ref(), "rate_limited" | "no_number_available")
                    .then_some(sim.sc.retry_after_secs)
            });
            sim.push_log(rec);
            let mut r = envelope(status, &code, category.as_deref(), fields);
            if let Some(secs) = retry_after {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            r
        }
        Answer::Placed(call) => {
            rec.status = Some(202);
            rec.placed_call_id = Some(call.id.to_string());
            sim.push_log(rec);
            accepted(sim.sc.accept_shape, &call.id)
        }
        Answer::Replay(id) => {
            rec.status = Some(202);
            rec.replay_of = Some(id.to_string());
            rec.action = Cow::Borrowed("replayed");
            sim.push_log(rec);
            accepted(sim.sc.accept_shape, &id)
        }
        Answer::PlacedThenStall(call) => {
            rec.status = Some(202);
            rec.placed_call_id = Some(call.id.to_string());
            rec.action = Cow::Borrowed("stalled");
            sim.push_log(rec);
            stall(sim).await;
            accepted(sim.sc.accept_shape, &call.id)
        }
        Answer::Stall => {
            rec.status = Some(500);
            rec.code = Some("internal_error".to_owned());
            rec.action = Cow::Borrowed("stalled");
            sim.push_log(rec);
            stall(sim).await;
            let info = Code::InternalError.info();
            envelope(500, info.name, info.category.map(|c| c.as_str()), None)
        }
        Answer::Drop => {
            rec.action = Cow::Borrowed("dropped");
            sim.push_log(rec);
            kill.kill();
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        Answer::Html502 => {
            rec.status = Some(502);
            sim.push_log(rec);
            (
                StatusCode::BAD_GATEWAY,
                [(header::CONTENT_TYPE, "text/html")],
                HTML_502,
            )
                .into_response()
        }
        Answer::Empty500 => {
            rec.status = Some(500);
            sim.push_log(rec);
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        Answer::TruncatedJson => {
            rec.status = Some(500);
            sim.push_log(rec);
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "application/json")],
                r#"{"error":{"code":"internal_error","categ"#,
            )
                .into_response()
        }
        Answer::Redirect(status) => {
            rec.status = Some(status);
            sim.push_log(rec);
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::TEMPORARY_REDIRECT);
            (status, [(header::LOCATION, "/v1/calls/dial")]).into_response()
        }
    };
    if !sim.sc.latency.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(sim.sc.latency) => {}
            () = sim.cancel.cancelled() => {}
        }
    }
    response
}

async fn get_call(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(Answer::Error {
        status,
        code,
        category,
        fields,
        ..
    }) = sim.authorize(&headers)
    {
        return envelope(status, &code, category.as_deref(), fields);
    }
    if !sim.sc.get_latency.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(sim.sc.get_latency) => {}
            () = sim.cancel.cancelled() => {}
        }
    }
    match sim.call(&id).filter(|c| !c.forget) {
        Some(call) => {
            let body = serde_json::json!({ "data": call.resource(sim.clock.now()) });
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        None => envelope(404, "not_found", None, None),
    }
}

async fn sim_requests(State(sim): State<Arc<Sim>>) -> Response {
    let log = lock(&sim.log).snapshot();
    axum::Json(log).into_response()
}

async fn sim_calls(State(sim): State<Arc<Sim>>) -> Response {
    axum::Json(sim.all_calls()).into_response()
}

async fn sim_webhooks(State(sim): State<Arc<Sim>>) -> Response {
    let log = sim
        .webhooks
        .as_ref()
        .map(|w| lock(&w.log).clone())
        .unwrap_or_default();
    axum::Json(log).into_response()
}

/// Counts only: cheap to read after a load run of millions of requests.
async fn sim_stats(State(sim): State<Arc<Sim>>) -> Response {
    let requests = lock(&sim.log).len;
    let calls: usize = sim.calls.iter().map(|s| lock(s).len()).sum();
    let deliveries = sim.webhooks.as_ref().map_or(0, |w| lock(&w.log).len());
    axum::Json(serde_json::json!({
        "requests": requests,
        "calls": calls,
        "webhook_deliveries": deliveries,
    }))
    .into_response()
}

async fn sim_reset(State(sim): State<Arc<Sim>>) -> StatusCode {
    sim.reset();
    StatusCode::NO_CONTENT
}

async fn not_found() -> Response {
    envelope(404, "not_found", None, None)
}

fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/v1/calls/dial", post(dial))
        .route("/v1/calls/{id}", get(get_call))
        .route("/_sim/requests", get(sim_requests))
        .route("/_sim/calls", get(sim_calls))
        .route("/_sim/webhooks", get(sim_webhooks))
        .route("/_sim/stats", get(sim_stats))
        .route("/_sim/reset", post(sim_reset))
        .fallback(not_found)
        .with_state(sim)
}

async fn run(
    listener: TcpListener,
    sim: Arc<Sim>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    conn::serve(listener, router(sim), cancel).await;
    Ok(())
}

/// Runs the simulator on `listener` until `cancel` fires (`dialer simulate`).
pub async fn serve(
    listener: TcpListener,
    scenario: Scenario,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    serve_with_clock(listener, scenario, Clock::system(), cancel).await
}

/// [`serve`] on a given clock (the demo's fixed-instant clock): the calling window,
/// timestamps and webhook signatures then follow it.
pub async fn serve_with_clock(
    listener: TcpListener,
    scenario: Scenario,
    clock: Clock,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let sim = Arc::new(Sim::new(scenario, clock, cancel.clone())?);
    run(listener, sim, cancel).await
}

/// An in-process simulator on a loopback port, for tests and the demo. Dropping it
/// stops the server.
pub struct Simulator {
    addr: SocketAddr,
    sim: Arc<Sim>,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Simulator {
    /// Binds `127.0.0.1:0` and starts serving on the system clock.
    pub async fn start(scenario: Scenario) -> anyhow::Result<Simulator> {
        Simulator::start_with_clock(scenario, Clock::system()).await
    }

    pub async fn start_with_clock(scenario: Scenario, clock: Clock) -> anyhow::Result<Simulator> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        Simulator::start_on(listener, scenario, clock)
    }

    /// Starts serving on an already bound listener.
    pub fn start_on(
        listener: TcpListener,
        scenario: Scenario,
        clock: Clock,
    ) -> anyhow::Result<Simulator> {
        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let sim = Arc::new(Sim::new(scenario, clock, cancel.clone())?);
        let task = tokio::spawn(run(listener, sim.clone(), cancel.clone()));
        Ok(Simulator {
            addr,
            sim,
            cancel,
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, the client's `base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The request log, as `GET /_sim/requests` returns it.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.sim.log).snapshot()
    }

    /// The placed calls in order, as `GET /_sim/calls` returns them.
    pub fn calls(&self) -> Vec<CallRecord> {
        self.sim.all_calls()
    }

    /// Every webhook delivery attempt, as `GET /_sim/webhooks` returns them.
    pub fn webhook_deliveries(&self) -> Vec<DeliveryRecord> {
        self.sim
            .webhooks
            .as_ref()
            .map(|w| lock(&w.log).clone())
            .unwrap_or_default()
    }

    /// Forgets every key, call, log entry, script position and spent minute.
    pub fn reset(&self) {
        self.sim.reset();
    }

    /// Stops serving (stalled responses end at once) and waits for the server.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.cancel.cancel();
        match self.task.take() {
            Some(task) => task.await?,
            None => Ok(()),
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e164_shapes_are_recognised() {
        for ok in ["+14155550123", "+442071838750", "+33612345678"] {
            assert!(is_e164(ok), "{ok}");
        }
        for bad in [
            "",
            "14155550123",
            "+1415555012",
            "+1415555012a",
            "+10155550123",
            "+0123456789",
            "+1",
        ] {
            assert!(!is_e164(bad), "{bad}");
        }
    }

    #[test]
    fn emergency_and_special_service_numbers_are_special() {
        for special in [
            "911",
            "+1911",
            "+19005551234",
            "+12125550150",
            "+12125551212",
            "+14115550123",
        ] {
            assert!(is_special(special), "{special}");
        }
        for plain in ["+14155551234", "+12125550200", "+442071838750"] {
            assert!(!is_special(plain), "{plain}");
        }
    }

    #[test]
    fn the_seeded_draw_is_uniform_enough_and_repeatable() {
        let draws: Vec<f64> = (0..10_000).map(|i| draw(7, i, 1)).collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        let below_half = draws.iter().filter(|d| **d < 0.5).count();
        assert!((4_500..5_500).contains(&below_half), "{below_half}");
        assert_eq!(draw(7, 3, 1), draws[3]);
    }
}
