//! The `dialer` binary as an operator runs it: exit codes, messages, secrets.

use crate::support::{TestDb, write_file};
use std::process::{Command, Output};

pub fn dialer(db_url: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dialer"));
    cmd.args(args)
        .env("DIALER__DATABASE__URL", db_url)
        .env("NO_COLOR", "1");
    // A clean environment for DIALER__* (the CI's may hold others).
    for (k, _) in std::env::vars() {
        if k.starts_with("DIALER__") && k != "DIALER__DATABASE__URL" {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("REVDESK_API_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run dialer")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test]
async fn bad_configuration_exits_2_naming_the_key() {
    let db = TestDb::sqlite().await;
    for (env, key) in [
        (("DIALER__RATE__PER_SECOND", "-5"), "rate.per_second"),
        (("DIALER__WORKER__BATCH_SIZ", "5"), "worker.batch_siz"),
        (
            ("DIALER__REVDESK__BASE_URL", "::nope::"),
            "revdesk.base_url",
        ),
        (("DIALER__WORKER__LEASE", "soon"), "worker.lease"),
    ] {
        let o = dialer(&db.url, &["status"], &[env]);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(
            text(&o).contains(key),
            "error does not name {key}: {}",
            text(&o)
        );
    }
    let (_d, cfg) = write_file("bad.toml", b"[worker]\nmax_in_flight = 0\n");
    let o = dialer(&db.url, &["--config", cfg.to_str().unwrap(), "status"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("worker.max_in_flight"), "{}", text(&o));
}

#[tokio::test]
async fn status_with_secrets_set_never_shows_them() {
    let db = TestDb::sqlite().await;
    let env = [
        ("REVDESK_API_KEY", "sk_live_TOPSECRET1"),
        ("DIALER__WEBHOOK__SECRET", "whsec_TOPSECRET2"),
    ];
    for args in [
        &["status"][..],
        &["status", "--json"][..],
        &["campaign", "list"][..],
    ] {
        let o = dialer(&db.url, args, &env);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert!(
            !text(&o).contains("TOPSECRET"),
            "a secret leaked: {}",
            text(&o)
        );
    }
    // Nor in a configuration error.
    let o = dialer(
        &db.url,
        &["status"],
        &[
            ("REVDESK_API_KEY", "sk_live_TOPSECRET1"),
            ("DIALER__RATE__BURST", "0"),
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(!text(&o).contains("TOPSECRET"), "{}", text(&o));
}

#[tokio::test]
async fn import_with_bad_rows_exits_3_and_a_rerun_changes_no_counts() {
    let db = TestDb::sqlite().await;
    let (_c, campaign) = write_file("c.toml", crate::storage::CAMPAIGN.as_bytes());
    let o = dialer(
        &db.url,
        &["campaign", "apply", campaign.to_str().unwrap()],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("require_consent express_written"),
        "{}",
        text(&o)
    );
    let (_d, contacts) = write_file("contacts.csv", crate::storage::MIXED_CONTACTS);
    let p = contacts.to_str().unwrap();
    let o = dialer(
        &db.url,
        &[
            "import",
            "contacts",
            "--campaign",
            "renewals-2026",
            p,
            "--json",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["loaded"], 3);
    assert_eq!(report["rejected"].as_array().unwrap().len(), 6);
    let before = dialer(&db.url, &["status", "--json"], &[]).stdout;
    let o = dialer(
        &db.url,
        &["import", "contacts", "--campaign", "renewals-2026", p],
        &[],
    );
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(dialer(&db.url, &["status", "--json"], &[]).stdout, before);
    let status: serde_json::Value = serde_json::from_slice(&before).unwrap();
    assert_eq!(status["campaigns"][0]["jobs"]["queued"], 3);
}

#[tokio::test]
async fn unknown_campaign_or_unreadable_file_exits_2_and_loads_nothing() {
    let db = TestDb::sqlite().await;
    let (_d, contacts) = write_file("contacts.csv", crate::storage::MIXED_CONTACTS);
    let o = dialer(
        &db.url,
        &[
            "import",
            "contacts",
            "--campaign",
            "nope",
            contacts.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("unknown campaign `nope`"), "{}", text(&o));
    let o = dialer(&db.url, &["import", "dnc", "/nonexistent/dnc.txt"], &[]);
    assert_eq!(o.status.code(), Some(2));
    let (_e, headerless) = write_file("x.csv", b"number,name\n2122345678,A\n");
    let o = dialer(
        &db.url,
        &["import", "opt-outs", headerless.to_str().unwrap()],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("no `phone` column"), "{}", text(&o));
}

/// Issue 4's named cases through the real binary: special numbers, a DNC'd and an
/// opted-out number, a Sunday in a no-Sunday state, 20:30 in Florida, and 08:30 in a
/// split area code where the other zone is still before 08:00.
#[tokio::test]
async fn check_explains_the_named_cases_with_the_right_verdict_and_next_time() {
    let db = TestDb::sqlite().await;
    let (_d, dnc) = write_file("dnc.txt", b"3055552345\n");
    assert_eq!(
        dialer(&db.url, &["import", "dnc", dnc.to_str().unwrap()], &[])
            .status
            .code(),
        Some(0)
    );
    let (_o, opt) = write_file("o.csv", b"phone\n3055552346\n");
    assert_eq!(
        dialer(&db.url, &["import", "opt-outs", opt.to_str().unwrap()], &[])
            .status
            .code(),
        Some(0)
    );
    let cases: &[(&[&str], &str, &str, Option<&str>)] = &[
        (&["911"], "drop", "destination_blocked", None),
        (&["988"], "drop", "destination_blocked", None),
        (&["+12125550142"], "drop", "destination_blocked", None),
        (&["3055552345"], "drop", "dnc", None),
        (&["3055552346"], "drop", "opted_out", None),
        // Alabama bans Sundays (Ala. Admin. Code r. 770-X-5-.17): Monday 08:00 Central.
        (
            &["+12055552347", "--at", "2026-11-22T14:00:00-06:00"],
            "requeue",
            "calling_day",
            Some("2026-11-23T14:00:00+00:00"),
        ),
        // Florida closes at 20:00 (Fla. Stat. 501.616(6)): next day 08:00 Eastern.
        (
            &["+13055552348", "--at", "2026-11-18T20:30:00-05:00"],
            "requeue",
            "calling_window",
            Some("2026-11-19T13:00:00+00:00"),
        ),
        // 208-432 spans Boise and Los Angeles: 08:30 in Boise is 07:30 in LA.
        (
            &["+12084322349", "--at", "2026-11-18T08:30:00-07:00"],
            "requeue",
            "calling_window",
            Some("2026-11-18T16:00:00+00:00"),
        ),
    ];
    for (args, verdict, rule, next) in cases {
        let mut a = vec!["check"];
        a.extend_from_slice(args);
        a.push("--json");
        let o = dialer(&db.url, &a, &[]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["verdict"], *verdict, "{args:?}: {v}");
        assert_eq!(v["rule"], *rule, "{args:?}: {v}");
        if let Some(n) = next {
            assert_eq!(v["next_allowed_at"], *n, "{args:?}: {v}");
        }
    }
    let o = dialer(
        &db.url,
        &["check", "+12084322349", "--at", "2026-11-18T08:30:00-07:00"],
        &[],
    );
    let t = text(&o);
    assert!(
        t.contains("America/Boise") && t.contains("America/Los_Angeles") && t.contains("BLOCKED"),
        "{t}"
    );
}

#[tokio::test]
async fn scrub_writes_one_verdict_per_input_row() {
    let db = TestDb::sqlite().await;
    let (_d, f) = write_file(
        "c.csv",
        b"phone,state\n911,\n+13055552348,FL\nnot-a-number,\n+12055552347,AL\n",
    );
    let o = dialer(
        &db.url,
        &[
            "scrub",
            f.to_str().unwrap(),
            "--at",
            "2026-11-18T20:30:00-05:00",
            "--format",
            "jsonl",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let rules: Vec<&str> = rows
        .iter()
        .map(|r| r["rule"].as_str().unwrap_or(""))
        .collect();
    // 20:30 Eastern: Florida is closed (20:00), Alabama (19:30 Central) is open.
    assert_eq!(
        rules,
        [
            "destination_blocked",
            "calling_window",
            "invalid_number",
            ""
        ]
    );
    assert_eq!(rows[3]["verdict"], "allow");
    let o = dialer(
        &db.url,
        &[
            "scrub",
            f.to_str().unwrap(),
            "--at",
            "2026-11-18T15:00:00-05:00",
        ],
        &[],
    );
    let csv = String::from_utf8_lossy(&o.stdout);
    assert_eq!(csv.lines().count(), 5, "{csv}");
    assert!(
        csv.starts_with("phone,verdict,rule,reason,zones,next_allowed_at"),
        "{csv}"
    );
}
