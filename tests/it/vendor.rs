//! The real client against the real simulator over loopback HTTP.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use dialer::revdesk::client::{CallLookupError, Client};
use dialer::revdesk::codes::{Code, Phase, REFERENCE};
use dialer::revdesk::signature;
use dialer::revdesk::wire::{DialResult, WebhookEvent};
use dialer::simulator::{CallRecord, RequestRecord, Rule, Scenario, Simulator};
use secrecy::SecretString;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

const FROM: &str = "+14155550100";
const SECRET: &str = "whsec_test";
/// Generous: only reached when something is broken.
const WAIT: Duration = Duration::from_secs(20);

fn body(to: &str) -> Vec<u8> {
    format!(r#"{{"from_number":"{FROM}","to_number":"{to}"}}"#).into_bytes()
}

fn client_with(sim: &Simulator, key: &str, timeout: Duration) -> Client {
    Client::new(
        &sim.base_url(),
        &SecretString::from(key),
        Duration::from_secs(2),
        timeout,
        8,
        false,
    )
    .expect("valid client config")
}

fn client(sim: &Simulator) -> Client {
    client_with(sim, "sk_test", Duration::from_secs(10))
}

fn rule(number: &str, script: &[&str]) -> Rule {
    Rule::for_number(number, script).expect("valid script")
}

fn api(result: &DialResult) -> (u16, &str, Option<&str>, Option<Duration>) {
    match result {
        DialResult::Api {
            status,
            error,
            retry_after,
        } => (
            *status,
            error.code.as_str(),
            error.category.as_deref(),
            *retry_after,
        ),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn accepted(result: DialResult) -> String {
    match result {
        DialResult::Accepted { call_id } => call_id,
        other => panic!("expected a 202, got {other:?}"),
    }
}

/// A webhook receiver: answers with `statuses` in turn (the last repeating) and
/// hands every request (signature header, body) to the test.
struct Receiver {
    url: String,
    rx: mpsc::UnboundedReceiver<(Option<String>, Bytes)>,
    _cancel: tokio_util::sync::DropGuard,
}

#[derive(Clone)]
struct ReceiverState {
    tx: mpsc::UnboundedSender<(Option<String>, Bytes)>,
    statuses: Arc<Vec<u16>>,
    hits: Arc<AtomicUsize>,
}

async fn receive(State(st): State<ReceiverState>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let sig = headers
        .get(signature::HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let n = st.hits.fetch_add(1, Ordering::SeqCst);
    let _ = st.tx.send((sig, body));
    let status = st.statuses[n.min(st.statuses.len() - 1)];
    StatusCode::from_u16(status).unwrap_or(StatusCode::OK)
}

async fn receiver(statuses: &[u16]) -> Receiver {
    let (tx, rx) = mpsc::unbounded_channel();
    let state = ReceiverState {
        tx,
        statuses: Arc::new(statuses.to_vec()),
        hits: Arc::default(),
    };
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let cancel = tokio_util::sync::CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
    });
    Receiver {
        url: format!("http://{addr}/hook"),
        rx,
        _cancel: cancel.drop_guard(),
    }
}

impl Receiver {
    /// The next delivery, its signature checked; panics after [`WAIT`].
    async fn next_event(&mut self) -> (WebhookEvent, Bytes) {
        let (sig, body) = tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("a webhook within the wait")
            .expect("receiver open");
        let now = chrono::Utc::now().timestamp();
        signature::verify(
            SECRET.as_bytes(),
            sig.as_deref(),
            &body,
            now,
            Duration::from_secs(300),
        )
        .expect("the webhook is signed with the scenario's secret");
        let event: WebhookEvent = serde_json::from_slice(&body).expect("a valid event");
        (event, body)
    }
}

fn with_webhooks(mut scenario: Scenario, rx: &Receiver) -> Scenario {
    scenario.webhook_url = Some(rx.url.clone());
    scenario.webhook_secret = SECRET.to_owned();
    scenario.webhook.backoff = Duration::from_millis(20);
    scenario
}

async fn http_json<T: serde::de::DeserializeOwned>(sim: &Simulator, path: &str) -> T {
    reqwest::get(format!("{}{path}", sim.base_url()))
        .await
        .expect("simulator reachable")
        .json()
        .await
        .expect("JSON")
}

#[tokio::test]
async fn every_synchronous_code_forced_per_number_comes_back_as_that_api_error() {
    let rows: Vec<_> = REFERENCE
        .iter()
        .filter(|r| r.phase != Phase::Async)
        .collect();
    let mut scenario = Scenario {
        retry_after_secs: 2,
        ..Scenario::default()
    };
    let mut expected = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let number = format!("+1415555{:04}", 3000 + i);
        // A code's first row is written by name; the second rows of rate_limited and
        // internal_error (the generic HTTP errors, no category) in explicit form.
        let entry = if std::ptr::eq(row.code.info(), *row) {
            row.name.to_owned()
        } else {
            format!(
                "{}:{}:{}",
                row.name,
                row.category.map_or("", |c| c.as_str()),
                row.http_status.unwrap_or(0)
            )
        };
        scenario.rules.push(rule(&number, &[entry.as_str()]));
        expected.push((number, *row));
    }
    let sim = Simulator::start(scenario).await.expect("start");
    let client = client(&sim);
    for (i, (number, row)) in expected.iter().enumerate() {
        let result = client.dial(&format!("key-{i}"), &body(number)).await;
        let (status, code, category, retry_after) = api(&result);
        assert_eq!(Some(status), row.http_status, "{}", row.name);
        assert_eq!(code, row.name);
        assert_eq!(category, row.category.map(|c| c.as_str()), "{}", row.name);
        let sends_retry_after = matches!(row.code, Code::RateLimited | Code::NoNumberAvailable);
        assert_eq!(
            retry_after,
            sends_retry_after.then_some(Duration::from_secs(2)),
            "{}",
            row.name
        );
    }
    let log: Vec<RequestRecord> = http_json(&sim, "/_sim/requests").await;
    assert_eq!(log.len(), expected.len());
    for (rec, (number, row)) in log.iter().zip(&expected) {
        assert_eq!(rec.to.as_deref(), Some(number.as_str()));
        assert_eq!(
            (rec.status, rec.code.as_deref()),
            (row.http_status, Some(row.name))
        );
        assert_eq!(rec.placed_call_id, None, "an error places no call");
    }
    assert!(sim.calls().is_empty());
}

#[tokio::test]
async fn each_async_outcome_arrives_as_a_signed_webhook_and_on_the_call_resource() {
    let outcomes = [
        ("completed", None),
        ("busy", Some("unreachable")),
        ("no_answer", Some("unreachable")),
        ("voicemail_reached", Some("voicemail")),
        ("number_unreachable", Some("unreachable")),
        ("call_declined", Some("unreachable")),
        ("carrier_rejected", Some("unreachable")),
    ];
    let mut rx = receiver(&[200]).await;
    let mut scenario = with_webhooks(Scenario::default(), &rx);
    scenario.outcomes.delay = Duration::from_millis(10);
    for (i, (outcome, _)) in outcomes.iter().enumerate() {
        let mut r = rule(&format!("+1415555{:04}", 4000 + i), &[]);
        r.outcomes = vec![dialer::simulator::Outcome::parse(outcome).expect("known")];
        scenario.rules.push(r);
    }
    let sim = Simulator::start(scenario).await.expect("start");
    let client = client(&sim);
    let mut by_call = BTreeMap::new();
    for (i, (outcome, category)) in outcomes.iter().enumerate() {
        let id = accepted(
            client
                .dial(&format!("k{i}"), &body(&format!("+1415555{:04}", 4000 + i)))
                .await,
        );
        by_call.insert(id, (*outcome, *category));
    }
    for _ in 0..outcomes.len() {
        let (event, _) = rx.next_event().await;
        assert_eq!(event.kind, "phone_call.ended");
        let (outcome, category) = by_call
            .get(&event.data.id)
            .copied()
            .expect("an event for a placed call");
        assert_eq!(event.data.call_outcome.as_deref(), Some(outcome));
        assert_eq!(event.data.failure_category.as_deref(), category);
        let failure_code = category.map(|_| outcome);
        assert_eq!(event.data.failure_code.as_deref(), failure_code);
        assert!(event.data.is_final());
        let resource = client
            .get_call(&event.data.id)
            .await
            .expect("the call is known");
        assert_eq!(resource, event.data, "GET shows what the webhook said");
    }
}

#[tokio::test]
async fn with_no_scenario_any_key_is_accepted_and_every_call_completes() {
    let mut rx = receiver(&[204]).await;
    let sim = Simulator::start(with_webhooks(Scenario::default(), &rx))
        .await
        .expect("start");
    let id = accepted(
        client_with(&sim, "anything-at-all", Duration::from_secs(5))
            .dial("k", &body("+14155551234"))
            .await,
    );
    let (event, _) = rx.next_event().await;
    assert_eq!(event.data.id, id);
    assert_eq!(event.data.status.as_deref(), Some("completed"));
    assert_eq!(event.data.failure_code, None);
    let calls: Vec<CallRecord> = http_json(&sim, "/_sim/calls").await;
    assert_eq!(calls.len(), 1);
    assert_eq!(
        (calls[0].id.as_str(), calls[0].status.as_str()),
        (id.as_str(), "completed")
    );
}

#[tokio::test]
async fn a_missing_or_unknown_key_gets_401_and_a_forbidden_key_403() {
    let scenario = Scenario {
        api_keys: vec!["sk_good".into(), "sk_revoked".into()],
        forbidden_keys: vec!["sk_revoked".into()],
        ..Scenario::default()
    };
    let sim = Simulator::start(scenario).await.expect("start");
    let unknown = client_with(&sim, "sk_bad", Duration::from_secs(5))
        .dial("k1", &body("+14155551234"))
        .await;
    assert_eq!(api(&unknown), (401, "unauthorized", None, None));
    let forbidden = client_with(&sim, "sk_revoked", Duration::from_secs(5))
        .dial("k2", &body("+14155551234"))
        .await;
    assert_eq!(api(&forbidden), (403, "forbidden", None, None));
    // No Authorization header at all (our client cannot be built without a key).
    let raw = reqwest::Client::new()
        .post(format!("{}/v1/calls/dial", sim.base_url()))
        .body(body("+14155551234"))
        .send()
        .await
        .expect("answer");
    assert_eq!(raw.status(), 401);
    let envelope: dialer::revdesk::wire::Envelope = raw.json().await.expect("the envelope");
    assert_eq!(envelope.error.code, "unauthorized");
    accepted(
        client_with(&sim, "sk_good", Duration::from_secs(5))
            .dial("k3", &body("+14155551234"))
            .await,
    );
    assert_eq!(sim.calls().len(), 1, "only the good key placed a call");
}

#[tokio::test]
async fn bodies_that_are_not_the_envelope_are_classified_by_status_with_an_excerpt() {
    let scenario = Scenario {
        rules: vec![
            rule("+14155552001", &["html502"]),
            rule("+14155552002", &["empty500"]),
            rule("+14155552003", &["truncated_json"]),
        ],
        ..Scenario::default()
    };
    let sim = Simulator::start(scenario).await.expect("start");
    let client = client(&sim);
    let cases = [
        ("+14155552001", 502, "502 Bad Gateway"),
        ("+14155552002", 500, ""),
        ("+14155552003", 500, "internal_error"),
    ];
    for (number, want_status, want_text) in cases {
        match client.dial("k", &body(number)).await {
            DialResult::NotEnvelope {
                status,
                body_excerpt,
            } => {
                assert_eq!(status, want_status, "{number}");
                assert!(body_excerpt.contains(want_text), "{number}: {body_excerpt}");
            }
            other => panic!("{number}: expected NotEnvelope, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_stalled_response_is_a_timeout_and_places_nothing() {
    let scenario = Scenario {
        rules: vec![rule("+14155552101", &["stall"])],
        ..Scenario::default()
    };
    let sim = Simulator::start(scenario).await.expect("start");
    let result = client_with(&sim, "k", Duration::from_millis(300))
        .dial("k", &body("+14155552101"))
        .await;
    assert_eq!(result, DialResult::Timeout);
    assert!(result.is_ambiguous());
    let log = sim.requests();
    assert_eq!(
        (
            log.len(),
            log[0].action.as_ref(),
            log[0].placed_call_id.as_deref()
        ),
        (1, "stalled", None)
    );
    assert!(sim.calls().is_empty());
}

#[tokio::test]
async fn a_dropped_connection_is_a_connection_error() {
    let scenario = Scenario {
        rules: vec![rule("+14155552201", &["drop", "accept"])],
        ..Scenario::default()
    };
    let sim = Simulator::start(scenario).await.expect("start");
    let client = client(&sim);
    let result = client.dial("k", &body("+14155552201")).await;
    assert!(
        matches!(result, DialResult::Connection { .. }),
        "{result:?}"
    );
    assert!(result.is_ambiguous());
    // The pool recovers: the next request on a fresh connection is answered.
    accepted(client.dial("k", &body("+14155552201")).await);
    let actions: Vec<_> = sim
        .requests()
        .iter()
        .map(|r| r.action.to_string())
        .collect();
    assert_eq!(actions, ["dropped", "answered"]);
}

/// `revdesk.http2`: dials share one multiplexed connection. A `drop` answer then
/// loses the whole connection, so every dial on it in flight is ambiguous at once; each
/// re-sent under its key, every number still gets exactly one call.
#[tokio::test]
async fn over_http2_a_lost_connection_is_ambiguous_for_each_dial_and_keys_place_once() {
    const DIALS: usize = 40;
    let dropped = "+14155552250";
    let scenario = Scenario {
        rules: vec![rule(dropped, &["drop", "accept"])],
        ..Scenario::default()
    };
    let sim = Simulator::start(scenario).await.expect("start");
    let client = Client::new(
        &sim.base_url(),
        &SecretString::from("sk_test"),
        Duration::from_secs(2),
        Duration::from_secs(10),
        8,
        true,
    )
    .expect("valid client config");
    let numbers: Vec<String> = (0..DIALS)
        .map(|i| {
            if i == DIALS / 2 {
                dropped.to_owned()
            } else {
                format!("+1415555{:04}", 2300 + i)
            }
        })
        .collect();
    let client = &client;
    let first = futures::future::join_all(
        numbers
            .iter()
            .map(|to| async move { client.dial(&format!("key-{to}"), &body(to)).await }),
    )
    .await;
    let mut resend = Vec::new();
    for (to, result) in numbers.iter().zip(first) {
        match result {
            DialResult::Accepted { .. } => {}
            // Ambiguous: the request may have been placed before the connection died.
            DialResult::Connection { .. } => resend.push(to),
            other => panic!("{to}: expected a 202 or a lost connection, got {other:?}"),
        }
    }
    assert!(resend.contains(&&dropped.to_owned()), "{resend:?}");
    for to in resend {
        accepted(client.dial(&format!("key-{to}"), &body(to)).await);
    }

    let log = sim.requests();
    assert!(
        log.iter().all(|r| r.http_version == "HTTP/2.0"),
        "every request over HTTP/2"
    );
    let mut placed: BTreeMap<String, usize> = BTreeMap::new();
    for call in sim.calls() {
        assert_eq!(call.idempotency_key, Some(format!("key-{}", call.to)));
        *placed.entry(call.to).or_default() += 1;
    }
    assert_eq!(placed.len(), DIALS, "every number placed");
    assert!(placed.values().all(|&n| n == 1), "{placed:?}");
}

#[tokio::test]
async fn retrying_a_timed_out_dial_with_the_same_key_places_exactly_one_call() {
    let scenario = Scenario {
        rules: vec![rule("+14155552301", &["accept_then_stall"])],
        ..Scenario::default()
    };
    let sim = Simulator::start(scenario).await.expect("start");
    let impatient = client_with(&sim, "k", Duration::from_millis(300));
    let request = body("+14155552301");
    assert_eq!(
        impatient.dial("attempt-1", &request).await,
        DialResult::Timeout
    );
    let retry = client(&sim).dial("attempt-1", &request).await;
    let call_id = accepted(retry);

    let log: Vec<RequestRecord> = http_json(&sim, "/_sim/requests").await;
    assert_eq!(log.len(), 2);
    assert!(
        log.iter()
            .all(|r| r.idempotency_key.as_deref() == Some("attempt-1"))
    );
    let placed: Vec<_> = log
        .iter()
        .filter_map(|r| r.placed_call_id.as_deref())
        .collect();
    assert_eq!(
        placed,
        [call_id.as_str()],
        "exactly one request placed a call"
    );
    assert_eq!(
        log[1].replay_of.as_deref(),
        Some(call_id.as_str()),
        "the retry got the stored 202"
    );
    assert_eq!(log[1].action, "replayed");
    let calls: Vec<CallRecord> = http_json(&sim, "/_sim/calls").await;
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].id, call_id);
}

#[tokio::test]
async fn a_different_body_under_a_key_that_succeeded_is_an_idempotency_conflict() {
    let sim = Simulator::start(Scenario::default()).await.expect("start");
    let client = client(&sim);
    let first = accepted(client.dial("k", &body("+14155552401")).await);
    let conflict = client.dial("k", &body("+14155552402")).await;
    assert_eq!(api(&conflict), (409, "idempotency_conflict", None, None));
    assert_eq!(
        accepted(client.dial("k", &body("+14155552401")).await),
        first,
        "same body: replay"
    );
    assert_eq!(sim.calls().len(), 1);
}

#[tokio::test]
async fn errors_are_not_stored_so_the_same_key_can_succeed_after_a_5xx() {
    let scenario = Scenario {
        rules: vec![rule("+14155552501", &["sip_gateway_failed", "accept"])],
        ..Scenario::default()
    };
    let sim = Simulator::start(scenario).await.expect("start");
    let client = client(&sim);
    assert_eq!(
        api(&client.dial("k", &body("+14155552501")).await).1,
        "sip_gateway_failed"
    );
    accepted(client.dial("k", &body("+14155552501")).await);
    assert_eq!(sim.calls().len(), 1);
}

#[tokio::test]
async fn body_validation_follows_the_reference() {
    let sim = Simulator::start(Scenario::default()).await.expect("start");
    let client = client(&sim);
    let dial = |b: &'static str| client.dial("k", b.as_bytes());

    let missing_from = dial(r#"{"to_number":"+14155551234"}"#).await;
    let DialResult::Api {
        status: 400, error, ..
    } = &missing_from
    else {
        panic!("{missing_from:?}")
    };
    assert_eq!(error.code, "validation_error");
    assert!(error.names_field("from_number"));

    let not_json = dial("{from_number: nope").await;
    let DialResult::Api {
        status: 400, error, ..
    } = &not_json
    else {
        panic!("{not_json:?}")
    };
    assert_eq!(
        (error.code.as_str(), error.category.as_deref()),
        ("validation_error", None)
    );
    assert!(error.fields.is_some());

    let number_not_string = dial(r#"{"from_number":"+14155550100","to_number":4155551234}"#).await;
    let DialResult::Api { error, .. } = &number_not_string else {
        panic!("{number_not_string:?}")
    };
    assert!(error.names_field("to_number"));

    assert_eq!(
        api(&dial(r#"{"from_number":"+14155550100"}"#).await).1,
        "destination_missing"
    );
    assert_eq!(
        api(&dial(r#"{"from_number":"+14155550100","to_number":""}"#).await).1,
        "destination_missing"
    );
    let invalid = dial(r#"{"from_number":"+14155550100","to_number":"415-555-1234"}"#).await;
    assert_eq!(
        api(&invalid),
        (400, "destination_invalid", Some("invalid_request"), None)
    );
    let blocked = dial(r#"{"from_number":"+14155550100","to_number":"911"}"#).await;
    assert_eq!(
        api(&blocked),
        (403, "destination_blocked", Some("compliance_blocked"), None)
    );
    assert!(sim.calls().is_empty());
}

#[tokio::test]
async fn the_request_rate_cap_answers_rate_limited_with_a_retry_after() {
    let sim = Simulator::start(Scenario {
        rate_per_second: Some(1),
        ..Scenario::default()
    })
    .await
    .expect("start");
    let client = client(&sim);
    accepted(client.dial("k1", &body("+14155551234")).await);
    let refused = client.dial("k2", &body("+14155551235")).await;
    let (status, code, category, retry_after) = api(&refused);
    assert_eq!(
        (status, code, category),
        (429, "rate_limited", Some("account_limit"))
    );
    assert!(
        retry_after.is_some_and(|d| d >= Duration::from_secs(1)),
        "{retry_after:?}"
    );
}

#[tokio::test]
async fn a_spent_minutes_budget_answers_voice_usage_exhausted() {
    let scenario = Scenario {
        minutes_budget: Some(2),
        minutes_per_call: 1,
        ..Scenario::default()
    };
    let sim = Simulator::start(scenario).await.expect("start");
    let client = client(&sim);
    accepted(client.dial("k1", &body("+14155551231")).await);
    accepted(client.dial("k2", &body("+14155551232")).await);
    let spent = client.dial("k3", &body("+14155551233")).await;
    assert_eq!(
        api(&spent),
        (402, "voice_usage_exhausted", Some("account_limit"), None)
    );
}

#[tokio::test]
async fn the_concurrency_cap_answers_no_number_available() {
    let mut scenario = Scenario {
        max_concurrent_calls: Some(1),
        retry_after_secs: 3,
        ..Scenario::default()
    };
    scenario.outcomes.delay = Duration::from_secs(600);
    let sim = Simulator::start(scenario).await.expect("start");
    let client = client(&sim);
    accepted(client.dial("k1", &body("+14155551231")).await);
    let busy = client.dial("k2", &body("+14155551232")).await;
    assert_eq!(
        api(&busy),
        (
            429,
            "no_number_available",
            Some("account_limit"),
            Some(Duration::from_secs(3))
        )
    );
}

#[tokio::test]
async fn server_side_dnc_and_opt_outs_refuse_the_dial() {
    let scenario = Scenario {
        dnc: vec!["+14155551111".into(), "+1609*".into()],
        opt_outs: vec!["+14155552222".into()],
        ..Scenario::default()
    };
    let sim = Simulator::start(scenario).await.expect("start");
    let client = client(&sim);
    assert_eq!(
        api(&client.dial("a", &body("+14155551111")).await).1,
        "dnc_suppressed"
    );
    assert_eq!(
        api(&client.dial("b", &body("+16095551234")).await).1,
        "dnc_suppressed"
    );
    assert_eq!(
        api(&client.dial("c", &body("+14155552222")).await).1,
        "recipient_opted_out"
    );
    accepted(client.dial("d", &body("+14155553333")).await);
}

#[tokio::test]
async fn unknown_and_forgotten_calls_are_not_found() {
    let mut forgotten = rule("+14155552601", &[]);
    forgotten.forget = true;
    let sim = Simulator::start(Scenario {
        rules: vec![forgotten],
        ..Scenario::default()
    })
    .await
    .expect("start");
    let client = client(&sim);
    assert_eq!(
        client.get_call("call_nope").await,
        Err(CallLookupError::NotFound)
    );
    let id = accepted(client.dial("k", &body("+14155552601")).await);
    assert_eq!(client.get_call(&id).await, Err(CallLookupError::NotFound));
    let known = accepted(client.dial("k2", &body("+14155552602")).await);
    assert_eq!(client.get_call(&known).await.map(|c| c.id), Ok(known));
}

#[tokio::test]
async fn a_webhook_is_retried_until_the_receiver_accepts_it() {
    let mut rx = receiver(&[500, 503, 200]).await;
    let mut scenario = with_webhooks(Scenario::default(), &rx);
    scenario.outcomes.delay = Duration::ZERO;
    let sim = Simulator::start(scenario).await.expect("start");
    let id = accepted(client(&sim).dial("k", &body("+14155551234")).await);
    let mut bodies = Vec::new();
    for _ in 0..3 {
        let (event, raw) = rx.next_event().await;
        assert_eq!(event.data.id, id);
        bodies.push(raw);
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "every attempt re-sends the same event"
    );
    // The third attempt is logged right after the receiver's answer reaches the simulator.
    let deliveries = tokio::time::timeout(WAIT, async {
        loop {
            let d = sim.webhook_deliveries();
            if d.len() == 3 {
                break d;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("three delivery records");
    let statuses: Vec<_> = deliveries.iter().map(|d| d.status).collect();
    assert_eq!(statuses, [Some(500), Some(503), Some(200)]);
}

#[tokio::test]
async fn duplicate_delivery_resends_the_same_event_id() {
    let mut rx = receiver(&[200]).await;
    let mut scenario = with_webhooks(Scenario::default(), &rx);
    scenario.webhook.duplicate_rate = 1.0;
    scenario.outcomes.delay = Duration::ZERO;
    let sim = Simulator::start(scenario).await.expect("start");
    accepted(client(&sim).dial("k", &body("+14155551234")).await);
    let (first, _) = rx.next_event().await;
    let (second, _) = rx.next_event().await;
    assert_eq!(first.id, second.id);
}

#[tokio::test]
async fn every_documented_202_shape_yields_the_call_id() {
    use dialer::simulator::scenario::AcceptShape;
    for shape in [
        AcceptShape::DataId,
        AcceptShape::DataCallId,
        AcceptShape::CallId,
    ] {
        let sim = Simulator::start(Scenario {
            accept_shape: shape,
            ..Scenario::default()
        })
        .await
        .expect("start");
        let id = accepted(client(&sim).dial("k", &body("+14155551234")).await);
        assert_eq!(sim.calls()[0].id, id, "{shape:?}");
    }
}

#[tokio::test]
async fn the_server_side_calling_window_refuses_outside_hours_and_days() {
    use chrono::{DateTime, Utc};
    let window = |at: &str| {
        let scenario = Scenario::from_toml_str(
            r#"calling_window = { timezone = "America/New_York", start = "08:00", end = "21:00", days = ["mon", "tue", "wed", "thu", "fri", "sat"] }"#,
        )
        .expect("valid scenario");
        let start: DateTime<Utc> = at.parse().expect("RFC 3339");
        (scenario, dialer::clock::Clock::starting_at(start))
    };
    // Wednesday 2026-11-25: 14:00 EST is inside, 21:00 EST (the closing minute) is not;
    // Sunday 2026-11-29 14:00 EST is a day the scenario does not allow.
    for (at, expected) in [
        ("2026-11-25T19:00:00Z", None),
        ("2026-11-26T02:00:00Z", Some("outside_calling_window")),
        ("2026-11-29T19:00:00Z", Some("calling_day_not_allowed")),
    ] {
        let (scenario, clock) = window(at);
        let sim = Simulator::start_with_clock(scenario, clock)
            .await
            .expect("start");
        let result = client(&sim).dial("k", &body("+14155551234")).await;
        match expected {
            None => {
                accepted(result);
            }
            Some(code) => assert_eq!(
                api(&result),
                (403, code, Some("compliance_blocked"), None),
                "{at}"
            ),
        }
    }
}

#[tokio::test]
async fn a_prefix_script_runs_per_number_and_its_last_answer_repeats() {
    let scenario = Scenario::from_toml_str(
        r#"
        [[rules]]
        prefix = "+1415555"
        script = ["no_active_number", "accept", "caller_id_not_verified"]
        [[rules]]
        number = "+14155559999"
        script = ["accept"]
        "#,
    )
    .expect("valid scenario");
    let sim = Simulator::start(scenario).await.expect("start");
    let client = client(&sim);
    let mut codes = Vec::new();
    for (i, to) in [
        "+14155551000",
        "+14155551000",
        "+14155552000",
        "+14155551000",
        "+14155551000",
        "+14155559999",
    ]
    .iter()
    .enumerate()
    {
        codes.push(match client.dial(&format!("k{i}"), &body(to)).await {
            DialResult::Accepted { .. } => "202".to_owned(),
            other => api(&other).1.to_owned(),
        });
    }
    assert_eq!(
        codes,
        [
            "no_active_number",
            "202",
            "no_active_number",
            "caller_id_not_verified",
            "caller_id_not_verified",
            "202"
        ]
    );
}

#[tokio::test]
async fn injected_faults_follow_the_configured_rate() {
    let sim =
        Simulator::start(Scenario::from_toml_str("[faults]\nerror_rate = 1.0").expect("valid"))
            .await
            .expect("start");
    let client = client(&sim);
    for i in 0..20 {
        let result = client.dial(&format!("k{i}"), &body("+14155551234")).await;
        let (status, _, category, _) = api(&result);
        assert!(
            status >= 500 && category == Some("provider_error"),
            "{result:?}"
        );
    }
    assert!(sim.calls().is_empty());
}
