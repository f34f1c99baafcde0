//! Reconciliation (SPEC section 9): calls with no outcome after `outcome_timeout`
//! are asked about with `GET /v1/calls/{id}`. A slow vendor must not stop the
//! heartbeat (leases would expire under dials in flight), and calls that cannot be
//! settled yet must not keep the calls behind them from ever being asked about.

// A scenario reads best as the default plus the few knobs each test turns.
#![allow(clippy::field_reassign_with_default)]

use crate::both_backends;
use crate::e2e::{
    Running, campaign, clock, contact, contacts, fixed_now, run_until_idle, settings, simulator,
    wait_until,
};
use dialer::simulator::Rule;
use dialer::simulator::Scenario;
use dialer::store::DynStore;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const CAMPAIGN: &str = r#"
name = "recon"
from_number = "+14155550100"
window = { start = "09:00", end = "20:00" }
require_consent = false
max_attempts = 1
"#;

fn prefix_rule(prefix: &str, duration: Option<Duration>) -> Rule {
    Rule {
        prefix: Some(prefix.into()),
        webhook: false,
        duration,
        ..Rule::default()
    }
}

async fn jobs(store: &DynStore, state: &str) -> i64 {
    let st = store
        .status(Some("recon"), fixed_now().timestamp_millis())
        .await
        .expect("status");
    st.campaigns[0].jobs.get(state).copied().unwrap_or(0) as i64
}

both_backends! {
    /// More calls overdue than one pass asks about, the oldest of them not ended:
    /// each pass used to ask about the same 200 oldest calls and never reach the
    /// ones behind them. Calls asked about and not ended now wait another
    /// `outcome_timeout`, so the calls placed later are reached and settled.
    async fn calls_behind_a_full_pass_of_unended_calls_are_settled(db) {
        let store = &db.store;
        let id = campaign(store, CAMPAIGN).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut scenario = Scenario::default();
        // 210 calls that last an hour, then 5 that end at once; no webhooks at all.
        scenario.rules = vec![
            prefix_rule("+1212234", Some(Duration::from_secs(3600))),
            prefix_rule("+1646234", None),
        ];
        let sim = simulator(scenario, &listener).await;
        let s = |v: &str| toml::Value::String(v.into());
        let settings = settings(
            &db.url,
            &sim,
            &[("outcome_timeout", s("1s"))],
        );
        let worker = Running::start(store, settings, listener, &clock()).await;

        let long: Vec<_> = (0..210).map(|i| contact(&format!("+1212234{:04}", 1000 + i))).collect();
        contacts(store, id, long).await;
        wait_until(Duration::from_secs(60), "the 210 long calls are placed", || async {
            jobs(store, "awaiting_outcome").await == 210
        })
        .await;
        // Placed after the long ones: the oldest 200 unsettled calls are all long.
        let short: Vec<_> = (0..5).map(|i| contact(&format!("+1646234{:04}", 1000 + i))).collect();
        contacts(store, id, short).await;
        wait_until(Duration::from_secs(60), "the 5 ended calls are settled by GET", || async {
            jobs(store, "done").await == 5
        })
        .await;
        assert_eq!(jobs(store, "awaiting_outcome").await, 210, "the long calls have not ended");
        worker.stop().await;
        assert_eq!(sim.calls().len(), 215, "one call per contact");
    }
}

both_backends! {
    /// A vendor whose `GET /v1/calls/{id}` hangs until the client times out: the
    /// heartbeat goes on (it used to wait behind reconciliation, one timeout per
    /// overdue call, long enough for the worker's leases to expire and its jobs to
    /// be recovered by other workers while it was still dialing them).
    async fn a_hanging_lookup_never_stops_the_heartbeat(db) {
        let store = &db.store;
        let id = campaign(store, CAMPAIGN).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut scenario = Scenario::default();
        scenario.rules = vec![prefix_rule("+1212234", None)];
        scenario.get_latency = Duration::from_secs(600);
        let sim = simulator(scenario, &listener).await;
        let s = |v: &str| toml::Value::String(v.into());
        // Lease 3 s, a heartbeat every second; each lookup hangs for the 2 s timeout.
        let settings = settings(
            &db.url,
            &sim,
            &[
                ("outcome_timeout", s("1s")),
                ("worker.lease", s("3s")),
            ],
        );
        // The worker's own clock: the heartbeat is written in its time.
        let worker_clock = clock();
        let worker = Running::start(store, settings, listener, &worker_clock).await;
        let worker_id = worker.app.worker_id.clone();
        let numbers: Vec<_> = (0..6).map(|i| contact(&format!("+1212234{:04}", 1000 + i))).collect();
        contacts(store, id, numbers).await;
        wait_until(Duration::from_secs(60), "the calls are placed", || async {
            jobs(store, "awaiting_outcome").await == 6
        })
        .await;
        // Reconciliation now asks about 6 calls, each lookup hanging for the 2 s
        // client timeout. For 8 s, the worker's heartbeat is never older than the
        // lease: the database would otherwise judge it dead.
        let lease_ms = 3_000;
        let until = std::time::Instant::now() + Duration::from_secs(8);
        let mut checks = 0;
        while std::time::Instant::now() < until {
            // Heartbeats are on the database's clock (PostgreSQL on this machine), or
            // on the worker's (SQLite: one process).
            let now = match store.backend() {
                dialer::store::Backend::Postgres => chrono::Utc::now(),
                dialer::store::Backend::Sqlite => worker_clock.now(),
            }
            .timestamp_millis();
            let live = store.live_workers(now - lease_ms).await.expect("live workers");
            assert!(
                live.contains(&worker_id),
                "the heartbeat stopped while reconciliation waited on the vendor (check {checks})"
            );
            checks += 1;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(checks >= 20, "the heartbeat was checked throughout: {checks}");
        assert_eq!(jobs(store, "awaiting_outcome").await, 6, "nothing settled without an answer");
        worker.stop().await;
    }
}

both_backends! {
    /// A worker got the 202 but lost its lease before its job took it: the call id
    /// is on the attempt, the job is not awaiting. The call's webhook arriving then
    /// used to be recorded as a duplicate, and the job waited for reconciliation
    /// (`outcome_timeout`, 10 minutes by default). It now waits in the inbox and
    /// applies once the job's next claim has moved it to `awaiting_outcome`.
    async fn an_outcome_before_the_job_took_its_202_waits_and_applies(db) {
        use dialer::revdesk::wire::CallResource;
        use dialer::store::{
            AttemptUpdate, Dispatch, Dispatched, Guard, InboxEvent, JobUpdate, JobWrite,
            Placement, SendKind, SendRequest,
        };
        use dialer::worker::outcomes::{OutcomeInput, OwnedOutcome};
        let store = &db.store;
        let now = fixed_now().timestamp_millis();
        let id = campaign(store, CAMPAIGN).await;
        contacts(store, id, vec![contact("+12122345631")]).await;
        // A worker that is gone after it sent: its lease runs out below.
        let job = store.claim("w-gone", 10, now, 60_000, None).await.unwrap().remove(0);
        let sent = store
            .dispatch(&Dispatch {
                owner: "w-gone".into(),
                audits: vec![],
                writes: vec![],
                sends: vec![SendRequest {
                    job_id: job.id,
                    campaign_id: id,
                    phone: job.phone.clone(),
                    send: SendKind::New { key: "k-gone".into(), body: "{}".into(), caps: vec![], requeue_jitter_ms: 0 },
                    now_ms: now,
                }],
            })
            .await
            .unwrap();
        let Dispatched::Sent(attempt) = &sent.sends[0] else {
            panic!("expected a send: {sent:?}");
        };
        db.execute(&format!("UPDATE jobs SET lease_expires_ms = 0 WHERE id = {}", job.id)).await;
        // Its 202 is recorded on the attempt; the job part fails the lease guard.
        let took = store
            .update_jobs(&[JobWrite {
                job_id: job.id,
                guard: Guard::Lease("w-someone-else".into()),
                update: JobUpdate {
                    status: "awaiting_outcome",
                    attempt: Some(AttemptUpdate {
                        id: attempt.id,
                        placement: Some(Placement::Placed),
                        call_id: Some("call_lost_lease".into()),
                        response_status: Some(202),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                now_ms: now,
            }])
            .await
            .unwrap();
        assert_eq!(took, [false]);

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim = simulator(Scenario::default(), &listener).await;
        let app = Arc::new(
            dialer::worker::build(settings(&db.url, &sim, &[]), store.clone(), clock(), CancellationToken::new())
                .expect("build worker"),
        );
        let ended: CallResource = serde_json::from_value(serde_json::json!({
            "id": "call_lost_lease", "status": "completed", "call_outcome": "completed"
        }))
        .unwrap();
        let body = serde_json::json!({
            "id": "evt_lost_lease", "type": "phone_call.ended",
            "created_at": fixed_now().to_rfc3339(), "data": ended,
        });
        let event = InboxEvent {
            event_id: "evt_lost_lease".into(),
            call_id: "call_lost_lease".into(),
            body: body.to_string(),
        };
        assert_eq!(store.inbox_insert_many(std::slice::from_ref(&event), now).await.unwrap(), [true]);
        let labels = app
            .apply_outcomes(
                vec![OutcomeInput {
                    call_id: "call_lost_lease".into(),
                    outcome: OwnedOutcome::Call(ended.clone()),
                    event_id: Some(event.event_id.clone()),
                }],
                "webhook",
            )
            .await
            .unwrap();
        assert_eq!(labels, ["pending"], "not a duplicate: the job has not taken the 202");
        assert_eq!(store.inbox_pending_many(&["call_lost_lease".into()]).await.unwrap().len(), 1, "kept in the inbox");

        drop(app);
        // A worker claims the job: it moves to awaiting_outcome without dialing, and
        // the stored event applies (the run ends only when nothing awaits).
        run_until_idle(store, settings(&db.url, &sim, &[]), listener).await;
        assert_eq!(jobs(store, "done").await, 1);
        assert!(sim.requests().is_empty(), "the placed call was never dialed again");
        assert!(store.inbox_pending_many(&["call_lost_lease".into()]).await.unwrap().is_empty());
    }
}
