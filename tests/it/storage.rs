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
    async fn consent_revocations_apply_and_are_never_undone_by_a_later_file(db) {
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
    /// The batched writes of the worker's group commit (on PostgreSQL set-based
    /// statements) keep the per-job rules: a reservation counts toward the caps of
    /// the next one; a send is marked only under the caller's lease; the attempt part
    /// of a decision always applies and counts once, the job part only under its guard.
    async fn batched_reservations_marks_and_decisions_keep_the_per_job_rules(db) {
        use dialer::store::{AttemptUpdate, Guard, JobUpdate, JobWrite, Placement, ReserveRequest, Reservation, SendMark};
        let id = campaign(&db.store).await;
        let (_d, path) = write_file("c.csv", b"phone\n2122345601\n2122345602\n2122345603\n");
        import::import_contacts(&db.store, id, NOW, &path, Box::new(NoProgress)).await.unwrap();
        let mut jobs = db.store.claim("w1", 10, NOW, 60_000, None).await.unwrap();
        jobs.sort_by_key(|j| j.id);
        assert_eq!(jobs.len(), 3);
        let day = 86_400_000;
        let req = |j: &dialer::store::ClaimedJob, k: &str| ReserveRequest {
            job: j.clone(), key: k.into(), body: "{}".into(), caps: vec![(1, day)], now_ms: NOW,
        };
        let r = db.store
            .reserve_attempts(&[req(&jobs[0], "ka"), req(&jobs[1], "kb"), req(&jobs[2], "kc")])
            .await
            .unwrap();
        let attempts: Vec<_> = r.into_iter().map(|x| match x {
            Reservation::Reserved(a) => a,
            other => panic!("expected a reservation, got {other:?}"),
        }).collect();
        assert_eq!(attempts.iter().map(|a| a.idempotency_key.as_str()).collect::<Vec<_>>(), ["ka", "kb", "kc"]);
        // The reserved attempt counts: a second one for the same number is capped.
        match &db.store.reserve_attempts(&[req(&jobs[0], "ka2")]).await.unwrap()[0] {
            Reservation::CapReached { retry_at_ms } => assert_eq!(*retry_at_ms, NOW + day),
            other => panic!("cap of 1/24h not applied: {other:?}"),
        }

        let marks: Vec<SendMark> = jobs.iter().zip(&attempts)
            .map(|(j, a)| SendMark { job_id: j.id, attempt_id: a.id, now_ms: NOW }).collect();
        assert_eq!(db.store.mark_sending_many(&marks, "w2").await.unwrap(), [false, false, false]);
        assert_eq!(db.store.mark_sending_many(&marks, "w1").await.unwrap(), [true, true, true]);
        // The single mark (the per-job worker's, one statement on PostgreSQL) keeps
        // the same rule: only under the caller's lease, and then the send counts.
        assert!(!db.store.mark_sending(jobs[2].id, attempts[2].id, "w2", NOW).await.unwrap());
        assert!(db.store.mark_sending(jobs[2].id, attempts[2].id, "w1", NOW).await.unwrap());
        assert_eq!(db.store.attempt(attempts[2].id).await.unwrap().unwrap().sends, 2, "one send per held mark");
        assert_eq!(db.store.attempt(attempts[1].id).await.unwrap().unwrap().sends, 1);

        let placed = |a: &dialer::store::AttemptRow, call: &str| AttemptUpdate {
            id: a.id, placement: Some(Placement::Placed), call_id: Some(call.into()),
            response_status: Some(202), ..Default::default()
        };
        let write = |job_id: i64, guard: Guard, update: JobUpdate| JobWrite { job_id, guard, update, now_ms: NOW };
        let applied = db.store.update_jobs(&[
            write(jobs[0].id, Guard::Lease("w1".into()), JobUpdate {
                status: "awaiting_outcome", attempt: Some(placed(&attempts[0], "call_a")), ..Default::default()
            }),
            // Lease lost: the 202 is still recorded and counted, the job is not moved.
            write(jobs[1].id, Guard::Lease("w2".into()), JobUpdate {
                status: "awaiting_outcome", attempt: Some(placed(&attempts[1], "call_b")), ..Default::default()
            }),
            write(jobs[2].id, Guard::Lease("w1".into()), JobUpdate {
                status: "dropped", reason: Some("invalid_number".into()), reason_source: Some("vendor"),
                attempt: Some(AttemptUpdate { id: attempts[2].id, placement: Some(Placement::NotPlaced), ..Default::default() }),
                clear_current_attempt: true, ..Default::default()
            }),
        ]).await.unwrap();
        assert_eq!(applied, [true, false, true]);
        let a = db.store.job(jobs[0].id).await.unwrap().unwrap();
        assert_eq!(a.attempts, 1);
        let cur = a.current_attempt.unwrap();
        assert_eq!((cur.placement, cur.call_id.as_deref(), cur.sends), (Placement::Placed, Some("call_a"), 1));
        let b = db.store.job(jobs[1].id).await.unwrap().unwrap();
        assert_eq!(b.attempts, 1, "a placed attempt counts even when the job part did not apply");
        assert_eq!(db.store.attempt(attempts[1].id).await.unwrap().unwrap().call_id.as_deref(), Some("call_b"));
        let c = db.store.job(jobs[2].id).await.unwrap().unwrap();
        assert_eq!((c.attempts, c.current_attempt.is_none()), (0, true));
        assert_eq!(db.store.attempt(attempts[2].id).await.unwrap().unwrap().placement, Placement::NotPlaced);

        // The outcome guard: applies once while the job awaits this attempt.
        let done = || write(jobs[0].id, Guard::Awaiting(attempts[0].id), JobUpdate {
            status: "done", clear_current_attempt: true, ..Default::default()
        });
        assert_eq!(db.store.update_jobs(&[done()]).await.unwrap(), [true]);
        assert_eq!(db.store.update_jobs(&[done()]).await.unwrap(), [false]);
        let st = db.store.status(None, NOW).await.unwrap();
        assert_eq!((st.campaigns[0].jobs["done"], st.campaigns[0].jobs["dropped"], st.campaigns[0].jobs["dialing"]), (1, 1, 1));
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
