//! One test per row of SPEC.md section 8 (both tables), then property tests.

use super::*;
use crate::revdesk::codes::REFERENCE;
use chrono::TimeZone;
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 25, 15, 0, 0).unwrap()
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(7)
}

/// Settings without jitter, so that expected times are exact.
fn exact() -> RetrySettings {
    let d = RetrySettings::default();
    RetrySettings {
        requeue_jitter: Duration::ZERO,
        provider_retry: RetryPolicy {
            jitter: 0.0,
            ..d.provider_retry
        },
        provider_requeue: RetryPolicy {
            jitter: 0.0,
            ..d.provider_requeue
        },
        rate_limit: RetryPolicy {
            jitter: 0.0,
            ..d.rate_limit
        },
        ..d
    }
}

fn ctx<'a>(settings: &'a RetrySettings, pauses: &'a PauseCounts) -> DialContext<'a> {
    DialContext {
        settings,
        prior_attempts: 0,
        max_attempts: 3,
        possibly_placed: false,
        attempt_started_at: now(),
        provider_retries: 0,
        provider_requeues: 0,
        vendor_refusals: 0,
        next_allowed: None,
        consecutive_429s: 0,
        breaker_tripped: false,
        pauses,
    }
}

fn api(status: u16, code: &str, category: Option<&str>) -> DialResult {
    DialResult::Api {
        status,
        error: ApiError {
            code: code.to_owned(),
            category: category.map(str::to_owned),
            message: "any text: never branched on".to_owned(),
            doc_url: None,
            fields: None,
        },
        retry_after: None,
    }
}

/// The documented answer for a known code: its row's status and category.
fn known(code: Code) -> DialResult {
    let info = code.info();
    api(
        info.http_status.unwrap_or(400),
        info.name,
        info.category.map(Category::as_str),
    )
}

fn decide(result: &DialResult) -> Decision {
    let s = exact();
    let p = PauseCounts::default();
    decide_dial(result, &ctx(&s, &p), now(), &mut rng())
}

fn at(d: Duration) -> DateTime<Utc> {
    after(now(), d)
}

// ---- sync table ----

#[test]
fn a_202_places_the_attempt_and_the_job_waits_for_its_outcome() {
    let d = decide(&DialResult::Accepted {
        call_id: "call_1".into(),
    });
    assert_eq!(
        d.action,
        Action::Placed {
            call_id: "call_1".into()
        }
    );
    assert!(d.attempt_counts);
    assert!(!d.possibly_placed);
}

#[test]
fn destination_invalid_drops_invalid_number_from_the_vendor() {
    let d = decide(&known(Code::DestinationInvalid));
    assert_eq!(
        d.action,
        Action::Drop {
            reason: DropReason::InvalidNumber,
            source: Source::Vendor
        }
    );
    assert!(!d.attempt_counts, "a definitive 4xx placed no call");
}

#[test]
fn destination_missing_pauses_the_campaign_and_requeues_the_job_unchanged() {
    let d = decide(&known(Code::DestinationMissing));
    assert_eq!(
        d.action,
        Action::PauseCampaign {
            reason: PauseReason::RequestRejected,
            until: None,
            job_due: now()
        }
    );
    assert!(!d.attempt_counts);
}

#[test]
fn no_active_number_pauses_the_campaign_for_five_minutes_and_requeues_the_job_to_then() {
    let d = decide(&known(Code::NoActiveNumber));
    assert_eq!(
        d.action,
        Action::PauseCampaign {
            reason: PauseReason::NoActiveNumber,
            until: Some(at(5 * MIN)),
            job_due: at(5 * MIN),
        }
    );
}

#[test]
fn a_repeated_no_active_number_pause_doubles_its_length_up_to_one_hour() {
    let s = exact();
    let mut p = PauseCounts::default();
    p.0.insert("no_active_number".into(), 2);
    let d = decide_dial(
        &known(Code::NoActiveNumber),
        &ctx(&s, &p),
        now(),
        &mut rng(),
    );
    assert!(matches!(d.action, Action::PauseCampaign { until: Some(u), .. } if u == at(20 * MIN)));
    p.0.insert("no_active_number".into(), 9);
    let d = decide_dial(
        &known(Code::NoActiveNumber),
        &ctx(&s, &p),
        now(),
        &mut rng(),
    );
    assert!(matches!(d.action, Action::PauseCampaign { until: Some(u), .. } if u == at(HOUR)));
}

#[test]
fn caller_id_not_verified_pauses_the_campaign_until_an_operator_resumes_it() {
    let d = decide(&known(Code::CallerIdNotVerified));
    assert_eq!(
        d.action,
        Action::PauseCampaign {
            reason: PauseReason::CallerIdNotVerified,
            until: None,
            job_due: now()
        }
    );
}

#[test]
fn vendor_contact_refusals_drop_with_the_shared_reason_and_count_a_preflight_miss() {
    let rows = [
        (
            Code::DestinationBlocked,
            DropReason::DestinationBlocked,
            false,
            false,
        ),
        (Code::DncSuppressed, DropReason::Dnc, true, false),
        (Code::RecipientOptedOut, DropReason::OptedOut, false, true),
        (Code::NoConsent, DropReason::NoConsent, false, false),
    ];
    for (code, reason, dnc, opt_out) in rows {
        let d = decide(&known(code));
        assert_eq!(
            d.action,
            Action::Drop {
                reason,
                source: Source::Vendor
            },
            "{code}"
        );
        assert!(d.preflight_miss, "{code}");
        assert_eq!(d.add_to_dnc, dnc, "{code}");
        assert_eq!(d.add_to_opt_outs, opt_out, "{code}");
        assert!(!d.attempt_counts, "{code}");
    }
}

#[test]
fn a_window_or_day_refusal_requeues_at_the_next_allowed_time_but_not_sooner_than_an_hour() {
    let s = exact();
    let p = PauseCounts::default();
    for (code, reason) in [
        (Code::OutsideCallingWindow, RequeueReason::CallingWindow),
        (Code::CallingDayNotAllowed, RequeueReason::CallingDay),
    ] {
        // The compliance engine says "allowed in 10 minutes": still 1h at least.
        let c = DialContext {
            next_allowed: Some(at(10 * MIN)),
            ..ctx(&s, &p)
        };
        let d = decide_dial(&known(code), &c, now(), &mut rng());
        assert_eq!(
            d.action,
            Action::Requeue {
                at: at(HOUR),
                reason
            }
        );
        assert!(d.preflight_miss);
        assert_eq!(d.counter, Some(Counter::VendorRefusal));
        // Next morning is later than the minimum: the next allowed time wins.
        let morning = at(17 * HOUR);
        let c = DialContext {
            next_allowed: Some(morning),
            ..ctx(&s, &p)
        };
        let d = decide_dial(&known(code), &c, now(), &mut rng());
        assert_eq!(
            d.action,
            Action::Requeue {
                at: morning,
                reason
            }
        );
    }
}

#[test]
fn a_frequency_cap_refusal_requeues_no_sooner_than_a_day_and_does_not_lower_the_rate() {
    let d = decide(&known(Code::FrequencyCapExceeded));
    assert_eq!(
        d.action,
        Action::Requeue {
            at: at(24 * HOUR),
            reason: RequeueReason::FrequencyCap
        }
    );
    assert_eq!(
        d.lower_rate, None,
        "frequency_cap_exceeded is a 429 but not a rate limit"
    );
    assert!(d.preflight_miss);
}

#[test]
fn the_third_vendor_compliance_refusal_of_a_job_drops_it_vendor_refused() {
    let s = exact();
    let p = PauseCounts::default();
    let c = DialContext {
        vendor_refusals: 1,
        ..ctx(&s, &p)
    };
    let d = decide_dial(&known(Code::OutsideCallingWindow), &c, now(), &mut rng());
    assert!(
        matches!(d.action, Action::Requeue { .. }),
        "second refusal still requeues"
    );
    let c = DialContext {
        vendor_refusals: 2,
        ..ctx(&s, &p)
    };
    let d = decide_dial(&known(Code::FrequencyCapExceeded), &c, now(), &mut rng());
    assert_eq!(
        d.action,
        Action::Drop {
            reason: DropReason::VendorRefused,
            source: Source::Vendor
        }
    );
    assert!(DropReason::VendorRefused.is_labelled());
}

#[test]
fn exhausted_minutes_or_subscription_halt_the_account_and_probe_after_fifteen_minutes() {
    for (code, reason) in [
        (
            Code::VoiceUsageExhausted,
            AccountHaltReason::VoiceUsageExhausted,
        ),
        (
            Code::NoActiveSubscription,
            AccountHaltReason::NoActiveSubscription,
        ),
    ] {
        let d = decide(&known(code));
        assert_eq!(
            d.action,
            Action::HaltAccount {
                reason,
                probe_at: at(15 * MIN),
                job_due: at(15 * MIN)
            }
        );
        assert!(!d.attempt_counts);
    }
}

#[test]
fn rate_limited_requeues_after_the_clamped_retry_after_and_lowers_the_rate() {
    for code in ["rate_limited", "no_number_available"] {
        let mut r = api(429, code, Some("account_limit"));
        if let DialResult::Api { retry_after, .. } = &mut r {
            *retry_after = Some(Duration::from_secs(3 * 3600));
        }
        let d = decide(&r);
        let reason = if code == "rate_limited" {
            RequeueReason::RateLimited
        } else {
            RequeueReason::NoNumberAvailable
        };
        assert_eq!(
            d.action,
            Action::Requeue {
                at: at(10 * MIN),
                reason
            },
            "{code}"
        );
        assert_eq!(d.lower_rate, Some(10 * MIN));
        assert_eq!(d.counter, Some(Counter::Consecutive429));
        assert!(!d.attempt_counts);
    }
}

#[test]
fn rate_limited_without_retry_after_uses_the_account_backoff_doubling_per_consecutive_429() {
    let s = exact();
    let p = PauseCounts::default();
    let c = DialContext {
        consecutive_429s: 3,
        ..ctx(&s, &p)
    };
    let d = decide_dial(&known(Code::RateLimited), &c, now(), &mut rng());
    assert_eq!(
        d.action,
        Action::Requeue {
            at: at(Duration::from_secs(8)),
            reason: RequeueReason::RateLimited
        }
    );
    assert_eq!(d.lower_rate, Some(Duration::from_secs(8)));
}

#[test]
fn the_generic_rate_limited_and_internal_error_without_category_decide_the_same() {
    assert_eq!(
        decide(&api(429, "rate_limited", None)),
        decide(&known(Code::RateLimited))
    );
    assert_eq!(
        decide(&api(500, "internal_error", None)),
        decide(&known(Code::InternalError))
    );
}

#[test]
fn a_provider_error_is_retried_with_the_same_key_and_backoff() {
    for code in [
        Code::RoomCreationFailed,
        Code::AgentDispatchFailed,
        Code::SipGatewayFailed,
        Code::ProviderApiError,
        Code::InternalError,
    ] {
        let d = decide(&known(code));
        assert_eq!(
            d.action,
            Action::Retry {
                after: Duration::from_millis(500)
            },
            "{code}"
        );
        assert!(
            d.keep_key && d.possibly_placed && d.attempt_counts,
            "{code}"
        );
        assert_eq!(d.counter, Some(Counter::ProviderRetry));
    }
    let s = exact();
    let p = PauseCounts::default();
    let c = DialContext {
        provider_retries: 3,
        possibly_placed: true,
        ..ctx(&s, &p)
    };
    let d = decide_dial(&known(Code::SipGatewayFailed), &c, now(), &mut rng());
    assert_eq!(
        d.action,
        Action::Retry {
            after: Duration::from_secs(4)
        }
    );
}

#[test]
fn a_non_retryable_code_with_a_5xx_is_requeued_with_its_key_not_retried() {
    let d = decide(&api(500, "number_unreachable", None));
    assert_eq!(
        d.action,
        Action::Requeue {
            at: at(5 * MIN),
            reason: RequeueReason::ProviderError
        }
    );
    assert!(d.keep_key && d.possibly_placed && d.unknown_code);
}

#[test]
fn timeouts_and_connection_errors_are_retried_with_the_same_key() {
    for r in [
        DialResult::Timeout,
        DialResult::Connection {
            detail: "reset".into(),
        },
    ] {
        let d = decide(&r);
        assert!(matches!(d.action, Action::Retry { .. }));
        assert!(d.keep_key && d.possibly_placed && d.attempt_counts);
    }
}

#[test]
fn after_provider_max_retries_the_job_is_requeued_with_the_same_key_five_minutes_doubling_to_an_hour()
 {
    let s = exact();
    let p = PauseCounts::default();
    let base = DialContext {
        provider_retries: 5,
        possibly_placed: true,
        ..ctx(&s, &p)
    };
    let d = decide_dial(&DialResult::Timeout, &base, now(), &mut rng());
    assert_eq!(
        d.action,
        Action::Requeue {
            at: at(5 * MIN),
            reason: RequeueReason::ProviderError
        }
    );
    assert!(d.keep_key);
    assert_eq!(d.counter, Some(Counter::ProviderRequeue));
    let c = DialContext {
        provider_requeues: 4,
        ..base.clone()
    };
    let d = decide_dial(&DialResult::Timeout, &c, now(), &mut rng());
    assert_eq!(
        d.action,
        Action::Requeue {
            at: at(HOUR),
            reason: RequeueReason::ProviderError
        }
    );
}

#[test]
fn a_job_that_keeps_failing_while_others_succeed_is_dropped_provider_failed() {
    let s = exact();
    let p = PauseCounts::default();
    let c = DialContext {
        provider_retries: 5,
        provider_requeues: 10,
        possibly_placed: true,
        ..ctx(&s, &p)
    };
    let d = decide_dial(&known(Code::ProviderApiError), &c, now(), &mut rng());
    assert_eq!(
        d.action,
        Action::Drop {
            reason: DropReason::ProviderFailed,
            source: Source::Vendor
        }
    );
    assert!(d.possibly_placed && d.attempt_counts);
    let c = DialContext {
        provider_requeues: 9,
        ..c
    };
    let d = decide_dial(&known(Code::ProviderApiError), &c, now(), &mut rng());
    assert!(
        matches!(d.action, Action::Requeue { .. }),
        "not before provider_requeues"
    );
}

#[test]
fn a_tripped_breaker_halts_the_account_instead_of_dropping_anything() {
    let s = exact();
    let p = PauseCounts::default();
    let c = DialContext {
        provider_retries: 5,
        provider_requeues: 10,
        breaker_tripped: true,
        ..ctx(&s, &p)
    };
    for r in [DialResult::Timeout, known(Code::InternalError)] {
        let d = decide_dial(&r, &c, now(), &mut rng());
        assert_eq!(
            d.action,
            Action::HaltAccount {
                reason: AccountHaltReason::ProviderOutage,
                probe_at: at(15 * MIN),
                job_due: at(15 * MIN)
            }
        );
        assert!(d.keep_key && d.possibly_placed);
    }
}

#[test]
fn unauthorized_forbidden_and_not_found_on_the_dial_halt_the_worker_and_drop_nothing() {
    for (code, reason) in [
        (Code::Unauthorized, WorkerHaltReason::Unauthorized),
        (Code::Forbidden, WorkerHaltReason::Forbidden),
        (Code::NotFound, WorkerHaltReason::NotFound),
    ] {
        let d = decide(&known(code));
        assert_eq!(
            d.action,
            Action::HaltWorker {
                reason,
                probe_at: at(15 * MIN),
                job_due: now()
            },
            "{code}"
        );
        assert!(!d.attempt_counts);
    }
}

#[test]
fn validation_error_naming_to_number_drops_invalid_number() {
    let mut r = known(Code::ValidationError);
    if let DialResult::Api { error, .. } = &mut r {
        let mut f = serde_json::Map::new();
        f.insert("to_number".into(), "must be E.164".into());
        error.fields = Some(f);
    }
    assert_eq!(
        decide(&r).action,
        Action::Drop {
            reason: DropReason::InvalidNumber,
            source: Source::Vendor
        }
    );
}

#[test]
fn validation_error_not_naming_to_number_pauses_the_campaign_request_rejected() {
    let mut r = known(Code::ValidationError);
    let no_fields = decide(&r);
    if let DialResult::Api { error, .. } = &mut r {
        let mut f = serde_json::Map::new();
        f.insert("from_number".into(), "required".into());
        error.fields = Some(f);
    }
    for d in [no_fields, decide(&r)] {
        assert_eq!(
            d.action,
            Action::PauseCampaign {
                reason: PauseReason::RequestRejected,
                until: None,
                job_due: now()
            }
        );
    }
}

#[test]
fn idempotency_conflict_is_never_retried_counts_as_possibly_placed_and_drops() {
    let d = decide(&known(Code::IdempotencyConflict));
    assert_eq!(
        d.action,
        Action::Drop {
            reason: DropReason::IdempotencyConflict,
            source: Source::Vendor
        }
    );
    assert!(d.possibly_placed && d.attempt_counts);
}

#[test]
fn a_5xx_that_is_not_the_envelope_is_a_provider_error() {
    let d = decide(&DialResult::NotEnvelope {
        status: 502,
        body_excerpt: "<html>".into(),
    });
    assert!(matches!(d.action, Action::Retry { .. }));
    assert!(d.keep_key && d.possibly_placed);
}

#[test]
fn a_4xx_that_is_not_the_envelope_halts_the_workers_dialing() {
    let d = decide(&DialResult::NotEnvelope {
        status: 400,
        body_excerpt: String::new(),
    });
    assert_eq!(
        d.action,
        Action::HaltWorker {
            reason: WorkerHaltReason::UnexpectedResponse,
            probe_at: at(15 * MIN),
            job_due: now()
        }
    );
    assert!(!d.possibly_placed);
}

#[test]
fn a_2xx_without_a_call_id_halts_the_worker_and_keeps_the_attempt_possibly_placed() {
    let d = decide(&DialResult::NotEnvelope {
        status: 202,
        body_excerpt: "{}".into(),
    });
    assert!(matches!(
        d.action,
        Action::HaltWorker {
            reason: WorkerHaltReason::UnexpectedResponse,
            ..
        }
    ));
    assert!(d.possibly_placed && d.keep_key && d.attempt_counts);
}

#[test]
fn an_unknown_code_is_decided_by_its_category_and_counted() {
    let cases = [
        ("invalid_request", 400),
        ("compliance_blocked", 403),
        ("account_limit", 402),
        ("provider_error", 502),
    ];
    let results: Vec<Decision> = cases
        .iter()
        .map(|(cat, st)| decide(&api(*st, "brand_new_code", Some(cat))))
        .collect();
    assert!(results.iter().all(|d| d.unknown_code));
    assert_eq!(
        results[0].action,
        Action::PauseCampaign {
            reason: PauseReason::RequestRejected,
            until: None,
            job_due: now()
        }
    );
    assert_eq!(
        results[1].action,
        Action::Requeue {
            at: at(HOUR),
            reason: RequeueReason::ComplianceBlocked
        }
    );
    assert!(results[1].preflight_miss);
    assert!(matches!(
        results[2].action,
        Action::HaltAccount {
            reason: AccountHaltReason::AccountLimit,
            ..
        }
    ));
    assert!(matches!(results[3].action, Action::Retry { .. }));
}

#[test]
fn an_unknown_code_with_an_unknown_category_is_decided_by_its_http_status() {
    let by = |status: u16, cat: Option<&str>| decide(&api(status, "scope_missing", cat));
    for (status, reason) in [
        (401, WorkerHaltReason::Unauthorized),
        (403, WorkerHaltReason::Forbidden),
        (404, WorkerHaltReason::NotFound),
    ] {
        let d = by(status, Some("mystery"));
        assert!(matches!(d.action, Action::HaltWorker { reason: r, .. } if r == reason));
        assert!(d.unknown_code);
    }
    let d = by(429, None);
    assert!(matches!(
        d.action,
        Action::Requeue {
            reason: RequeueReason::TooManyRequests,
            ..
        }
    ));
    assert_eq!(d.lower_rate, None);
    assert!(matches!(
        by(418, None).action,
        Action::PauseCampaign {
            reason: PauseReason::RequestRejected,
            until: None,
            ..
        }
    ));
    assert!(matches!(
        by(503, Some("mystery")).action,
        Action::Retry { .. }
    ));
    // An outcome category on a dial is not a dial category: by status too.
    assert!(matches!(
        by(503, Some("voicemail")).action,
        Action::Retry { .. }
    ));
}

#[test]
fn definitive_4xx_answers_do_not_count_an_attempt_and_ambiguous_ones_count_once() {
    for info in REFERENCE
        .iter()
        .filter(|r| r.phase == crate::revdesk::codes::Phase::Sync)
    {
        let d = decide(&known(info.code));
        let provider = info.category == Some(Category::ProviderError);
        assert_eq!(d.attempt_counts, provider, "{}", info.name);
    }
}

#[test]
fn a_definitive_answer_after_an_ambiguous_one_keeps_the_key_and_the_count() {
    let s = exact();
    let p = PauseCounts::default();
    let c = DialContext {
        possibly_placed: true,
        ..ctx(&s, &p)
    };
    let d = decide_dial(&known(Code::OutsideCallingWindow), &c, now(), &mut rng());
    assert!(matches!(d.action, Action::Requeue { .. }));
    assert!(d.keep_key && d.possibly_placed && d.attempt_counts);
}

#[test]
fn an_ambiguous_attempt_past_the_key_ttl_is_settled_and_requeued_like_no_answer() {
    let s = exact();
    let p = PauseCounts::default();
    let started = now() - chrono::Duration::hours(25);
    let c = DialContext {
        attempt_started_at: started,
        possibly_placed: true,
        ..ctx(&s, &p)
    };
    let d = decide_dial(&DialResult::Timeout, &c, now(), &mut rng());
    assert_eq!(
        d.action,
        Action::Requeue {
            at: at(HOUR),
            reason: RequeueReason::KeyExpired
        }
    );
    assert!(!d.keep_key, "the next attempt gets a new key");
    assert!(d.possibly_placed && d.attempt_counts);
    let c = DialContext {
        prior_attempts: 2,
        ..c
    };
    assert_eq!(
        decide_dial(&DialResult::Timeout, &c, now(), &mut rng()).action,
        Action::Exhausted
    );
}

#[test]
fn a_kept_key_is_checked_against_the_ttl_before_it_is_re_sent() {
    let s = exact();
    let p = PauseCounts::default();
    let fresh = DialContext {
        possibly_placed: true,
        ..ctx(&s, &p)
    };
    assert_eq!(settle_expired_key(&fresh, at(23 * HOUR), &mut rng()), None);
    let d = settle_expired_key(&fresh, at(24 * HOUR), &mut rng()).expect("settled");
    assert!(matches!(
        d.action,
        Action::Requeue {
            reason: RequeueReason::KeyExpired,
            ..
        }
    ));
}

#[test]
fn every_documented_dial_answer_has_its_own_decision_and_none_counts_as_unknown() {
    for info in REFERENCE
        .iter()
        .filter(|r| r.phase != crate::revdesk::codes::Phase::Async)
    {
        let d = decide(&known(info.code));
        assert!(!d.unknown_code, "{} is documented", info.name);
        assert_ne!(sync_route(info.code), SyncRoute::ByStatus, "{}", info.name);
    }
    for info in REFERENCE
        .iter()
        .filter(|r| r.phase == crate::revdesk::codes::Phase::Async)
    {
        assert_ne!(
            outcome_route(info.code),
            OutcomeRoute::ByCategory,
            "{}",
            info.name
        );
    }
}

// ---- probes (SPEC section 8: "only its success releases the rest") ----

#[test]
fn a_probe_answered_with_a_pause_or_a_halt_lifts_nothing() {
    let mut to_other = known(Code::ValidationError);
    if let DialResult::Api { error, .. } = &mut to_other {
        error.fields = Some(serde_json::from_str(r#"{"from_number":"bad"}"#).unwrap());
    }
    for (what, r) in [
        ("destination_missing", known(Code::DestinationMissing)),
        ("no_active_number", known(Code::NoActiveNumber)),
        ("caller_id_not_verified", known(Code::CallerIdNotVerified)),
        ("validation_error (not to_number)", to_other),
        (
            "unknown invalid_request",
            api(400, "mystery", Some("invalid_request")),
        ),
        ("voice_usage_exhausted", known(Code::VoiceUsageExhausted)),
        ("no_active_subscription", known(Code::NoActiveSubscription)),
        (
            "unknown account_limit",
            api(402, "mystery", Some("account_limit")),
        ),
        ("unauthorized", known(Code::Unauthorized)),
        ("forbidden", known(Code::Forbidden)),
        ("not_found", known(Code::NotFound)),
        (
            "4xx not the envelope",
            DialResult::NotEnvelope {
                status: 403,
                body_excerpt: "<html>".into(),
            },
        ),
    ] {
        let d = decide(&r);
        assert!(
            matches!(
                d.action,
                Action::PauseCampaign { .. }
                    | Action::HaltAccount { .. }
                    | Action::HaltWorker { .. }
            ),
            "{what} pauses or halts: {d:?}"
        );
        assert!(!d.action.is_probe_success(), "{what}: {d:?}");
    }
    // The breaker: a provider error while most recent dials failed halts the account.
    let s = exact();
    let p = PauseCounts::default();
    let tripped = DialContext {
        breaker_tripped: true,
        ..ctx(&s, &p)
    };
    let d = decide_dial(&known(Code::InternalError), &tripped, now(), &mut rng());
    assert!(!d.action.is_probe_success(), "{d:?}");
}

#[test]
fn a_probe_answered_with_a_202_or_about_the_contact_alone_is_a_success() {
    let d = decide(&DialResult::Accepted {
        call_id: "call_1".into(),
    });
    assert!(d.action.is_probe_success());
    // The vendor got past the account and the campaign to the contact's own facts.
    for code in [
        Code::DestinationInvalid,
        Code::DncSuppressed,
        Code::RecipientOptedOut,
        Code::NoConsent,
        Code::DestinationBlocked,
        Code::OutsideCallingWindow,
        Code::CallingDayNotAllowed,
        Code::FrequencyCapExceeded,
        Code::RateLimited,
        Code::NoNumberAvailable,
        Code::IdempotencyConflict,
    ] {
        let d = decide(&known(code));
        assert!(d.action.is_probe_success(), "{code}: {d:?}");
    }
    assert!(Action::Done.is_probe_success());
}

#[test]
fn a_probe_that_only_got_provider_errors_lifts_nothing() {
    let s = exact();
    let p = PauseCounts::default();
    // Not answered yet: the same key is retried.
    let d = decide(&known(Code::ProviderApiError));
    assert!(matches!(d.action, Action::Retry { .. }));
    assert!(!d.action.is_probe_success());
    // Retries used up: requeued with its key, or dropped provider_failed.
    for (requeues, want_drop) in [(0, false), (10, true)] {
        let c = DialContext {
            provider_retries: 5,
            provider_requeues: requeues,
            ..ctx(&s, &p)
        };
        let d = decide_dial(&DialResult::Timeout, &c, now(), &mut rng());
        assert_eq!(matches!(d.action, Action::Drop { .. }), want_drop, "{d:?}");
        assert!(!d.action.is_probe_success(), "{d:?}");
    }
    // Past the key ttl: settled with no definite answer.
    for max_attempts in [3, 1] {
        let c = DialContext {
            attempt_started_at: now() - chrono::Duration::hours(25),
            possibly_placed: true,
            max_attempts,
            ..ctx(&s, &p)
        };
        let d = decide_dial(&known(Code::InternalError), &c, now(), &mut rng());
        assert!(
            matches!(
                d.action,
                Action::Requeue {
                    reason: RequeueReason::KeyExpired,
                    ..
                } | Action::Exhausted
            ),
            "{d:?}"
        );
        assert!(!d.action.is_probe_success(), "{d:?}");
    }
}

// ---- outcome table ----

fn call(failure_code: Option<&str>, category: Option<&str>, status: &str) -> CallResource {
    CallResource {
        id: "call_1".into(),
        status: Some(status.into()),
        call_outcome: Some(status.into()),
        failure_code: failure_code.map(str::to_owned),
        failure_category: category.map(str::to_owned),
        disconnection_reason: None,
        to_number: None,
        from_number: None,
    }
}

fn octx(settings: &RetrySettings) -> OutcomeContext<'_> {
    OutcomeContext {
        settings,
        attempts: 1,
        max_attempts: 3,
        recent_outcomes: 20,
        recent_carrier_rejected: 0,
    }
}

fn outcome(c: &CallResource) -> Decision {
    let s = exact();
    decide_outcome(Outcome::Call(c), &octx(&s), now(), &mut rng())
}

#[test]
fn a_completed_call_without_failure_code_is_done() {
    let d = outcome(&call(None, None, "completed"));
    assert_eq!(d.action, Action::Done);
    assert!(!d.keep_key && d.attempt_counts);
}

#[test]
fn a_busy_call_is_requeued_after_the_busy_delay_while_attempts_remain() {
    let c = call(Some("busy"), Some("unreachable"), "busy");
    assert_eq!(
        outcome(&c).action,
        Action::Requeue {
            at: at(10 * MIN),
            reason: RequeueReason::Busy
        }
    );
    let s = exact();
    let last = OutcomeContext {
        attempts: 3,
        ..octx(&s)
    };
    assert_eq!(
        decide_outcome(Outcome::Call(&c), &last, now(), &mut rng()).action,
        Action::Exhausted
    );
}

#[test]
fn an_unanswered_call_is_requeued_after_an_hour_with_the_same_cap() {
    let c = call(Some("no_answer"), Some("unreachable"), "no_answer");
    let d = outcome(&c);
    assert_eq!(
        d.action,
        Action::Requeue {
            at: at(HOUR),
            reason: RequeueReason::NoAnswer
        }
    );
    assert!(!d.keep_key, "the next attempt gets a new key");
    let s = exact();
    let last = OutcomeContext {
        attempts: 3,
        ..octx(&s)
    };
    assert_eq!(
        decide_outcome(Outcome::Call(&c), &last, now(), &mut rng()).action,
        Action::Exhausted
    );
}

#[test]
fn voicemail_is_done_by_default_or_requeued_after_the_campaigns_delay() {
    let c = call(
        Some("voicemail_reached"),
        Some("voicemail"),
        "voicemail_reached",
    );
    assert_eq!(outcome(&c).action, Action::Done);
    let s = RetrySettings {
        voicemail: VoicemailRetry::After(2 * HOUR),
        ..exact()
    };
    let d = decide_outcome(Outcome::Call(&c), &octx(&s), now(), &mut rng());
    assert_eq!(
        d.action,
        Action::Requeue {
            at: at(2 * HOUR),
            reason: RequeueReason::Voicemail
        }
    );
    let last = OutcomeContext {
        attempts: 3,
        ..octx(&s)
    };
    assert_eq!(
        decide_outcome(Outcome::Call(&c), &last, now(), &mut rng()).action,
        Action::Exhausted
    );
}

#[test]
fn unreachable_and_carrier_rejected_calls_drop_invalid_number() {
    for code in ["number_unreachable", "carrier_rejected"] {
        let d = outcome(&call(Some(code), Some("unreachable"), "failed"));
        assert_eq!(
            d.action,
            Action::Drop {
                reason: DropReason::InvalidNumber,
                source: Source::Vendor
            },
            "{code}"
        );
    }
}

#[test]
fn when_half_the_recent_outcomes_are_carrier_rejected_the_campaign_pauses_instead() {
    let s = exact();
    let c = call(Some("carrier_rejected"), Some("unreachable"), "failed");
    let bad = OutcomeContext {
        recent_carrier_rejected: 10,
        ..octx(&s)
    };
    let d = decide_outcome(Outcome::Call(&c), &bad, now(), &mut rng());
    assert_eq!(
        d.action,
        Action::PauseCampaign {
            reason: PauseReason::CallerIdReputation,
            until: None,
            job_due: now()
        }
    );
    let fine = OutcomeContext {
        recent_carrier_rejected: 9,
        ..octx(&s)
    };
    let d = decide_outcome(Outcome::Call(&c), &fine, now(), &mut rng());
    assert!(matches!(d.action, Action::Drop { .. }));
}

#[test]
fn the_reputation_rule_needs_ten_rejections_or_half_of_a_short_history() {
    assert!(!carrier_reputation_bad(2, 2), "two unlucky first calls");
    assert!(carrier_reputation_bad(10, 5));
    assert!(!carrier_reputation_bad(20, 9));
    assert!(carrier_reputation_bad(20, 10));
    assert!(carrier_reputation_bad(500, 10), "the window is the last 20");
}

#[test]
fn an_attempts_outcome_counts_once_in_the_reputation_window() {
    let mut w = RecentOutcomes::default();
    for id in 0..11 {
        w.record(id, false);
    }
    for id in 11..20 {
        w.record(id, true);
    }
    assert_eq!(w.record(19, true), (20, 9), "attempt 19 planned again");
    // Counted twice, the duplicate would push out an outcome that was fine and
    // make 10 of 20: the campaign paused for a rejection that did not happen.
    assert!(!carrier_reputation_bad(20, 9));
    assert_eq!(
        w.record(20, true),
        (20, 10),
        "a new attempt's rejection counts"
    );
    assert!(carrier_reputation_bad(20, 10));
    for id in 21..60 {
        w.record(id, false);
    }
    assert_eq!(
        w.record(59, false),
        (20, 0),
        "the window keeps the last 20 attempts"
    );
}

#[test]
fn a_declined_call_drops_declined() {
    let d = outcome(&call(Some("call_declined"), Some("unreachable"), "failed"));
    assert_eq!(
        d.action,
        Action::Drop {
            reason: DropReason::Declined,
            source: Source::Vendor
        }
    );
}

#[test]
fn an_unknown_failure_code_is_decided_by_its_failure_category() {
    let d = outcome(&call(Some("line_fell_over"), Some("unreachable"), "failed"));
    assert_eq!(
        d.action,
        Action::Requeue {
            at: at(HOUR),
            reason: RequeueReason::Unreachable
        }
    );
    assert!(d.unknown_code);
    let d = outcome(&call(Some("robot_butler"), Some("voicemail"), "failed"));
    assert_eq!(d.action, Action::Done);
    assert!(d.unknown_code);
}

#[test]
fn an_unknown_failure_category_is_treated_like_no_answer_with_the_same_cap() {
    let d = outcome(&call(Some("line_fell_over"), Some("cosmic_rays"), "failed"));
    assert_eq!(
        d.action,
        Action::Requeue {
            at: at(HOUR),
            reason: RequeueReason::UnknownOutcome
        }
    );
    let s = exact();
    let last = OutcomeContext {
        attempts: 3,
        ..octx(&s)
    };
    let c = call(Some("line_fell_over"), None, "failed");
    assert_eq!(
        decide_outcome(Outcome::Call(&c), &last, now(), &mut rng()).action,
        Action::Exhausted
    );
}

#[test]
fn a_call_the_vendor_no_longer_knows_is_treated_like_no_answer() {
    let s = exact();
    let d = decide_outcome(Outcome::NotFound, &octx(&s), now(), &mut rng());
    assert_eq!(
        d.action,
        Action::Requeue {
            at: at(HOUR),
            reason: RequeueReason::UnknownOutcome
        }
    );
}

#[test]
fn a_call_still_in_progress_keeps_waiting_for_its_outcome() {
    let c = call(None, None, "ringing");
    assert_eq!(
        outcome(&c).action,
        Action::Placed {
            call_id: "call_1".into()
        }
    );
}

// ---- property tests ----

const CATEGORIES: &[&str] = &[
    "invalid_request",
    "compliance_blocked",
    "account_limit",
    "unreachable",
    "voicemail",
    "provider_error",
    "mystery",
];
const STATUSES: &[u16] = &[
    200, 202, 302, 400, 401, 402, 403, 404, 409, 418, 422, 429, 500, 502, 503,
];

fn any_code() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (0..REFERENCE.len()).prop_map(|i| REFERENCE[i].name.to_owned()),
        1 => "[a-z_]{1,12}",
    ]
}

fn any_fields() -> impl Strategy<Value = Option<serde_json::Map<String, serde_json::Value>>> {
    proptest::option::of(
        prop_oneof![Just("to_number"), Just("from_number")].prop_map(|f| {
            let mut m = serde_json::Map::new();
            m.insert(f.to_owned(), "bad".into());
            m
        }),
    )
}

fn any_result() -> impl Strategy<Value = DialResult> {
    prop_oneof![
        1 => Just(DialResult::Accepted { call_id: "call_x".into() }),
        6 => (
            proptest::sample::select(STATUSES),
            any_code(),
            proptest::option::of(proptest::sample::select(CATEGORIES)),
            any_fields(),
            proptest::option::of(0u64..100_000),
        )
            .prop_map(|(status, code, category, fields, ra)| DialResult::Api {
                status,
                error: ApiError {
                    code,
                    category: category.map(str::to_owned),
                    message: String::new(),
                    doc_url: None,
                    fields,
                },
                retry_after: ra.map(Duration::from_secs),
            }),
        1 => proptest::sample::select(STATUSES)
            .prop_map(|status| DialResult::NotEnvelope { status, body_excerpt: String::new() }),
        1 => Just(DialResult::Timeout),
        1 => Just(DialResult::Connection { detail: "reset".into() }),
    ]
}

#[derive(Debug, Clone)]
struct Job {
    prior_attempts: u32,
    max_attempts: u32,
    possibly_placed: bool,
    age_hours: i64,
    provider_retries: u32,
    provider_requeues: u32,
    vendor_refusals: u32,
    next_allowed_offset_min: Option<i64>,
    consecutive_429s: u32,
    breaker_tripped: bool,
    pauses: u32,
    seed: u64,
}

fn any_job() -> impl Strategy<Value = Job> {
    (
        (0u32..6, 1u32..6, any::<bool>(), 0i64..30),
        (
            0u32..8,
            0u32..12,
            0u32..4,
            proptest::option::of(-600i64..6000),
        ),
        (0u32..40, any::<bool>(), 0u32..10, any::<u64>()),
    )
        .prop_map(
            |((pa, ma, pp, age), (pr, prq, vr, na), (c429, bt, pauses, seed))| Job {
                prior_attempts: pa,
                max_attempts: ma,
                possibly_placed: pp,
                age_hours: age,
                provider_retries: pr,
                provider_requeues: prq,
                vendor_refusals: vr,
                next_allowed_offset_min: na,
                consecutive_429s: c429,
                breaker_tripped: bt,
                pauses,
                seed,
            },
        )
}

fn run(result: &DialResult, job: &Job) -> Decision {
    let s = RetrySettings::default();
    let mut p = PauseCounts::default();
    for r in [
        "no_active_number",
        "provider_outage",
        "unauthorized",
        "voice_usage_exhausted",
    ] {
        p.0.insert(r.into(), job.pauses);
    }
    let c = DialContext {
        settings: &s,
        prior_attempts: job.prior_attempts,
        max_attempts: job.max_attempts,
        possibly_placed: job.possibly_placed,
        attempt_started_at: now() - chrono::Duration::hours(job.age_hours),
        provider_retries: job.provider_retries,
        provider_requeues: job.provider_requeues,
        vendor_refusals: job.vendor_refusals,
        next_allowed: job
            .next_allowed_offset_min
            .map(|m| now() + chrono::Duration::minutes(m)),
        consecutive_429s: job.consecutive_429s,
        breaker_tripped: job.breaker_tripped,
        pauses: &p,
    };
    decide_dial(result, &c, now(), &mut StdRng::seed_from_u64(job.seed))
}

/// The codes whose drop is the contact's own fault.
fn contact_fault(result: &DialResult, reason: DropReason) -> bool {
    let DialResult::Api { error, .. } = result else {
        return false;
    };
    let code = error.known_code();
    matches!(
        (code, reason),
        (Some(Code::DestinationInvalid), DropReason::InvalidNumber)
            | (
                Some(Code::DestinationBlocked),
                DropReason::DestinationBlocked
            )
            | (Some(Code::DncSuppressed), DropReason::Dnc)
            | (Some(Code::RecipientOptedOut), DropReason::OptedOut)
            | (Some(Code::NoConsent), DropReason::NoConsent)
    ) || (code == Some(Code::ValidationError)
        && reason == DropReason::InvalidNumber
        && error.names_field("to_number"))
}

proptest! {
    #[test]
    fn no_decision_ever_retries_a_non_retryable_code(result in any_result(), job in any_job()) {
        let d = run(&result, &job);
        if let DialResult::Api { error, .. } = &result {
            if let Some(code) = error.known_code() {
                if !code.retryable() {
                    prop_assert!(!matches!(d.action, Action::Retry { .. }), "{code} retried: {d:?}");
                }
            }
        }
    }

    #[test]
    fn nothing_is_scheduled_in_the_past(result in any_result(), job in any_job()) {
        let d = run(&result, &job);
        for t in d.due_times(now()) {
            prop_assert!(t >= now(), "{t} before {} in {d:?}", now());
        }
    }

    #[test]
    fn every_decision_after_an_ambiguous_answer_keeps_the_key(result in any_result(), job in any_job()) {
        let d = run(&result, &job);
        let ambiguous = job.possibly_placed || result.is_ambiguous();
        let settled = matches!(d.action, Action::Requeue { reason: RequeueReason::KeyExpired, .. })
            || (d.action == Action::Exhausted);
        if ambiguous && !settled && !matches!(d.action, Action::Placed { .. }) {
            prop_assert!(d.keep_key, "{d:?}");
            prop_assert!(d.possibly_placed && d.attempt_counts, "{d:?}");
        }
        if settled {
            prop_assert!(job.age_hours >= 24, "settled before the key ttl: {d:?}");
        }
        if let Action::Retry { .. } = d.action {
            prop_assert!(d.keep_key, "a retry re-sends the same key");
        }
    }

    #[test]
    fn nothing_is_dropped_for_a_fault_that_is_not_the_contacts(result in any_result(), job in any_job()) {
        let d = run(&result, &job);
        if let Action::Drop { reason, .. } = d.action {
            prop_assert!(
                reason.is_labelled() || contact_fault(&result, reason),
                "{reason:?} for {result:?}"
            );
        }
        if let Action::Drop { reason: DropReason::ProviderFailed, .. } = d.action {
            prop_assert!(!job.breaker_tripped, "an outage drops nothing");
            prop_assert!(job.provider_requeues >= RetrySettings::default().provider_requeues);
        }
    }

    #[test]
    fn a_definitive_refusal_counts_no_attempt(result in any_result(), job in any_job()) {
        let d = run(&result, &job);
        if !job.possibly_placed && !result.is_ambiguous() && !matches!(d.action, Action::Retry { .. }) {
            if let DialResult::Api { status: 400..=499, error, .. } = &result {
                let provider = error.known_code().and_then(Code::category) == Some(Category::ProviderError)
                    || (error.known_code().is_none() && error.known_category() == Some(Category::ProviderError));
                let conflict = error.known_code() == Some(Code::IdempotencyConflict);
                if !provider && !conflict {
                    prop_assert!(!d.attempt_counts, "{d:?}");
                }
            }
        }
    }

    #[test]
    fn a_probe_succeeds_only_on_a_definite_answer_that_neither_pauses_nor_halts(
        result in any_result(), job in any_job(),
    ) {
        let d = run(&result, &job);
        if d.action.is_probe_success() {
            let stops = matches!(
                d.action,
                Action::PauseCampaign { .. } | Action::HaltAccount { .. } | Action::HaltWorker { .. }
            );
            prop_assert!(!stops, "a pause or halt lifted a pause or halt: {d:?}");
            prop_assert!(!matches!(d.action, Action::Retry { .. }), "not answered yet: {d:?}");
        }
        if let DialResult::Accepted { .. } = result {
            prop_assert!(d.action.is_probe_success(), "a 202 is the probe's success: {d:?}");
        }
    }

    #[test]
    fn outcomes_schedule_nothing_in_the_past_respect_the_cap_and_drop_only_contact_faults(
        code in proptest::option::of(any_code()),
        category in proptest::option::of(proptest::sample::select(CATEGORIES)),
        status in proptest::sample::select(&["completed", "failed", "busy", "ringing", "no_answer"][..]),
        attempts in 1u32..6, max_attempts in 1u32..6, recent in 0u32..40, rejected in 0u32..40,
        voicemail_after in proptest::option::of(0u64..10_000),
        not_found in any::<bool>(), seed in any::<u64>(),
    ) {
        let s = RetrySettings {
            voicemail: voicemail_after.map_or(VoicemailRetry::Done, |v| VoicemailRetry::After(Duration::from_secs(v))),
            ..RetrySettings::default()
        };
        let c = OutcomeContext { settings: &s, attempts, max_attempts, recent_outcomes: recent, recent_carrier_rejected: rejected };
        let resource = call(code.as_deref(), category, status);
        let input = if not_found { Outcome::NotFound } else { Outcome::Call(&resource) };
        let d = decide_outcome(input, &c, now(), &mut StdRng::seed_from_u64(seed));
        for t in d.due_times(now()) {
            prop_assert!(t >= now());
        }
        prop_assert!(!d.keep_key);
        if let Action::Requeue { .. } = d.action {
            prop_assert!(attempts < max_attempts, "requeued past max_attempts");
        }
        if let Action::Drop { reason, .. } = d.action {
            let ok = matches!(
                (code.as_deref(), reason),
                (Some("number_unreachable" | "carrier_rejected"), DropReason::InvalidNumber)
                    | (Some("call_declined"), DropReason::Declined)
            );
            prop_assert!(ok && !not_found, "{reason:?} for {code:?}");
        }
        let halts_or_retries = matches!(
            d.action,
            Action::Retry { .. } | Action::HaltAccount { .. } | Action::HaltWorker { .. }
        );
        prop_assert!(!halts_or_retries, "an outcome neither retries nor halts");
    }
}
