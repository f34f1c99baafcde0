//! Prometheus metrics (SPEC section 11): one recorder, names and help strings in one
//! place, histograms with real buckets. Labels never carry phone numbers.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

pub const DIAL_REQUESTS: &str = "dialer_dial_requests_total";
pub const CALL_OUTCOMES: &str = "dialer_call_outcomes_total";
pub const PREFLIGHT_BLOCKS: &str = "dialer_preflight_blocks_total";
pub const PREFLIGHT_MISSES: &str = "dialer_preflight_misses_total";
pub const JOBS: &str = "dialer_jobs";
pub const DIAL_DURATION: &str = "dialer_dial_request_duration_seconds";
pub const RATE_WAIT: &str = "dialer_rate_limit_wait_seconds";
pub const DIALING_HALTED: &str = "dialer_dialing_halted";
pub const WEBHOOK_EVENTS: &str = "dialer_webhook_events_total";
pub const LEASES_RECOVERED: &str = "dialer_leases_recovered_total";
pub const UNKNOWN_CODES: &str = "dialer_unknown_codes_total";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once and returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(DIAL_DURATION.into()),
                    &[
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    ],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(RATE_WAIT.into()),
                        &[
                            0.0, 0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0,
                        ],
                    )
                })
                .expect("bucket lists are non-empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may exist in tests that build several apps in one
            // process; the first one wins and every app renders from it.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

/// Folds the histogram samples recorded since the last call into their buckets.
/// The recorder keeps every histogram sample in memory until this runs or a
/// scrape renders it; built with `build_recorder` (not `install`), it has no
/// upkeep task of its own (metrics-rs/metrics issue 467), so a worker nobody
/// scrapes would grow by every dial's samples for its whole life. The worker's
/// maintenance loop calls it every tick.
pub fn upkeep() {
    if let Some(h) = HANDLE.get() {
        h.run_upkeep();
    }
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        DIAL_REQUESTS,
        "Dial requests answered, by campaign, answer code and category."
    );
    describe_counter!(
        CALL_OUTCOMES,
        "Final call outcomes, by campaign, code and category."
    );
    describe_counter!(
        PREFLIGHT_BLOCKS,
        "Jobs the local pre-flight blocked, by campaign and rule."
    );
    describe_counter!(
        PREFLIGHT_MISSES,
        "Vendor compliance refusals of calls the local pre-flight allowed."
    );
    describe_gauge!(JOBS, "Jobs per campaign and state.");
    describe_histogram!(DIAL_DURATION, Unit::Seconds, "Duration of dial requests.");
    describe_histogram!(
        RATE_WAIT,
        Unit::Seconds,
        "Time a dial waited on the rate limiter."
    );
    describe_gauge!(
        DIALING_HALTED,
        "1 while dialing is halted for this reason (account or worker)."
    );
    describe_counter!(
        WEBHOOK_EVENTS,
        "Webhook deliveries, by event type and result."
    );
    describe_counter!(
        LEASES_RECOVERED,
        "Expired job leases taken back from dead workers."
    );
    describe_counter!(
        UNKNOWN_CODES,
        "Vendor answers with a code or category not in the reference."
    );
}

/// Renders the exposition text.
pub fn render() -> String {
    install().render()
}
