//! Table tests written from the statutes' numbers, and property tests of the time rules.

use super::*;
use chrono::{Duration as D, NaiveDateTime};
use chrono_tz::Tz::{self, *};
use proptest::prelude::*;

fn engine() -> Engine {
    Engine::new(&RulesConfig::default()).expect("built-in rules are valid")
}

fn phone(s: &str) -> PhoneNumber {
    PhoneNumber::parse(s).expect("test numbers are valid")
}

/// The UTC instant of a wall-clock time in `tz` (unambiguous in these tests).
fn at(tz: Tz, s: &str) -> DateTime<Utc> {
    let naive = NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").expect("test time");
    tz.from_local_datetime(&naive)
        .single()
        .expect("unambiguous")
        .with_timezone(&Utc)
}

fn live() -> Policy {
    Policy {
        call_type: CallType::Live,
        ..Policy::check_default()
    }
}

fn auto() -> Policy {
    Policy::check_default()
}

/// Evaluates the time rules for `number` (optionally with a contact state) at a wall
/// time in `tz`, and returns the outcome.
fn time_at(number: &str, state: Option<&str>, policy: &Policy, tz: Tz, when: &str) -> Verdict {
    let e = engine();
    let r = e.recipient(&phone(number), None, state, None);
    e.evaluate_time(&r, policy, at(tz, when))
}

fn requeued(v: &Verdict, rule: Rule, tz: Tz, when: &str) {
    assert_eq!(
        v.outcome,
        Outcome::Requeue {
            rule,
            at: at(tz, when)
        },
        "{}",
        v.reason
    );
}

fn allowed(v: &Verdict) {
    assert_eq!(v.outcome, Outcome::Allow, "{}", v.reason);
}

// Numbers whose prefix maps to one zone (libphonenumber data).
const NY: &str = "+12122345678"; // New York, America/New_York, no state row
const FL: &str = "+13052345678"; // Miami, America/New_York
const AL: &str = "+12052345678"; // Birmingham, America/Chicago
const TX: &str = "+12142345678"; // Dallas, America/Chicago
const RI: &str = "+14012345678"; // America/New_York
const MS: &str = "+16012345678"; // Jackson, America/Chicago
const PA: &str = "+12152345678"; // Philadelphia, America/New_York
const UT: &str = "+18012345678"; // America/Denver
const ME: &str = "+12072345678"; // America/New_York
const LA: &str = "+15042345678"; // New Orleans, America/Chicago
const OK: &str = "+14052345678"; // Oklahoma City, America/Chicago
const MD: &str = "+14102345678"; // Baltimore, America/New_York
const OR: &str = "+15032345678"; // Portland, America/Los_Angeles
const WA: &str = "+12062345678";
const MA: &str = "+16172345678";
const WY: &str = "+13072345678";
const CT: &str = "+12032345678";
const KY: &str = "+15022345678"; // Louisville, America/New_York
const MI: &str = "+13132345678"; // Detroit
const MN: &str = "+16122345678";
const NM: &str = "+15052345678";
const CA: &str = "+12132345678";
const NV: &str = "+17022345678";
const ON: &str = "+14162345678"; // Toronto
const TOLL_FREE: &str = "+18002345678";

// ---- federal: 47 CFR 64.1200(c)(1), 08:00-21:00, half-open ----

#[test]
fn federal_window_opens_at_8_and_closes_at_9_pm_local() {
    let ny = America__New_York;
    requeued(
        &time_at(NY, None, &auto(), ny, "2026-07-15 07:59"),
        Rule::CallingWindow,
        ny,
        "2026-07-15 08:00",
    );
    allowed(&time_at(NY, None, &auto(), ny, "2026-07-15 08:00"));
    allowed(&time_at(NY, None, &auto(), ny, "2026-07-15 20:59"));
    requeued(
        &time_at(NY, None, &auto(), ny, "2026-07-15 21:00"),
        Rule::CallingWindow,
        ny,
        "2026-07-16 08:00",
    );
}

#[test]
fn a_blocked_verdict_names_the_zone_local_time_and_legal_source() {
    let v = time_at(NY, None, &auto(), America__New_York, "2026-07-15 21:30");
    assert!(v.reason.contains("21:30"), "{}", v.reason);
    assert!(v.reason.contains("America/New_York"), "{}", v.reason);
    assert!(v.reason.contains("47 CFR 64.1200(c)(1)"), "{}", v.reason);
    assert_eq!(v.zones, vec![America__New_York]);
    assert_eq!(v.states, vec!["NY".to_string()]);
}

// ---- FL: Fla. Stat. 501.616(6), 08:00-20:00, 3 per 24h ----

#[test]
fn florida_at_20_30_local_is_requeued_to_8_the_next_morning() {
    let ny = America__New_York;
    let v = time_at(FL, None, &auto(), ny, "2026-07-15 20:30");
    requeued(&v, Rule::CallingWindow, ny, "2026-07-16 08:00");
    assert!(v.reason.contains("Fla. Stat. 501.616(6)"), "{}", v.reason);
    allowed(&time_at(FL, None, &auto(), ny, "2026-07-15 19:59"));
}

#[test]
fn florida_caps_calls_at_three_per_24_hours_across_campaigns() {
    let e = engine();
    let r = e.recipient(&phone(FL), None, None, None);
    let now = at(America__New_York, "2026-07-15 12:00");
    let two = Facts {
        counted_calls: vec![now - D::hours(5), now - D::hours(3)],
        ..Facts::default()
    };
    allowed(&e.evaluate(&r, &live(), &two, now));
    let three = Facts {
        counted_calls: vec![
            now - D::hours(30),
            now - D::hours(20),
            now - D::hours(5),
            now - D::hours(3),
        ],
        ..Facts::default()
    };
    let v = e.evaluate(&r, &live(), &three, now);
    // The oldest call inside the window (20h ago) leaves it 4h from now: 16:00.
    assert_eq!(
        v.outcome,
        Outcome::Requeue {
            rule: Rule::FrequencyCap,
            at: now + D::hours(4)
        },
        "{}",
        v.reason
    );
}

#[test]
fn a_cap_release_at_night_is_requeued_to_the_next_window_opening() {
    let e = engine();
    let r = e.recipient(&phone(FL), None, None, None);
    let ny = America__New_York;
    let now = at(ny, "2026-07-15 19:00");
    // Released at 2026-07-15 21:00, after FL's 20:00 close: next 08:00.
    let f = Facts {
        counted_calls: vec![now - D::hours(22), now - D::hours(2), now - D::hours(1)],
        ..Facts::default()
    };
    let v = e.evaluate(&r, &live(), &f, now);
    assert_eq!(
        v.outcome,
        Outcome::Requeue {
            rule: Rule::FrequencyCap,
            at: at(ny, "2026-07-16 08:00")
        }
    );
}

#[test]
fn the_campaign_cap_and_the_state_cap_both_count_and_the_strictest_wins() {
    let e = engine();
    let r = e.recipient(&phone(NY), None, None, None);
    let now = at(America__New_York, "2026-07-15 12:00");
    let p = Policy {
        frequency_cap: Some(Cap {
            calls: 1,
            per: std::time::Duration::from_secs(3600),
        }),
        ..live()
    };
    let f = Facts {
        counted_calls: vec![now - D::minutes(30)],
        ..Facts::default()
    };
    let v = e.evaluate(&r, &p, &f, now);
    assert_eq!(
        v.outcome,
        Outcome::Requeue {
            rule: Rule::FrequencyCap,
            at: now + D::minutes(30)
        }
    );
    let old = Facts {
        counted_calls: vec![now - D::minutes(61)],
        ..Facts::default()
    };
    allowed(&e.evaluate(&r, &p, &old, now));
}

// ---- OK: 15 O.S. 775C.4 (08:00-20:00, 3/24h); 755.1(C)(2)(a) automated 09:00-21:00 ----

#[test]
fn oklahoma_automated_calls_wait_for_9_and_all_calls_stop_at_8_pm() {
    let c = America__Chicago;
    requeued(
        &time_at(OK, None, &auto(), c, "2026-07-15 08:30"),
        Rule::CallingWindow,
        c,
        "2026-07-15 09:00",
    );
    allowed(&time_at(OK, None, &live(), c, "2026-07-15 08:30"));
    requeued(
        &time_at(OK, None, &live(), c, "2026-07-15 20:00"),
        Rule::CallingWindow,
        c,
        "2026-07-16 08:00",
    );
    requeued(
        &time_at(OK, None, &auto(), c, "2026-07-15 20:00"),
        Rule::CallingWindow,
        c,
        "2026-07-16 09:00",
    );
}

#[test]
fn maryland_oregon_washington_massachusetts_wyoming_close_at_8_pm() {
    for (n, tz) in [
        (MD, America__New_York),
        (OR, America__Los_Angeles),
        (WA, America__Los_Angeles),
        (MA, America__New_York),
        (WY, America__Denver),
    ] {
        allowed(&time_at(n, None, &live(), tz, "2026-07-15 19:59"));
        requeued(
            &time_at(n, None, &live(), tz, "2026-07-15 20:00"),
            Rule::CallingWindow,
            tz,
            "2026-07-16 08:00",
        );
        requeued(
            &time_at(n, None, &live(), tz, "2026-07-15 07:59"),
            Rule::CallingWindow,
            tz,
            "2026-07-15 08:00",
        );
    }
}

#[test]
fn maryland_and_oregon_cap_three_calls_per_24_hours() {
    let e = engine();
    for n in [MD, OR, OK] {
        let r = e.recipient(&phone(n), None, None, None);
        let now = at(America__New_York, "2026-07-15 14:00");
        let f = Facts {
            counted_calls: vec![now - D::hours(1), now - D::hours(2), now - D::hours(3)],
            ..Facts::default()
        };
        assert_eq!(
            e.evaluate(&r, &live(), &f, now).rule(),
            Some(Rule::FrequencyCap),
            "{n}"
        );
    }
}

// ---- AL: Ala. Admin. Code r. 770-X-5-.17, 08:00-20:00, no Sundays, holidays ----

#[test]
fn alabama_on_a_sunday_is_requeued_to_monday_8() {
    let c = America__Chicago;
    let v = time_at(AL, None, &live(), c, "2026-07-19 12:00");
    requeued(&v, Rule::CallingDay, c, "2026-07-20 08:00");
    assert!(v.reason.contains("Ala. Admin. Code"), "{}", v.reason);
}

#[test]
fn alabama_holidays_block_the_day_including_mardi_gras_and_jefferson_davis_day() {
    let c = America__Chicago;
    // Christmas 2026 is a Friday: next Saturday Dec 26 08:00.
    requeued(
        &time_at(AL, None, &live(), c, "2026-12-25 10:00"),
        Rule::CallingDay,
        c,
        "2026-12-26 08:00",
    );
    // Mardi Gras 2026: Tuesday Feb 17.
    requeued(
        &time_at(AL, None, &live(), c, "2026-02-17 10:00"),
        Rule::CallingDay,
        c,
        "2026-02-18 08:00",
    );
    // 1st Monday of June 2026: Jun 1.
    requeued(
        &time_at(AL, None, &live(), c, "2026-06-01 10:00"),
        Rule::CallingDay,
        c,
        "2026-06-02 08:00",
    );
}

// ---- LA: La. R.S. 45:844.31, 08:00-20:00, no Sundays, R.S. 1:55 holidays ----

#[test]
fn louisiana_bans_sundays_good_friday_and_observed_huey_long_day() {
    let c = America__Chicago;
    requeued(
        &time_at(LA, None, &live(), c, "2026-07-19 12:00"),
        Rule::CallingDay,
        c,
        "2026-07-20 08:00",
    );
    // Good Friday 2026 = Apr 3.
    requeued(
        &time_at(LA, None, &live(), c, "2026-04-03 12:00"),
        Rule::CallingDay,
        c,
        "2026-04-04 08:00",
    );
    // Aug 30 2026 is a Sunday: observed Monday Aug 31, so next is Tuesday Sep 1.
    requeued(
        &time_at(LA, None, &live(), c, "2026-08-29 20:30"),
        Rule::CallingWindow,
        c,
        "2026-09-01 08:00",
    );
}

// ---- MS: Miss. Code 77-3-723, 08:00-20:00 CST both readings, no Sundays ----

#[test]
fn mississippi_in_summer_blocks_8_30_local_because_it_is_7_30_standard_time() {
    let c = America__Chicago;
    let v = time_at(MS, None, &live(), c, "2026-07-15 08:30");
    requeued(&v, Rule::CallingWindow, c, "2026-07-15 09:00");
    assert!(v.reason.contains("fixed UTC-6"), "{}", v.reason);
    // Local reading closes at 20:00 in summer.
    requeued(
        &time_at(MS, None, &live(), c, "2026-07-15 20:00"),
        Rule::CallingWindow,
        c,
        "2026-07-16 09:00",
    );
    allowed(&time_at(MS, None, &live(), c, "2026-07-15 19:59"));
}

#[test]
fn mississippi_in_winter_opens_at_8_local_and_bans_sundays() {
    let c = America__Chicago;
    allowed(&time_at(MS, None, &live(), c, "2026-01-14 08:00"));
    requeued(
        &time_at(MS, None, &live(), c, "2026-01-14 20:00"),
        Rule::CallingWindow,
        c,
        "2026-01-15 08:00",
    );
    requeued(
        &time_at(MS, None, &live(), c, "2026-01-18 12:00"),
        Rule::CallingDay,
        c,
        "2026-01-19 08:00",
    );
}

// ---- TX: Tex. Bus. & Com. Code 301.051, 09:00-21:00 Mon-Sat, 12:00-21:00 Sun ----

#[test]
fn texas_sunday_11_is_requeued_to_noon_and_weekdays_open_at_9() {
    let c = America__Chicago;
    requeued(
        &time_at(TX, None, &live(), c, "2026-07-19 11:00"),
        Rule::CallingWindow,
        c,
        "2026-07-19 12:00",
    );
    allowed(&time_at(TX, None, &live(), c, "2026-07-19 12:00"));
    requeued(
        &time_at(TX, None, &live(), c, "2026-07-18 08:30"),
        Rule::CallingWindow,
        c,
        "2026-07-18 09:00",
    );
    allowed(&time_at(TX, None, &live(), c, "2026-07-18 20:59"));
}

// ---- RI: R.I. Gen. Laws 5-61-3.6, 09-18 Mon-Fri, 10-17 Sat, no Sundays/holidays ----

#[test]
fn rhode_island_hours_by_weekday() {
    let ny = America__New_York;
    requeued(
        &time_at(RI, None, &live(), ny, "2026-07-15 08:59"),
        Rule::CallingWindow,
        ny,
        "2026-07-15 09:00",
    );
    requeued(
        &time_at(RI, None, &live(), ny, "2026-07-15 18:00"),
        Rule::CallingWindow,
        ny,
        "2026-07-16 09:00",
    );
    requeued(
        &time_at(RI, None, &live(), ny, "2026-07-18 09:30"),
        Rule::CallingWindow,
        ny,
        "2026-07-18 10:00",
    );
    // Saturday 17:00 -> Sunday banned -> Monday 09:00.
    requeued(
        &time_at(RI, None, &live(), ny, "2026-07-18 17:00"),
        Rule::CallingWindow,
        ny,
        "2026-07-20 09:00",
    );
}

#[test]
fn rhode_island_bans_the_federal_friday_and_its_own_monday_for_a_saturday_july_4th() {
    let ny = America__New_York;
    // Jul 4 2026 is a Saturday: Friday Jul 3 (federal observance) banned; the
    // Saturday itself keeps Saturday hours; Monday Jul 6 (RI observance) banned.
    requeued(
        &time_at(RI, None, &live(), ny, "2026-07-03 12:00"),
        Rule::CallingDay,
        ny,
        "2026-07-04 10:00",
    );
    requeued(
        &time_at(RI, None, &live(), ny, "2026-07-06 12:00"),
        Rule::CallingDay,
        ny,
        "2026-07-07 09:00",
    );
}

#[test]
fn rhode_island_bans_general_election_day_in_even_years() {
    let ny = America__New_York;
    requeued(
        &time_at(RI, None, &live(), ny, "2026-11-03 12:00"),
        Rule::CallingDay,
        ny,
        "2026-11-04 09:00",
    );
    allowed(&time_at(RI, None, &live(), ny, "2027-11-02 12:00"));
}

// ---- UT: Utah Code 13-25a-103(3), 08-21, no Sundays or legal holidays ----

#[test]
fn utah_bans_sundays_and_pioneer_day() {
    let d = America__Denver;
    requeued(
        &time_at(UT, None, &live(), d, "2026-07-19 12:00"),
        Rule::CallingDay,
        d,
        "2026-07-20 08:00",
    );
    // Pioneer Day Jul 24 2026 is a Friday.
    requeued(
        &time_at(UT, None, &live(), d, "2026-07-24 12:00"),
        Rule::CallingDay,
        d,
        "2026-07-25 08:00",
    );
    allowed(&time_at(UT, None, &live(), d, "2026-07-23 20:59"));
}

// ---- PA: 73 P.S. 2245(a), changed 2026-10-18 ----

#[test]
fn pennsylvania_before_the_change_allows_8_to_9_pm_and_sundays() {
    let ny = America__New_York;
    allowed(&time_at(PA, None, &live(), ny, "2026-10-11 20:30"));
    allowed(&time_at(PA, None, &live(), ny, "2026-10-17 08:00"));
    // Flag Day Jun 14 2026 is a Sunday: the observed Monday Jun 15 is banned.
    requeued(
        &time_at(PA, None, &live(), ny, "2026-06-15 12:00"),
        Rule::CallingDay,
        ny,
        "2026-06-16 08:00",
    );
}

#[test]
fn pennsylvania_from_2026_10_18_closes_at_7_pm_and_bans_sundays() {
    let ny = America__New_York;
    // Sunday Oct 18 2026 is the first day of the amended rule.
    requeued(
        &time_at(PA, None, &live(), ny, "2026-10-18 12:00"),
        Rule::CallingDay,
        ny,
        "2026-10-19 09:00",
    );
    requeued(
        &time_at(PA, None, &live(), ny, "2026-10-19 19:00"),
        Rule::CallingWindow,
        ny,
        "2026-10-20 09:00",
    );
    requeued(
        &time_at(PA, None, &live(), ny, "2026-10-20 08:30"),
        Rule::CallingWindow,
        ny,
        "2026-10-20 09:00",
    );
    // Saturday Oct 17, 20:30: still the old rule; next is Monday 09:00 under the new one.
    allowed(&time_at(PA, None, &live(), ny, "2026-10-17 20:30"));
    requeued(
        &time_at(PA, None, &live(), ny, "2026-10-17 21:00"),
        Rule::CallingWindow,
        ny,
        "2026-10-19 09:00",
    );
    // Election day Nov 3 2026.
    requeued(
        &time_at(PA, None, &live(), ny, "2026-11-03 12:00"),
        Rule::CallingDay,
        ny,
        "2026-11-04 09:00",
    );
}

// ---- CT, KY, MI, MN, NM ----

#[test]
fn connecticut_9_to_8_kentucky_10_to_9_and_michigan_minnesota_new_mexico_9_to_9() {
    let ny = America__New_York;
    requeued(
        &time_at(CT, None, &live(), ny, "2026-07-15 08:30"),
        Rule::CallingWindow,
        ny,
        "2026-07-15 09:00",
    );
    requeued(
        &time_at(CT, None, &live(), ny, "2026-07-15 20:00"),
        Rule::CallingWindow,
        ny,
        "2026-07-16 09:00",
    );
    requeued(
        &time_at(KY, None, &live(), ny, "2026-07-15 09:30"),
        Rule::CallingWindow,
        ny,
        "2026-07-15 10:00",
    );
    allowed(&time_at(KY, None, &live(), ny, "2026-07-15 20:59"));
    for (n, tz) in [
        (MI, America__Detroit),
        (MN, America__Chicago),
        (NM, America__Denver),
    ] {
        requeued(
            &time_at(n, None, &live(), tz, "2026-07-15 08:30"),
            Rule::CallingWindow,
            tz,
            "2026-07-15 09:00",
        );
        allowed(&time_at(n, None, &live(), tz, "2026-07-15 20:59"));
    }
}

// ---- ME: 10 M.R.S. 1498(3), automated 09-17 Mon-Fri, 1 per 8h ----

#[test]
fn maine_automated_calls_are_weekday_9_to_5_only() {
    let ny = America__New_York;
    requeued(
        &time_at(ME, None, &auto(), ny, "2026-07-18 12:00"),
        Rule::CallingDay,
        ny,
        "2026-07-20 09:00",
    );
    requeued(
        &time_at(ME, None, &auto(), ny, "2026-07-15 17:00"),
        Rule::CallingWindow,
        ny,
        "2026-07-16 09:00",
    );
    // A live call is not governed by the automated row.
    allowed(&time_at(ME, None, &live(), ny, "2026-07-18 12:00"));
}

#[test]
fn maine_allows_one_automated_call_per_8_hours() {
    let e = engine();
    let r = e.recipient(&phone(ME), None, None, None);
    let ny = America__New_York;
    let now = at(ny, "2026-07-15 11:00");
    let f = Facts {
        counted_calls: vec![at(ny, "2026-07-15 09:30")],
        ..Facts::default()
    };
    // Released 17:30, after the 17:00 close: next day 09:00.
    let v = e.evaluate(&r, &auto(), &f, now);
    assert_eq!(
        v.outcome,
        Outcome::Requeue {
            rule: Rule::FrequencyCap,
            at: at(ny, "2026-07-16 09:00")
        },
        "{}",
        v.reason
    );
    // A call at 01:00 left the 8-hour window at 09:00: allowed at 11:00.
    let early = Facts {
        counted_calls: vec![at(ny, "2026-07-15 01:00")],
        ..Facts::default()
    };
    allowed(&e.evaluate(&r, &auto(), &early, now));
    // A live call is not governed by the automated cap.
    allowed(&e.evaluate(&r, &live(), &f, now));
}

// ---- SD, CA, NV automated ----

#[test]
fn south_dakota_automated_calls_are_weekdays_only() {
    let e = engine();
    let r = e.recipient(&phone(TOLL_FREE), None, Some("SD"), None);
    assert_eq!(r.zones, vec![America__Chicago, America__Denver]);
    let d = America__Denver;
    let v = e.evaluate_time(&r, &auto(), at(d, "2026-07-18 12:00"));
    // Monday 09:00 (SD's automated opening) in the later zone, Denver.
    assert_eq!(
        v.outcome,
        Outcome::Requeue {
            rule: Rule::CallingDay,
            at: at(d, "2026-07-20 09:00")
        },
        "{}",
        v.reason
    );
    allowed(&e.evaluate_time(&r, &live(), at(d, "2026-07-18 12:00")));
}

#[test]
fn california_and_nevada_automated_calls_wait_for_9() {
    let la = America__Los_Angeles;
    for n in [CA, NV] {
        requeued(
            &time_at(n, None, &auto(), la, "2026-07-15 08:30"),
            Rule::CallingWindow,
            la,
            "2026-07-15 09:00",
        );
        allowed(&time_at(n, None, &live(), la, "2026-07-15 08:30"));
    }
}

// ---- Canada: CRTC rules by country ----

#[test]
fn canadian_numbers_follow_the_crtc_hours() {
    let t = America__Toronto;
    // CRTC allows until 21:30, but the federal row (SPEC: "all") closes at 21:00:
    // every applicable row applies, so the stricter federal close wins.
    allowed(&time_at(ON, None, &live(), t, "2026-07-15 20:59"));
    requeued(
        &time_at(ON, None, &live(), t, "2026-07-15 21:00"),
        Rule::CallingWindow,
        t,
        "2026-07-16 09:00",
    );
    requeued(
        &time_at(ON, None, &live(), t, "2026-07-15 08:30"),
        Rule::CallingWindow,
        t,
        "2026-07-15 09:00",
    );
    requeued(
        &time_at(ON, None, &live(), t, "2026-07-18 18:00"),
        Rule::CallingWindow,
        t,
        "2026-07-19 10:00",
    );
    let v = time_at(ON, None, &live(), t, "2026-07-18 09:30");
    assert!(v.reason.contains("CRTC"), "{}", v.reason);
}

// ---- zones ----

#[test]
fn split_area_code_at_8_30_waits_for_the_zone_still_before_8() {
    let e = engine();
    // 208-432 is listed in both America/Boise and America/Los_Angeles.
    let r = e.recipient(&phone("+12084321234"), None, None, None);
    assert_eq!(r.zones, vec![America__Boise, America__Los_Angeles]);
    let v = e.evaluate_time(&r, &live(), at(America__Boise, "2026-07-15 08:30"));
    assert_eq!(
        v.outcome,
        Outcome::Requeue {
            rule: Rule::CallingWindow,
            at: at(America__Los_Angeles, "2026-07-15 08:00")
        }
    );
    assert!(v.reason.contains("America/Los_Angeles"), "{}", v.reason);
    assert_eq!(v.local_times.len(), 2);
}

#[test]
fn a_florida_panhandle_exchange_uses_central_time() {
    let e = engine();
    let r = e.recipient(&phone("+18504321234"), None, None, None);
    assert_eq!(r.zones, vec![America__Chicago]);
    let c = America__Chicago;
    requeued(
        &e.evaluate_time(&r, &live(), at(c, "2026-07-15 07:30")),
        Rule::CallingWindow,
        c,
        "2026-07-15 08:00",
    );
}

#[test]
fn an_unlisted_florida_panhandle_exchange_waits_for_central_time_too() {
    let e = engine();
    // 850-222 is not listed by exchange: it may be in the Central part of 850, so
    // 08:30 Eastern (07:30 Central) is too early (every candidate zone must allow it).
    let r = e.recipient(&phone("+18502221234"), None, None, None);
    assert_eq!(r.zones, vec![America__Chicago, America__New_York]);
    requeued(
        &e.evaluate_time(&r, &live(), at(America__New_York, "2026-07-15 08:30")),
        Rule::CallingWindow,
        America__Chicago,
        "2026-07-15 08:00",
    );
}

#[test]
fn an_overlay_number_waits_for_every_zone_of_the_area_code_it_overlays() {
    let e = engine();
    // 448 overlays 850; the data alone says Eastern. 08:30 Eastern is 07:30 Central.
    let r = e.recipient(&phone("+14482221234"), None, None, None);
    assert_eq!(r.zones, vec![America__Chicago, America__New_York]);
    assert!(
        r.zone_sources
            .iter()
            .any(|s| s.contains("overlay of area code 850")),
        "{:?}",
        r.zone_sources
    );
    requeued(
        &e.evaluate_time(&r, &live(), at(America__New_York, "2026-07-15 08:30")),
        Rule::CallingWindow,
        America__Chicago,
        "2026-07-15 08:00",
    );
}

#[test]
fn a_toll_free_number_with_nothing_known_must_suit_every_us_zone_but_not_guam() {
    let e = engine();
    let r = e.recipient(&phone(TOLL_FREE), None, None, None);
    assert!(r.zones.contains(&Pacific__Honolulu) && r.zones.contains(&America__Puerto_Rico));
    assert!(!r.zones.contains(&Pacific__Guam));
    // Noon in New York is 06:00 in Honolulu.
    let v = e.evaluate_time(&r, &live(), at(America__New_York, "2026-07-15 12:00"));
    assert_eq!(v.rule(), Some(Rule::CallingWindow));
    // 08:00 in Honolulu and Adak (both UTC-10 in July: Adak has daylight time).
    let next = v.next_allowed_at.unwrap();
    assert_eq!(
        next,
        at(Pacific__Honolulu, "2026-07-15 08:00").max(at(America__Adak, "2026-07-15 08:00"))
    );
}

#[test]
fn the_contact_timezone_state_and_area_code_state_all_apply() {
    let e = engine();
    // A Miami number (FL: closes 20:00) for a contact in Texas (TX: opens 09:00).
    let r = e.recipient(&phone(FL), Some(America__Denver), Some("tx"), None);
    assert_eq!(r.states, vec!["TX".to_string(), "FL".to_string()]);
    assert!(r.zones.contains(&America__Denver) && r.zones.contains(&America__Chicago));
    assert!(r.zones.contains(&America__New_York));
    // 09:00 Eastern = 07:00 Mountain: wait for 09:00 Mountain (TX row, all zones).
    let v = e.evaluate_time(&r, &live(), at(America__New_York, "2026-07-15 09:00"));
    assert_eq!(
        v.outcome,
        Outcome::Requeue {
            rule: Rule::CallingWindow,
            at: at(America__Denver, "2026-07-15 09:00")
        }
    );
    // 19:30 Mountain = 21:30 Eastern: past FL's 20:00 close in New York.
    let v = e.evaluate_time(&r, &live(), at(America__Denver, "2026-07-15 18:30"));
    assert_eq!(v.rule(), Some(Rule::CallingWindow), "{}", v.reason);
}

#[test]
fn a_postal_code_gives_the_state_and_its_rules() {
    let e = engine();
    let r = e.recipient(&phone(NY), None, None, Some("35203"));
    assert!(r.states.contains(&"AL".to_string()));
    let v = e.evaluate_time(&r, &live(), at(America__Chicago, "2026-07-19 12:00"));
    assert_eq!(v.rule(), Some(Rule::CallingDay));
}

#[test]
fn a_number_with_no_known_zone_is_dropped_not_called() {
    let e = engine();
    let r = e.recipient(&phone("+442079460958"), None, None, None);
    let v = e.evaluate_time(&r, &live(), at(America__New_York, "2026-07-15 12:00"));
    assert_eq!(
        v.outcome,
        Outcome::Drop {
            rule: Rule::CallingWindow
        }
    );
}

// ---- campaign window and days; 14-day horizon; blackouts ----

#[test]
fn campaign_window_is_half_open_and_intersected_with_the_law() {
    let e = engine();
    let r = e.recipient(&phone(NY), None, None, None);
    let ny = America__New_York;
    let p = Policy {
        window_start: NaiveTime::from_hms_opt(7, 0, 0).unwrap(),
        window_end: NaiveTime::from_hms_opt(17, 0, 0).unwrap(),
        days: [true, true, true, true, true, false, false],
        ..live()
    };
    requeued(
        &e.evaluate_time(&r, &p, at(ny, "2026-07-15 07:30")),
        Rule::CallingWindow,
        ny,
        "2026-07-15 08:00",
    );
    allowed(&e.evaluate_time(&r, &p, at(ny, "2026-07-15 16:59")));
    requeued(
        &e.evaluate_time(&r, &p, at(ny, "2026-07-17 17:00")),
        Rule::CallingWindow,
        ny,
        "2026-07-20 08:00",
    );
    requeued(
        &e.evaluate_time(&r, &p, at(ny, "2026-07-18 12:00")),
        Rule::CallingDay,
        ny,
        "2026-07-20 08:00",
    );
}

#[test]
fn no_allowed_time_within_14_days_is_a_drop_for_calling_window() {
    let e = engine();
    let r = e.recipient(&phone(NY), None, None, None);
    let p = Policy {
        days: [false; 7],
        ..live()
    };
    let v = e.evaluate_time(&r, &p, at(America__New_York, "2026-07-15 12:00"));
    assert_eq!(
        v.outcome,
        Outcome::Drop {
            rule: Rule::CallingWindow
        }
    );
    assert_eq!(v.next_allowed_at, None);
}

fn blackout_engine(days: i64) -> (Engine, DateTime<Utc>) {
    let start = at(America__Chicago, "2026-08-28 00:00");
    let cfg = RulesConfig {
        blackouts: vec![BlackoutConfig {
            state: Some("LA".into()),
            area_codes: vec![],
            postal_codes: vec![],
            start,
            end: start + D::days(days) + D::seconds(30),
            reason: Some("hurricane state of emergency".into()),
        }],
        ..RulesConfig::default()
    };
    (
        Engine::new(&cfg).unwrap(),
        start + D::days(days) + D::seconds(30),
    )
}

#[test]
fn an_operator_blackout_requeues_to_its_end_like_a_calling_day() {
    let (e, end) = blackout_engine(3);
    let r = e.recipient(&phone(LA), None, None, None);
    let v = e.evaluate_time(&r, &live(), at(America__Chicago, "2026-08-28 12:00"));
    // The blackout ends Aug 31 00:00:30 (Monday, but Huey Long Day observed), so Tue 08:00.
    assert_eq!(
        v.outcome,
        Outcome::Requeue {
            rule: Rule::CallingDay,
            at: at(America__Chicago, "2026-09-01 08:00")
        }
    );
    assert!(v.reason.contains("hurricane"), "{}", v.reason);
    assert!(end < at(America__Chicago, "2026-09-01 08:00"));
    // Another state's number is not affected.
    let ny = e.recipient(&phone(NY), None, None, None);
    allowed(&e.evaluate_time(&ny, &live(), at(America__Chicago, "2026-08-28 12:00")));
}

#[test]
fn a_blackout_longer_than_14_days_requeues_to_its_end_instead_of_dropping() {
    let (e, end) = blackout_engine(30);
    let r = e.recipient(&phone(NY), None, Some("LA"), None);
    let v = e.evaluate_time(&r, &live(), at(America__Chicago, "2026-08-28 12:00"));
    let Outcome::Requeue {
        rule: Rule::CallingDay,
        at: when,
    } = v.outcome
    else {
        panic!("{:?}", v.outcome)
    };
    assert!(when >= end);
}

// ---- facts: order of rules, consent ----

#[test]
fn dnc_then_opt_out_then_consent_decide_before_the_time_rules() {
    let e = engine();
    let r = e.recipient(&phone(NY), None, None, None);
    let night = at(America__New_York, "2026-07-15 23:00");
    let p = Policy {
        require_consent: Some(ConsentKind::ExpressWritten),
        ..auto()
    };
    let all = Facts {
        dnc: true,
        opted_out: true,
        ..Facts::default()
    };
    assert_eq!(
        e.evaluate(&r, &p, &all, night).outcome,
        Outcome::Drop { rule: Rule::Dnc }
    );
    let oo = Facts {
        opted_out: true,
        ..Facts::default()
    };
    assert_eq!(
        e.evaluate(&r, &p, &oo, night).outcome,
        Outcome::Drop {
            rule: Rule::OptedOut
        }
    );
    assert_eq!(
        e.evaluate(&r, &p, &Facts::default(), night).outcome,
        Outcome::Drop {
            rule: Rule::NoConsent
        }
    );
}

#[test]
fn consent_must_be_granted_unexpired_unrevoked_and_of_a_sufficient_kind() {
    let e = engine();
    let r = e.recipient(&phone(NY), None, None, None);
    let now = at(America__New_York, "2026-07-15 12:00");
    let fact = |kind, expires: Option<DateTime<Utc>>, revoked: Option<DateTime<Utc>>| Facts {
        consents: vec![ConsentFact {
            kind,
            granted_at: now - D::days(10),
            expires_at: expires,
            revoked_at: revoked,
        }],
        ..Facts::default()
    };
    let written = Policy {
        require_consent: Some(ConsentKind::ExpressWritten),
        ..auto()
    };
    let express = Policy {
        require_consent: Some(ConsentKind::Express),
        ..auto()
    };
    allowed(&e.evaluate(
        &r,
        &written,
        &fact(ConsentKind::ExpressWritten, None, None),
        now,
    ));
    allowed(&e.evaluate(
        &r,
        &express,
        &fact(ConsentKind::ExpressWritten, None, None),
        now,
    ));
    allowed(&e.evaluate(&r, &express, &fact(ConsentKind::Express, None, None), now));
    let no = Some(Rule::NoConsent);
    assert_eq!(
        e.evaluate(&r, &written, &fact(ConsentKind::Express, None, None), now)
            .rule(),
        no
    );
    assert_eq!(
        e.evaluate(
            &r,
            &written,
            &fact(ConsentKind::ExpressWritten, Some(now), None),
            now
        )
        .rule(),
        no
    );
    assert_eq!(
        e.evaluate(
            &r,
            &written,
            &fact(ConsentKind::ExpressWritten, None, Some(now - D::days(1))),
            now
        )
        .rule(),
        no
    );
    let future = Facts {
        consents: vec![ConsentFact {
            kind: ConsentKind::ExpressWritten,
            granted_at: now + D::days(1),
            expires_at: None,
            revoked_at: None,
        }],
        ..Facts::default()
    };
    assert_eq!(e.evaluate(&r, &written, &future, now).rule(), no);
}

// ---- SPEC acceptance: dialer check examples ----

#[test]
fn check_of_special_numbers_gives_destination_blocked() {
    for raw in ["911", "988", "+1 202 555 0142"] {
        let err = PhoneNumber::parse(raw).unwrap_err();
        let v = Verdict::rejected(&err, raw);
        assert_eq!(
            v.outcome,
            Outcome::Drop {
                rule: Rule::DestinationBlocked
            },
            "{raw}"
        );
        let j = v.to_json(raw);
        assert_eq!(j["verdict"], "drop");
        assert_eq!(j["rule"], "destination_blocked");
        assert_eq!(j["next_allowed_at"], serde_json::Value::Null);
    }
    let v = Verdict::rejected(&PhoneNumber::parse("12345").unwrap_err(), "12345");
    assert_eq!(v.rule(), Some(Rule::InvalidNumber));
}

#[test]
fn check_json_has_the_spec_shape() {
    let e = engine();
    let r = e.recipient(&phone(FL), None, None, None);
    let v = e.evaluate(
        &r,
        &auto(),
        &Facts::default(),
        at(America__New_York, "2026-07-15 20:30"),
    );
    let j = v.to_json(FL);
    assert_eq!(j["phone"], FL);
    assert_eq!(j["verdict"], "requeue");
    assert_eq!(j["rule"], "calling_window");
    assert_eq!(j["zones"], serde_json::json!(["America/New_York"]));
    assert_eq!(j["states"], serde_json::json!(["FL"]));
    assert_eq!(
        j["local_times"]["America/New_York"],
        "2026-07-15T20:30:00-04:00"
    );
    assert_eq!(j["next_allowed_at"], "2026-07-16T12:00:00+00:00");
    let csv = v.csv_fields(FL);
    assert_eq!(csv[1], "requeue");
    assert_eq!(csv[4], "America/New_York");
    let text = explain_text(&v, FL);
    assert!(
        text.contains("calling_window") && text.contains("BLOCKED"),
        "{text}"
    );
    assert!(text.contains("2026-07-16T12:00:00+00:00"), "{text}");
    assert!(
        text.contains("America/New_York") && text.contains("20:30"),
        "{text}"
    );
}

#[test]
fn scrub_csv_joins_zones_with_semicolons() {
    let e = engine();
    let r = e.recipient(&phone("+12084321234"), None, None, None);
    let v = e.evaluate(
        &r,
        &auto(),
        &Facts::default(),
        at(America__Boise, "2026-07-15 12:00"),
    );
    assert_eq!(
        v.csv_fields("+12084321234")[4],
        "America/Boise;America/Los_Angeles"
    );
    assert_eq!(v.csv_fields("+12084321234")[2], "");
}

// ---- configuration ----

#[test]
fn config_parses_from_toml_and_rejects_unknown_keys() {
    let cfg: RulesConfig = toml::from_str(
        r#"
        [states.FL]
        hours = { start = "09:00", end = "19:00" }
        cap = { calls = 2, per = "24h" }
        [states.TX]
        replace = true
        hours = { start = "08:00", end = "21:00" }
        days = ["mon", "tue", "wed", "thu", "fri", "sat"]
        [[blackouts]]
        state = "LA"
        start = "2026-08-28T00:00:00Z"
        end = "2026-09-02T00:00:00Z"
        reason = "hurricane"
        "#,
    )
    .unwrap();
    let e = Engine::new(&cfg).unwrap();
    let c = America__Chicago;
    let tx = e.recipient(&phone(TX), None, None, None);
    // TX replaced: Sunday banned, 08:00 open.
    assert_eq!(
        e.evaluate_time(&tx, &live(), at(c, "2026-07-19 13:00"))
            .rule(),
        Some(Rule::CallingDay)
    );
    allowed(&e.evaluate_time(&tx, &live(), at(c, "2026-07-18 08:30")));
    // FL added row: stricter 09:00-19:00 on top of the built-in 08:00-20:00.
    let fl = e.recipient(&phone(FL), None, None, None);
    let ny = America__New_York;
    requeued(
        &e.evaluate_time(&fl, &live(), at(ny, "2026-07-15 08:30")),
        Rule::CallingWindow,
        ny,
        "2026-07-15 09:00",
    );
    assert!(toml::from_str::<RulesConfig>("[states.FL]\nhourz = 1").is_err());
    assert!(toml::from_str::<RulesConfig>("nope = 1").is_err());
}

#[test]
fn invalid_config_names_the_key() {
    let bad = |cfg: RulesConfig, key: &str| {
        let err = Engine::new(&cfg).unwrap_err().to_string();
        assert!(err.contains(key), "{err}");
    };
    let mut states = std::collections::BTreeMap::new();
    states.insert("ZZ".to_string(), StateOverride::default());
    bad(
        RulesConfig {
            states,
            ..RulesConfig::default()
        },
        "compliance.states.ZZ",
    );
    let mut states = std::collections::BTreeMap::new();
    states.insert(
        "FL".to_string(),
        StateOverride {
            hours: Some(WindowConfig {
                start: "20:00".into(),
                end: "08:00".into(),
            }),
            ..StateOverride::default()
        },
    );
    bad(
        RulesConfig {
            states,
            ..RulesConfig::default()
        },
        "compliance.states.FL.hours",
    );
    let mut states = std::collections::BTreeMap::new();
    states.insert(
        "FL".to_string(),
        StateOverride {
            cap: Some(CapConfig {
                calls: 3,
                per: "soon".into(),
            }),
            ..StateOverride::default()
        },
    );
    bad(
        RulesConfig {
            states,
            ..RulesConfig::default()
        },
        "compliance.states.FL.cap.per",
    );
    let t = at(America__New_York, "2026-07-15 12:00");
    let b = BlackoutConfig {
        state: None,
        area_codes: vec![],
        postal_codes: vec![],
        start: t,
        end: t + D::hours(1),
        reason: None,
    };
    bad(
        RulesConfig {
            blackouts: vec![b.clone()],
            ..RulesConfig::default()
        },
        "compliance.blackouts[0]",
    );
    let b2 = BlackoutConfig {
        area_codes: vec![504],
        end: t,
        ..b
    };
    bad(
        RulesConfig {
            blackouts: vec![b2],
            ..RulesConfig::default()
        },
        "compliance.blackouts[0]",
    );
}

#[test]
fn every_rule_row_carries_its_legal_source() {
    let e = engine();
    for r in e.rules() {
        assert!(
            !r.source.is_empty() && r.source != "operator configuration",
            "{r:?}"
        );
    }
    assert_eq!(e.rules()[0].scope, Scope::Everyone);
}

// ---- properties ----

const NUMBERS: &[&str] = &[
    NY,
    FL,
    AL,
    TX,
    RI,
    MS,
    PA,
    UT,
    ME,
    LA,
    OK,
    ON,
    CA,
    "+12084321234",
    "+18504321234",
    TOLL_FREE,
    "+19072345678",
    "+17872345678",
];
const ZONES: &[Tz] = &[
    America__New_York,
    America__Chicago,
    America__Denver,
    America__Phoenix,
    America__Los_Angeles,
    America__Anchorage,
    Pacific__Honolulu,
    America__St_Johns,
    America__Halifax,
];
const STATES: &[&str] = &[
    "FL", "TX", "RI", "AL", "MS", "PA", "ME", "SD", "ON", "CA", "AZ",
];

fn instant() -> impl Strategy<Value = DateTime<Utc>> {
    // Every DST-change day of 2026 (US: Mar 8, Nov 1) and the PA change, plus anywhere.
    let bases = vec![
        at(America__New_York, "2026-03-07 00:00"),
        at(America__New_York, "2026-10-31 00:00"),
        at(America__New_York, "2026-10-16 00:00"),
        at(America__New_York, "2026-01-01 00:00"),
    ];
    (
        prop::sample::select(bases),
        0i64..4 * 24 * 60 * 60,
        0i64..400,
        any::<bool>(),
    )
        .prop_map(|(b, secs, days, anywhere)| {
            if anywhere {
                b + D::days(days) + D::seconds(secs)
            } else {
                b + D::seconds(secs)
            }
        })
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        0u32..13,
        13u32..25,
        prop::array::uniform7(prop::bool::weighted(0.85)),
        any::<bool>(),
    )
        .prop_map(|(s, e, days, live)| Policy {
            window_start: NaiveTime::from_hms_opt(s, 0, 0).unwrap(),
            window_end: NaiveTime::from_hms_opt(e % 24, 0, 0).unwrap(),
            days,
            require_consent: None,
            frequency_cap: None,
            call_type: if live {
                CallType::Live
            } else {
                CallType::ArtificialVoice
            },
        })
}

fn recipient() -> impl Strategy<Value = (String, Option<Tz>, Option<String>)> {
    (
        prop::sample::select(NUMBERS),
        prop::option::weighted(0.3, prop::sample::select(ZONES)),
        prop::option::weighted(0.4, prop::sample::select(STATES)),
    )
        .prop_map(|(n, z, s)| (n.to_string(), z, s.map(str::to_string)))
}

/// An independent reading of the federal rule and the campaign window: in every
/// candidate zone, local time in [08:00, 21:00) and in the campaign's window and days.
fn oracle_allows(r: &Recipient, p: &Policy, t: DateTime<Utc>) -> bool {
    r.zones.iter().all(|z| {
        let l = t.with_timezone(z);
        let m = l.hour() * 60 + l.minute();
        let (s, e) = (p.window_start.hour() * 60, if p.window_end == NaiveTime::MIN { 1440 } else { p.window_end.hour() * 60 });
        (480..1260).contains(&m) && m >= s && m < e && p.days[l.weekday().num_days_from_monday() as usize]
            // Sundays are banned for AL, LA, MS, UT, RI, and ME/SD automated: spot-check AL and RI.
            && !(l.weekday() == chrono::Weekday::Sun && r.states.iter().any(|s| s == "AL" || s == "RI"))
            // Florida closes at 20:00; Texas opens at 09:00 (noon on Sunday).
            && !(r.states.iter().any(|s| s == "FL") && m >= 1200)
            && !(r.states.iter().any(|s| s == "TX") && (m < 540 || (l.weekday() == chrono::Weekday::Sun && m < 720)))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn an_allow_is_never_inside_a_forbidden_local_time((n, tz, st) in recipient(), p in policy(), t in instant()) {
        let e = engine();
        let r = e.recipient(&phone(&n), tz, st.as_deref(), None);
        let v = e.evaluate_time(&r, &p, t);
        if v.outcome == Outcome::Allow {
            prop_assert!(oracle_allows(&r, &p, t), "{} {:?} {:?} at {} allowed: {}", n, tz, st, t, v.reason);
        }
        // And the time rules agree with themselves.
        prop_assert_eq!(v.outcome == Outcome::Allow, e.time_allowed(&r, &p, t));
    }

    #[test]
    fn next_allowed_is_allowed_and_no_earlier_minute_is((n, tz, st) in recipient(), p in policy(), t in instant()) {
        let e = engine();
        let r = e.recipient(&phone(&n), tz, st.as_deref(), None);
        let v = e.evaluate_time(&r, &p, t);
        match v.outcome {
            Outcome::Allow => prop_assert_eq!(v.next_allowed_at, Some(t)),
            Outcome::Requeue { at, .. } => {
                prop_assert!(at > t);
                prop_assert!(e.time_allowed(&r, &p, at), "requeue time {} not allowed", at);
                prop_assert!(oracle_allows(&r, &p, at));
                prop_assert_eq!(at.timestamp() % 60, 0, "minute precision");
                let mut m = ceil_minute(t);
                while m < at {
                    prop_assert!(!e.time_allowed(&r, &p, m), "{} allowed before requeue time {}", m, at);
                    m += D::minutes(1);
                }
            }
            Outcome::Drop { rule } => {
                prop_assert_eq!(rule, Rule::CallingWindow);
                let mut m = ceil_minute(t);
                let end = t + D::days(HORIZON_DAYS);
                while m <= end {
                    prop_assert!(!e.time_allowed(&r, &p, m), "{} allowed but dropped", m);
                    m += D::minutes(7);
                }
            }
        }
    }
}

#[test]
fn names_round_trip_for_stored_verdicts_and_campaign_files() {
    for r in Rule::ALL {
        assert_eq!(Rule::parse(r.as_str()), Some(r));
    }
    assert_eq!(CallType::parse("live"), Some(CallType::Live));
    assert_eq!(
        CallType::ArtificialVoice.default_consent(),
        Some(ConsentKind::ExpressWritten)
    );
    assert_eq!(CallType::Live.default_consent(), None);
    assert_eq!(
        ConsentKind::parse("express_written"),
        Some(ConsentKind::ExpressWritten)
    );
    assert_eq!(ConsentKind::parse("written"), None);
}

#[test]
fn lowercased_config_keys_still_name_the_state() {
    let cfg: RulesConfig = toml::from_str(
        "[states.fl]\nhours = { start = \"09:00\", end = \"19:00\" }\n[[blackouts]]\nstate = \"la\"\nstart = \"2026-08-28T00:00:00Z\"\nend = \"2026-09-02T00:00:00Z\"\n",
    )
    .unwrap();
    let e = Engine::new(&cfg).unwrap();
    let ny = America__New_York;
    let fl = e.recipient(&phone(FL), None, None, None);
    requeued(
        &e.evaluate_time(&fl, &live(), at(ny, "2026-07-15 19:00")),
        Rule::CallingWindow,
        ny,
        "2026-07-16 09:00",
    );
    let la = e.recipient(&phone(LA), None, None, None);
    assert_eq!(
        e.evaluate_time(&la, &live(), at(ny, "2026-08-28 12:00"))
            .rule(),
        Some(Rule::CallingDay)
    );
}

#[test]
fn a_reached_cap_names_the_cap_its_source_and_the_count() {
    let e = engine();
    let r = e.recipient(&phone(FL), None, None, None);
    let now = at(America__New_York, "2026-07-15 12:00");
    let f = Facts {
        counted_calls: vec![now - D::hours(20), now - D::hours(5), now - D::hours(3)],
        ..Facts::default()
    };
    let v = e.evaluate(&r, &live(), &f, now);
    assert_eq!(v.rule(), Some(Rule::FrequencyCap));
    assert!(
        v.reason.starts_with("3 counted calls in the last 1day reach the FL cap 3/1day (Fla. Stat. 501.616(6)); the oldest counted call leaves the window at "),
        "{}",
        v.reason
    );
    let p = Policy {
        frequency_cap: Some(Cap {
            calls: 1,
            per: std::time::Duration::from_secs(3600),
        }),
        ..live()
    };
    let ny = e.recipient(&phone(NY), None, None, None);
    let one = Facts {
        counted_calls: vec![now - D::minutes(30)],
        ..Facts::default()
    };
    let v = e.evaluate(&ny, &p, &one, now);
    assert!(
        v.reason
            .starts_with("1 counted calls in the last 1h reach the campaign cap 1/1h; "),
        "{}",
        v.reason
    );
}

/// Facts around `t`: DNC and opt-out now and then, consents of either kind that may
/// have expired or been revoked shortly before or after `t`, calls counted in the
/// last day or two.
fn facts_around(t: DateTime<Utc>) -> impl Strategy<Value = Facts> {
    let consent = (
        any::<bool>(),
        -120i64..0,
        prop::option::of(-90i64..90),
        prop::option::weighted(0.2, -90i64..90),
    )
        .prop_map(move |(written, granted, expires, revoked)| ConsentFact {
            kind: if written {
                ConsentKind::ExpressWritten
            } else {
                ConsentKind::Express
            },
            granted_at: t + D::minutes(granted),
            expires_at: expires.map(|m| t + D::minutes(m)),
            revoked_at: revoked.map(|m| t + D::minutes(m)),
        });
    (
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.1),
        prop::collection::vec(consent, 0..3),
        prop::collection::vec(1i64..48 * 60, 0..5),
    )
        .prop_map(move |(dnc, opted_out, consents, ago)| Facts {
            dnc,
            opted_out,
            consents,
            counted_calls: ago.into_iter().map(|m| t - D::minutes(m)).collect(),
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The worker's check right before a request (`blocking_verdict`) is `evaluate`
    /// without the allow verdict: the same answer, the same blocking verdict.
    #[test]
    fn blocking_verdict_is_evaluate_without_the_allow(
        (n, tz, st) in recipient(),
        p in policy(),
        consent in prop::option::of(prop::bool::ANY),
        cap in prop::option::of((1u32..4, 1u64..48)),
        (t, f) in instant().prop_flat_map(|t| (Just(t), facts_around(t))),
    ) {
        let e = engine();
        let r = e.recipient(&phone(&n), tz, st.as_deref(), None);
        let p = Policy {
            require_consent: consent.map(|w| if w { ConsentKind::ExpressWritten } else { ConsentKind::Express }),
            frequency_cap: cap.map(|(calls, hours)| Cap { calls, per: std::time::Duration::from_secs(hours * 3600) }),
            ..p
        };
        let full = e.evaluate(&r, &p, &f, t);
        match e.blocking_verdict(&r, &p, &f, t) {
            None => prop_assert!(full.is_allow(), "{}", full.reason),
            Some(v) => {
                prop_assert!(!v.is_allow());
                prop_assert_eq!(v, full);
            }
        }
    }
}
