//! `dialer demo`: the binary runs the tour and its summary shows every pre-flight
//! rule, every synchronous answer category and every final outcome it promises.

use std::collections::BTreeSet;

fn shown(summary: &serde_json::Value, key: &str) -> BTreeSet<String> {
    summary["shown"][key]
        .as_array()
        .unwrap_or_else(|| panic!("no shown.{key} in the summary"))
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

#[test]
fn the_demo_exits_zero_and_shows_every_rule_answer_category_and_outcome() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dialer"))
        .args(["demo", "--json"])
        .output()
        .expect("run dialer demo");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON summary");
    let rules = shown(&summary, "rules");
    for rule in [
        "invalid_number",
        "destination_blocked",
        "dnc",
        "opted_out",
        "no_consent",
        "calling_day",
        "calling_window",
        "frequency_cap",
    ] {
        assert!(rules.contains(rule), "rule {rule} not shown: {rules:?}");
    }
    let answers = shown(&summary, "answer_categories");
    for cat in [
        "accepted",
        "invalid_request",
        "compliance_blocked",
        "account_limit",
        "provider_error",
        "timeout",
    ] {
        assert!(
            answers.contains(cat),
            "answer category {cat} not shown: {answers:?}"
        );
    }
    let outcomes = shown(&summary, "outcomes");
    for o in [
        "completed",
        "busy",
        "no_answer",
        "voicemail_reached",
        "number_unreachable",
        "call_declined",
        "carrier_rejected",
    ] {
        assert!(outcomes.contains(o), "outcome {o} not shown: {outcomes:?}");
    }
    let halts = shown(&summary, "pauses_and_halts");
    assert_eq!(halts.len(), 3, "{halts:?}");
    let rejected = summary["import_rejections"].as_array().expect("rejections");
    assert_eq!(
        rejected.len(),
        4,
        "911, 988, 555-0123 and not-a-number: {rejected:?}"
    );
    let requeued = summary["requeued"].as_array().expect("requeued");
    assert!(
        requeued.iter().all(|j| j["due_at"].is_string()),
        "every requeue has a due time"
    );
}
