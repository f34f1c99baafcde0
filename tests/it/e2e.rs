//! End to end: the real worker, the real simulator over loopback HTTP, a real
//! database. These prove the guarantees of SPEC section 12.

// A scenario reads best as the default plus the few knobs each test turns.
#![allow(clippy::field_reassign_with_default)]

use crate::both_backends;
use crate::support::{TestDb, pg_admin_url};
use chrono::{DateTime, Utc};
use dialer::campaign::CampaignSpec;
use dialer::clock::Clock;
use dialer::config::{Settings, Sources};
use dialer::simulator::{Scenario, Simulator};
use dialer::store::{ConsentRecord, ContactRecord, DncRecord, DynStore, OptOutRecord};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "whsec_e2e_secret";
pub const API_KEY: &str = "sk_e2e_key";

/// Wednesday 2026-11-18 15:00 US Eastern: every test behaves the same at any hour.
pub fn fixed_now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-18T15:00:00-05:00")
        .unwrap()
        .with_timezone(&Utc)
}

pub fn clock() -> Clock {
    Clock::starting_at(fixed_now())
}

/// A simulator whose webhooks go to `listener` (the worker's HTTP side).
pub async fn simulator(scenario: Scenario, listener: &TcpListener) -> Simulator {
    simulator_on(scenario, listener, &clock()).await
}

/// [`simulator`] on a given clock (the one the test's worker runs on).
pub async fn simulator_on(
    mut scenario: Scenario,
    listener: &TcpListener,
    clock: &Clock,
) -> Simulator {
    scenario.webhook_url = Some(format!(
        "http://{}/webhooks/revdesk",
        listener.local_addr().unwrap()
    ));
    scenario.webhook_secret = SECRET.into();
    Simulator::start_with_clock(scenario, clock.clone())
        .await
        .expect("simulator")
}

/// One in-process worker serving in the background until [`Running::stop`].
pub struct Running {
    pub app: Arc<dialer::worker::app::App>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub async fn start(
        store: &DynStore,
        settings: Settings,
        listener: TcpListener,
        clock: &Clock,
    ) -> Running {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let app = dialer::worker::build(
            settings,
            store.clone(),
            clock.clone(),
            CancellationToken::new(),
        )
        .expect("build worker");
        let app = Arc::new(app);
        let task = tokio::spawn(dialer::worker::serve(app.clone(), listener, false));
        Running { app, task }
    }

    /// Stops the worker the way SIGTERM does and waits until it has: the dials in
    /// flight are decided (and a probe's answer applied) before this returns.
    pub async fn stop(self) {
        self.app.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the worker did not stop")
            .expect("worker task panicked")
            .expect("worker failed");
    }
}

/// Polls `done` every 20 ms until it holds; panics after `limit`.
pub async fn poll_until<F, Fut>(limit: Duration, what: &str, done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    poll_every(Duration::from_millis(20), limit, what, done).await
}

async fn poll_every<F, Fut>(every: Duration, limit: Duration, what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while !done().await {
        assert!(start.elapsed() < limit, "timed out waiting until {what}");
        tokio::time::sleep(every).await;
    }
}

pub fn settings(db_url: &str, sim: &Simulator, extra: &[(&str, toml::Value)]) -> Settings {
    let s = |v: &str| toml::Value::String(v.into());
    let mut overrides = vec![
        ("database.url".to_owned(), s(db_url)),
        ("revdesk.base_url".to_owned(), s(&sim.base_url())),
        ("revdesk.api_key".to_owned(), s(API_KEY)),
        ("revdesk.timeout".to_owned(), s("2s")),
        ("webhook.secret".to_owned(), s(SECRET)),
        ("worker.poll_interval".to_owned(), s("50ms")),
        ("worker.lease".to_owned(), s("5s")),
        ("rate.per_second".to_owned(), toml::Value::Float(2000.0)),
        ("rate.burst".to_owned(), toml::Value::Integer(200)),
    ];
    overrides.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    Settings::load(&Sources {
        overrides,
        ..Default::default()
    })
    .expect("settings")
}

/// Runs one in-process worker until nothing is due or in flight (bounded).
pub async fn run_until_idle(store: &DynStore, settings: Settings, listener: TcpListener) {
    run_until_idle_on(store, settings, listener, clock()).await;
}

/// [`run_until_idle`] on a given clock.
pub async fn run_until_idle_on(
    store: &DynStore,
    settings: Settings,
    listener: TcpListener,
    clock: Clock,
) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    let app = dialer::worker::build(settings, store.clone(), clock, CancellationToken::new())
        .expect("build worker");
    let app = Arc::new(app);
    tokio::time::timeout(
        Duration::from_secs(90),
        dialer::worker::serve(app, listener, true),
    )
    .await
    .expect("the worker did not settle within 90s")
    .expect("worker failed");
}

pub fn contact(phone: &str) -> ContactRecord {
    ContactRecord {
        phone: phone.into(),
        external_id: None,
        timezone: None,
        state: None,
        postal_code: None,
        first_name: None,
        last_name: None,
        attributes: None,
    }
}

pub async fn load<T: Send + 'static>(items: Vec<T>) -> tokio::sync::mpsc::Receiver<Vec<T>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(items).await.unwrap();
    tx.send(Vec::new()).await.unwrap();
    rx
}

pub async fn campaign(store: &DynStore, toml: &str) -> i64 {
    let spec = CampaignSpec::parse(toml).unwrap();
    store
        .apply_campaign(&spec, fixed_now().timestamp_millis())
        .await
        .unwrap()
        .0
        .id
}

pub async fn contacts(store: &DynStore, campaign_id: i64, list: Vec<ContactRecord>) {
    let rx = load(list).await;
    store
        .import_contacts(campaign_id, fixed_now().timestamp_millis(), rx)
        .await
        .unwrap();
}

const CONSENT_CAMPAIGN: &str = r#"
name = "consented"
from_number = "+14155550100"
window = { start = "09:00", end = "20:00" }
days = ["mon", "tue", "wed", "thu", "fri", "sat"]
require_consent = "express_written"
max_attempts = 1
"#;

both_backends! {
    /// Guarantee 1: no number that fails pre-flight at the moment of dialing is dialed,
    /// checked against the simulator's own log of what it received.
    async fn no_number_that_fails_preflight_is_dialed(db) {
        let store = &db.store;
        let id = campaign(store, CONSENT_CAMPAIGN).await;
        let allowed = ["+12122345601", "+13122345609"];
        let mut list: Vec<ContactRecord> = [
            "+12122345601", "+12122345602", "+12122345603", "+12122345604", "+12122345605",
            "+12122345606", "+12122345607", "+13122345609", "+12012345610",
        ]
        .iter()
        .map(|p| contact(p))
        .collect();
        list[5].timezone = Some("Asia/Tokyo".into()); // 05:00 there: night
        contacts(store, id, list).await;
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis();
        let consent = |phone: &str, expires: Option<i64>, revoked: Option<i64>| ConsentRecord {
            phone: phone.into(), campaign: String::new(), kind: "express_written".into(),
            granted_at_ms: t("2026-01-01T00:00:00Z"), expires_at_ms: expires, revoked_at_ms: revoked,
        };
        // Everyone but ...04 has consent; ...05's was revoked, ...07's expired.
        let consents = vec![
            consent("+12122345601", None, None), consent("+12122345602", None, None),
            consent("+12122345603", None, None), consent("+12122345605", None, Some(t("2026-06-01T00:00:00Z"))),
            consent("+12122345606", None, None), consent("+12122345607", Some(t("2026-02-01T00:00:00Z")), None),
            consent("+13122345609", None, None), consent("+12012345610", None, None),
        ];
        store.import_consents(load(consents).await).await.unwrap();
        // Added after the contacts were queued: pre-flight reads facts at dial time.
        store.import_dnc(load(vec![
            DncRecord::Number { phone: "+12122345602".into(), source: "national".into() },
            DncRecord::AreaCode { npa: "201".into(), source: "state".into() },
        ]).await, 0).await.unwrap();
        store.import_opt_outs(load(vec![OptOutRecord {
            phone: "+12122345603".into(), campaign: "consented".into(), opted_out_at_ms: 0, source: "sms".into(),
        }]).await).await.unwrap();

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim = simulator(Scenario::default(), &listener).await;
        run_until_idle(store, settings(&db.url, &sim, &[]), listener).await;

        let dialed: BTreeSet<String> = sim.requests().into_iter().filter_map(|r| r.to).collect();
        assert_eq!(dialed, allowed.iter().map(|s| s.to_string()).collect(), "only the allowed numbers may be dialed");
        let st = store.status(Some("consented"), fixed_now().timestamp_millis()).await.unwrap();
        let c = &st.campaigns[0];
        assert_eq!(c.jobs["done"], 2, "{c:?}");
        assert_eq!(c.reasons.get("dnc"), Some(&2), "{c:?}");
        assert_eq!(c.reasons.get("opted_out"), Some(&1), "{c:?}");
        assert_eq!(c.reasons.get("no_consent"), Some(&3), "{c:?}");
        assert_eq!(c.jobs["queued"], 1, "the Tokyo contact waits for its window: {c:?}");
    }
}

const OPEN_CAMPAIGN: &str = r#"
name = "open"
from_number = "+14155550100"
window = { start = "09:00", end = "20:00" }
require_consent = false
max_attempts = 1
"#;

both_backends! {
    /// Guarantee 2: a dial whose response stalls past the timeout (the call was
    /// placed) is retried with the same key; the vendor places exactly one call.
    async fn a_timed_out_dial_is_retried_with_its_key_and_places_one_call(db) {
        let store = &db.store;
        let id = campaign(store, OPEN_CAMPAIGN).await;
        contacts(store, id, vec![contact("+12122345611")]).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut scenario = Scenario::default();
        scenario.stall_for = Duration::from_secs(3);
        scenario.rules = vec![dialer::simulator::scenario::Rule::for_number("+12122345611", &["accept_then_stall", "accept"]).unwrap()];
        let sim = simulator(scenario, &listener).await;
        let s = settings(&db.url, &sim, &[("revdesk.timeout", toml::Value::String("1s".into()))]);
        run_until_idle(store, s, listener).await;

        let reqs = sim.requests();
        assert!(reqs.len() >= 2, "the timed-out dial was not retried: {reqs:?}");
        let keys: BTreeSet<_> = reqs.iter().map(|r| r.idempotency_key.clone()).collect();
        assert!(keys.iter().all(|k| k.is_some()), "every dial carries an Idempotency-Key");
        assert_eq!(keys.len(), 1, "a retry after an ambiguous answer must reuse its key");
        assert_eq!(sim.calls().len(), 1, "exactly one call placed");
        let st = store.status(Some("open"), fixed_now().timestamp_millis()).await.unwrap();
        assert_eq!(st.campaigns[0].jobs["done"], 1, "{st:?}");
    }
}

both_backends! {
    /// An ambiguous attempt is requeued "same key" (SPEC section 8) and, when due,
    /// re-sent: a re-send is not a new call, so under a cap of 1 a day the attempt's
    /// own count must not hold it back (the dispatch already checks caps for new
    /// attempts only). Counted against itself at the claim, the re-send waited a
    /// day, by which time revdesk.key_ttl had run out and the attempt was settled
    /// unsent.
    async fn a_requeued_ambiguous_attempt_is_re_sent_under_its_own_cap(db) {
        let store = &db.store;
        let capped = format!("{OPEN_CAMPAIGN}frequency_cap = {{ calls = 1, per = \"24h\" }}\n");
        let id = campaign(store, &capped).await;
        contacts(store, id, vec![contact("+12122345612")]).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut scenario = Scenario::default();
        scenario.rules = vec![dialer::simulator::scenario::Rule::for_number("+12122345612", &["empty500", "accept"]).unwrap()];
        let sim = simulator(scenario, &listener).await;
        let addr = listener.local_addr().unwrap();
        let extra = [("retry.provider_max", toml::Value::Integer(0))];
        run_until_idle(store, settings(&db.url, &sim, &extra), listener).await;
        assert_eq!(sim.requests().len(), 1);
        let st = store.status(Some("open"), fixed_now().timestamp_millis()).await.unwrap();
        assert_eq!(st.campaigns[0].jobs["queued"], 1, "requeued after the 5xx: {st:?}");

        // The requeue's delay (5 minutes) has passed.
        db.execute(&format!("UPDATE jobs SET due_at_ms = {}", fixed_now().timestamp_millis())).await;
        // Same port: the simulator's webhooks go there.
        let listener = TcpListener::bind(addr).await.unwrap();
        run_until_idle(store, settings(&db.url, &sim, &extra), listener).await;
        let reqs = sim.requests();
        assert_eq!(reqs.len(), 2, "the requeued attempt was not re-sent: {reqs:?}");
        assert_eq!(reqs[0].idempotency_key, reqs[1].idempotency_key, "re-sent under its key");
        assert_eq!(sim.calls().len(), 1);
    }
}

both_backends! {
    /// `retry.provider_max` same-key retries are per attempt (SPEC section 8): a
    /// new attempt starts with none used. The job's count used to carry over, so
    /// the second attempt's first 5xx found the retries spent and the job was
    /// dropped `provider_failed` instead of retried.
    async fn a_new_attempt_starts_with_no_provider_retries_used(db) {
        let store = &db.store;
        let two = OPEN_CAMPAIGN.replace("max_attempts = 1", "max_attempts = 2");
        let id = campaign(store, &two).await;
        contacts(store, id, vec![contact("+12122345613")]).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut scenario = Scenario::default();
        let script = ["internal_error", "internal_error", "accept", "internal_error", "accept"];
        let mut rule = dialer::simulator::scenario::Rule::for_number("+12122345613", &script).unwrap();
        rule.outcomes = vec![
            dialer::simulator::Outcome::parse("busy").unwrap(),
            dialer::simulator::Outcome::Completed,
        ];
        scenario.rules = vec![rule];
        let sim = simulator(scenario, &listener).await;
        let addr = listener.local_addr().unwrap();
        let extra = [
            ("retry.provider_max", toml::Value::Integer(2)),
            ("retry.provider_requeues", toml::Value::Integer(0)),
        ];
        run_until_idle(store, settings(&db.url, &sim, &extra), listener).await;
        assert_eq!(sim.requests().len(), 3, "two retries, then placed");
        let st = store.status(Some("open"), fixed_now().timestamp_millis()).await.unwrap();
        assert_eq!(st.campaigns[0].jobs["queued"], 1, "busy: requeued for attempt 2: {st:?}");

        // The busy requeue's delay has passed.
        db.execute(&format!("UPDATE jobs SET due_at_ms = {}", fixed_now().timestamp_millis())).await;
        let listener = TcpListener::bind(addr).await.unwrap();
        run_until_idle(store, settings(&db.url, &sim, &extra), listener).await;
        let reqs = sim.requests();
        assert_eq!(reqs.len(), 5, "attempt 2 retried its 5xx: {reqs:?}");
        assert_eq!(reqs[3].idempotency_key, reqs[4].idempotency_key, "retried under its key");
        assert_ne!(reqs[0].idempotency_key, reqs[3].idempotency_key, "a new attempt, a new key");
        assert_eq!(sim.calls().len(), 2);
        let st = store.status(Some("open"), fixed_now().timestamp_millis()).await.unwrap();
        assert_eq!(st.campaigns[0].jobs["done"], 1, "{st:?}");
    }
}

both_backends! {
    /// Guarantee 2 over `revdesk.http2`: the dials share one connection, so the
    /// simulator dropping it under one dial makes every dial then in flight ambiguous;
    /// each is re-sent under its own key and every contact gets exactly one call.
    async fn over_http2_a_dropped_connection_still_places_one_call_per_contact(db) {
        let store = &db.store;
        let id = campaign(store, OPEN_CAMPAIGN).await;
        let phones: Vec<String> = (0..16).map(|i| format!("+1212234{:04}", 5800 + i)).collect();
        contacts(store, id, phones.iter().map(|p| contact(p)).collect()).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut scenario = Scenario::default();
        // Answers held briefly so that other dials are in flight when the drop comes.
        scenario.latency = Duration::from_millis(100);
        scenario.rules = vec![dialer::simulator::scenario::Rule::for_number(&phones[8], &["drop", "accept"]).unwrap()];
        let sim = simulator(scenario, &listener).await;
        // Every dial in flight fails at once, which the circuit breaker (10 of the last
        // 20) may count as an outage: an account halt, and the jobs whose dials failed
        // requeued with their keys (SPEC section 8: an outage drops nothing).
        let config = || settings(&db.url, &sim, &[
            ("revdesk.http2", toml::Value::Boolean(true)),
            ("retry.account_halt", toml::Value::String("1s".into())),
            // The second run's clock is an hour past the simulator's, which signs.
            ("webhook.tolerance", toml::Value::String("2h".into())),
        ]);
        let addr = listener.local_addr().unwrap();
        run_until_idle(store, config(), listener).await;
        let st = store.status(Some("open"), fixed_now().timestamp_millis()).await.unwrap();
        let c = &st.campaigns[0];
        assert_eq!(c.jobs["done"] + c.jobs["queued"], phones.len() as i64, "nothing dropped: {c:?}");
        assert_eq!(c.attempts, phones.len() as i64, "one attempt per contact: {c:?}");
        // An hour later (16:00 in New York) the requeued jobs are due: the same worker
        // configuration, on the same port the simulator's webhooks go to.
        let listener = TcpListener::bind(addr).await.unwrap();
        let later = Clock::starting_at(fixed_now() + chrono::Duration::hours(1));
        run_until_idle_on(store, config(), listener, later).await;

        let st = store.status(Some("open"), fixed_now().timestamp_millis()).await.unwrap();
        let c = &st.campaigns[0];
        assert_eq!(c.jobs["done"], phones.len() as i64, "{c:?}");
        assert_eq!(c.attempts, phones.len() as i64, "retries reuse the attempt: {c:?}");
        let reqs = sim.requests();
        assert!(reqs.iter().all(|r| r.http_version == "HTTP/2.0"), "{reqs:?}");
        assert!(reqs.iter().any(|r| r.action == "dropped"), "{reqs:?}");
        let mut keys: BTreeMap<String, BTreeSet<Option<String>>> = BTreeMap::new();
        for r in &reqs {
            keys.entry(r.to.clone().unwrap()).or_default().insert(r.idempotency_key.clone());
        }
        assert_eq!(keys.len(), phones.len(), "every contact dialed");
        assert!(keys.values().all(|k| k.len() == 1 && k.iter().all(Option::is_some)),
            "one key per contact, re-sent unchanged: {keys:?}");
        let mut calls: BTreeMap<String, usize> = BTreeMap::new();
        for call in sim.calls() {
            *calls.entry(call.to).or_default() += 1;
        }
        assert_eq!(calls.len(), phones.len(), "{calls:?}");
        assert!(calls.values().all(|&n| n == 1), "exactly one call per contact: {calls:?}");
    }
}

both_backends! {
    /// Guarantee 2/4 with webhooks: duplicated, reordered deliveries and events that
    /// arrive before the 202 is stored each apply exactly once.
    async fn duplicated_reordered_and_early_webhooks_apply_exactly_once(db) {
        let store = &db.store;
        let id = campaign(store, &OPEN_CAMPAIGN.replace("max_attempts = 1", "max_attempts = 2")).await;
        let phones: Vec<String> = (0..24).map(|i| format!("+1212234{:04}", 5700 + i)).collect();
        contacts(store, id, phones.iter().map(|p| contact(p)).collect()).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut scenario = Scenario::default();
        // The call ends at once but the 202 comes 150ms later: the webhook arrives
        // before the worker stores the 202.
        scenario.latency = Duration::from_millis(150);
        scenario.outcomes.delay = Duration::ZERO;
        scenario.outcomes.mix = BTreeMap::from([("completed".into(), 2), ("busy".into(), 1)]);
        scenario.webhook.duplicate_rate = 1.0;
        scenario.webhook.reorder_jitter = Duration::from_millis(80);
        let sim = simulator(scenario, &listener).await;
        run_until_idle(store, settings(&db.url, &sim, &[("retry.busy", toml::Value::String("10m".into()))]), listener).await;

        let calls = sim.calls();
        assert_eq!(calls.len(), 24, "one call per contact");
        let st = store.status(Some("open"), fixed_now().timestamp_millis()).await.unwrap();
        let c = &st.campaigns[0];
        // Each outcome moved its job once: completed -> done, busy -> queued for a
        // second attempt (not two requeues, not lost).
        assert_eq!(c.jobs["done"] + c.jobs["queued"], 24, "{c:?}");
        assert_eq!(c.jobs["awaiting_outcome"], 0, "{c:?}");
        assert_eq!(c.attempts, 24, "{c:?}");
        let deliveries = sim.webhook_deliveries();
        assert!(deliveries.len() >= 48, "every event was delivered twice: {}", deliveries.len());
    }
}

/// A `dialer run` process for the several-worker tests.
pub struct WorkerProc {
    pub child: std::process::Child,
}

pub fn spawn_worker(
    db_url: &str,
    sim: &Simulator,
    port: u16,
    extra_env: &[(&str, &str)],
    log: &std::path::Path,
) -> WorkerProc {
    let out = std::fs::File::create(log).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_dialer"));
    cmd.args(["run", "--fake-now", &fixed_now().to_rfc3339()])
        .env("DIALER__DATABASE__URL", db_url)
        .env("DIALER__REVDESK__BASE_URL", sim.base_url())
        .env("REVDESK_API_KEY", API_KEY)
        .env("DIALER__WEBHOOK__SECRET", SECRET)
        .env("DIALER__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("DIALER__WORKER__POLL_INTERVAL", "50ms")
        .env("DIALER__WORKER__LEASE", "3s")
        .env("DIALER__REVDESK__TIMEOUT", "5s")
        // An outage halts the account; here it probes again after 2s, not 15m.
        .env("DIALER__RETRY__ACCOUNT_HALT", "2s")
        .env("DIALER__RATE__PER_SECOND", "400")
        .env("DIALER__RATE__BURST", "50")
        .env("DIALER__LOG__FORMAT", "json")
        .env("DIALER__LOG__LEVEL", "info")
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    WorkerProc {
        child: cmd.spawn().expect("spawn dialer run"),
    }
}

impl Drop for WorkerProc {
    /// A failed test must not leave workers holding database connections.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `done` holds (polling the database), or panics after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    poll_every(Duration::from_millis(200), limit, what, done).await
}

fn terminate(p: &mut WorkerProc) {
    unsafe {
        libc::kill(p.child.id() as i32, libc::SIGTERM);
    }
    let _ = p.child.wait();
}

/// Guarantees 2 and 4 with several workers: four `dialer run` processes on one
/// PostgreSQL, ambiguous answers (calls placed, responses stalled past the timeout),
/// and one worker killed with SIGKILL mid-run. No attempt is dialed under two keys,
/// every number gets exactly one call, and every job ends in a settled state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_workers_and_a_sigkill_never_dial_an_attempt_twice() {
    let db = TestDb::postgres().await;
    let store = &db.store;
    let id = campaign(store, OPEN_CAMPAIGN).await;
    let phones: Vec<String> = (0..160)
        .map(|i| format!("+1312234{:04}", 6000 + i))
        .collect();
    contacts(store, id, phones.iter().map(|p| contact(p)).collect()).await;

    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let mut scenario = Scenario::default();
    scenario.webhook_url = Some(format!("http://127.0.0.1:{}/webhooks/revdesk", ports[0]));
    scenario.webhook_secret = SECRET.into();
    scenario.latency = Duration::from_millis(150);
    // Place the call, then stall past the worker's 5s timeout: ambiguous answers that
    // force same-key retries (kept low enough not to trip the outage breaker).
    scenario.stall_for = Duration::from_millis(6000);
    scenario.faults.accept_then_stall_rate = 0.06;
    scenario.faults.error_rate = 0.02;
    let sim = Simulator::start_with_clock(scenario, clock())
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut workers: Vec<WorkerProc> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            spawn_worker(
                &db.url,
                &sim,
                *p,
                &[],
                &dir.path().join(format!("w{i}.log")),
            )
        })
        .collect();
    // Kill one worker while dials are in flight.
    wait_until(Duration::from_secs(60), "some dials were sent", || async {
        sim.requests().len() >= 40
    })
    .await;
    workers[3].child.kill().unwrap(); // SIGKILL
    workers[3].child.wait().unwrap();

    let s2 = store.clone();
    let logs = dir.path().to_owned();
    let url = db.url.clone();
    tokio::spawn(async move {
        // On a slow run, show what is not done yet (the test still decides).
        tokio::time::sleep(Duration::from_secs(100)).await;
        if let Ok(pool) = sqlx::PgPool::connect(&url).await {
            let rows: Vec<(String, Option<String>, Option<String>, i64)> = sqlx::query_as(
                "SELECT status, reason, last_code, due_at_ms FROM jobs WHERE status <> 'done' LIMIT 20",
            )
            .fetch_all(&pool)
            .await
            .unwrap_or_default();
            eprintln!("not done after 100s: {rows:?}");
        }
    });
    wait_until(Duration::from_secs(180), "every job is done", move || {
        let s2 = s2.clone();
        let logs = logs.clone();
        async move {
            let st = s2
                .status(Some("open"), fixed_now().timestamp_millis())
                .await
                .unwrap();
            if std::env::var("E2E_DEBUG").is_ok() {
                eprintln!("{:?} {:?}", st.campaigns[0].jobs, st.campaigns[0].reasons);
                let _ = std::process::Command::new("sh")
                    .arg("-c")
                    .arg(format!(
                        "grep -h -i 'WARN\\|ERROR' {}/*.log | tail -5",
                        logs.display()
                    ))
                    .status();
            }
            st.campaigns[0].jobs["done"] == 160
        }
    })
    .await;
    for w in workers.iter_mut().take(3) {
        terminate(w);
    }
    let requests = sim.requests();
    assert!(
        requests.iter().any(|r| r.replay_of.is_some()),
        "no stalled call was re-sent and replayed: the test did not exercise ambiguity"
    );
    let mut keys_by_number: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in requests {
        keys_by_number
            .entry(r.to.unwrap_or_default())
            .or_default()
            .insert(r.idempotency_key.unwrap_or_default());
    }
    for (n, keys) in &keys_by_number {
        assert_eq!(keys.len(), 1, "{n} was dialed under {} keys", keys.len());
    }
    let mut calls_by_number: BTreeMap<String, usize> = BTreeMap::new();
    for c in sim.calls() {
        *calls_by_number.entry(c.to).or_default() += 1;
    }
    assert_eq!(calls_by_number.len(), 160);
    assert!(
        calls_by_number.values().all(|n| *n == 1),
        "a number got two calls: {calls_by_number:?}"
    );
}

/// Guarantee 3: with four workers on one database and a cap of 3 per 24h (the
/// campaign's, counted across campaigns), no number gets more than 3 placed calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frequency_caps_hold_across_four_workers_and_five_campaigns() {
    let db = TestDb::postgres().await;
    let store = &db.store;
    let phones: Vec<String> = (0..12)
        .map(|i| format!("+1415234{:04}", 7000 + i))
        .collect();
    for k in 0..5 {
        let toml = format!(
            "name = \"cap{k}\"\nfrom_number = \"+14155550100\"\nwindow = {{ start = \"09:00\", end = \"20:00\" }}\n\
             require_consent = false\nmax_attempts = 1\nfrequency_cap = {{ calls = 3, per = \"24h\" }}\n"
        );
        let id = campaign(store, &toml).await;
        contacts(store, id, phones.iter().map(|p| contact(p)).collect()).await;
    }
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let mut scenario = Scenario::default();
    scenario.webhook_url = Some(format!("http://127.0.0.1:{}/webhooks/revdesk", ports[0]));
    scenario.webhook_secret = SECRET.into();
    scenario.latency = Duration::from_millis(50);
    let sim = Simulator::start_with_clock(scenario, clock())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut workers: Vec<WorkerProc> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            spawn_worker(
                &db.url,
                &sim,
                *p,
                &[],
                &dir.path().join(format!("w{i}.log")),
            )
        })
        .collect();
    let s2 = store.clone();
    wait_until(
        Duration::from_secs(90),
        "36 calls are done and the rest wait on the cap",
        move || {
            let s2 = s2.clone();
            async move {
                let st = s2
                    .status(None, fixed_now().timestamp_millis())
                    .await
                    .unwrap();
                let done: i64 = st.campaigns.iter().map(|c| c.jobs["done"]).sum();
                let busy: i64 = st
                    .campaigns
                    .iter()
                    .map(|c| c.jobs["running"] + c.jobs["dialing"] + c.jobs["awaiting_outcome"])
                    .sum();
                done == 36 && busy == 0
            }
        },
    )
    .await;
    for w in workers.iter_mut() {
        terminate(w);
    }
    // Guarantee 6: the workers' logs carry neither the API key, the webhook secret,
    // nor a full phone number (masked to the last 4 digits by default).
    for i in 0..4 {
        let log = std::fs::read_to_string(dir.path().join(format!("w{i}.log"))).unwrap();
        assert!(
            log.contains("worker started"),
            "worker {i} did not log: {log}"
        );
        assert!(
            !log.contains(API_KEY) && !log.contains(SECRET),
            "a secret reached worker {i}'s log"
        );
        for p in &phones {
            assert!(
                !log.contains(&p[2..]),
                "full number {p} in worker {i}'s log"
            );
        }
    }
    let mut calls_by_number: BTreeMap<String, usize> = BTreeMap::new();
    for c in sim.calls() {
        *calls_by_number.entry(c.to).or_default() += 1;
    }
    assert_eq!(calls_by_number.len(), 12);
    assert!(
        calls_by_number.values().all(|n| *n == 3),
        "the cap of 3 was not held exactly: {calls_by_number:?}"
    );
    let st = store
        .status(None, fixed_now().timestamp_millis())
        .await
        .unwrap();
    let queued: i64 = st.campaigns.iter().map(|c| c.jobs["queued"]).sum();
    assert_eq!(
        queued, 24,
        "the capped jobs wait in the queue (not dropped)"
    );
    let _ = pg_admin_url();
}

both_backends! {
    /// Guarantee 5: a webhook with a missing, malformed or wrong signature, a stale
    /// timestamp, or a body that is not an event is refused and changes nothing; a
    /// valid one is applied once and its redelivery acknowledged without effect.
    async fn bad_webhooks_are_refused_and_change_nothing(db) {
        let store = &db.store;
        let id = campaign(store, OPEN_CAMPAIGN).await;
        contacts(store, id, vec![contact("+12122345612")]).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Outcomes never arrive on their own: the test sends them.
        let mut scenario = Scenario::default();
        scenario.outcomes.delay = Duration::from_secs(3600);
        let sim = simulator(scenario, &listener).await;
        let cancel = CancellationToken::new();
        let app = Arc::new(dialer::worker::build(settings(&db.url, &sim, &[]), store.clone(), clock(), cancel.clone()).unwrap());
        let worker = tokio::spawn(dialer::worker::serve(app, listener, false));
        let s2 = store.clone();
        wait_until(Duration::from_secs(30), "the call is placed", move || {
            let s2 = s2.clone();
            async move { s2.status(None, 0).await.unwrap().campaigns[0].jobs["awaiting_outcome"] == 1 }
        })
        .await;
        let call_id = sim.calls()[0].id.clone();
        let body = serde_json::json!({"id": "evt_1", "type": "phone_call.ended", "created_at": "2026-11-18T20:00:05Z",
            "data": {"id": call_id, "status": "completed", "call_outcome": "completed"}}).to_string();
        let padded = serde_json::json!({"id": "evt_1", "type": "phone_call.ended", "created_at": "2026-11-18T20:00:05Z",
            "data": {"id": call_id, "status": "completed", "call_outcome": "completed"},
            "padding": "x".repeat(dialer::http::WEBHOOK_BODY_LIMIT)}).to_string();
        let now = fixed_now().timestamp();
        let http = reqwest::Client::new();
        let url = format!("http://{addr}/webhooks/revdesk");
        let post = |sig: Option<String>, body: String| {
            let mut r = http.post(&url).body(body);
            if let Some(s) = sig {
                r = r.header("RevDesk-Signature", s);
            }
            r.send()
        };
        let sign = |t: i64, b: &str, secret: &str| dialer::revdesk::signature::sign(secret.as_bytes(), t, b.as_bytes());
        let cases = [
            (None, body.clone(), 401),
            (Some("garbage".to_owned()), body.clone(), 401),
            (Some(sign(now, &body, "whsec_wrong")), body.clone(), 401),
            (Some(sign(now - 3600, &body, SECRET)), body.clone(), 401),
            (Some(sign(now, &body, SECRET)), body.replace("completed", "busy"), 401),
            (Some(sign(now, "{\"id\":", SECRET)), "{\"id\":".to_owned(), 400),
            // Signed and otherwise valid, but past the body limit: refused unread.
            (Some(sign(now, &padded, SECRET)), padded.clone(), 413),
        ];
        for (sig, b, want) in cases {
            let resp = post(sig, b).await.unwrap();
            assert_eq!(resp.status().as_u16(), want);
        }
        let st = store.status(None, 0).await.unwrap();
        assert_eq!(st.campaigns[0].jobs["awaiting_outcome"], 1, "a refused webhook changed the job");
        for _ in 0..2 {
            let resp = post(Some(sign(now, &body, SECRET)), body.clone()).await.unwrap();
            assert_eq!(resp.status().as_u16(), 200);
        }
        let st = store.status(None, 0).await.unwrap();
        assert_eq!(st.campaigns[0].jobs["done"], 1, "{st:?}");
        cancel.cancel();
        worker.await.unwrap().unwrap();
    }
}

/// A throwaway PostgreSQL cluster of the test's own, so that it can be restarted
/// without touching the machine's shared server.
struct OwnPostgres {
    dir: tempfile::TempDir,
    port: u16,
}

impl OwnPostgres {
    fn runas() -> Vec<&'static str> {
        // initdb and postgres refuse to run as root.
        if unsafe { libc::geteuid() } == 0 {
            vec!["runuser", "-u", "postgres", "--"]
        } else {
            vec![]
        }
    }

    fn run(args: &[&str]) {
        let mut all = Self::runas();
        all.extend_from_slice(args);
        let out = std::process::Command::new(all[0])
            .args(&all[1..])
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "{} is required for the PostgreSQL-restart test: {e}",
                    all[0]
                )
            });
        assert!(
            out.status.success(),
            "{:?} failed: {}",
            all,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start() -> OwnPostgres {
        let dir = tempfile::tempdir().unwrap();
        if unsafe { libc::geteuid() } == 0 {
            std::process::Command::new("chown")
                .args(["postgres", dir.path().to_str().unwrap()])
                .status()
                .unwrap();
        }
        let data = dir.path().join("data");
        Self::run(&[
            "initdb",
            "-D",
            data.to_str().unwrap(),
            "-U",
            "postgres",
            "-A",
            "trust",
        ]);
        let pg = OwnPostgres {
            port: free_port(),
            dir,
        };
        pg.ctl("start");
        pg
    }

    fn ctl(&self, action: &str) {
        let data = self.dir.path().join("data");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log");
        Self::run(&[
            "pg_ctl",
            "-D",
            data.to_str().unwrap(),
            "-l",
            log.to_str().unwrap(),
            "-o",
            &opts,
            "-m",
            "fast",
            "-w",
            action,
        ]);
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let mut all = Self::runas();
        all.extend_from_slice(&[
            "pg_ctl",
            "-D",
            data.to_str().unwrap(),
            "-m",
            "immediate",
            "stop",
        ]);
        let _ = std::process::Command::new(all[0]).args(&all[1..]).output();
    }
}

/// Guarantee 4: after a worker is killed with SIGKILL and PostgreSQL restarts
/// mid-run, every contact still ends done (nothing lost, nothing stuck), and no
/// number is called twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_and_a_postgres_restart_lose_nothing() {
    let pg = OwnPostgres::start();
    let store = dialer::store::connect(&pg.url(), 4).await.unwrap();
    store.migrate().await.unwrap();
    let id = campaign(&store, OPEN_CAMPAIGN).await;
    let phones: Vec<String> = (0..150)
        .map(|i| format!("+1646234{:04}", 1000 + i))
        .collect();
    contacts(&store, id, phones.iter().map(|p| contact(p)).collect()).await;

    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut scenario = Scenario::default();
    scenario.webhook_url = Some(format!("http://127.0.0.1:{}/webhooks/revdesk", ports[0]));
    scenario.webhook_secret = SECRET.into();
    scenario.latency = Duration::from_millis(100);
    let sim = Simulator::start_with_clock(scenario, clock())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Webhooks lost while the database is down are settled by reconciliation.
    let env = [("DIALER__OUTCOME_TIMEOUT", "3s")];
    let mut workers: Vec<WorkerProc> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            spawn_worker(
                &pg.url(),
                &sim,
                *p,
                &env,
                &dir.path().join(format!("w{i}.log")),
            )
        })
        .collect();
    wait_until(Duration::from_secs(60), "some dials were sent", || async {
        sim.requests().len() >= 30
    })
    .await;
    workers[2].child.kill().unwrap();
    workers[2].child.wait().unwrap();
    pg.ctl("restart");

    let s2 = store.clone();
    wait_until(
        Duration::from_secs(120),
        "every job is done after the restart",
        move || {
            let s2 = s2.clone();
            async move {
                match s2
                    .status(Some("open"), fixed_now().timestamp_millis())
                    .await
                {
                    Ok(st) => st.campaigns[0].jobs["done"] == 150,
                    Err(_) => false, // the database is still coming back
                }
            }
        },
    )
    .await;
    for w in workers.iter_mut().take(2) {
        terminate(w);
    }
    let mut calls_by_number: BTreeMap<String, usize> = BTreeMap::new();
    for c in sim.calls() {
        *calls_by_number.entry(c.to).or_default() += 1;
    }
    assert_eq!(calls_by_number.len(), 150);
    assert!(
        calls_by_number.values().all(|n| *n == 1),
        "a number got two calls: {calls_by_number:?}"
    );
}

/// SPEC section 11: on SIGTERM the worker stops claiming, finishes or releases its
/// in-flight jobs within the grace period, and exits 0; nothing is left leased.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_and_leaves_no_job_leased() {
    let db = TestDb::postgres().await;
    let store = &db.store;
    let id = campaign(store, OPEN_CAMPAIGN).await;
    let phones: Vec<String> = (0..400)
        .map(|i| format!("+1718234{:04}", 2000 + i))
        .collect();
    contacts(store, id, phones.iter().map(|p| contact(p)).collect()).await;
    let port = free_port();
    let mut scenario = Scenario::default();
    scenario.webhook_url = Some(format!("http://127.0.0.1:{port}/webhooks/revdesk"));
    scenario.webhook_secret = SECRET.into();
    scenario.latency = Duration::from_millis(700);
    let sim = Simulator::start_with_clock(scenario, clock())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut w = spawn_worker(
        &db.url,
        &sim,
        port,
        &[("DIALER__WORKER__SHUTDOWN_GRACE", "5s")],
        &dir.path().join("w.log"),
    );
    wait_until(Duration::from_secs(60), "dials are in flight", || async {
        sim.requests().len() >= 20
    })
    .await;
    unsafe {
        libc::kill(w.child.id() as i32, libc::SIGTERM);
    }
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = w.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the worker did not stop after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(dir.path().join("w.log")).unwrap_or_default()
    );
    let st = store
        .status(Some("open"), fixed_now().timestamp_millis())
        .await
        .unwrap();
    let c = &st.campaigns[0];
    assert_eq!(
        c.jobs["running"] + c.jobs["dialing"],
        0,
        "jobs left leased after SIGTERM: {c:?}"
    );
    assert!(
        c.jobs["queued"] > 0,
        "the worker kept claiming after SIGTERM: {c:?}"
    );
}
