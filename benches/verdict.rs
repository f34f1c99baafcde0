//! Verdicts per second of the pure engine, and the cost of parsing a number.
//!
//! `cargo bench --bench verdict`. Target (issue 4): at least 2,000,000 `evaluate`
//! calls per second per core for an already-parsed NANP number with a known zone.

use chrono::{TimeZone, Utc};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dialer::compliance::{ConsentFact, ConsentKind, Engine, Facts, Policy, RulesConfig};
use dialer::phone::PhoneNumber;
use std::hint::black_box;

fn verdicts(c: &mut Criterion) {
    let engine = Engine::new(&RulesConfig::default()).expect("built-in rules");
    let policy = Policy::check_default();
    let facts = Facts::default();
    let phone = PhoneNumber::parse("+12122345678").expect("valid");
    let known_zone = engine.recipient(&phone, Some(chrono_tz::America::New_York), Some("NY"), None);
    let noon = Utc
        .with_ymd_and_hms(2026, 7, 15, 16, 0, 0)
        .single()
        .expect("instant");
    let night = Utc
        .with_ymd_and_hms(2026, 7, 16, 3, 0, 0)
        .single()
        .expect("instant");

    let mut g = c.benchmark_group("verdict");
    g.throughput(Throughput::Elements(1));
    g.bench_function("evaluate_allow_known_zone", |b| {
        b.iter(|| engine.evaluate(black_box(&known_zone), &policy, &facts, black_box(noon)))
    });
    g.bench_function("evaluate_time_allow_known_zone", |b| {
        b.iter(|| engine.evaluate_time(black_box(&known_zone), &policy, black_box(noon)))
    });
    // The worker's check right before every request: the whole pre-flight on the
    // claim's facts (a consent to check, a call counted earlier), allowing.
    let consented = Policy {
        require_consent: Some(ConsentKind::ExpressWritten),
        ..Policy::check_default()
    };
    let claim_facts = Facts {
        consents: vec![ConsentFact {
            kind: ConsentKind::ExpressWritten,
            granted_at: noon - chrono::Duration::days(30),
            expires_at: Some(noon + chrono::Duration::days(30)),
            revoked_at: None,
        }],
        counted_calls: vec![noon - chrono::Duration::hours(26)],
        ..Facts::default()
    };
    g.bench_function("pre_request_allow_known_zone", |b| {
        b.iter(|| {
            engine.blocking_verdict(
                black_box(&known_zone),
                &consented,
                &claim_facts,
                black_box(noon),
            )
        })
    });
    g.bench_function("evaluate_requeue_at_night", |b| {
        b.iter(|| engine.evaluate(black_box(&known_zone), &policy, &facts, black_box(night)))
    });
    let split = engine.recipient(
        &PhoneNumber::parse("+12084321234").expect("valid"),
        None,
        None,
        None,
    );
    g.bench_function("evaluate_allow_split_area_code", |b| {
        b.iter(|| engine.evaluate(black_box(&split), &policy, &facts, black_box(noon)))
    });
    g.bench_function("recipient_build", |b| {
        b.iter(|| engine.recipient(black_box(&phone), None, Some("NY"), None))
    });
    g.finish();
}

fn parsing(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(1));
    // Warm the fast path's block table for this number's block.
    let _ = PhoneNumber::parse("(212) 234-5678");
    g.bench_function("fast_path", |b| {
        b.iter(|| PhoneNumber::parse(black_box("(212) 234-5678")))
    });
    g.bench_function("crate", |b| {
        b.iter(|| PhoneNumber::parse_with_crate(black_box("(212) 234-5678")))
    });
    g.finish();
}

criterion_group!(benches, verdicts, parsing);
criterion_main!(benches);
