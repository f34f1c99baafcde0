//! Time that passes between a claim and its request, or between two requests of one
//! attempt: the rate limiter's wait, a provider retry's backoff, a request in flight.
//! SPEC section 6: the rules are evaluated again "immediately before every request,
//! provider retries included" (a consent can expire and a window can close after the
//! claim read the facts); SPEC section 7: a key is re-sent only within
//! `revdesk.key_ttl`.
//!
//! Each test runs the real worker in process against the real simulator over
//! loopback HTTP, the two on one shared clock, on both backends. It waits (with a
//! timeout) for an observable state (the simulator's request log, the job's row),
//! moves the clock forward there with `Clock::advance`, checks that the worker had
//! not gone past that point yet, and reads back what the simulator received.

// A scenario reads best as the default plus the few knobs each test turns.
#![allow(clippy::field_reassign_with_default)]

use crate::both_backends;
use crate::e2e::{
    campaign, contact, contacts, fixed_now, load, poll_until, settings, simulator_on,
};
use crate::support::TestDb;
use chrono::{DateTime, Utc};
use dialer::clock::Clock;
use dialer::config::Settings;
use dialer::simulator::scenario::Rule;
use dialer::simulator::{RequestRecord, Scenario, Simulator};
use dialer::store::{ConsentRecord, DynStore};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const HOUR: Duration = Duration::from_secs(3600);

/// A consent campaign in New York hours (the tests' clock starts at 15:00 there).
const CONSENTED: &str = r#"
name = "timed"
from_number = "+14155550100"
window = { start = "09:00", end = "20:00" }
days = ["mon", "tue", "wed", "thu", "fri", "sat"]
require_consent = "express_written"
max_attempts = 2
"#;

/// The same without a consent requirement.
const OPEN: &str = r#"
name = "timed"
from_number = "+14155550100"
window = { start = "09:00", end = "20:00" }
days = ["mon", "tue", "wed", "thu", "fri", "sat"]
require_consent = false
max_attempts = 2
"#;

/// The job's row, straight from the database.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
struct JobRow {
    status: String,
    reason: Option<String>,
    due_at_ms: i64,
    provider_retries: i64,
    current_attempt_id: Option<i64>,
}

/// An attempt's row.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
struct AttemptRow {
    id: i64,
    idempotency_key: String,
    placement: String,
    sends: i64,
}

const JOB_SQL: &str = "SELECT status, reason, due_at_ms, CAST(provider_retries AS BIGINT) AS provider_retries, \
     current_attempt_id FROM jobs WHERE phone = $1";
const ATTEMPTS_SQL: &str = "SELECT id, idempotency_key, placement, CAST(sends AS BIGINT) AS sends \
     FROM attempts WHERE phone = $1 ORDER BY id";
const AUDIT_SQL: &str = "SELECT stage, rule FROM audit WHERE phone = $1 ORDER BY id";

/// One pool on the test's database, for reading rows while the worker runs.
enum Pool {
    Sqlite(sqlx::SqlitePool),
    Pg(sqlx::PgPool),
}

impl Pool {
    async fn open(db: &TestDb) -> Pool {
        if db.url.starts_with("sqlite:") {
            Pool::Sqlite(sqlx::SqlitePool::connect(&db.url).await.unwrap())
        } else {
            Pool::Pg(sqlx::PgPool::connect(&db.url).await.unwrap())
        }
    }

    async fn job(&self, phone: &str) -> JobRow {
        match self {
            Pool::Sqlite(p) => sqlx::query_as(JOB_SQL).bind(phone).fetch_one(p).await,
            Pool::Pg(p) => sqlx::query_as(JOB_SQL).bind(phone).fetch_one(p).await,
        }
        .unwrap()
    }

    async fn attempts(&self, phone: &str) -> Vec<AttemptRow> {
        match self {
            Pool::Sqlite(p) => sqlx::query_as(ATTEMPTS_SQL).bind(phone).fetch_all(p).await,
            Pool::Pg(p) => sqlx::query_as(ATTEMPTS_SQL).bind(phone).fetch_all(p).await,
        }
        .unwrap()
    }

    /// `(stage, rule)` of every verdict stored for the number.
    async fn audit(&self, phone: &str) -> Vec<(String, Option<String>)> {
        match self {
            Pool::Sqlite(p) => sqlx::query_as(AUDIT_SQL).bind(phone).fetch_all(p).await,
            Pool::Pg(p) => sqlx::query_as(AUDIT_SQL).bind(phone).fetch_all(p).await,
        }
        .unwrap()
    }
}

/// The worker, in a task of its own, until nothing is due or in flight.
fn start_worker(
    store: &DynStore,
    settings: Settings,
    listener: TcpListener,
    clock: &Clock,
) -> JoinHandle<()> {
    let store = store.clone();
    let clock = clock.clone();
    tokio::spawn(async move {
        crate::e2e::run_until_idle_on(&store, settings, listener, clock).await;
    })
}

async fn finish(worker: JoinHandle<()>) {
    tokio::time::timeout(Duration::from_secs(120), worker)
        .await
        .expect("the worker did not settle")
        .expect("the worker task failed");
}

fn requests_to(sim: &Simulator, phone: &str) -> Vec<RequestRecord> {
    sim.requests()
        .into_iter()
        .filter(|r| r.to.as_deref() == Some(phone))
        .collect()
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

async fn consents(store: &DynStore, list: &[(&str, Option<DateTime<Utc>>)]) {
    let records = list
        .iter()
        .map(|(phone, expires)| ConsentRecord {
            phone: (*phone).into(),
            campaign: String::new(),
            kind: "express_written".into(),
            granted_at_ms: ms(fixed_now() - chrono::Duration::days(30)),
            expires_at_ms: expires.map(ms),
            revoked_at_ms: None,
        })
        .collect();
    store.import_consents(load(records).await).await.unwrap();
}

/// Settings with the account rate at one dial per 5 s and no burst: the second job
/// of a claimed batch waits about 5 s at the rate limiter, after its claim.
fn slow_rate(db: &TestDb, sim: &Simulator, extra: &[(&str, toml::Value)]) -> Settings {
    let mut all = vec![
        ("rate.per_second", toml::Value::Float(0.2)),
        ("rate.burst", toml::Value::Integer(1)),
    ];
    all.extend(extra.iter().cloned());
    settings(&db.url, sim, &all)
}

fn text(v: &str) -> toml::Value {
    toml::Value::String(v.into())
}

both_backends! {
    /// A consent that expires while its job, claimed with a valid consent, waits at
    /// the rate limiter: the full pre-flight runs again right before the request, on
    /// the claim's facts at the current time, so the number is not dialed (dropped
    /// `no_consent`, the verdict stored with stage `pre_request`).
    async fn a_consent_that_expires_between_claim_and_send_is_not_dialed(db) {
        let store = &db.store;
        let pool = Pool::open(&db).await;
        let (first, second) = ("+12122345801", "+12122345802");
        let id = campaign(store, CONSENTED).await;
        contacts(store, id, vec![contact(first), contact(second)]).await;
        consents(store, &[(first, None), (second, Some(fixed_now() + chrono::Duration::hours(1)))]).await;

        let clock = Clock::starting_at(fixed_now());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim = simulator_on(Scenario::default(), &listener, &clock).await;
        let worker = start_worker(store, slow_rate(&db, &sim, &[]), listener, &clock);

        // The first number took the only token; the second is claimed (pre-flight
        // passed: its consent is valid for another hour) and waits for the next one.
        let (p, s) = (&pool, &sim);
        poll_until(Duration::from_secs(30), "the first is dialed and the second waits", move || async move {
            !requests_to(s, first).is_empty()
                && p.job(second).await.status == "running"
                && p.attempts(second).await.is_empty()
        })
        .await;
        clock.advance(2 * HOUR);
        assert!(
            pool.attempts(second).await.is_empty() && requests_to(&sim, second).is_empty(),
            "the rate limiter let the second job go before the clock moved: the test proves nothing"
        );
        finish(worker).await;

        assert_eq!(requests_to(&sim, first).len(), 1);
        assert_eq!(requests_to(&sim, second), vec![], "dialed after its consent expired");
        let job = pool.job(second).await;
        assert_eq!((job.status.as_str(), job.reason.as_deref()), ("dropped", Some("no_consent")), "{job:?}");
        let audit = pool.audit(second).await;
        assert!(
            audit.contains(&("pre_request".into(), Some("no_consent".into()))),
            "the blocking verdict is stored: {audit:?}"
        );
        assert!(pool.attempts(second).await.is_empty(), "no attempt was recorded");
    }
}

both_backends! {
    /// A consent that expires while a request is in flight (no answer: the retry
    /// would be the same key): the retry is a request too, so the full pre-flight
    /// stops it. The ambiguous attempt stays possibly placed (SPEC section 7).
    async fn a_consent_that_expires_before_a_provider_retry_stops_the_retry(db) {
        let store = &db.store;
        let pool = Pool::open(&db).await;
        let phone = "+12122345811";
        let id = campaign(store, CONSENTED).await;
        contacts(store, id, vec![contact(phone)]).await;
        consents(store, &[(phone, Some(fixed_now() + chrono::Duration::hours(1)))]).await;

        let clock = Clock::starting_at(fixed_now());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut scenario = Scenario::default();
        scenario.stall_for = Duration::from_secs(10);
        scenario.rules = vec![Rule::for_number(phone, &["stall", "accept"]).unwrap()];
        let sim = simulator_on(scenario, &listener, &clock).await;
        let s = settings(&db.url, &sim, &[("revdesk.timeout", text("3s"))]);
        let worker = start_worker(store, s, listener, &clock);

        let s = &sim;
        poll_until(Duration::from_secs(30), "the first request is in flight", move || async move {
            requests_to(s, phone).len() == 1
        })
        .await;
        clock.advance(2 * HOUR);
        let job = pool.job(phone).await;
        assert!(
            job.status == "dialing" && job.provider_retries == 0,
            "the request timed out before the clock moved: the test proves nothing ({job:?})"
        );
        finish(worker).await;

        let reqs = requests_to(&sim, phone);
        assert_eq!(reqs.len(), 1, "retried after the consent expired: {reqs:?}");
        let job = pool.job(phone).await;
        assert_eq!((job.status.as_str(), job.reason.as_deref()), ("dropped", Some("no_consent")), "{job:?}");
        let audit = pool.audit(phone).await;
        assert!(audit.contains(&("pre_request".into(), Some("no_consent".into()))), "{audit:?}");
        let attempts = pool.attempts(phone).await;
        assert_eq!(attempts.len(), 1, "{attempts:?}");
        assert_eq!(attempts[0].placement, "possibly_placed", "an ambiguous attempt counts for good");
        assert!(sim.calls().is_empty());
    }
}

both_backends! {
    /// The calling window closes (20:00 in New York) during a provider retry's
    /// backoff: the retry is not sent, the job is requeued to the next window opening
    /// and keeps its attempt and key (possibly placed, SPEC section 7).
    async fn a_window_that_closes_during_a_provider_retry_backoff_stops_the_retry(db) {
        let store = &db.store;
        let pool = Pool::open(&db).await;
        let phone = "+12122345821";
        let id = campaign(store, OPEN).await;
        contacts(store, id, vec![contact(phone)]).await;

        let clock = Clock::starting_at(fixed_now());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut scenario = Scenario::default();
        scenario.rules = vec![Rule::for_number(phone, &["empty500", "empty500", "empty500", "accept"]).unwrap()];
        let sim = simulator_on(scenario, &listener, &clock).await;
        let worker = start_worker(store, settings(&db.url, &sim, &[]), listener, &clock);

        // The third 5xx was decided (a third same-key retry, 2-3 s of backoff ahead).
        let p = &pool;
        poll_until(Duration::from_secs(30), "the third retry is decided", move || async move {
            p.job(phone).await.provider_retries == 3
        })
        .await;
        // 15:00 -> 20:30 in New York: past the campaign's window.
        clock.advance(5 * HOUR + HOUR / 2);
        assert_eq!(
            requests_to(&sim, phone).len(), 3,
            "the retry left before the clock moved: the test proves nothing"
        );
        finish(worker).await;

        let reqs = requests_to(&sim, phone);
        assert_eq!(reqs.len(), 3, "retried after the window closed: {reqs:?}");
        let job = pool.job(phone).await;
        assert_eq!((job.status.as_str(), job.reason.as_deref()), ("queued", Some("calling_window")), "{job:?}");
        let opening = DateTime::parse_from_rfc3339("2026-11-19T09:00:00-05:00").unwrap().with_timezone(&Utc);
        assert!(
            job.due_at_ms >= ms(opening) && job.due_at_ms <= ms(opening) + 61_000,
            "requeued to the next opening (with jitter): {job:?}"
        );
        let attempts = pool.attempts(phone).await;
        assert_eq!(attempts.len(), 1, "{attempts:?}");
        assert_eq!(job.current_attempt_id, Some(attempts[0].id), "the attempt keeps its key");
        assert_eq!(attempts[0].placement, "possibly_placed");
        assert!(
            reqs.iter().all(|r| r.idempotency_key.as_deref() == Some(attempts[0].idempotency_key.as_str())),
            "every request under the attempt's key: {reqs:?}"
        );
        let audit = pool.audit(phone).await;
        assert!(audit.contains(&("pre_request".into(), Some("calling_window".into()))), "{audit:?}");
    }
}

both_backends! {
    /// `revdesk.key_ttl` runs out during a provider retry's backoff (after the answer
    /// that asked for the retry was decided): the key is not re-sent (the vendor may
    /// have forgotten it, so a re-send could place a second call). The attempt is
    /// settled as possibly placed and requeued like `no_answer` (SPEC section 7).
    async fn a_key_past_its_ttl_during_a_retry_backoff_is_not_re_sent(db) {
        let store = &db.store;
        let pool = Pool::open(&db).await;
        let phone = "+12122345831";
        let id = campaign(store, OPEN).await;
        contacts(store, id, vec![contact(phone)]).await;

        let clock = Clock::starting_at(fixed_now());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut scenario = Scenario::default();
        scenario.rules = vec![Rule::for_number(phone, &["empty500", "empty500", "empty500", "accept"]).unwrap()];
        let sim = simulator_on(scenario, &listener, &clock).await;
        let s = settings(&db.url, &sim, &[("revdesk.key_ttl", text("1h"))]);
        let worker = start_worker(store, s, listener, &clock);

        // The third 5xx was decided (a third same-key retry, 2-3 s of backoff ahead).
        let p = &pool;
        poll_until(Duration::from_secs(30), "the third retry is decided", move || async move {
            p.job(phone).await.provider_retries == 3
        })
        .await;
        let moved_at = clock.now() + chrono::Duration::hours(2);
        clock.advance(2 * HOUR);
        assert_eq!(
            requests_to(&sim, phone).len(), 3,
            "the retry left before the clock moved: the test proves nothing"
        );
        finish(worker).await;

        let reqs = requests_to(&sim, phone);
        assert_eq!(reqs.len(), 3, "a key past revdesk.key_ttl was re-sent: {reqs:?}");
        assert!(reqs.iter().all(|r| r.at < moved_at), "{reqs:?}");
        assert!(sim.calls().is_empty());
        let job = pool.job(phone).await;
        assert_eq!((job.status.as_str(), job.reason.as_deref()), ("queued", Some("key_expired")), "{job:?}");
        assert_eq!(job.current_attempt_id, None, "the next attempt gets a new key");
        assert!(job.due_at_ms >= ms(moved_at) + 3_600_000 - 5_000, "requeued like no_answer (1h): {job:?}");
        let attempts = pool.attempts(phone).await;
        assert_eq!(attempts.len(), 1, "{attempts:?}");
        assert_eq!(attempts[0].placement, "possibly_placed", "settled as possibly placed");
    }
}

both_backends! {
    /// A possibly placed attempt, requeued with its key, is claimed again while its
    /// key is still young, then waits at the rate limiter while `revdesk.key_ttl`
    /// runs out: the re-send is not made (checked again right before the request,
    /// not only at the claim). Two such jobs, so whichever is claimed second waits.
    async fn a_key_past_its_ttl_while_its_re_send_waits_for_the_rate_limiter_is_not_re_sent(db) {
        let store = &db.store;
        let pool = Pool::open(&db).await;
        let phones = ["+12122345841", "+12122345842"];
        let id = campaign(store, OPEN).await;
        contacts(store, id, phones.iter().map(|p| contact(p)).collect()).await;

        let clock = Clock::starting_at(fixed_now());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut scenario = Scenario::default();
        scenario.rules = phones.iter().map(|p| Rule::for_number(p, &["empty500", "accept"]).unwrap()).collect();
        let sim = simulator_on(scenario, &listener, &clock).await;
        let extra = [("revdesk.key_ttl", text("1h")), ("retry.provider_max", toml::Value::Integer(0))];

        // First run: each gets a 5xx and is requeued with its key (5m, same key).
        finish(start_worker(store, settings(&db.url, &sim, &extra), listener, &clock)).await;
        let mut due = 0;
        for p in phones {
            let job = pool.job(p).await;
            assert_eq!(job.status, "queued", "{job:?}");
            assert!(job.current_attempt_id.is_some(), "requeued with its key: {job:?}");
            due = due.max(job.due_at_ms);
        }

        // Both due, keys minutes old. Second run, at one dial per 5 s.
        let wait = (due - ms(clock.now())).max(0) as u64 + 1_000;
        clock.advance(Duration::from_millis(wait));
        let listener = TcpListener::bind(addr).await.unwrap();
        let worker = start_worker(store, slow_rate(&db, &sim, &extra), listener, &clock);
        // The one not re-sent yet, once exactly one of them was.
        let unsent = |s: &Simulator| {
            let sent: Vec<&str> = phones.iter().copied().filter(|p| requests_to(s, p).len() == 2).collect();
            (sent.len() == 1).then(|| if sent[0] == phones[0] { phones[1] } else { phones[0] })
        };
        let (p, s) = (&pool, &sim);
        poll_until(Duration::from_secs(30), "one is re-sent and the other waits", move || async move {
            match unsent(s) {
                Some(other) => p.job(other).await.status == "running",
                None => false,
            }
        })
        .await;
        let waiting = unsent(&sim).unwrap();
        let moved_at = clock.now() + chrono::Duration::hours(1);
        clock.advance(HOUR);
        assert_eq!(
            requests_to(&sim, waiting).len(), 1,
            "the rate limiter let the re-send go before the clock moved: the test proves nothing"
        );
        finish(worker).await;

        let reqs = requests_to(&sim, waiting);
        assert_eq!(reqs.len(), 1, "a key past revdesk.key_ttl was re-sent: {reqs:?}");
        let job = pool.job(waiting).await;
        assert_eq!((job.status.as_str(), job.reason.as_deref()), ("queued", Some("key_expired")), "{job:?}");
        assert_eq!(job.current_attempt_id, None, "the next attempt gets a new key");
        assert!(job.due_at_ms >= ms(moved_at) + 3_600_000 - 5_000, "requeued like no_answer (1h): {job:?}");
        let attempts = pool.attempts(waiting).await;
        assert_eq!(attempts.len(), 1, "{attempts:?}");
        assert_eq!(attempts[0].placement, "possibly_placed");
        assert_eq!(attempts[0].sends, 1, "stopped before the dispatch counted a re-send: {attempts:?}");
        // The other one was re-sent in time, under its key, and placed one call.
        let sent = if waiting == phones[0] { phones[1] } else { phones[0] };
        let reqs = requests_to(&sim, sent);
        assert_eq!(reqs[0].idempotency_key, reqs[1].idempotency_key);
        assert_eq!(sim.calls().len(), 1);
    }
}
