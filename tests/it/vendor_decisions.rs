//! The real client against the real simulator, then the decision table: every
//! synchronous code of the vendor reference ends in the decision SPEC section 8 gives.

use chrono::Utc;
use dialer::decision::{self, Action, DialContext, PauseCounts, RetrySettings};
use dialer::revdesk::client::Client;
use dialer::revdesk::codes::{Phase, REFERENCE};
use dialer::revdesk::wire::DialResult;
use dialer::simulator::scenario::Rule;
use dialer::simulator::{Scenario, Simulator};
use secrecy::SecretString;
use std::time::Duration;

/// What SPEC section 8 says each code leads to, as the action's kind.
fn expected(code: &str) -> &'static str {
    match code {
        "destination_invalid"
        | "destination_blocked"
        | "dnc_suppressed"
        | "recipient_opted_out"
        | "no_consent" => "drop",
        "destination_missing" | "no_active_number" | "caller_id_not_verified" => "pause",
        "outside_calling_window"
        | "calling_day_not_allowed"
        | "frequency_cap_exceeded"
        | "rate_limited"
        | "no_number_available" => "requeue",
        "voice_usage_exhausted" | "no_active_subscription" => "halt_account",
        "room_creation_failed"
        | "agent_dispatch_failed"
        | "sip_gateway_failed"
        | "provider_api_error"
        | "internal_error" => "retry",
        "unauthorized" | "forbidden" | "not_found" => "halt_worker",
        "validation_error" => "pause",
        "idempotency_conflict" => "drop",
        other => panic!("no expectation for {other}"),
    }
}

/// The real client against `sim` over HTTP/1.1 (`connect_timeout`, `timeout`).
fn client(sim: &Simulator, connect_timeout: Duration, timeout: Duration) -> Client {
    Client::new(
        &sim.base_url(),
        &SecretString::from("sk_test"),
        connect_timeout,
        timeout,
        4,
        false,
    )
    .unwrap()
}

fn kind(a: &Action) -> &'static str {
    match a {
        Action::Placed { .. } => "placed",
        Action::Done => "done",
        Action::Retry { .. } => "retry",
        Action::Requeue { .. } => "requeue",
        Action::Drop { .. } => "drop",
        Action::Exhausted => "exhausted",
        Action::PauseCampaign { .. } => "pause",
        Action::HaltAccount { .. } => "halt_account",
        Action::HaltWorker { .. } => "halt_worker",
    }
}

#[tokio::test]
async fn every_synchronous_code_from_the_simulator_ends_in_the_specified_decision() {
    let codes: Vec<&str> = REFERENCE
        .iter()
        .filter(|r| r.phase != Phase::Async)
        .map(|r| r.name)
        .collect();
    let mut scenario = Scenario::default();
    for (i, code) in codes.iter().enumerate() {
        scenario
            .rules
            .push(Rule::for_number(&format!("+1212234{:04}", 8000 + i), &[code]).unwrap());
    }
    let sim = Simulator::start(scenario).await.unwrap();
    let client = client(&sim, Duration::from_secs(2), Duration::from_secs(5));
    let settings = RetrySettings::default();
    let pauses = PauseCounts::default();
    let now = Utc::now();
    for (i, code) in codes.iter().enumerate() {
        let body = format!(
            r#"{{"from_number":"+14155550100","to_number":"+1212234{:04}"}}"#,
            8000 + i
        );
        let result = client.dial(&format!("key-{i}"), body.as_bytes()).await;
        let ctx = DialContext {
            next_allowed: Some(now + chrono::Duration::hours(2)),
            ..ctx(&settings, &pauses)
        };
        let d = decision::decide_dial(&result, &ctx, now, &mut rand::rng());
        assert_eq!(
            kind(&d.action),
            expected(code),
            "{code}: {result:?} -> {d:?}"
        );
        // Nothing but the contact's own facts (and the labelled idempotency
        // conflict) may drop a contact.
        if let Action::Drop { reason, .. } = &d.action {
            assert!(
                matches!(
                    *code,
                    "destination_invalid"
                        | "destination_blocked"
                        | "dnc_suppressed"
                        | "recipient_opted_out"
                        | "no_consent"
                ) || reason.is_labelled(),
                "{code} dropped for {reason:?}"
            );
        }
    }
}

fn ctx<'a>(settings: &'a RetrySettings, pauses: &'a PauseCounts) -> DialContext<'a> {
    let now = Utc::now();
    DialContext {
        settings,
        prior_attempts: 0,
        max_attempts: 3,
        possibly_placed: false,
        attempt_started_at: now,
        provider_retries: 0,
        provider_requeues: 0,
        vendor_refusals: 0,
        next_allowed: None,
        consecutive_429s: 0,
        breaker_tripped: false,
        pauses,
    }
}

/// Transport faults from the real simulator: a proxy's HTML 502, a stalled response
/// (timeout) and a dropped connection are ambiguous: retried with the same key.
#[tokio::test]
async fn html_502_timeout_and_dropped_connection_are_retried_with_the_same_key() {
    let mut scenario = Scenario {
        stall_for: Duration::from_secs(3),
        ..Scenario::default()
    };
    for (i, action) in ["html502", "stall", "drop"].iter().enumerate() {
        scenario
            .rules
            .push(Rule::for_number(&format!("+1212234{:04}", 8900 + i), &[action]).unwrap());
    }
    let sim = Simulator::start(scenario).await.unwrap();
    let client = client(&sim, Duration::from_secs(1), Duration::from_secs(1));
    let settings = RetrySettings::default();
    let pauses = PauseCounts::default();
    for i in 0..3 {
        let body = format!(
            r#"{{"from_number":"+14155550100","to_number":"+1212234{:04}"}}"#,
            8900 + i
        );
        let result = client.dial(&format!("fault-{i}"), body.as_bytes()).await;
        assert!(result.is_ambiguous(), "{result:?}");
        let d = decision::decide_dial(
            &result,
            &ctx(&settings, &pauses),
            Utc::now(),
            &mut rand::rng(),
        );
        assert_eq!(kind(&d.action), "retry", "{result:?} -> {d:?}");
        assert!(d.keep_key && d.possibly_placed, "{d:?}");
    }
}

/// A redirect from the API (a proxy, a moved or mistyped `revdesk.base_url`) is
/// never followed: followed, a 307/308 would send the dial again to wherever
/// `Location` points, and a 301-303 would turn it into a GET whose answer would be
/// read as the dial's. Each script answers the redirect, then would place the call:
/// only the one request arrives, nothing is placed, and the 3xx is decided as a
/// response that is not the envelope: the worker's dialing halts, the attempt is
/// possibly placed (it counts) and its key is kept.
#[tokio::test]
async fn a_redirect_is_not_followed_and_halts_the_workers_dialing_keeping_the_key() {
    let statuses = [301u16, 302, 303, 307, 308];
    let number = |i: usize| format!("+1212234{:04}", 8950 + i);
    let mut scenario = Scenario::default();
    for (i, status) in statuses.iter().enumerate() {
        scenario
            .rules
            .push(Rule::for_number(&number(i), &[&format!("redirect{status}"), "accept"]).unwrap());
    }
    let sim = Simulator::start(scenario).await.unwrap();
    let client = client(&sim, Duration::from_secs(1), Duration::from_secs(5));
    let settings = RetrySettings::default();
    let pauses = PauseCounts::default();
    for (i, status) in statuses.iter().enumerate() {
        let body = format!(
            r#"{{"from_number":"+14155550100","to_number":"{}"}}"#,
            number(i)
        );
        let result = client
            .dial(&format!("redirect-{status}"), body.as_bytes())
            .await;
        match &result {
            DialResult::NotEnvelope { status: got, .. } => assert_eq!(got, status),
            other => panic!("{status}: expected the redirect itself, got {other:?}"),
        }
        let d = decision::decide_dial(
            &result,
            &ctx(&settings, &pauses),
            Utc::now(),
            &mut rand::rng(),
        );
        assert_eq!(kind(&d.action), "halt_worker", "{status}: {d:?}");
        assert!(
            d.keep_key && d.possibly_placed && d.attempt_counts,
            "{status}: {d:?}"
        );
    }
    let requests = sim.requests();
    assert_eq!(
        requests.len(),
        statuses.len(),
        "one request per dial: {requests:#?}"
    );
    for (r, status) in requests.iter().zip(statuses) {
        assert_eq!(r.status, Some(status), "{r:?}");
        assert_eq!(r.placed_call_id, None, "{r:?}");
    }
    assert!(sim.calls().is_empty(), "no call placed: {:?}", sim.calls());
}

/// Every final outcome, read back from the simulator's call resource, ends in the
/// decision of SPEC section 8's outcome table.
#[tokio::test]
async fn every_final_outcome_from_the_simulator_ends_in_the_specified_decision() {
    let outcomes = [
        ("completed", "done"),
        ("busy", "requeue"),
        ("no_answer", "requeue"),
        ("voicemail_reached", "done"),
        ("number_unreachable", "drop"),
        ("call_declined", "drop"),
        ("carrier_rejected", "drop"),
    ];
    let mut scenario = Scenario::default();
    scenario.outcomes.delay = Duration::ZERO;
    for (i, (o, _)) in outcomes.iter().enumerate() {
        let mut r = Rule::for_number(&format!("+1212234{:04}", 8950 + i), &["accept"]).unwrap();
        r.outcomes = vec![dialer::simulator::scenario::Outcome::parse(o).unwrap()];
        scenario.rules.push(r);
    }
    let sim = Simulator::start(scenario).await.unwrap();
    let client = client(&sim, Duration::from_secs(2), Duration::from_secs(5));
    let settings = RetrySettings::default();
    for (i, (o, want)) in outcomes.iter().enumerate() {
        let body = format!(
            r#"{{"from_number":"+14155550100","to_number":"+1212234{:04}"}}"#,
            8950 + i
        );
        let dialer::revdesk::wire::DialResult::Accepted { call_id } =
            client.dial(&format!("o-{i}"), body.as_bytes()).await
        else {
            panic!("{o}: not accepted");
        };
        let mut call = client.get_call(&call_id).await.unwrap();
        for _ in 0..50 {
            if call.is_final() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            call = client.get_call(&call_id).await.unwrap();
        }
        let octx = dialer::decision::OutcomeContext {
            settings: &settings,
            attempts: 1,
            max_attempts: 3,
            recent_outcomes: 1,
            recent_carrier_rejected: u32::from(*o == "carrier_rejected"),
        };
        let d = decision::decide_outcome(
            decision::Outcome::Call(&call),
            &octx,
            Utc::now(),
            &mut rand::rng(),
        );
        assert_eq!(kind(&d.action), *want, "{o}: {call:?} -> {d:?}");
    }
}
