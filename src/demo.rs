//! `dialer demo`: the one-command tour of SPEC.md section 3.
//!
//! Everything runs in this process on embedded defaults: a temporary SQLite database
//! (removed at exit), the built-in RevDesk simulator on a free loopback port wired to
//! the worker's webhook with a generated key and secret, and a clock fixed at
//! Wednesday 2026-11-18 15:00 America/New_York, so the tour is the same at any hour.
//! The sample campaigns and lists in `demo/` are loaded through the real importers,
//! the real worker dials until nothing is due soon, and a summary says what happened.

use crate::clock::Clock;
use crate::config::{Settings, Sources};
use crate::import::{self, ImportReport, NoProgress};
use crate::revdesk::codes::Code;
use crate::simulator::scenario::{Outcome, Rule};
use crate::simulator::{Scenario, Simulator};
use crate::store::DynStore;
use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::America::New_York;
use serde::Serialize;
use sqlx::Row;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The demo's instant: a Wednesday mid-afternoon US Eastern, inside every federal and
/// state calling window of the sample numbers (47 CFR 64.1200(c)(1): 8 a.m.-9 p.m.).
pub const DEMO_NOW: &str = "2026-11-18T15:00:00-05:00";

/// Pause and halt delays, shortened from minutes so the tour drains in seconds.
const SHORT_DELAY: &str = "3s";

/// The demo stops once nothing is in flight and nothing is due within this horizon
/// (demo clock): later requeues (calling window, caps, no_answer) are listed instead.
const HORIZON_MS: i64 = 2_000;

/// A bound on the whole run, so a broken build cannot hang the tour.
const WALL_LIMIT: Duration = Duration::from_secs(25);

const CAMPAIGNS: [(&str, &str, &str); 5] = [
    (
        include_str!("../demo/renewals.toml"),
        "renewals-contacts.csv",
        include_str!("../demo/renewals-contacts.csv"),
    ),
    (
        include_str!("../demo/consent.toml"),
        "consent-contacts.csv",
        include_str!("../demo/consent-contacts.csv"),
    ),
    (
        include_str!("../demo/weekend.toml"),
        "weekend-contacts.csv",
        include_str!("../demo/weekend-contacts.csv"),
    ),
    (
        include_str!("../demo/pause-halt.toml"),
        "pause-halt-contacts.csv",
        include_str!("../demo/pause-halt-contacts.csv"),
    ),
    (
        include_str!("../demo/unverified.toml"),
        "unverified-contacts.csv",
        include_str!("../demo/unverified-contacts.csv"),
    ),
];
const DNC: &str = include_str!("../demo/dnc.txt");
const OPT_OUTS: &str = include_str!("../demo/opt-outs.csv");
const CONSENTS: &str = include_str!("../demo/consents.csv");

/// What the simulator answers per number: (number, dial answers, call outcomes).
const RULES: &[(&str, &[&str], &[&str])] = &[
    ("+12122345602", &["accept"], &["busy", "completed"]),
    ("+12122345603", &["accept"], &["no_answer"]),
    ("+12122345604", &["accept"], &["voicemail_reached"]),
    ("+12122345605", &["accept"], &["number_unreachable"]),
    ("+12122345606", &["accept"], &["call_declined"]),
    ("+12122345607", &["accept"], &["carrier_rejected"]),
    ("+12122345608", &["destination_invalid"], &[]),
    ("+12122345609", &["dnc_suppressed"], &[]),
    ("+12122345610", &["outside_calling_window"], &[]),
    ("+12122345611", &["rate_limited", "accept"], &[]),
    ("+12122345612", &["agent_dispatch_failed", "accept"], &[]),
    ("+12122345613", &["accept_then_stall", "accept"], &[]),
    ("+14152345641", &["no_active_number", "accept"], &[]),
    ("+14152345642", &["voice_usage_exhausted", "accept"], &[]),
    ("+16172345651", &["caller_id_not_verified"], &[]),
];

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo setup failed: {0}")]
    Setup(String),
    #[error(transparent)]
    Import(#[from] import::ImportError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("demo database query failed: {0}")]
    Query(#[from] sqlx::Error),
    #[error("the worker failed: {0}")]
    Worker(String),
}

fn setup(e: impl std::fmt::Display) -> DemoError {
    DemoError::Setup(e.to_string())
}

#[derive(Debug, Clone, Serialize)]
pub struct JobLine {
    pub campaign: String,
    pub phone: String,
    pub name: String,
    pub status: String,
    pub reason: Option<String>,
    /// `local` (our pre-flight) or `vendor` (a RevDesk answer or outcome).
    pub source: Option<String>,
    pub attempts: i64,
    /// The pre-flight's explanation, for jobs held or dropped locally.
    pub detail: Option<String>,
    /// For queued jobs: when the job is due again (US Eastern).
    pub due_at: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CampaignLine {
    pub name: String,
    /// `active`, `paused until ...` or `paused until resume (...)`.
    pub state: String,
    /// Automatic pauses over the run.
    pub pauses: i64,
    pub jobs: Vec<JobLine>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RejectionLine {
    pub file: String,
    pub line: u64,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct VendorAnswer {
    pub seq: u64,
    pub to: String,
    /// `202` or the error code answered.
    pub answer: String,
    /// The code's category (`accepted` for a 202).
    pub category: String,
    /// True when this request re-sent an earlier attempt's key (a same-key retry).
    pub same_key_retry: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SimulatorLine {
    pub dial_requests: usize,
    pub calls_placed: usize,
    pub answers: Vec<VendorAnswer>,
    pub outcomes: BTreeMap<String, usize>,
}

/// What the run showed, derived from the data (not from what the demo intended).
#[derive(Debug, Clone, Serialize)]
pub struct Shown {
    pub rules: BTreeSet<String>,
    pub answer_categories: BTreeSet<String>,
    pub outcomes: BTreeSet<String>,
    pub pauses_and_halts: BTreeSet<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub clock: String,
    pub campaigns: Vec<CampaignLine>,
    pub requeued: Vec<JobLine>,
    pub import_rejections: Vec<RejectionLine>,
    pub account_halts: Vec<String>,
    pub simulator: SimulatorLine,
    pub shown: Shown,
    /// False when the run hit the wall-clock bound before settling.
    pub settled: bool,
}

fn demo_now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(DEMO_NOW)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

fn eastern(ms: i64) -> String {
    match Utc.timestamp_millis_opt(ms).single() {
        Some(t) => t
            .with_timezone(&New_York)
            .format("%a %Y-%m-%d %H:%M:%S %Z")
            .to_string(),
        None => ms.to_string(),
    }
}

/// A fresh random token for the simulator's API key and webhook secret.
fn token(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

fn scenario(webhook: String, secret: &str, api_key: &str) -> Result<Scenario, DemoError> {
    let mut s = Scenario {
        api_keys: vec![api_key.to_owned()],
        webhook_url: Some(webhook),
        webhook_secret: secret.to_owned(),
        // Longer than revdesk.timeout below: accept_then_stall is a timeout.
        stall_for: Duration::from_secs(2),
        ..Scenario::default()
    };
    s.outcomes.delay = Duration::from_millis(100);
    for (number, script, outcomes) in RULES {
        let mut rule = Rule::for_number(number, script).map_err(setup)?;
        rule.outcomes = outcomes
            .iter()
            .map(|o| Outcome::parse(o))
            .collect::<Result<_, _>>()
            .map_err(setup)?;
        s.rules.push(rule);
    }
    Ok(s)
}

fn settings(
    db_url: &str,
    sim: &Simulator,
    api_key: &str,
    secret: &str,
) -> Result<Settings, DemoError> {
    let s = |v: &str| toml::Value::String(v.into());
    let overrides = vec![
        ("database.url".to_owned(), s(db_url)),
        ("revdesk.base_url".to_owned(), s(&sim.base_url())),
        ("revdesk.api_key".to_owned(), s(api_key)),
        ("revdesk.timeout".to_owned(), s("1s")),
        ("webhook.secret".to_owned(), s(secret)),
        ("worker.poll_interval".to_owned(), s("50ms")),
        ("worker.lease".to_owned(), s("5s")),
        ("rate.per_second".to_owned(), toml::Value::Float(200.0)),
        ("rate.burst".to_owned(), toml::Value::Integer(50)),
        // A busy line is tried again in 2s (and completes); no answer waits 2h.
        ("retry.busy".to_owned(), s("2s")),
        ("retry.no_answer".to_owned(), s("2h")),
        ("retry.no_active_number".to_owned(), s(SHORT_DELAY)),
        ("retry.account_halt".to_owned(), s(SHORT_DELAY)),
        ("log.level".to_owned(), s("warn")),
    ];
    Settings::load(&Sources {
        overrides,
        ..Default::default()
    })
    .map_err(setup)
}

fn write(dir: &Path, name: &str, text: &str) -> Result<std::path::PathBuf, DemoError> {
    let p = dir.join(name);
    std::fs::write(&p, text).map_err(setup)?;
    Ok(p)
}

fn rejections(file: &str, report: &ImportReport, out: &mut Vec<RejectionLine>) {
    out.extend(report.rejected.iter().map(|r| RejectionLine {
        file: file.to_owned(),
        line: r.line,
        reason: r.reason.clone(),
    }));
}

async fn load_data(
    store: &DynStore,
    dir: &Path,
    now_ms: i64,
) -> Result<Vec<RejectionLine>, DemoError> {
    let mut out = Vec::new();
    for (toml, file, csv) in CAMPAIGNS {
        let spec = crate::campaign::CampaignSpec::parse(toml).map_err(setup)?;
        let (row, _) = store.apply_campaign(&spec, now_ms).await?;
        let path = write(dir, file, csv)?;
        let r = import::import_contacts(store, row.id, now_ms, &path, Box::new(NoProgress)).await?;
        rejections(file, &r, &mut out);
    }
    let r = import::import_dnc(
        store,
        &write(dir, "dnc.txt", DNC)?,
        "demo",
        now_ms,
        Box::new(NoProgress),
    )
    .await?;
    rejections("dnc.txt", &r, &mut out);
    let r = import::import_opt_outs(
        store,
        &write(dir, "opt-outs.csv", OPT_OUTS)?,
        now_ms,
        Box::new(NoProgress),
    )
    .await?;
    rejections("opt-outs.csv", &r, &mut out);
    let r = import::import_consents(
        store,
        &write(dir, "consents.csv", CONSENTS)?,
        Box::new(NoProgress),
    )
    .await?;
    rejections("consents.csv", &r, &mut out);
    Ok(out)
}

/// Nothing in flight and nothing due (or pausing, or halted) within the horizon.
async fn settled(pool: &sqlx::SqlitePool, now_ms: i64) -> Result<bool, DemoError> {
    let busy: i64 = sqlx::query(
        "SELECT COUNT(*) FROM jobs WHERE status IN ('running', 'dialing', 'awaiting_outcome')",
    )
    .fetch_one(pool)
    .await?
    .try_get(0)?;
    // Jobs of a campaign paused until resume are not due: only an operator frees them.
    let next: Option<i64> = sqlx::query(
        "SELECT MIN(t) FROM (
           SELECT j.due_at_ms AS t FROM jobs j JOIN campaigns c ON c.id = j.campaign_id
            WHERE j.status = 'queued' AND NOT c.operator_paused
              AND NOT (c.auto_pause_reason IS NOT NULL AND c.auto_paused_until_ms IS NULL)
           UNION ALL SELECT auto_paused_until_ms FROM campaigns
            WHERE auto_pause_reason IS NOT NULL AND auto_paused_until_ms IS NOT NULL
           UNION ALL SELECT probe_at_ms FROM account_halts)",
    )
    .fetch_one(pool)
    .await?
    .try_get(0)?;
    Ok(busy == 0 && next.is_none_or(|t| t > now_ms + HORIZON_MS))
}

/// Runs the whole tour and returns its summary.
pub async fn run() -> Result<Summary, DemoError> {
    let dir = tempfile::tempdir().map_err(setup)?;
    let db_path = dir.path().join("demo.sqlite");
    let db_url = format!("sqlite://{}", db_path.display());
    let clock = Clock::starting_at(demo_now());
    let now_ms = clock.now().timestamp_millis();

    let store = crate::store::connect(&db_url, 4).await?;
    store.migrate().await?;
    let import_rejections = load_data(&store, dir.path(), now_ms).await?;

    let listener = TcpListener::bind("127.0.0.1:0").await.map_err(setup)?;
    let addr = listener.local_addr().map_err(setup)?;
    let api_key = token("sk_demo_");
    let secret = token("whsec_demo_");
    let sim = Simulator::start_with_clock(
        scenario(format!("http://{addr}/webhooks/revdesk"), &secret, &api_key)?,
        clock.clone(),
    )
    .await
    .map_err(setup)?;
    let settings = settings(&db_url, &sim, &api_key, &secret)?;
    let cancel = CancellationToken::new();
    let app = crate::worker::build(settings, store.clone(), clock.clone(), cancel.clone())
        .map_err(setup)?;
    let worker = tokio::spawn(crate::worker::serve(Arc::new(app), listener, false));

    // The worker's own idle rule stops during a pause or halt (nothing claimable);
    // the tour waits through the short ones, so it watches the queue itself.
    let pool = sqlx::SqlitePool::connect(&db_url).await?;
    let started = Instant::now();
    let mut quiet_rounds = 0;
    let mut done = false;
    while started.elapsed() < WALL_LIMIT {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if settled(&pool, clock.now().timestamp_millis()).await? {
            quiet_rounds += 1;
            if quiet_rounds >= 3 {
                done = true;
                break;
            }
        } else {
            quiet_rounds = 0;
        }
    }
    cancel.cancel();
    match worker.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(DemoError::Worker(e.to_string())),
        Err(e) => return Err(DemoError::Worker(e.to_string())),
    }
    let summary = summarize(&pool, &sim, import_rejections, done).await?;
    pool.close().await;
    Ok(summary)
}

async fn summarize(
    pool: &sqlx::SqlitePool,
    sim: &Simulator,
    import_rejections: Vec<RejectionLine>,
    settled: bool,
) -> Result<Summary, DemoError> {
    let rows = sqlx::query(
        "SELECT c.name, j.phone, COALESCE(j.first_name, ''), j.status, j.reason, j.reason_source,
                j.attempts, j.due_at_ms,
                (SELECT a.reason FROM audit a WHERE a.job_id = j.id AND a.verdict <> 'allow'
                  ORDER BY a.id DESC LIMIT 1)
           FROM jobs j JOIN campaigns c ON c.id = j.campaign_id ORDER BY c.id, j.id",
    )
    .fetch_all(pool)
    .await?;
    let mut jobs = Vec::new();
    for r in rows {
        let status: String = r.try_get(3)?;
        let due: i64 = r.try_get(7)?;
        jobs.push(JobLine {
            campaign: r.try_get(0)?,
            phone: r.try_get(1)?,
            name: r.try_get(2)?,
            due_at: (status == "queued").then(|| eastern(due)),
            status,
            reason: r.try_get(4)?,
            source: r.try_get(5)?,
            attempts: r.try_get(6)?,
            detail: r.try_get(8)?,
        });
    }
    let mut campaigns = Vec::new();
    for r in sqlx::query(
        "SELECT name, operator_paused, auto_pause_reason, auto_paused_until_ms, auto_pause_count
           FROM campaigns ORDER BY id",
    )
    .fetch_all(pool)
    .await?
    {
        let name: String = r.try_get(0)?;
        let operator: bool = r.try_get(1)?;
        let reason: Option<String> = r.try_get(2)?;
        let until: Option<i64> = r.try_get(3)?;
        let state = match (operator, reason, until) {
            (true, _, _) => "paused by an operator".to_owned(),
            (false, Some(reason), None) => format!("paused until resume ({reason})"),
            (false, Some(reason), Some(t)) => format!("paused until {} ({reason})", eastern(t)),
            (false, None, _) => "active".to_owned(),
        };
        campaigns.push(CampaignLine {
            jobs: jobs
                .iter()
                .filter(|j| j.campaign == name)
                .cloned()
                .collect(),
            name,
            state,
            pauses: r.try_get(4)?,
        });
    }
    let account_halts = sqlx::query(
        "SELECT account, reason, probe_at_ms, halt_count FROM account_halts ORDER BY account",
    )
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| -> Result<String, sqlx::Error> {
        Ok(format!(
            "account {} halted ({}), {} time(s), next probe {}",
            r.try_get::<String, _>(0)?,
            r.try_get::<String, _>(1)?,
            r.try_get::<i64, _>(3)?,
            eastern(r.try_get(2)?)
        ))
    })
    .collect::<Result<Vec<_>, _>>()?;

    let requests = sim.requests();
    let answers: Vec<VendorAnswer> = requests
        .iter()
        .map(|q| {
            let (answer, category) = match (&q.code, q.status) {
                (Some(code), _) => (
                    code.clone(),
                    Code::parse(code)
                        .and_then(|c| c.info().category)
                        .map_or("uncategorised", |c| c.as_str())
                        .to_owned(),
                ),
                (None, Some(s)) if (200..300).contains(&s) => {
                    (s.to_string(), "accepted".to_owned())
                }
                (None, Some(s)) => (s.to_string(), "unparsed".to_owned()),
                (None, None) => ("no answer".to_owned(), "connection".to_owned()),
            };
            VendorAnswer {
                seq: q.seq,
                to: q.to.clone().unwrap_or_default(),
                answer,
                category,
                same_key_retry: q.replay_of.is_some(),
            }
        })
        .collect();
    let calls = sim.calls();
    let mut outcomes = BTreeMap::new();
    for c in &calls {
        *outcomes.entry(c.outcome.clone()).or_insert(0) += 1;
    }

    // What the run showed, from the records: local rules from the audit trail and
    // the import rejections, answers from the simulator's log, outcomes as the worker
    // recorded them.
    let mut rules: BTreeSet<String> = BTreeSet::new();
    for r in
        sqlx::query("SELECT DISTINCT rule FROM audit WHERE rule IS NOT NULL AND verdict <> 'allow'")
            .fetch_all(pool)
            .await?
    {
        rules.insert(r.try_get(0)?);
    }
    // The cap is checked in the atomic reservation of the attempt, which records its
    // reason on the job rather than as a verdict row.
    for j in &jobs {
        if let (Some(reason), Some("local")) = (&j.reason, j.source.as_deref()) {
            rules.insert(reason.clone());
        }
    }
    for r in &import_rejections {
        for rule in ["invalid_number", "destination_blocked"] {
            if r.reason.contains(rule) {
                rules.insert(rule.to_owned());
            }
        }
    }
    let mut answer_categories: BTreeSet<String> =
        answers.iter().map(|a| a.category.clone()).collect();
    // A same-key retry that got the stored 202 back follows an ambiguous answer.
    if answers.iter().any(|a| a.same_key_retry) {
        answer_categories.insert("timeout".to_owned());
    }
    let mut recorded: BTreeSet<String> = BTreeSet::new();
    for r in
        sqlx::query("SELECT DISTINCT outcome_code FROM attempts WHERE outcome_code IS NOT NULL")
            .fetch_all(pool)
            .await?
    {
        recorded.insert(r.try_get(0)?);
    }
    let pauses_and_halts: BTreeSet<String> = answers
        .iter()
        .filter(|a| {
            [
                "no_active_number",
                "caller_id_not_verified",
                "voice_usage_exhausted",
            ]
            .contains(&a.answer.as_str())
        })
        .map(|a| a.answer.clone())
        .collect();
    let requeued = jobs
        .iter()
        .filter(|j| j.status == "queued")
        .cloned()
        .collect();
    Ok(Summary {
        clock: format!(
            "{} (fixed; it advances in real time from there)",
            eastern(demo_now().timestamp_millis())
        ),
        campaigns,
        requeued,
        import_rejections,
        account_halts,
        simulator: SimulatorLine {
            dial_requests: requests.len(),
            calls_placed: calls.len(),
            answers,
            outcomes,
        },
        shown: Shown {
            rules,
            answer_categories,
            outcomes: recorded,
            pauses_and_halts,
        },
        settled,
    })
}

fn opt(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or("-")
}

/// The human-readable summary.
pub fn render(s: &Summary) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "dialer demo: a guided tour on embedded sample data");
    let _ = writeln!(o, "===================================================");
    let _ = writeln!(o, "Clock: {}", s.clock);
    let _ = writeln!(
        o,
        "  so calling windows behave the same whenever you run this. Database: a temporary\n  SQLite file (deleted at exit). Vendor: the built-in RevDesk simulator on a loopback\n  port, sending signed webhooks to the worker. Pause/halt delays are shortened to {SHORT_DELAY}."
    );
    let _ = writeln!(o, "\n1. Import rejections (bad rows never reach the queue)");
    for r in &s.import_rejections {
        let _ = writeln!(o, "   {}:{}  {}", r.file, r.line, r.reason);
    }
    let _ = writeln!(
        o,
        "\n2. Final state per campaign (source: local = our pre-flight, vendor = RevDesk)"
    );
    for c in &s.campaigns {
        let _ = writeln!(
            o,
            "\n   campaign {}: {} (automatic pauses: {})",
            c.name, c.state, c.pauses
        );
        let _ = writeln!(
            o,
            "   {:<13} {:<28} {:<17} {:<24} {:<7} {:>3}  detail",
            "phone", "contact", "state", "reason", "source", "att"
        );
        for j in &c.jobs {
            let detail = match (&j.due_at, &j.detail) {
                (Some(due), d) => format!(
                    "due {due}{}",
                    d.as_ref().map(|d| format!("; {d}")).unwrap_or_default()
                ),
                (None, Some(d)) => d.clone(),
                (None, None) => String::new(),
            };
            let _ = writeln!(
                o,
                "   {:<13} {:<28} {:<17} {:<24} {:<7} {:>3}  {}",
                j.phone,
                j.name,
                j.status,
                opt(&j.reason),
                opt(&j.source),
                j.attempts,
                detail
            );
        }
    }
    let _ = writeln!(
        o,
        "\n3. Requeued jobs (waiting, not dropped): reason and due time"
    );
    for j in &s.requeued {
        let _ = writeln!(
            o,
            "   {:<26} {:<13} {:<22} due {}",
            j.campaign,
            j.phone,
            opt(&j.reason),
            j.due_at.as_deref().unwrap_or("-")
        );
    }
    let _ = writeln!(o, "\n4. Pauses and halts");
    for c in s
        .campaigns
        .iter()
        .filter(|c| c.pauses > 0 || c.state != "active")
    {
        let _ = writeln!(
            o,
            "   campaign {}: {} automatic pause(s), now {}",
            c.name, c.pauses, c.state
        );
    }
    for h in &s.account_halts {
        let _ = writeln!(o, "   {h}");
    }
    let _ = writeln!(
        o,
        "   vendor answers that paused or halted: {}",
        s.shown
            .pauses_and_halts
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(o, "\n5. What the simulator received");
    let _ = writeln!(
        o,
        "   {} dial requests, {} calls placed; call outcomes: {}",
        s.simulator.dial_requests,
        s.simulator.calls_placed,
        s.simulator
            .outcomes
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(o, "   every answer other than a first-time 202:");
    for a in s
        .simulator
        .answers
        .iter()
        .filter(|a| a.category != "accepted" || a.same_key_retry)
    {
        let _ = writeln!(
            o,
            "   #{:<3} {:<13} {:<24} {}{}",
            a.seq,
            a.to,
            a.answer,
            a.category,
            if a.same_key_retry {
                " (same-key retry: the stored 202 replayed)"
            } else {
                ""
            }
        );
    }
    let join = |set: &BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>().join(", ");
    let _ = writeln!(o, "\n6. Shown in this run");
    let _ = writeln!(o, "   pre-flight rules:         {}", join(&s.shown.rules));
    let _ = writeln!(
        o,
        "   answer categories:        {}",
        join(&s.shown.answer_categories)
    );
    let _ = writeln!(
        o,
        "   final outcomes recorded:  {}",
        join(&s.shown.outcomes)
    );
    if !s.settled {
        let _ = writeln!(
            o,
            "\n   note: stopped at the {}s bound before everything settled",
            WALL_LIMIT.as_secs()
        );
    }
    o
}

/// Routes logs to stderr at `warn`, so stdout keeps only the summary.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .try_init();
}
