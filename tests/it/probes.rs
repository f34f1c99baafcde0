//! Probes (SPEC section 8): "an automatic pause or halt ends with one probe dial, and
//! only its success releases the rest"; "a job refused by a pause or halt returns to
//! `queued` unchanged". The real worker, the real simulator over loopback HTTP, a
//! real database. Every wait is on observable state (the simulator's request log,
//! the database, the worker's halt) with a time limit; a worker is stopped (its
//! in-flight dials decided) before the final state is read.

// A scenario reads best as the default plus the few knobs each test turns.
#![allow(clippy::field_reassign_with_default)]

use crate::both_backends;
use crate::e2e::{
    Running, campaign, contact, contacts, fixed_now, poll_until, settings, simulator_on,
};
use crate::support::TestDb;
use dialer::clock::Clock;
use dialer::config::Settings;
use dialer::simulator::scenario::{Action as SimAction, Rule};
use dialer::simulator::{Scenario, Simulator};
use dialer::store::{CampaignRow, DynStore};
use dialer::worker::app::ACCOUNT;
use std::time::Duration;
use tokio::net::TcpListener;

/// Only reached when something is broken.
const LIMIT: Duration = Duration::from_secs(30);

fn campaign_toml(name: &str) -> String {
    format!(
        r#"
name = "{name}"
from_number = "+14155550100"
window = {{ start = "09:00", end = "20:00" }}
require_consent = false
max_attempts = 3
"#
    )
}

/// Every number under `prefix` answers `script` (per number, the last repeating).
fn prefix_rule(prefix: &str, script: &[&str]) -> Rule {
    Rule {
        prefix: Some(prefix.to_owned()),
        script: script
            .iter()
            .map(|s| SimAction::parse(s).unwrap())
            .collect(),
        webhook: true,
        ..Rule::default()
    }
}

fn number_rule(number: &str, script: &[&str]) -> Rule {
    Rule::for_number(number, script).unwrap()
}

/// A simulator on the test's clock whose webhooks go to `listener`.
async fn simulator(rules: Vec<Rule>, listener: &TcpListener, clock: &Clock) -> Simulator {
    let mut scenario = Scenario::default();
    scenario.rules = rules;
    simulator_on(scenario, listener, clock).await
}

async fn start(
    store: &DynStore,
    settings: Settings,
    listener: TcpListener,
    clock: &Clock,
) -> Running {
    Running::start(store, settings, listener, clock).await
}

/// Polls `done` every 20ms until it holds; panics after [`LIMIT`].
async fn wait_for<F, Fut>(what: &str, done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    poll_until(LIMIT, what, done).await
}

/// One job as the database has it.
#[derive(Debug, Clone, PartialEq)]
struct JobRow {
    phone: String,
    status: String,
    due_at_ms: i64,
    attempts: i64,
    current_attempt_id: Option<i64>,
    reason: Option<String>,
}

type JobTuple = (String, String, i64, i64, Option<i64>, Option<String>);

async fn jobs(db: &TestDb) -> Vec<JobRow> {
    const SQL: &str = "SELECT phone, status, due_at_ms, CAST(attempts AS BIGINT), current_attempt_id, reason \
                       FROM jobs ORDER BY id";
    let rows: Vec<JobTuple> = if db.url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
        sqlx::query_as(SQL).fetch_all(&pool).await.unwrap()
    } else {
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        sqlx::query_as(SQL).fetch_all(&pool).await.unwrap()
    };
    rows.into_iter()
        .map(
            |(phone, status, due_at_ms, attempts, current_attempt_id, reason)| JobRow {
                phone,
                status,
                due_at_ms,
                attempts,
                current_attempt_id,
                reason,
            },
        )
        .collect()
}

/// `(attempt id, phone, placement, sends)` of every attempt.
async fn attempts(db: &TestDb) -> Vec<(i64, String, String, i64)> {
    const SQL: &str =
        "SELECT id, phone, placement, CAST(sends AS BIGINT) FROM attempts ORDER BY id";
    if db.url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
        sqlx::query_as(SQL).fetch_all(&pool).await.unwrap()
    } else {
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        sqlx::query_as(SQL).fetch_all(&pool).await.unwrap()
    }
}

async fn campaign_row(store: &DynStore, id: i64) -> CampaignRow {
    store.campaign_by_id(id).await.unwrap().expect("campaign")
}

fn dialed(sim: &Simulator) -> Vec<String> {
    sim.requests().into_iter().filter_map(|r| r.to).collect()
}

fn import_due() -> i64 {
    fixed_now().timestamp_millis()
}

/// Two campaigns of two contacts each; the account halted with its probe due.
/// Every number answers `answer`. Returns the campaign ids after the worker sent its
/// probe and stopped.
async fn account_probe_answered_with(db: &TestDb, answer: &str) -> (Simulator, [i64; 2]) {
    let store = &db.store;
    let clock = Clock::starting_at(fixed_now());
    let alpha = campaign(store, &campaign_toml("alpha")).await;
    let beta = campaign(store, &campaign_toml("beta")).await;
    contacts(
        store,
        alpha,
        vec![contact("+12122347101"), contact("+12122347102")],
    )
    .await;
    contacts(
        store,
        beta,
        vec![contact("+12122347201"), contact("+12122347202")],
    )
    .await;
    let now = clock.now().timestamp_millis();
    store
        .halt_account(ACCOUNT, "voice_usage_exhausted", now, now)
        .await
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim = simulator(vec![prefix_rule("+1212234", &[answer])], &listener, &clock).await;
    let worker = start(store, settings(&db.url, &sim, &[]), listener, &clock).await;
    wait_for("the probe dial is answered", || async {
        !sim.requests().is_empty()
    })
    .await;
    worker.stop().await;
    (sim, [alpha, beta])
}

both_backends! {
    /// An account probe answered with an account halt keeps the account halted, and
    /// nothing else dials.
    async fn an_account_probe_answered_with_an_account_halt_keeps_the_account_halted(db) {
        let (sim, _) = account_probe_answered_with(&db, "voice_usage_exhausted").await;
        assert_eq!(dialed(&sim).len(), 1, "one probe dial, nothing else: {:?}", sim.requests());
        let halt = db.store.account_halt(ACCOUNT).await.unwrap().expect("still halted");
        assert_eq!(halt.reason, "voice_usage_exhausted");
        assert_eq!(halt.halt_count, 2, "halted again by the probe's answer");
        // A repeat of the cause: twice retry.account_halt (15m), from the probe.
        let sent = sim.requests()[0].at.timestamp_millis();
        let length = halt.probe_at_ms - sent;
        assert!(
            (30 * 60_000 - 1_000..30 * 60_000 + 2_000).contains(&length),
            "halted again for twice 15 minutes: {length} ms"
        );
        for j in jobs(&db).await {
            assert_eq!(j.status, "queued", "{j:?}");
            assert_eq!(j.attempts, 0, "a 402 placed no call: {j:?}");
        }
    }
}

both_backends! {
    /// An account probe answered with a campaign pause (`caller_id_not_verified`)
    /// pauses that campaign and lifts nothing: the account stays halted and no other
    /// campaign dials.
    async fn an_account_probe_answered_with_a_campaign_pause_keeps_the_account_halted(db) {
        let (sim, [alpha, beta]) = account_probe_answered_with(&db, "caller_id_not_verified").await;
        let dialed = dialed(&sim);
        assert_eq!(dialed.len(), 1, "one probe dial, nothing else: {:?}", sim.requests());
        let halt = db.store.account_halt(ACCOUNT).await.unwrap();
        assert!(halt.is_some(), "a probe answered with a pause must not lift the account halt");
        let probed = if dialed[0].starts_with("+121223471") { alpha } else { beta };
        let other = if probed == alpha { beta } else { alpha };
        let row = campaign_row(&db.store, probed).await;
        assert_eq!(row.auto_pause_reason.as_deref(), Some("caller_id_not_verified"), "{row:?}");
        assert_eq!(campaign_row(&db.store, other).await.auto_pause_reason, None);
        for j in jobs(&db).await {
            assert_eq!(j.status, "queued", "{j:?}");
            assert_eq!(j.attempts, 0, "{j:?}");
        }
    }
}

both_backends! {
    /// A campaign probe answered with that campaign's own pause (`no_active_number`)
    /// keeps the campaign paused: one dial, not the whole campaign.
    async fn a_campaign_probe_answered_with_a_pause_keeps_the_campaign_paused(db) {
        let store = &db.store;
        let clock = Clock::starting_at(fixed_now());
        let alpha = campaign(store, &campaign_toml("alpha")).await;
        let phones = ["+12122347301", "+12122347302", "+12122347303"];
        contacts(store, alpha, phones.iter().map(|p| contact(p)).collect()).await;
        let now = clock.now().timestamp_millis();
        store.pause_campaign(alpha, "no_active_number", Some(now), now).await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim = simulator(vec![prefix_rule("+1212234", &["no_active_number"])], &listener, &clock).await;
        let worker = start(store, settings(&db.url, &sim, &[]), listener, &clock).await;
        wait_for("the probe dial is answered", || async { !sim.requests().is_empty() }).await;
        worker.stop().await;

        assert_eq!(dialed(&sim).len(), 1, "one probe dial: {:?}", sim.requests());
        let row = campaign_row(store, alpha).await;
        assert_eq!(row.auto_pause_reason.as_deref(), Some("no_active_number"), "{row:?}");
        assert!(
            row.auto_paused_until_ms.is_some_and(|t| t > clock.now().timestamp_millis()),
            "paused again for retry.no_active_number: {row:?}"
        );
        // The probe's failure repeats the pause: counted (in the database, shared by
        // every worker) and twice retry.no_active_number (5m), from the probe.
        assert_eq!(row.auto_pause_count, 2, "{row:?}");
        let length = row.auto_paused_until_ms.unwrap() - sim.requests()[0].at.timestamp_millis();
        assert!(
            (10 * 60_000 - 1_000..10 * 60_000 + 2_000).contains(&length),
            "paused again for twice 5 minutes: {length} ms"
        );
        for j in jobs(&db).await {
            assert_eq!(j.status, "queued", "{j:?}");
            assert_eq!(j.attempts, 0, "{j:?}");
        }
    }
}

both_backends! {
    /// A worker halted by a credential fault does not send its probe while the
    /// account is halted (that dial would be made on a halted account); when the
    /// account's probe is due, one dial probes both, and its success lifts both.
    async fn a_worker_probe_waits_for_the_account_halt_and_one_probe_then_lifts_both(db) {
        let store = &db.store;
        let clock = Clock::starting_at(fixed_now());
        let alpha = campaign(store, &campaign_toml("alpha")).await;
        let phones = ["+12122347401", "+12122347402", "+12122347403"];
        contacts(store, alpha, phones.iter().map(|p| contact(p)).collect()).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim = simulator(
            vec![number_rule(phones[0], &["unauthorized", "accept"]), prefix_rule("+1212234", &["accept"])],
            &listener,
            &clock,
        )
        .await;
        // One dial at a time, so that nothing but the first dial is in flight when
        // its 401 halts the worker; its probe is due 3s later.
        let extra = [
            ("worker.batch_size", toml::Value::Integer(1)),
            ("worker.max_in_flight", toml::Value::Integer(1)),
            ("retry.account_halt", toml::Value::String("3s".into())),
        ];
        let worker = start(store, settings(&db.url, &sim, &extra), listener, &clock).await;
        wait_for("the 401 halts the worker", || async { worker.app.worker_halt().is_some() }).await;
        let (reason, worker_probe_at) = worker.app.worker_halt().unwrap();
        assert_eq!(reason, "unauthorized");
        assert_eq!(dialed(&sim), vec![phones[0].to_owned()]);

        // Meanwhile the account is halted, its probe due 3s after the worker's.
        let account_probe_at = worker_probe_at + chrono::Duration::seconds(3);
        let now = clock.now();
        store
            .halt_account(ACCOUNT, "no_active_subscription", account_probe_at.timestamp_millis(), now.timestamp_millis())
            .await
            .unwrap();
        assert!(clock.now() < worker_probe_at, "test setup too slow: the worker's probe came due first");

        wait_for("the next dial", || async { sim.requests().len() >= 2 }).await;
        let probe = sim.requests()[1].clone();
        assert!(
            probe.at >= account_probe_at,
            "a probe was dialed at {} while the account was halted until its probe at {account_probe_at}",
            probe.at
        );
        assert_eq!(probe.status, Some(202), "{probe:?}");
        wait_for("the probe's success lifts both halts", || async {
            worker.app.worker_halt().is_none() && store.account_halt(ACCOUNT).await.unwrap().is_none()
        })
        .await;
        // The rest dial again (the first job was requeued with jitter: not waited for).
        wait_for("the other contacts are dialed", || async {
            let d = dialed(&sim);
            phones[1..].iter().all(|p| d.contains(&p.to_string()))
        })
        .await;
        worker.stop().await;
        let reqs = sim.requests();
        assert!(reqs[1..].iter().all(|r| r.at >= account_probe_at), "{reqs:?}");
    }
}

both_backends! {
    /// A successful account probe lifts the halt, and the rest of the queue dials.
    async fn a_successful_account_probe_lifts_the_halt(db) {
        let store = &db.store;
        let clock = Clock::starting_at(fixed_now());
        let alpha = campaign(store, &campaign_toml("alpha")).await;
        let phones = ["+12122347501", "+12122347502", "+12122347503"];
        contacts(store, alpha, phones.iter().map(|p| contact(p)).collect()).await;
        let now = clock.now().timestamp_millis();
        store.halt_account(ACCOUNT, "voice_usage_exhausted", now, now).await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim = simulator(vec![prefix_rule("+1212234", &["accept"])], &listener, &clock).await;
        let worker = start(store, settings(&db.url, &sim, &[]), listener, &clock).await;
        wait_for("every contact is dialed", || async { dialed(&sim).len() >= phones.len() }).await;
        worker.stop().await;
        assert!(store.account_halt(ACCOUNT).await.unwrap().is_none(), "lifted by the probe");
        let mut d = dialed(&sim);
        d.sort();
        assert_eq!(d, phones.to_vec(), "each contact once");
    }
}

both_backends! {
    /// A successful campaign probe lifts the pause, and the rest of the campaign dials.
    async fn a_successful_campaign_probe_lifts_the_pause(db) {
        let store = &db.store;
        let clock = Clock::starting_at(fixed_now());
        let alpha = campaign(store, &campaign_toml("alpha")).await;
        let phones = ["+12122347601", "+12122347602", "+12122347603"];
        contacts(store, alpha, phones.iter().map(|p| contact(p)).collect()).await;
        let now = clock.now().timestamp_millis();
        store.pause_campaign(alpha, "no_active_number", Some(now), now).await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim = simulator(vec![prefix_rule("+1212234", &["accept"])], &listener, &clock).await;
        let worker = start(store, settings(&db.url, &sim, &[]), listener, &clock).await;
        wait_for("every contact is dialed", || async { dialed(&sim).len() >= phones.len() }).await;
        worker.stop().await;
        assert_eq!(campaign_row(store, alpha).await.auto_pause_reason, None, "lifted by the probe");
        let mut d = dialed(&sim);
        d.sort();
        assert_eq!(d, phones.to_vec(), "each contact once");
    }
}

both_backends! {
    /// Jobs claimed in one batch and refused at their send because the account was
    /// halted meanwhile go back to `queued` unchanged: same due time, no attempt
    /// recorded or counted, no reason, nothing dropped.
    async fn jobs_refused_by_a_halt_before_their_send_go_back_unchanged(db) {
        let store = &db.store;
        let clock = Clock::starting_at(fixed_now());
        let alpha = campaign(store, &campaign_toml("alpha")).await;
        let phones = ["+12122347701", "+12122347702", "+12122347703", "+12122347704"];
        contacts(store, alpha, phones.iter().map(|p| contact(p)).collect()).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim = simulator(vec![prefix_rule("+1212234", &["voice_usage_exhausted"])], &listener, &clock).await;
        // Two dials a second, one at once: the batch's first job is sent alone and
        // halts the account while the others wait for the rate limiter.
        let extra = [
            ("rate.per_second", toml::Value::Float(2.0)),
            ("rate.burst", toml::Value::Integer(1)),
        ];
        let worker = start(store, settings(&db.url, &sim, &extra), listener, &clock).await;
        wait_for("the halt and every job back in the queue", || async {
            !sim.requests().is_empty()
                && store.account_halt(ACCOUNT).await.unwrap().is_some()
                && jobs(&db).await.iter().all(|j| j.status == "queued")
        })
        .await;
        worker.stop().await;

        let dialed = dialed(&sim);
        assert_eq!(dialed.len(), 1, "{:?}", sim.requests());
        let all = jobs(&db).await;
        for j in &all {
            if j.phone == dialed[0] {
                assert_eq!(j.reason.as_deref(), Some("voice_usage_exhausted"), "{j:?}");
                assert!(j.due_at_ms > clock.now().timestamp_millis(), "requeued to the probe: {j:?}");
                assert_eq!(j.attempts, 0, "a 402 placed no call: {j:?}");
            } else {
                let unchanged = JobRow {
                    phone: j.phone.clone(),
                    status: "queued".into(),
                    due_at_ms: import_due(),
                    attempts: 0,
                    current_attempt_id: None,
                    reason: None,
                };
                assert_eq!(j, &unchanged, "given back unchanged");
            }
        }
        let att = attempts(&db).await;
        assert_eq!(att.len(), 1, "only the dialed job has an attempt: {att:?}");
    }
}

both_backends! {
    /// A campaign's probe dial that got a provider error is not retried once the
    /// account is halted meanwhile (by another job's answer): the probe passes its
    /// own campaign's pause, not the account's halt. The job goes back to `queued`
    /// unchanged, its possibly placed attempt and key kept and counted once.
    async fn a_campaign_probes_retry_is_refused_by_an_account_halt_and_goes_back_unchanged(db) {
        let store = &db.store;
        let clock = Clock::starting_at(fixed_now());
        let alpha = campaign(store, &campaign_toml("alpha")).await;
        let beta = campaign(store, &campaign_toml("beta")).await;
        let probe_phone = "+12122347801";
        contacts(store, alpha, vec![contact(probe_phone)]).await;
        contacts(store, beta, vec![contact("+12122347901")]).await;
        let now = clock.now().timestamp_millis();
        store.pause_campaign(alpha, "no_active_number", Some(now), now).await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        // The probe's first answer is a 500 (retried after 500ms or more); beta's job,
        // dialed in the same batch, halts the account meanwhile.
        let sim = simulator(
            vec![
                number_rule(probe_phone, &["internal_error", "accept"]),
                number_rule("+12122347901", &["voice_usage_exhausted"]),
            ],
            &listener,
            &clock,
        )
        .await;
        let worker = start(store, settings(&db.url, &sim, &[]), listener, &clock).await;
        wait_for("the halt, and the probe's job out of the worker's hands", || async {
            sim.requests().len() >= 2
                && store.account_halt(ACCOUNT).await.unwrap().is_some()
                && jobs(&db).await.iter().all(|j| !matches!(j.status.as_str(), "running" | "dialing"))
        })
        .await;
        worker.stop().await;

        let to_probe = dialed(&sim).into_iter().filter(|p| p == probe_phone).count();
        assert_eq!(to_probe, 1, "the retry was sent on a halted account: {:?}", sim.requests());
        let j = jobs(&db).await.into_iter().find(|j| j.phone == probe_phone).unwrap();
        assert_eq!(j.status, "queued", "{j:?}");
        assert_eq!(j.due_at_ms, import_due(), "due time unchanged: {j:?}");
        assert_eq!(j.attempts, 1, "the 500 made it possibly placed, counted once: {j:?}");
        let att = attempts(&db).await;
        let mine: Vec<_> = att.iter().filter(|a| a.1 == probe_phone).collect();
        assert_eq!(mine.len(), 1, "{att:?}");
        assert_eq!(j.current_attempt_id, Some(mine[0].0), "its attempt and key kept: {j:?}");
        assert_eq!((mine[0].2.as_str(), mine[0].3), ("possibly_placed", 1), "{att:?}");
        let row = campaign_row(store, alpha).await;
        assert_eq!(row.auto_pause_reason.as_deref(), Some("no_active_number"), "still paused: {row:?}");
        assert!(store.account_halt(ACCOUNT).await.unwrap().is_some());
    }
}

both_backends! {
    /// Repeated pauses for the same cause double (SPEC section 8) while the fault
    /// lasts; once a probe succeeded the fault had cleared, and the next pause for
    /// that cause starts again from `retry.no_active_number`. (The count used to
    /// grow for the worker's whole life: after a few unrelated pauses each new one
    /// lasted the full hour.)
    async fn a_successful_probe_resets_the_doubling_of_its_cause(db) {
        let store = &db.store;
        let clock = Clock::starting_at(fixed_now());
        let alpha = campaign(store, &campaign_toml("alpha")).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim = simulator(
            vec![
                number_rule("+12122347701", &["no_active_number", "accept"]),
                number_rule("+12122347702", &["accept"]),
                number_rule("+12122347703", &["no_active_number"]),
            ],
            &listener,
            &clock,
        )
        .await;
        let base = 2_000;
        let extra = [("retry.no_active_number", toml::Value::String("2s".into()))];
        let worker = start(store, settings(&db.url, &sim, &extra), listener, &clock).await;
        let paused = || async { campaign_row(store, alpha).await.auto_pause_reason.is_some() };
        // The first answer pauses the campaign for 2 s (its contact requeued to the
        // pause's end plus up to a minute of jitter).
        contacts(store, alpha, vec![contact("+12122347701")]).await;
        wait_for("the first pause", paused).await;
        // A contact due now is the probe when the pause ends: accepted, it lifts it.
        contacts(store, alpha, vec![contact("+12122347702")]).await;
        wait_for("the probe is accepted and lifts the pause", || async {
            sim.calls().len() == 1 && !paused().await
        })
        .await;
        // The same cause again, on a new contact.
        contacts(store, alpha, vec![contact("+12122347703")]).await;
        wait_for("the second pause", paused).await;
        let row = campaign_row(store, alpha).await;
        worker.stop().await;
        let at = sim
            .requests()
            .iter()
            .find(|r| r.to.as_deref() == Some("+12122347703"))
            .expect("the third contact was dialed")
            .at
            .timestamp_millis();
        let length = row.auto_paused_until_ms.expect("a timed pause") - at;
        assert!(
            (base - 500..base + 1_000).contains(&length),
            "paused for {length} ms: the base {base} ms, not doubled ({} ms)",
            2 * base
        );
    }
}

both_backends! {
    /// A halted worker whose only due jobs are in auto-paused campaigns: its own
    /// probe finds no job, and the campaigns' probes used to be skipped while it
    /// was halted, so on one worker neither ever ended. The campaign's probe dial
    /// now probes the worker's halt too, and its success lifts both.
    async fn a_halted_worker_probes_through_an_auto_paused_campaign(db) {
        let store = &db.store;
        let clock = Clock::starting_at(fixed_now());
        let alpha = campaign(store, &campaign_toml("alpha")).await;
        let phones = ["+12122347801", "+12122347802", "+12122347803"];
        contacts(store, alpha, phones.iter().map(|p| contact(p)).collect()).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim = simulator(
            vec![number_rule(phones[0], &["unauthorized", "accept"]), prefix_rule("+1212234", &["accept"])],
            &listener,
            &clock,
        )
        .await;
        let extra = [
            ("worker.batch_size", toml::Value::Integer(1)),
            ("worker.max_in_flight", toml::Value::Integer(1)),
            ("retry.account_halt", toml::Value::String("2s".into())),
        ];
        let worker = start(store, settings(&db.url, &sim, &extra), listener, &clock).await;
        wait_for("the 401 halts the worker", || async { worker.app.worker_halt().is_some() }).await;
        // Meanwhile the campaign is auto-paused, its probe due now: every due job is
        // in a paused campaign.
        let now = clock.now().timestamp_millis();
        store.pause_campaign(alpha, "no_active_number", Some(now), now).await.unwrap();
        wait_for("one probe dial lifts the worker's halt and the campaign's pause", || async {
            worker.app.worker_halt().is_none()
                && campaign_row(store, alpha).await.auto_pause_reason.is_none()
        })
        .await;
        wait_for("the other contacts are dialed", || async {
            let d = dialed(&sim);
            phones[1..].iter().all(|p| d.contains(&p.to_string()))
        })
        .await;
        worker.stop().await;
        let reqs = sim.requests();
        assert_eq!(reqs[1].status, Some(202), "the probe: {reqs:?}");
    }
}

both_backends! {
    /// A worker probe that finds no due job at all gives its turn back for 5 s
    /// (as campaign and account probes do), instead of holding it a minute: the
    /// next contact to come due is the probe.
    async fn a_worker_probe_with_no_due_job_comes_back_within_seconds(db) {
        let store = &db.store;
        let clock = Clock::starting_at(fixed_now());
        let alpha = campaign(store, &campaign_toml("alpha")).await;
        contacts(store, alpha, vec![contact("+12122347901")]).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim = simulator(
            vec![number_rule("+12122347901", &["unauthorized", "accept"]), prefix_rule("+1212234", &["accept"])],
            &listener,
            &clock,
        )
        .await;
        let extra = [("retry.account_halt", toml::Value::String("1s".into()))];
        let worker = start(store, settings(&db.url, &sim, &extra), listener, &clock).await;
        wait_for("the 401 halts the worker", || async { worker.app.worker_halt().is_some() }).await;
        let (_, first_probe_at) = worker.app.worker_halt().unwrap();
        // The first contact was requeued with up to a minute's jitter: moved out of
        // reach, so that the probe (due a second after the 401) surely finds no job.
        wait_for("the 401's job is requeued", || async {
            jobs(&db).await.iter().all(|j| j.status == "queued")
        })
        .await;
        db.execute(&format!(
            "UPDATE jobs SET due_at_ms = {}",
            (fixed_now() + chrono::Duration::days(1)).timestamp_millis()
        ))
        .await;
        assert!(
            worker.app.worker_halt().is_some_and(|(_, at)| at == first_probe_at),
            "the probe ran before the job was moved: the test proves nothing"
        );
        // The probe comes due and finds no due job.
        wait_for("the probe found no job and gave its turn back for 5 s", || async {
            worker.app.worker_halt().is_some_and(|(_, at)| {
                at != first_probe_at && at <= clock.now() + chrono::Duration::seconds(5)
            })
        })
        .await;
        contacts(store, alpha, vec![contact("+12122347902")]).await;
        wait_for("the new contact probes and lifts the halt", || async {
            worker.app.worker_halt().is_none() && dialed(&sim).contains(&"+12122347902".to_string())
        })
        .await;
        worker.stop().await;
    }
}

both_backends! {
    /// Repeated worker halts for the same cause double (SPEC section 8), as pauses
    /// and account halts do: a probe answered 401 again halts for twice
    /// `retry.account_halt`. (Worker halts were never counted: every one lasted
    /// the base length.)
    async fn a_repeated_worker_halt_doubles(db) {
        let store = &db.store;
        let clock = Clock::starting_at(fixed_now());
        let alpha = campaign(store, &campaign_toml("alpha")).await;
        let phones = ["+12122348001", "+12122348002", "+12122348003"];
        contacts(store, alpha, phones.iter().map(|p| contact(p)).collect()).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim = simulator(vec![prefix_rule("+1212234", &["unauthorized"])], &listener, &clock).await;
        let extra = [
            ("worker.batch_size", toml::Value::Integer(1)),
            ("worker.max_in_flight", toml::Value::Integer(1)),
            ("retry.account_halt", toml::Value::String("1s".into())),
        ];
        let worker = start(store, settings(&db.url, &sim, &extra), listener, &clock).await;
        wait_for("the probe dial", || async { sim.requests().len() >= 2 }).await;
        let probe_sent = sim.requests()[1].at;
        // The probe's hold (a minute) is replaced by the new halt once its 401 is decided.
        wait_for("the probe's 401 halts the worker again", || async {
            worker.app.worker_halt().is_some_and(|(_, at)| {
                at > probe_sent && at < probe_sent + chrono::Duration::seconds(10)
            })
        })
        .await;
        let (reason, probe_at) = worker.app.worker_halt().unwrap();
        worker.stop().await;
        assert_eq!(reason, "unauthorized");
        let length = (probe_at - probe_sent).num_milliseconds();
        assert!((1_900..3_000).contains(&length), "halted for {length} ms, not twice 1 s");
    }
}

both_backends! {
    /// "Repeated pauses for the same cause double" (SPEC section 8) counts halts, not
    /// the dials that were in flight when one began: an outage answers every dial in
    /// flight with a 5xx, the breaker trips, and each of those answers decides the
    /// same account halt. They are one halt, of the base length, counted once; a
    /// dial answered while the account is already halted for that cause neither
    /// doubles it nor moves its probe.
    async fn the_dials_in_flight_when_an_outage_halts_the_account_are_one_halt(db) {
        let store = &db.store;
        let clock = Clock::starting_at(fixed_now());
        let alpha = campaign(store, &campaign_toml("alpha")).await;
        let phones: Vec<String> = (0..30).map(|i| format!("+1212234{:04}", 8100 + i)).collect();
        contacts(store, alpha, phones.iter().map(|p| contact(p)).collect()).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim = simulator(vec![prefix_rule("+12122348", &["empty500"])], &listener, &clock).await;
        let extra = [
            ("worker.batch_size", toml::Value::Integer(30)),
            ("worker.max_in_flight", toml::Value::Integer(30)),
            ("retry.provider_max", toml::Value::Integer(0)),
            ("retry.account_halt", toml::Value::String("20s".into())),
        ];
        let worker = start(store, settings(&db.url, &sim, &extra), listener, &clock).await;
        wait_for("every dial is answered and decided", || async {
            sim.requests().len() == phones.len()
                && jobs(&db).await.iter().all(|j| j.status == "queued")
        })
        .await;
        worker.stop().await;
        let halt = store.account_halt(ACCOUNT).await.unwrap().expect("the outage halts the account");
        assert_eq!(halt.reason, "provider_outage");
        assert_eq!(halt.halt_count, 1, "one halt, not one per dial in flight: {halt:?}");
        let length = halt.probe_at_ms - halt.halted_at_ms;
        assert!(
            (20_000..22_000).contains(&length),
            "the probe is due after the base 20 s, not doubled by each dial in flight: {length} ms"
        );
    }
}

both_backends! {
    /// The same for a campaign's pause: every dial in flight answered
    /// `no_active_number` is one pause of the base length (`retry.no_active_number`),
    /// counted once, not a doubling per answer up to the hour's cap.
    async fn the_dials_in_flight_when_a_campaign_pauses_are_one_pause(db) {
        let store = &db.store;
        let clock = Clock::starting_at(fixed_now());
        let alpha = campaign(store, &campaign_toml("alpha")).await;
        let phones: Vec<String> = (0..30).map(|i| format!("+1212234{:04}", 8200 + i)).collect();
        contacts(store, alpha, phones.iter().map(|p| contact(p)).collect()).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim = simulator(vec![prefix_rule("+12122348", &["no_active_number"])], &listener, &clock).await;
        let extra = [
            ("worker.batch_size", toml::Value::Integer(30)),
            ("worker.max_in_flight", toml::Value::Integer(30)),
            ("retry.no_active_number", toml::Value::String("20s".into())),
        ];
        let worker = start(store, settings(&db.url, &sim, &extra), listener, &clock).await;
        wait_for("every dial is answered and decided", || async {
            sim.requests().len() == phones.len()
                && jobs(&db).await.iter().all(|j| j.status == "queued")
        })
        .await;
        worker.stop().await;
        let first = sim.requests().iter().map(|r| r.at.timestamp_millis()).min().unwrap();
        let row = campaign_row(store, alpha).await;
        assert_eq!(row.auto_pause_reason.as_deref(), Some("no_active_number"));
        assert_eq!(row.auto_pause_count, 1, "one pause, not one per dial in flight: {row:?}");
        let length = row.auto_paused_until_ms.expect("a timed pause") - first;
        assert!(
            (19_000..22_000).contains(&length),
            "paused for the base 20 s, not doubled by each dial in flight: {length} ms"
        );
    }
}

both_backends! {
    /// A halted worker whose due jobs are all in auto-paused campaigns probes through
    /// one of their probes, not all of them at once: one failed probe is one repeat
    /// of the worker's halt (twice `retry.account_halt`), not one per campaign (four
    /// times with two campaigns).
    async fn a_halted_worker_probes_through_one_auto_paused_campaign_at_a_time(db) {
        let store = &db.store;
        let clock = Clock::starting_at(fixed_now());
        let alpha = campaign(store, &campaign_toml("alpha")).await;
        let beta = campaign(store, &campaign_toml("beta")).await;
        let a: Vec<String> = (0..3).map(|i| format!("+121223483{i:02}")).collect();
        let b: Vec<String> = (0..3).map(|i| format!("+121223484{i:02}")).collect();
        contacts(store, alpha, a.iter().map(|p| contact(p)).collect()).await;
        contacts(store, beta, b.iter().map(|p| contact(p)).collect()).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim = simulator(vec![prefix_rule("+1212234", &["unauthorized"])], &listener, &clock).await;
        // Two slots: the first two contacts' 401s halt the worker (one halt), and
        // both campaigns keep a due job for a probe.
        let extra = [
            ("worker.batch_size", toml::Value::Integer(2)),
            ("worker.max_in_flight", toml::Value::Integer(2)),
            ("retry.account_halt", toml::Value::String("2s".into())),
        ];
        let worker = start(store, settings(&db.url, &sim, &extra), listener, &clock).await;
        wait_for("the 401s halt the worker", || async {
            worker.app.worker_halt().is_some() && jobs(&db).await.iter().all(|j| j.status == "queued")
        })
        .await;
        assert_eq!(sim.requests().len(), 2, "{:?}", sim.requests());
        // Both campaigns auto-paused, their probes due now: every due job is in a
        // paused campaign.
        let now = clock.now().timestamp_millis();
        store.pause_campaign(alpha, "no_active_number", Some(now), now).await.unwrap();
        store.pause_campaign(beta, "no_active_number", Some(now), now).await.unwrap();
        wait_for("the probe's 401 halts the worker again", || async {
            let reqs = sim.requests();
            reqs.len() >= 3
                && worker.app.worker_halt().is_some_and(|(_, at)| {
                    at > reqs[2].at && at < reqs[2].at + chrono::Duration::seconds(30)
                })
                && jobs(&db).await.iter().all(|j| j.status == "queued")
        })
        .await;
        let (_, probe_at) = worker.app.worker_halt().unwrap();
        worker.stop().await;
        let reqs = sim.requests();
        assert_eq!(reqs.len(), 3, "one probe dial for the worker's halt: {reqs:?}");
        let length = (probe_at - reqs[2].at).num_milliseconds();
        assert!((3_900..5_000).contains(&length), "halted for {length} ms: twice 2 s, not four or eight times");
    }
}

both_backends! {
    /// More campaigns with a due probe than free in-flight slots: the probes past
    /// the free slots wait (5 s) instead of all being claimed at once. All claimed,
    /// the claim waited for more slots than `worker.max_in_flight` has, for good.
    async fn more_due_campaign_probes_than_in_flight_slots_all_probe_in_turn(db) {
        let store = &db.store;
        let clock = Clock::starting_at(fixed_now());
        let mut ids = Vec::new();
        for (i, name) in ["alpha", "beta", "gamma"].into_iter().enumerate() {
            let id = campaign(store, &campaign_toml(name)).await;
            contacts(store, id, vec![contact(&format!("+121223485{i:02}"))]).await;
            let now = clock.now().timestamp_millis();
            store.pause_campaign(id, "no_active_number", Some(now), now).await.unwrap();
            ids.push(id);
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim = simulator(vec![prefix_rule("+1212234", &["accept"])], &listener, &clock).await;
        let extra = [
            ("worker.batch_size", toml::Value::Integer(2)),
            ("worker.max_in_flight", toml::Value::Integer(2)),
        ];
        let worker = start(store, settings(&db.url, &sim, &extra), listener, &clock).await;
        wait_for("each campaign's probe is dialed and lifts its pause", || async {
            let mut lifted = true;
            for id in &ids {
                lifted &= campaign_row(store, *id).await.auto_pause_reason.is_none();
            }
            lifted && dialed(&sim).len() == 3
        })
        .await;
        worker.stop().await;
    }
}

both_backends! {
    /// An account halt ended by another worker's probe (here: lifted in the
    /// database, as that worker's success does) clears this worker's circuit
    /// breaker too: the outage's failures in its window must not trip a new
    /// account-wide halt at its first failure after the lift.
    async fn a_halt_lifted_elsewhere_clears_this_workers_breaker(db) {
        let store = &db.store;
        let clock = Clock::starting_at(fixed_now());
        let alpha = campaign(store, &campaign_toml("alpha")).await;
        let outage: Vec<String> = (0..20).map(|i| format!("+121223486{i:02}")).collect();
        contacts(store, alpha, outage.iter().map(|p| contact(p)).collect()).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim = simulator(vec![prefix_rule("+1212234", &["empty500"])], &listener, &clock).await;
        let extra = [
            ("worker.batch_size", toml::Value::Integer(20)),
            ("worker.max_in_flight", toml::Value::Integer(20)),
            ("retry.provider_max", toml::Value::Integer(0)),
            ("retry.account_halt", toml::Value::String("1h".into())),
        ];
        let worker = start(store, settings(&db.url, &sim, &extra), listener, &clock).await;
        wait_for("the outage halts the account", || async {
            sim.requests().len() == outage.len()
                && store.account_halt(ACCOUNT).await.unwrap().is_some()
                && jobs(&db).await.iter().all(|j| j.status == "queued")
        })
        .await;
        // Another worker's probe succeeded.
        store.lift_account_halt(ACCOUNT).await.unwrap();
        // One more contact, whose dial fails once: a provider requeue, not a halt.
        contacts(store, alpha, vec![contact("+12122348700")]).await;
        wait_for("the new contact's failure is decided", || async {
            sim.requests().len() == outage.len() + 1
                && jobs(&db).await.iter().all(|j| j.status == "queued")
        })
        .await;
        worker.stop().await;
        let halt = store.account_halt(ACCOUNT).await.unwrap();
        assert!(halt.is_none(), "one failure after the lift halted the account again: {halt:?}");
    }
}
