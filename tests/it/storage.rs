//! Storage behaviour, each test run on SQLite and PostgreSQL with one body.

use crate::both_backends;
use crate::support::write_file;
use dialer::campaign::CampaignSpec;
use dialer::import::{self, NoProgress};
use dialer::store::{ContactRecord, DynStore};

const NOW: i64 = 1_790_000_000_000;

pub const CAMPAIGN: &str = r#"
name = "renewals-2026"
from_number = "+14155550100"
window = { start = "09:00", end = "20:00" }
days = ["mon", "tue", "wed", "thu", "fri", "sat"]
max_attempts = 3
frequency_cap = { calls = 3, per = "24h" }
"#;

pub async fn campaign(store: &DynStore) -> i64 {
    let spec = CampaignSpec::parse(CAMPAIGN).unwrap();
    store.apply_campaign(&spec, NOW).await.unwrap().0.id
}

/// Good rows, a repeated phone, and one bad row of each kind the SPEC names.
pub const MIXED_CONTACTS: &[u8] = b"phone,first_name,state,timezone,postal_code,plan\n\
(212) 234-5678,Ann,NY,,10001,gold\n\
911,Emergency,,,,\n\
not-a-number,Bad,,,,\n\
+1 212 234 5678,Repeat,,,,\n\
312-234-5601,Zone,,Mars/Base,,\n\
312-234-5602,Short\n\
312-234-5603,Postal,,,ABCDE,\n\
415-234-5604,Fay,CA,America/Los_Angeles,94105,silver\n\
\xff\xfe,Latin1,,,,\n\
6045551234,Van,BC,,V6B 1A1,\n";

both_backends! {
    async fn contacts_import_loads_good_rows_rejects_bad_ones_with_lines_and_is_idempotent(db) {
        let id = campaign(&db.store).await;
        let (_d, path) = write_file("contacts.csv", MIXED_CONTACTS);
        let r = import::import_contacts(&db.store, id, NOW, &path, Box::new(NoProgress)).await.unwrap();
        assert_eq!(r.read, 10);
        assert_eq!(r.loaded, 3, "{r:?}");
        assert_eq!(r.duplicates, 1, "{r:?}");
        let lines: Vec<(u64, &str)> = r.rejected.iter().map(|x| (x.line, x.reason.as_str())).collect();
        assert_eq!(lines.len(), 6, "{lines:?}");
        assert!(lines[0].0 == 3 && lines[0].1.starts_with("destination_blocked"), "{lines:?}");
        assert!(lines[1].0 == 4 && lines[1].1.starts_with("invalid_number"), "{lines:?}");
        assert!(lines[2].0 == 6 && lines[2].1.contains("unknown time zone"), "{lines:?}");
        assert!(lines[3].0 == 7 && lines[3].1.contains("wrong column count"), "{lines:?}");
        assert!(lines[4].0 == 8 && lines[4].1.contains("postal code"), "{lines:?}");
        assert!(lines[5].0 == 10 && lines[5].1.contains("UTF-8"), "{lines:?}");

        let before = db.store.status(None, NOW).await.unwrap();
        let again = import::import_contacts(&db.store, id, NOW, &path, Box::new(NoProgress)).await.unwrap();
        assert_eq!(again.loaded, 0);
        assert_eq!(again.duplicates, 4);
        assert_eq!(db.store.status(None, NOW).await.unwrap(), before, "re-running the import changed counts");
        assert_eq!(before.campaigns[0].jobs["queued"], 3);
    }
}

both_backends! {
    async fn an_import_cut_off_before_its_end_loads_nothing(db) {
        let id = campaign(&db.store).await;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let rec = ContactRecord {
            phone: "+12122345678".into(), external_id: None, timezone: None, state: None,
            postal_code: None, first_name: None, last_name: None, attributes: None,
        };
        tx.send(vec![rec]).await.unwrap();
        drop(tx); // the reader died before sending the end-of-stream marker
        assert!(db.store.import_contacts(id, NOW, rx).await.is_err());
        let s = db.store.status(None, NOW).await.unwrap();
        assert_eq!(s.campaigns[0].jobs["queued"], 0, "a half-read file left rows behind");
    }
}

both_backends! {
    async fn campaign_apply_is_idempotent_and_pause_resume_round_trips(db) {
        let spec = CampaignSpec::parse(CAMPAIGN).unwrap();
        let (a, created) = db.store.apply_campaign(&spec, NOW).await.unwrap();
        assert!(created);
        let (b, created) = db.store.apply_campaign(&spec, NOW + 1).await.unwrap();
        assert!(!created);
        assert_eq!(a.id, b.id);
        assert_eq!(db.store.campaigns().await.unwrap().len(), 1);
        assert!(db.store.set_operator_pause("renewals-2026", true, NOW).await.unwrap());
        assert_eq!(db.store.campaign("renewals-2026").await.unwrap().unwrap().state_label(NOW), "paused");
        assert!(db.store.set_operator_pause("renewals-2026", false, NOW).await.unwrap());
        assert_eq!(db.store.campaign("renewals-2026").await.unwrap().unwrap().state_label(NOW), "active");
        assert!(!db.store.set_operator_pause("nope", true, NOW).await.unwrap());
    }
}

both_backends! {
    /// Automatic pauses (SPEC section 8): one begins only if none is in force; a
    /// failed probe repeats it (counted); a pause that waits for `campaign resume`
    /// is neither replaced by a timed one nor lifted by a timed pause's probe.
    async fn automatic_pauses_begin_once_repeat_on_a_failed_probe_and_untimed_ones_wait_for_resume(db) {
        let id = campaign(&db.store).await;
        let row = || async { db.store.campaign_by_id(id).await.unwrap().unwrap() };
        let s = &db.store;
        s.pause_campaign(id, "no_active_number", Some(NOW + 300_000), NOW).await.unwrap();
        // A dial that was in flight, answered the same way: the same pause.
        s.pause_campaign(id, "no_active_number", Some(NOW + 900_000), NOW + 5).await.unwrap();
        let r = row().await;
        assert_eq!((r.auto_pause_count, r.auto_paused_until_ms), (1, Some(NOW + 300_000)), "{r:?}");
        // Its probe failed the same way: a repeat.
        s.repause_campaign(id, "no_active_number", Some(NOW + 900_000), NOW + 300_000).await.unwrap();
        let r = row().await;
        assert_eq!((r.auto_pause_count, r.auto_paused_until_ms), (2, Some(NOW + 900_000)), "{r:?}");
        // A probe that found no job gives its turn back; nothing else changes.
        s.defer_campaign_probe(id, NOW + 905_000, NOW + 900_000).await.unwrap();
        let r = row().await;
        assert_eq!((r.auto_pause_count, r.auto_paused_until_ms), (2, Some(NOW + 905_000)), "{r:?}");
        // An untimed pause replaces the timed one...
        s.pause_campaign(id, "caller_id_not_verified", None, NOW + 905_001).await.unwrap();
        let r = row().await;
        assert_eq!((r.auto_pause_reason.as_deref(), r.auto_paused_until_ms), (Some("caller_id_not_verified"), None));
        // ... and the timed pause's probe, still in flight, neither replaces it
        // (failed) nor lifts it (succeeded).
        s.repause_campaign(id, "no_active_number", Some(NOW + 2_000_000), NOW + 905_002).await.unwrap();
        s.lift_auto_pause(id, NOW + 905_003).await.unwrap();
        let r = row().await;
        assert_eq!((r.auto_pause_reason.as_deref(), r.auto_paused_until_ms), (Some("caller_id_not_verified"), None));
        // The operator's resume ends it; the next pause begins from count 1.
        assert!(s.set_operator_pause(&r.name, false, NOW + 905_004).await.unwrap());
        s.pause_campaign(id, "no_active_number", Some(NOW + 1_300_000), NOW + 1_000_000).await.unwrap();
        assert_eq!(row().await.auto_pause_count, 1);
    }
}

both_backends! {
    /// `dialer campaign requeue` undoes a drop that may not be the contact's; a
    /// dropped job whose last attempt is possibly placed (`provider_failed`,
    /// `idempotency_conflict`) gets that attempt back, to be re-sent under its key
    /// (SPEC section 7: "never re-sent under a new key sooner" than key_ttl). A job
    /// whose last attempt was not placed starts a new one.
    async fn campaign_requeue_keeps_a_possibly_placed_attempts_key(db) {
        use dialer::store::{Dispatch, Dispatched, SendKind, SendRequest};
        let a = campaign(&db.store).await;
        let (_d, path) = write_file("a.csv", b"phone\n2122345601\n2122345602\n");
        import::import_contacts(&db.store, a, NOW, &path, Box::new(NoProgress)).await.unwrap();
        let mut jobs = Vec::new();
        loop {
            let got = db.store.claim("w1", 10, NOW, 60_000, None).await.unwrap();
            if got.is_empty() {
                break;
            }
            jobs.extend(got);
        }
        jobs.sort_by_key(|j| j.id);
        let sends = jobs.iter().enumerate().map(|(i, j)| SendRequest {
            job_id: j.id, campaign_id: a, phone: j.phone.clone(),
            send: SendKind::New { key: format!("k{i}"), body: "{}".into(), caps: vec![], requeue_jitter_ms: 0 },
            now_ms: NOW,
        }).collect();
        let r = db.store.dispatch(&Dispatch { owner: "w1".into(), audits: vec![], writes: vec![], sends }).await.unwrap();
        let ids: Vec<i64> = r.sends.iter().map(|s| match s {
            Dispatched::Sent(at) => at.id,
            other => panic!("{other:?}"),
        }).collect();
        // The first: five 5xx, then dropped provider_failed (possibly placed); the
        // second: a definitive 4xx (not placed), then the same drop reason.
        db.execute(&format!("UPDATE attempts SET placement = 'possibly_placed' WHERE id = {}", ids[0])).await;
        db.execute(&format!("UPDATE attempts SET placement = 'not_placed' WHERE id = {}", ids[1])).await;
        db.execute("UPDATE jobs SET status = 'dropped', reason = 'provider_failed', current_attempt_id = NULL, \
                    lease_owner = NULL, lease_expires_ms = NULL").await;
        assert_eq!(db.store.requeue_dropped(a, "provider_failed", NOW + 1).await.unwrap(), 2);
        let first = db.store.job(jobs[0].id).await.unwrap().unwrap();
        assert_eq!(first.current_attempt.map(|c| (c.id, c.idempotency_key)), Some((ids[0], "k0".to_owned())));
        let second = db.store.job(jobs[1].id).await.unwrap().unwrap();
        assert!(second.current_attempt.is_none(), "{second:?}");
    }
}

both_backends! {
    /// Account halts likewise: begun once, repeated by a failed probe, deferred
    /// without counting, gone (count and all) when lifted.
    async fn account_halts_begin_once_and_repeat_on_a_failed_probe(db) {
        let s = &db.store;
        let a = "default";
        s.halt_account(a, "provider_outage", NOW + 900_000, NOW).await.unwrap();
        s.halt_account(a, "provider_outage", NOW + 1_800_000, NOW + 5).await.unwrap();
        s.halt_account(a, "voice_usage_exhausted", NOW + 1_800_000, NOW + 6).await.unwrap();
        let h = s.account_halt(a).await.unwrap().unwrap();
        assert_eq!((h.reason.as_str(), h.halt_count, h.probe_at_ms), ("provider_outage", 1, NOW + 900_000));
        s.rehalt_account(a, "provider_outage", NOW + 2_700_000, NOW + 900_000).await.unwrap();
        s.defer_account_probe(a, NOW + 2_700_500).await.unwrap();
        let h = s.account_halt(a).await.unwrap().unwrap();
        assert_eq!((h.halt_count, h.probe_at_ms), (2, NOW + 2_700_500));
        // A probe failing for another cause starts that cause's count.
        s.rehalt_account(a, "voice_usage_exhausted", NOW + 3_600_000, NOW + 2_700_500).await.unwrap();
        let h = s.account_halt(a).await.unwrap().unwrap();
        assert_eq!((h.reason.as_str(), h.halt_count), ("voice_usage_exhausted", 1));
        s.lift_account_halt(a).await.unwrap();
        assert!(s.account_halt(a).await.unwrap().is_none());
    }
}

both_backends! {
    async fn dnc_numbers_and_whole_area_codes_are_facts(db) {
        let (_d, path) = write_file("dnc.txt", b"# national registry\n\n2122345678\n201,2345678\n646XXXXXXX\nbogus\n");
        let r = import::import_dnc(&db.store, &path, "national", NOW, Box::new(NoProgress)).await.unwrap();
        assert_eq!((r.read, r.loaded, r.rejected.len()), (4, 3, 1), "{r:?}");
        assert_eq!(r.rejected[0].line, 6);
        let phones: Vec<String> = ["+12122345678", "+12012345678", "+16462345678", "+13122345678"].map(String::from).to_vec();
        let f = db.store.facts(&phones, None, 0).await.unwrap();
        assert_eq!(f.iter().map(|x| x.dnc).collect::<Vec<_>>(), [true, true, true, false]);
        // Re-import never removes an entry and loads nothing new.
        let r = import::import_dnc(&db.store, &path, "national", NOW, Box::new(NoProgress)).await.unwrap();
        assert_eq!(r.loaded, 0);
        assert!(db.store.facts(&phones, None, 0).await.unwrap()[0].dnc);
    }
}

/// PostgreSQL: pre-flight's batch lookups are one statement whatever the batch's
/// size (`= ANY($1)`), so a worker's connections do not prepare and cache a statement
/// for every size (an `IN` list each: 3.8 MB of the worker's heap late in a 40,000-dial
/// run, docs/benchmarks.md, session 9). The answers stay right for every size.
#[tokio::test]
async fn postgres_batch_lookups_are_one_prepared_statement_whatever_the_batch_size() {
    use dialer::store::Store;
    let db = crate::support::TestDb::postgres().await;
    let (_d, path) = write_file("dnc.txt", b"2122345678\n646XXXXXXX\n");
    import::import_dnc(&db.store, &path, "national", NOW, Box::new(NoProgress))
        .await
        .unwrap();
    // One connection: every statement below is prepared in the session inspected.
    let pg = dialer::store::postgres::PgStore::connect(&db.url, 1)
        .await
        .unwrap();
    for n in 1..=40usize {
        let mut phones: Vec<String> = (0..n).map(|i| format!("+1312234{:04}", 5000 + i)).collect();
        phones[n / 2] = "+12122345678".to_owned();
        if n > 2 {
            phones[0] = "+16462345678".to_owned();
        }
        let f = pg.facts(&phones, Some("renewals-2026"), 0).await.unwrap();
        let dnc: Vec<usize> = f
            .iter()
            .enumerate()
            .filter(|(_, x)| x.dnc)
            .map(|(i, _)| i)
            .collect();
        let expected: Vec<usize> = if n > 2 { vec![0, n / 2] } else { vec![n / 2] };
        assert_eq!(dnc, expected, "batch of {n}");
    }
    let prepared: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_prepared_statements")
        .fetch_one(pg.pool())
        .await
        .unwrap();
    // Five lookups (DNC numbers, DNC area codes, opt-outs, consents, counted calls)
    // and this count; an `IN` list would leave about 4 x 40.
    assert!(
        prepared <= 8,
        "{prepared} prepared statements after 40 batch sizes"
    );
}

both_backends! {
    async fn opt_outs_apply_globally_or_per_campaign_and_are_never_removed(db) {
        let (_d, path) = write_file(
            "opt.csv",
            b"phone,campaign,opted_out_at,source\n2122345678,,2026-01-01,sms\n3122345678,renewals-2026,,web\n4152345678,other,,web\n",
        );
        let r = import::import_opt_outs(&db.store, &path, NOW, Box::new(NoProgress)).await.unwrap();
        assert_eq!(r.loaded, 3);
        let phones: Vec<String> = ["+12122345678", "+13122345678", "+14152345678"].map(String::from).to_vec();
        let f = db.store.facts(&phones, Some("renewals-2026"), 0).await.unwrap();
        assert_eq!(f.iter().map(|x| x.opted_out).collect::<Vec<_>>(), [true, true, false]);
        let (_d2, empty) = write_file("opt2.csv", b"phone,campaign\n");
        import::import_opt_outs(&db.store, &empty, NOW, Box::new(NoProgress)).await.unwrap();
        assert!(db.store.facts(&phones, Some("renewals-2026"), 0).await.unwrap()[0].opted_out);
    }
}

both_backends! {
    /// A later file can narrow a grant (revoke it, give it an expiry or an earlier
    /// one), never widen it again.
    async fn consent_revocations_and_expiries_apply_and_are_never_undone_by_a_later_file(db) {
        let (_d, granted) = write_file(
            "c1.csv",
            b"phone,campaign,kind,granted_at,expires_at,revoked_at\n2122345678,,express_written,2026-01-01,,\n3122345678,,express,2026-01-01,2027-01-01,\n5,,express,2026-01-01,,\n3122345679,,written,2026-01-01,,\n3122345670,,express,someday,,\n",
        );
        let r = import::import_consents(&db.store, &granted, Box::new(NoProgress)).await.unwrap();
        assert_eq!((r.loaded, r.rejected.len()), (2, 3), "{r:?}");
        let (_d2, revoked) = write_file(
            "c2.csv",
            b"phone,campaign,kind,granted_at,expires_at,revoked_at\n2122345678,,express_written,2026-01-01,,2026-06-01\n",
        );
        import::import_consents(&db.store, &revoked, Box::new(NoProgress)).await.unwrap();
        import::import_consents(&db.store, &granted, Box::new(NoProgress)).await.unwrap();
        let f = db.store.facts(&["+12122345678".to_owned()], None, 0).await.unwrap();
        assert_eq!(f[0].consents.len(), 1);
        assert!(f[0].consents[0].revoked_at_ms.is_some(), "a later file un-revoked a consent");

        // Expiries: one added where there was none, one later than the stored one.
        let (_d3, expiring) = write_file(
            "c3.csv",
            b"phone,campaign,kind,granted_at,expires_at,revoked_at\n2122345678,,express_written,2026-01-01,2026-03-01,\n3122345678,,express,2026-01-01,2028-01-01,\n",
        );
        import::import_consents(&db.store, &expiring, Box::new(NoProgress)).await.unwrap();
        import::import_consents(&db.store, &granted, Box::new(NoProgress)).await.unwrap();
        let ms = |d: &str| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").unwrap()
            .and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp_millis();
        let phones = ["+12122345678".to_owned(), "+13122345678".to_owned()];
        let f = db.store.facts(&phones, None, 0).await.unwrap();
        assert_eq!(f[0].consents[0].expires_at_ms, Some(ms("2026-03-01")), "the added expiry applies and stays");
        assert_eq!(f[1].consents[0].expires_at_ms, Some(ms("2027-01-01")), "a later file lengthened a consent");
    }
}

both_backends! {
    /// The bulk path's two routes: a file of new numbers (plain insert) and a file
    /// mixing new numbers, numbers already in the campaign and a repeat (de-duplicated).
    async fn a_second_file_loads_only_its_new_numbers(db) {
        let id = campaign(&db.store).await;
        let (_a, first) = write_file("a.csv", b"phone\n2122345601\n2122345602\n2122345603\n");
        let r = import::import_contacts(&db.store, id, NOW, &first, Box::new(NoProgress)).await.unwrap();
        assert_eq!((r.loaded, r.duplicates), (3, 0));
        let (_b, second) = write_file("b.csv", b"phone\n2122345602\n2122345604\n2122345603\n2122345605\n2122345604\n");
        let r = import::import_contacts(&db.store, id, NOW, &second, Box::new(NoProgress)).await.unwrap();
        assert_eq!((r.loaded, r.duplicates), (2, 3), "{r:?}");
        let st = db.store.status(None, NOW).await.unwrap();
        assert_eq!(st.campaigns[0].jobs["queued"], 5);
        // An unknown campaign loads nothing.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tx.send(vec![]).await.unwrap();
        drop(tx);
        assert!(db.store.import_contacts(9999, NOW, rx).await.is_err());
    }
}

/// `(phone, external_id)` of every job, in id order, read straight from the database.
async fn jobs_by_id(db: &crate::support::TestDb) -> Vec<(String, Option<String>)> {
    const SQL: &str = "SELECT phone, external_id FROM jobs ORDER BY id";
    if db.url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
        sqlx::query_as(SQL).fetch_all(&pool).await.unwrap()
    } else {
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        sqlx::query_as(SQL).fetch_all(&pool).await.unwrap()
    }
}

both_backends! {
    /// A first file that repeats every number, far more repeats than the PostgreSQL
    /// fast path holds aside at once: each number loads once, with the attributes of
    /// its first row in the file, and the repeats are counted as duplicates.
    async fn a_first_file_with_many_repeats_keeps_each_numbers_first_row(db) {
        let id = campaign(&db.store).await;
        let n = 30_000u64;
        let mut csv = String::from("phone,external_id\n");
        for pass in ["first", "repeat"] {
            for i in 0..n {
                csv.push_str(&format!("212{:07},{pass}-{i}\n", 2_340_000 + i));
            }
        }
        let (_d, path) = write_file("repeats.csv", csv.as_bytes());
        let r = import::import_contacts(&db.store, id, NOW, &path, Box::new(NoProgress)).await.unwrap();
        assert!(r.rejected.is_empty(), "{:?}", &r.rejected[..r.rejected.len().min(3)]);
        assert_eq!((r.read, r.loaded, r.duplicates), (2 * n, n, n));
        let jobs = jobs_by_id(&db).await;
        assert_eq!(jobs.len() as u64, n);
        let mut phones: Vec<&str> = jobs.iter().map(|j| j.0.as_str()).collect();
        phones.sort_unstable();
        phones.dedup();
        assert_eq!(phones.len() as u64, n, "a number loaded twice");
        for (phone, ext) in &jobs {
            let i: u64 = phone[5..].parse::<u64>().unwrap() - 2_340_000;
            assert_eq!(ext.as_deref(), Some(format!("first-{i}").as_str()), "{phone}");
        }
    }
}

both_backends! {
    /// A dispatch (the worker's one transaction before a group of dials; on
    /// PostgreSQL set-based statements) keeps the per-job rules: verdicts and
    /// blocked jobs' decisions are stored with the sends; a new attempt is checked
    /// against the caps across campaigns, each counting toward the next, and a
    /// capped job is requeued; a send is recorded and counted only under the
    /// caller's lease; a resend keeps the key. Then the decisions' batch: the
    /// attempt part always applies and counts once, the job part only under its
    /// guard; and outcomes: applied once, a second one only recorded.
    async fn dispatches_and_batched_decisions_keep_the_per_job_rules(db) {
        use dialer::store::{
            AttemptUpdate, AuditRecord, Dispatch, Dispatched, Guard, InboxEvent, InboxMark,
            JobUpdate, JobWrite, OutcomeBatch, Placement, SendKind, SendRequest,
        };
        let a = campaign(&db.store).await;
        let spec = CampaignSpec::parse(&CAMPAIGN.replace("renewals-2026", "winback")).unwrap();
        let b = db.store.apply_campaign(&spec, NOW).await.unwrap().0.id;
        let (_d, path) = write_file("a.csv", b"phone\n2122345601\n2122345602\n2122345603\n2122345604\n");
        import::import_contacts(&db.store, a, NOW, &path, Box::new(NoProgress)).await.unwrap();
        // The same number as the first job, in another campaign.
        let (_d2, path2) = write_file("b.csv", b"phone\n2122345601\n");
        import::import_contacts(&db.store, b, NOW, &path2, Box::new(NoProgress)).await.unwrap();
        // (On PostgreSQL a claim takes a first import's jobs one campaign at a time.)
        let mut jobs = Vec::new();
        loop {
            let got = db.store.claim("w1", 10, NOW, 60_000, None).await.unwrap();
            if got.is_empty() {
                break;
            }
            jobs.extend(got);
        }
        jobs.sort_by_key(|j| (j.campaign_id, j.id));
        assert_eq!(jobs.len(), 5);
        let (j0, j1, j2, j3, other) = (&jobs[0], &jobs[1], &jobs[2], &jobs[3], &jobs[4]);
        assert_eq!((other.campaign_id, other.phone.as_str()), (b, j0.phone.as_str()));
        let day = 86_400_000;
        let new = |j: &dialer::store::ClaimedJob, key: &str| SendRequest {
            job_id: j.id,
            campaign_id: j.campaign_id,
            phone: j.phone.clone(),
            send: SendKind::New { key: key.into(), body: "{}".into(), caps: vec![(1, day)], requeue_jitter_ms: 7 },
            now_ms: NOW,
        };
        let audit = |j: &dialer::store::ClaimedJob, verdict: &str| AuditRecord {
            job_id: Some(j.id), campaign_id: Some(j.campaign_id), phone: j.phone.clone(), at_ms: NOW,
            stage: "claim", verdict: verdict.into(), rule: None, reason: "test".into(), zones: String::new(),
            states: String::new(), local_times: "[]".into(), next_allowed_ms: None,
        };
        let lease = |job_id: i64, owner: &str, update: JobUpdate| JobWrite {
            job_id, guard: Guard::Lease(owner.into()), update, now_ms: NOW,
        };
        let dropped = JobUpdate {
            status: "dropped", reason: Some("dnc".into()), reason_source: Some("local"), ..Default::default()
        };

        // Another worker's dispatch records nothing of these jobs.
        let foreign = db.store.dispatch(&Dispatch {
            owner: "w2".into(), audits: vec![], writes: vec![lease(j3.id, "w2", dropped.clone())],
            sends: vec![new(j1, "kx")],
        }).await.unwrap();
        assert_eq!((foreign.writes, foreign.sends), (vec![false], vec![Dispatched::LeaseLost]));
        let untouched = db.store.job(j1.id).await.unwrap().unwrap();
        assert!(untouched.current_attempt.is_none(), "no attempt, and not moved to dialing, under another's lease");

        // The first job and the other campaign's job share a number: with a cap of
        // 1 per day the one dispatched first (same number, either order) is sent and
        // the other requeued until the window passes.
        let r = db.store.dispatch(&Dispatch {
            owner: "w1".into(),
            audits: vec![audit(j0, "allow"), audit(j1, "allow"), audit(j2, "allow"), audit(j3, "drop")],
            writes: vec![lease(j3.id, "w1", dropped.clone())],
            sends: vec![new(j0, "k0"), new(j1, "k1"), new(j2, "k2"), new(other, "ko")],
        }).await.unwrap();
        assert_eq!(r.writes, [true]);
        let sent: Vec<_> = r.sends[..3].iter().map(|x| match x {
            Dispatched::Sent(at) => at.clone(),
            other => panic!("expected a send, got {other:?}"),
        }).collect();
        assert_eq!(sent.iter().map(|x| (x.idempotency_key.as_str(), x.sends, x.placement)).collect::<Vec<_>>(),
            [("k0", 1, Placement::Reserved), ("k1", 1, Placement::Reserved), ("k2", 1, Placement::Reserved)]);
        assert_eq!(r.sends[3], Dispatched::CapReached { retry_at_ms: NOW + day }, "the cap counts across campaigns");
        let capped = db.store.job(other.id).await.unwrap().unwrap();
        assert!(capped.current_attempt.is_none());
        let st = db.store.status(None, NOW).await.unwrap();
        let by_name = |n: &str| st.campaigns.iter().find(|c| c.name == n).unwrap().clone();
        assert_eq!(by_name("winback").jobs["queued"], 1);
        assert_eq!((by_name("renewals-2026").jobs["dialing"], by_name("renewals-2026").jobs["dropped"]), (3, 1));
        assert_eq!(db.store.claim("w9", 10, NOW + day + 6, 60_000, None).await.unwrap().len(), 0, "due before the jitter");
        assert_eq!(db.store.claim("w9", 10, NOW + day + 7, 60_000, None).await.unwrap().len(), 1);

        // A resend keeps the key and counts one more send, and keeps the provider
        // retries its attempt has used (only a new attempt starts at 0).
        db.execute(&format!("UPDATE jobs SET provider_retries = 3 WHERE id = {}", j2.id)).await;
        let re = db.store.dispatch(&Dispatch {
            owner: "w1".into(), audits: vec![], writes: vec![],
            sends: vec![SendRequest { job_id: j2.id, campaign_id: a, phone: j2.phone.clone(),
                send: SendKind::Resend { attempt_id: sent[2].id }, now_ms: NOW }],
        }).await.unwrap();
        match &re.sends[0] {
            Dispatched::Sent(x) => assert_eq!((x.idempotency_key.as_str(), x.sends), ("k2", 2)),
            other => panic!("expected a resend, got {other:?}"),
        }
        assert_eq!(db.store.job(j2.id).await.unwrap().unwrap().provider_retries, 3);
        // The per-job mark (a retry) follows the same lease rule.
        assert!(!db.store.mark_sending(j2.id, sent[2].id, "w2", NOW).await.unwrap());
        assert!(db.store.mark_sending(j2.id, sent[2].id, "w1", NOW).await.unwrap());
        assert_eq!(db.store.attempt(sent[2].id).await.unwrap().unwrap().sends, 3);

        let placed = |x: &dialer::store::AttemptRow, call: &str| AttemptUpdate {
            id: x.id, placement: Some(Placement::Placed), call_id: Some(call.into()),
            response_status: Some(202), ..Default::default()
        };
        let applied = db.store.update_jobs(&[
            lease(j0.id, "w1", JobUpdate { status: "awaiting_outcome", attempt: Some(placed(&sent[0], "call_a")), ..Default::default() }),
            // Lease lost: the 202 is still recorded and counted, the job is not moved.
            lease(j1.id, "w2", JobUpdate { status: "awaiting_outcome", attempt: Some(placed(&sent[1], "call_b")), ..Default::default() }),
            lease(j2.id, "w1", JobUpdate {
                status: "dropped", reason: Some("invalid_number".into()), reason_source: Some("vendor"),
                attempt: Some(AttemptUpdate { id: sent[2].id, placement: Some(Placement::NotPlaced), ..Default::default() }),
                clear_current_attempt: true, ..Default::default()
            }),
        ]).await.unwrap();
        assert_eq!(applied, [true, false, true]);
        let x = db.store.job(j0.id).await.unwrap().unwrap();
        assert_eq!(x.attempts, 1);
        let cur = x.current_attempt.unwrap();
        assert_eq!((cur.placement, cur.call_id.as_deref(), cur.sends), (Placement::Placed, Some("call_a"), 1));
        let y = db.store.job(j1.id).await.unwrap().unwrap();
        assert_eq!(y.attempts, 1, "a placed attempt counts even when the job part did not apply");
        let z = db.store.job(j2.id).await.unwrap().unwrap();
        assert_eq!((z.attempts, z.current_attempt.is_none()), (0, true));
        assert_eq!(db.store.attempt(sent[2].id).await.unwrap().unwrap().placement, Placement::NotPlaced);

        // Outcomes: an event before its 202 is pending; the job's outcome applies
        // once (the guard), a second outcome is recorded on the attempt only.
        let ev = |id: &str, call: &str| InboxEvent { event_id: id.into(), call_id: call.into(), body: "{}".into() };
        assert_eq!(db.store.inbox_insert_many(&[ev("e1", "call_a"), ev("e1", "call_a"), ev("e2", "call_zz")], NOW).await.unwrap(),
            [true, false, true], "the first of a repeated id in one batch is stored");
        assert_eq!(db.store.inbox_insert_many(&[ev("e1", "call_a")], NOW).await.unwrap(), [false], "a repeated event id");
        assert_eq!(db.store.inbox_pending_many(&["call_a".into()]).await.unwrap().len(), 1);
        let targets = db.store.outcome_targets(&["call_a".into(), "call_b".into(), "call_zz".into()]).await.unwrap();
        let t = |c: &str| targets.iter().find(|t| t.attempt.call_id.as_deref() == Some(c)).cloned();
        assert_eq!(t("call_a").map(|t| (t.awaiting, t.job_attempts)), Some((true, 1)));
        assert_eq!(t("call_b").map(|t| (t.awaiting, t.before_202)), Some((false, true)),
            "its job did not take the 202 yet: an outcome waits for it");
        assert_eq!(t("call_a").map(|t| t.before_202), Some(false));
        assert!(t("call_zz").is_none());
        let outcome = |code: &str| AttemptUpdate {
            id: sent[0].id, outcome_code: Some(code.into()), outcome_source: Some("webhook"), ..Default::default()
        };
        let done = || JobWrite {
            job_id: j0.id, guard: Guard::Awaiting(sent[0].id),
            update: JobUpdate { status: "done", attempt: Some(outcome("completed")), clear_current_attempt: true, ..Default::default() },
            now_ms: NOW,
        };
        let batch = OutcomeBatch {
            writes: vec![done()], recorded: vec![],
            marks: vec![InboxMark { event_id: "e1".into(), result: None, write: Some(0) }], now_ms: NOW,
        };
        assert_eq!(db.store.apply_outcomes(&batch).await.unwrap(), [true]);
        assert_eq!(db.store.apply_outcomes(&batch).await.unwrap(), [false], "an outcome applies once");
        assert!(db.store.inbox_pending_many(&["call_a".into()]).await.unwrap().is_empty());
        assert!(db.store.inbox_unapplied(NOW + 1, 10).await.unwrap().is_empty(), "call_zz has no 202: not swept");
        // Events of calls no attempt has are set aside (kept, marked) once old
        // enough, so the sweeper's scan does not grow with them; a known call's
        // event is never set aside.
        assert_eq!(db.store.inbox_insert_many(&[ev("e3", "call_b")], NOW).await.unwrap(), [true]);
        assert_eq!(db.store.inbox_set_aside_unknown(NOW - 1, NOW).await.unwrap(), 0, "not old enough");
        assert_eq!(db.store.inbox_set_aside_unknown(NOW, NOW).await.unwrap(), 1, "call_zz's event");
        assert!(db.store.inbox_pending_many(&["call_zz".into()]).await.unwrap().is_empty());
        assert_eq!(db.store.inbox_pending_many(&["call_b".into()]).await.unwrap().len(), 1, "a known call's event stays");
        assert_eq!(db.store.inbox_insert_many(&[ev("e2", "call_zz")], NOW).await.unwrap(), [false],
            "set aside, not deleted: a repeat is still recognised");
        let recorded = OutcomeBatch { recorded: vec![outcome("busy")], now_ms: NOW, ..Default::default() };
        db.store.apply_outcomes(&recorded).await.unwrap();
        assert_eq!(db.store.attempt(sent[0].id).await.unwrap().unwrap().outcome_code.as_deref(), Some("completed"),
            "the first outcome stays");
        let st = db.store.status(None, NOW).await.unwrap();
        let r = st.campaigns.iter().find(|c| c.name == "renewals-2026").unwrap();
        assert_eq!((r.jobs["done"], r.jobs["dropped"], r.jobs["dialing"]), (1, 2, 1));

        // The claim-time facts count each placed or possibly placed call once, from
        // the window's start (inclusive), and never a call that was not placed.
        let phones = [j0.phone.clone(), j2.phone.clone()];
        let counted = |f: Vec<dialer::store::NumberFacts>| f.into_iter().map(|f| f.counted_calls_ms).collect::<Vec<_>>();
        assert_eq!(counted(db.store.facts(&phones, None, NOW).await.unwrap()), [vec![NOW], Vec::<i64>::new()]);
        assert_eq!(counted(db.store.facts(&phones, None, NOW + 1).await.unwrap()), [Vec::<i64>::new(), vec![]]);
    }
}

both_backends! {
    /// The claim path for a campaign's first import (on PostgreSQL: fresh jobs taken in
    /// id order from the import's id range, not through the claim index) and for every
    /// later job (the claim index): concurrent claimers take every due job exactly once,
    /// a paused campaign's jobs wait until it resumes, jobs of a later import and a
    /// requeued job are claimed again.
    async fn concurrent_claimers_take_each_imported_job_once_and_skip_paused_campaigns(db) {
        use dialer::store::{Guard, JobUpdate, JobWrite};
        use std::collections::{BTreeSet, HashMap};
        let a = campaign(&db.store).await;
        let spec = CampaignSpec::parse(&CAMPAIGN.replace("renewals-2026", "winback")).unwrap();
        let b = db.store.apply_campaign(&spec, NOW).await.unwrap().0.id;
        let file = |first: u64, n: u64| {
            let mut csv = String::from("phone\n");
            for i in first..first + n {
                csv.push_str(&format!("312{:07}\n", 2_340_000 + i));
            }
            write_file("c.csv", csv.as_bytes())
        };
        let (_da, pa) = file(0, 5_000);
        let (_db, pb) = file(10_000, 300);
        import::import_contacts(&db.store, a, NOW, &pa, Box::new(NoProgress)).await.unwrap();
        import::import_contacts(&db.store, b, NOW, &pb, Box::new(NoProgress)).await.unwrap();
        assert!(db.store.set_operator_pause("winback", true, NOW).await.unwrap());

        let drain = |store: DynStore| async move {
            let mut claimers = Vec::new();
            for w in 0..4 {
                let store = store.clone();
                claimers.push(tokio::spawn(async move {
                    let mut got = Vec::new();
                    loop {
                        let jobs = store.claim(&format!("w{w}"), 97, NOW, 60_000, None).await.unwrap();
                        if jobs.is_empty() {
                            return got;
                        }
                        got.extend(jobs.into_iter().map(|j| (j.id, j.campaign_id, format!("w{w}"))));
                    }
                }));
            }
            let mut all = Vec::new();
            for c in claimers {
                all.extend(c.await.unwrap());
            }
            all
        };
        let first = drain(db.store.clone()).await;
        assert_eq!(first.len(), 5_000, "every job of the unpaused campaign, once");
        assert_eq!(first.iter().map(|j| j.0).collect::<BTreeSet<_>>().len(), 5_000, "a job claimed twice");
        assert!(first.iter().all(|j| j.1 == a), "a paused campaign's job was claimed");

        // A requeued job is due again; a later import's jobs are claimable too.
        let owner: HashMap<i64, String> = first.iter().map(|j| (j.0, j.2.clone())).collect();
        let requeued = first[1234].0;
        let write = JobWrite {
            job_id: requeued,
            guard: Guard::Lease(owner[&requeued].clone()),
            update: JobUpdate { status: "queued", due_at_ms: Some(NOW + 1), ..Default::default() },
            now_ms: NOW,
        };
        assert_eq!(db.store.update_jobs(&[write]).await.unwrap(), [true]);
        let (_dc, pc) = file(20_000, 50);
        import::import_contacts(&db.store, a, NOW, &pc, Box::new(NoProgress)).await.unwrap();
        assert!(db.store.set_operator_pause("winback", false, NOW).await.unwrap());
        let second = drain(db.store.clone()).await;
        let ids: BTreeSet<i64> = second.iter().map(|j| j.0).collect();
        assert_eq!((second.len(), ids.len()), (350, 350), "the resumed campaign and the later import, once each");
        assert_eq!(second.iter().filter(|j| j.1 == b).count(), 300);
        assert!(!ids.contains(&requeued), "claimed before its due time");
        let third = db.store.claim("w9", 10, NOW + 1, 60_000, None).await.unwrap();
        assert_eq!(third.iter().map(|j| j.id).collect::<Vec<_>>(), [requeued]);
    }
}

both_backends! {
    /// The heartbeat renews only the leases of jobs the worker's tasks still hold: a
    /// job whose task gave up without a decision or a release (the database was down)
    /// expires and is recovered like a dead worker's, instead of staying leased to a
    /// live worker for good.
    async fn the_heartbeat_renews_only_held_jobs_so_an_abandoned_one_is_recovered(db) {
        let id = campaign(&db.store).await;
        let (_d, path) = write_file("c.csv", b"phone\n2122345601\n2122345602\n");
        import::import_contacts(&db.store, id, NOW, &path, Box::new(NoProgress)).await.unwrap();
        let mut jobs = db.store.claim("w1", 10, NOW, 1, None).await.unwrap();
        jobs.sort_by_key(|j| j.id);
        assert_eq!(jobs.len(), 2);
        db.store.heartbeat("w1", &[jobs[0].id], 600_000, NOW + 10).await.unwrap();
        // PostgreSQL leases run on the database clock: let the 1 ms lease pass.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(db.store.recover_expired_leases(NOW + 20).await.unwrap(), 1);
        let st = db.store.status(None, NOW).await.unwrap();
        assert_eq!((st.campaigns[0].jobs["running"], st.campaigns[0].jobs["queued"]), (1, 1));
        let again = db.store.claim("w2", 10, NOW + 20, 60_000, None).await.unwrap();
        assert_eq!(again.iter().map(|j| j.id).collect::<Vec<_>>(), [jobs[1].id], "the abandoned job, not the held one");
    }
}

/// PostgreSQL: each bulk import leaves the planner statistics of the table it
/// loaded (`pg_class.reltuples` is -1 until a table is first analyzed), so the
/// batched pre-flight lookups are planned as index probes from the first claim on,
/// not as sequential scans until autovacuum's next pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_imports_leave_planner_statistics_for_the_loaded_tables() {
    let db = crate::support::TestDb::postgres().await;
    let id = campaign(&db.store).await;
    let numbers: String = (0..300).map(|i| format!("212234{i:04}\n")).collect();
    let (_c, contacts) = write_file("c.csv", format!("phone\n{numbers}").as_bytes());
    let (_d, dnc) = write_file("dnc.txt", numbers.as_bytes());
    let (_o, opt) = write_file("opt.csv", format!("phone\n{numbers}").as_bytes());
    import::import_contacts(&db.store, id, NOW, &contacts, Box::new(NoProgress))
        .await
        .unwrap();
    import::import_dnc(&db.store, &dnc, "national", NOW, Box::new(NoProgress))
        .await
        .unwrap();
    import::import_opt_outs(&db.store, &opt, NOW, Box::new(NoProgress))
        .await
        .unwrap();
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    for table in ["jobs", "dnc_numbers", "opt_outs"] {
        let rows: f32 =
            sqlx::query_scalar("SELECT reltuples FROM pg_class WHERE oid = $1::text::regclass")
                .bind(table)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(rows, 300.0, "{table}: statistics of the loaded rows");
    }
}

both_backends! {
    /// A call counts toward frequency caps from the last time it was sent, the
    /// latest moment it can have been placed (SPEC section 6; section 7: an
    /// ambiguous attempt is re-sent under its key for up to revdesk.key_ttl), not from
    /// when its attempt was created. Created at NOW and placed by a re-send 7 hours
    /// later, the call holds a cap of 1 a day until NOW + 7h + 1 day, in the atomic
    /// check of the dispatch (another campaign, same number) and in the claim-time
    /// facts alike. Timed by creation, the second call went out at NOW + 1 day + 1h:
    /// two calls 18 hours apart.
    async fn a_call_placed_by_a_re_send_counts_from_that_send(db) {
        use dialer::store::{Dispatch, Dispatched, SendKind, SendRequest};
        let a = campaign(&db.store).await;
        let spec = CampaignSpec::parse(&CAMPAIGN.replace("renewals-2026", "winback")).unwrap();
        let b = db.store.apply_campaign(&spec, NOW).await.unwrap().0.id;
        let (_d, path) = write_file("a.csv", b"phone\n2122345601\n");
        import::import_contacts(&db.store, a, NOW, &path, Box::new(NoProgress)).await.unwrap();
        let hour = 3_600_000;
        let day = 24 * hour;
        let first = db.store.claim("w1", 10, NOW, 60_000, None).await.unwrap();
        assert_eq!(first.len(), 1);
        let job = &first[0];
        let send = |job_id: i64, campaign_id: i64, send: SendKind, now_ms: i64| Dispatch {
            owner: "w1".into(), audits: vec![], writes: vec![],
            sends: vec![SendRequest { job_id, campaign_id, phone: job.phone.clone(), send, now_ms }],
        };
        let new = |key: &str| SendKind::New { key: key.into(), body: "{}".into(), caps: vec![(1, day)], requeue_jitter_ms: 0 };
        let attempt = match &db.store.dispatch(&send(job.id, a, new("k1"), NOW)).await.unwrap().sends[0] {
            Dispatched::Sent(x) => x.clone(),
            other => panic!("expected a send, got {other:?}"),
        };
        // The answer was ambiguous; seven hours later the same key is sent again.
        let resent = db.store.dispatch(&send(job.id, a, SendKind::Resend { attempt_id: attempt.id }, NOW + 7 * hour))
            .await.unwrap();
        match &resent.sends[0] {
            Dispatched::Sent(x) => {
                assert_eq!((x.idempotency_key.as_str(), x.counted_at_ms()), ("k1", NOW + 7 * hour));
            }
            other => panic!("expected a re-send, got {other:?}"),
        }

        // The same number in another campaign, a day and an hour after the creation.
        let later = NOW + day + hour;
        let (_d2, path2) = write_file("b.csv", b"phone\n2122345601\n");
        import::import_contacts(&db.store, b, NOW, &path2, Box::new(NoProgress)).await.unwrap();
        let other = db.store.claim("w1", 10, later, 60_000, None).await.unwrap();
        assert_eq!(other.iter().map(|j| j.campaign_id).collect::<Vec<_>>(), [b]);
        let facts = db.store.facts(std::slice::from_ref(&job.phone), Some("winback"), later - day).await.unwrap();
        assert_eq!(facts[0].counted_calls_ms, [NOW + 7 * hour], "the claim-time facts time the call at its re-send");
        let r = db.store.dispatch(&Dispatch {
            owner: "w1".into(), audits: vec![], writes: vec![],
            sends: vec![SendRequest { job_id: other[0].id, campaign_id: b, phone: job.phone.clone(), send: new("k2"), now_ms: later }],
        }).await.unwrap();
        assert_eq!(r.sends[0], Dispatched::CapReached { retry_at_ms: NOW + 7 * hour + day });
    }
}

/// PostgreSQL, SPEC section 7 ("a timeout or a crash cannot cause a second call"):
/// a worker whose lease has run out (its heartbeats failed through a database
/// outage) dispatches nothing, and lease recovery marks the attempt the job has
/// when the recovery takes its row: here a dispatch that committed a sent attempt
/// while the recovery waited for the row's lock. Read before the lock (the
/// recovery's first statement), that attempt stayed `reserved`, uncounted, and a
/// definitive answer to its re-send let the next claim make a new key while it
/// may have placed a call.
#[tokio::test]
async fn postgres_recovery_marks_the_attempt_a_concurrent_dispatch_committed_and_expired_leases_send_nothing()
 {
    use dialer::store::{Dispatch, Dispatched, SendKind, SendRequest};
    let db = crate::support::TestDb::postgres().await;
    let a = campaign(&db.store).await;
    let (_d, path) = write_file("a.csv", b"phone\n2122345601\n2122345602\n");
    import::import_contacts(&db.store, a, NOW, &path, Box::new(NoProgress))
        .await
        .unwrap();
    let mut jobs = Vec::new();
    loop {
        let got = db.store.claim("w1", 10, NOW, 60_000, None).await.unwrap();
        if got.is_empty() {
            break;
        }
        jobs.extend(got);
    }
    jobs.sort_by_key(|j| j.id);
    assert_eq!(jobs.len(), 2);
    // Both leases ran out.
    db.execute("UPDATE jobs SET lease_expires_ms = 0").await;

    let sent = db
        .store
        .dispatch(&Dispatch {
            owner: "w1".into(),
            audits: vec![],
            writes: vec![],
            sends: vec![SendRequest {
                job_id: jobs[0].id,
                campaign_id: a,
                phone: jobs[0].phone.clone(),
                send: SendKind::New {
                    key: "k0".into(),
                    body: "{}".into(),
                    caps: vec![],
                    requeue_jitter_ms: 0,
                },
                now_ms: NOW,
            }],
        })
        .await
        .unwrap();
    assert_eq!(
        sent.sends,
        vec![Dispatched::LeaseLost],
        "an expired lease sends nothing"
    );

    // The second job's dispatch (as before this fix) commits while the recovery
    // waits for its row.
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let mut dispatch = pool.begin().await.unwrap();
    let attempt: i64 = sqlx::query_scalar(
        "INSERT INTO attempts (job_id, campaign_id, phone, attempt_no, idempotency_key, request_body, \
         placement, sends, created_at_ms, first_sent_at_ms, last_sent_at_ms) \
         VALUES ($1, $2, $3, 1, 'k1', '{}', 'reserved', 1, $4, $4, $4) RETURNING id",
    )
    .bind(jobs[1].id)
    .bind(a)
    .bind(&jobs[1].phone)
    .bind(NOW)
    .fetch_one(&mut *dispatch)
    .await
    .unwrap();
    sqlx::query("UPDATE jobs SET status = 'dialing', current_attempt_id = $2 WHERE id = $1")
        .bind(jobs[1].id)
        .bind(attempt)
        .execute(&mut *dispatch)
        .await
        .unwrap();
    let store = db.store.clone();
    let recovery = tokio::spawn(async move { store.recover_expired_leases(NOW).await.unwrap() });
    // Until the recovery waits for the second job's row lock.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
             AND query LIKE 'UPDATE jobs SET status = ''queued'', lease_owner = NULL%'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the recovery never waited for the row"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    dispatch.commit().await.unwrap();
    assert_eq!(recovery.await.unwrap(), 2, "both expired leases recovered");

    let b = db.store.attempt(attempt).await.unwrap().unwrap();
    assert_eq!(
        b.placement,
        dialer::store::Placement::PossiblyPlaced,
        "{b:?}"
    );
    let job = db.store.job(jobs[1].id).await.unwrap().unwrap();
    assert_eq!(job.attempts, 1, "counted once: {job:?}");
    assert_eq!(
        job.current_attempt.map(|c| c.id),
        Some(attempt),
        "kept, to be re-sent under its key"
    );
}

/// PostgreSQL: a claim's first statement commits its leases; when a later step of
/// the same claim fails (here: the attempts of the claimed jobs cannot be read), the
/// jobs are given back instead of staying leased to a worker that never got them
/// (they waited out the lease and were recovered as a dead worker's).
#[tokio::test]
async fn postgres_a_claim_that_fails_after_leasing_gives_its_jobs_back() {
    let db = crate::support::TestDb::postgres().await;
    let a = campaign(&db.store).await;
    let (_d, path) = write_file("a.csv", b"phone\n2122345601\n");
    import::import_contacts(&db.store, a, NOW, &path, Box::new(NoProgress))
        .await
        .unwrap();
    // A job with a current attempt (a requeued, possibly placed one), out of the
    // fast-import range so that the first claim statement takes it.
    let job = db
        .store
        .claim("w0", 10, NOW, 60_000, None)
        .await
        .unwrap()
        .remove(0);
    db.execute(&format!(
        "INSERT INTO attempts (job_id, campaign_id, phone, attempt_no, idempotency_key, request_body, \
         placement, sends, created_at_ms) VALUES ({}, {a}, '{}', 1, 'k', '{{}}', 'possibly_placed', 1, {NOW})",
        job.id, job.phone
    ))
    .await;
    db.execute(&format!(
        "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_expires_ms = NULL, \
         current_attempt_id = (SELECT id FROM attempts), due_at_ms = {NOW} WHERE id = {}",
        job.id
    ))
    .await;
    db.execute("ALTER TABLE attempts RENAME TO attempts_away")
        .await;
    let claimed = db.store.claim("w1", 10, NOW, 60_000, None).await;
    db.execute("ALTER TABLE attempts_away RENAME TO attempts")
        .await;
    assert!(
        claimed.is_err(),
        "the attempts could not be read: {claimed:?}"
    );
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let row: (String, Option<String>) =
        sqlx::query_as("SELECT status, lease_owner FROM jobs WHERE id = $1")
            .bind(job.id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (row.0.as_str(), row.1.as_deref()),
        ("queued", None),
        "given back"
    );
    assert_eq!(
        db.store
            .claim("w1", 10, NOW, 60_000, None)
            .await
            .unwrap()
            .len(),
        1
    );
}
