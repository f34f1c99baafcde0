//! The legal rule table (SPEC.md section 6) as data, and its configuration overrides.
//!
//! One row per state and call type; every row that applies to a call applies (the
//! strictest wins because windows are intersected and day bans are unioned). Each row
//! carries its legal source, shown in verdicts. The sources are the ones SPEC.md gives
//! ("verify before release").

use super::holidays::{self, Calendar};
use chrono::{DateTime, NaiveDate, NaiveTime, Timelike, Utc};
use chrono_tz::Tz;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Minutes since local midnight; a window is `[open, close)`.
pub type Minutes = u16;

/// Which calls a row governs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppliesTo {
    AllCalls,
    /// "Automated" rows: artificial or prerecorded voice calls only (the FCC treats
    /// AI-generated voices as artificial, Declaratory Ruling FCC 24-17, 2024).
    ArtificialVoice,
}

/// Whom a row governs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every call (the federal row).
    Everyone,
    /// A US state (or DC/territory), by its two-letter code.
    State(String),
    /// Every number of a country (Canada's CRTC rules apply by country, not province).
    Country(&'static str),
}

/// A rolling-window cap on calls to one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    pub calls: u32,
    pub per: Duration,
}

/// One row of the rule table.
#[derive(Debug, Clone)]
pub struct StateRule {
    pub scope: Scope,
    pub applies_to: AppliesTo,
    /// Calling hours per weekday, Monday first; `None` = no calls that day.
    pub hours: [Option<(Minutes, Minutes)>; 7],
    /// Index into the engine's holiday calendars: calls banned on those days.
    pub holidays: Option<usize>,
    pub cap: Option<Cap>,
    /// A second reading of the same hours in a fixed-offset zone (Mississippi's
    /// "Central Standard Time" all year); both readings must allow the call.
    pub fixed_reading: Option<Tz>,
    /// The row is in force on recipient-local dates in `[from, until)`.
    pub from: Option<NaiveDate>,
    pub until: Option<NaiveDate>,
    /// Legal source, shown in verdicts and `dialer check`.
    pub source: String,
}

impl StateRule {
    pub fn in_force(&self, date: NaiveDate) -> bool {
        self.from.is_none_or(|f| date >= f) && self.until.is_none_or(|u| date < u)
    }

    /// The short label used in reasons: `federal`, `FL`, `Canada`.
    pub fn label(&self) -> String {
        match &self.scope {
            Scope::Everyone => "federal".into(),
            Scope::State(s) => s.clone(),
            Scope::Country("CA") => "Canada".into(),
            Scope::Country(c) => (*c).into(),
        }
    }
}

const fn hm(h: u16, m: u16) -> Minutes {
    h * 60 + m
}

fn every_day(open: Minutes, close: Minutes) -> [Option<(Minutes, Minutes)>; 7] {
    [Some((open, close)); 7]
}

fn no_sundays(open: Minutes, close: Minutes) -> [Option<(Minutes, Minutes)>; 7] {
    let mut h = every_day(open, close);
    h[6] = None;
    h
}

fn weekdays_only(open: Minutes, close: Minutes) -> [Option<(Minutes, Minutes)>; 7] {
    let mut h = every_day(open, close);
    h[5] = None;
    h[6] = None;
    h
}

fn row(
    scope: Scope,
    applies_to: AppliesTo,
    hours: [Option<(Minutes, Minutes)>; 7],
    source: &str,
) -> StateRule {
    StateRule {
        scope,
        applies_to,
        hours,
        holidays: None,
        cap: None,
        fixed_reading: None,
        from: None,
        until: None,
        source: source.into(),
    }
}

fn st(code: &str) -> Scope {
    Scope::State(code.into())
}

const DAY: Duration = Duration::from_secs(24 * 3600);

/// The names of the built-in holiday calendars, in index order.
pub const CALENDARS: [&str; 5] = ["AL", "LA", "RI", "PA", "UT"];

pub fn builtin_calendars() -> Vec<Calendar> {
    vec![
        holidays::alabama(),
        holidays::louisiana(),
        holidays::rhode_island(),
        holidays::pennsylvania(),
        holidays::utah(),
    ]
}

/// Pennsylvania's 2026 amendment takes effect on this recipient-local date.
pub fn pa_change_date() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 10, 18).unwrap_or_default()
}

/// The built-in table of SPEC.md section 6. Row 0 is the federal row.
pub fn builtin_rules() -> Vec<StateRule> {
    use AppliesTo::{AllCalls as All, ArtificialVoice as Auto};
    let cap3 = Some(Cap { calls: 3, per: DAY });
    let mut rules = vec![
        // 47 CFR 64.1200(c)(1) (TCPA) and 16 CFR 310.4(c) (Telemarketing Sales Rule):
        // no calls before 8 a.m. or after 9 p.m. at the called party's location.
        row(
            Scope::Everyone,
            All,
            every_day(hm(8, 0), hm(21, 0)),
            "47 CFR 64.1200(c)(1); 16 CFR 310.4(c)",
        ),
        // Fla. Stat. 501.616(6): 8 a.m.-8 p.m.; (6)(b) at most 3 calls per 24 hours on the
        // same subject from any number (counted across campaigns here: the stricter reading).
        StateRule {
            cap: cap3,
            ..row(
                st("FL"),
                All,
                every_day(hm(8, 0), hm(20, 0)),
                "Fla. Stat. 501.616(6)",
            )
        },
        // Oklahoma Telephone Solicitation Act, 15 O.S. 775C.4: 8 a.m.-8 p.m., 3 per 24h.
        StateRule {
            cap: cap3,
            ..row(
                st("OK"),
                All,
                every_day(hm(8, 0), hm(20, 0)),
                "15 O.S. 775C.4",
            )
        },
        // 15 O.S. 755.1(C)(2)(a): automated calls 9 a.m.-9 p.m.
        row(
            st("OK"),
            Auto,
            every_day(hm(9, 0), hm(21, 0)),
            "15 O.S. 755.1(C)(2)(a)",
        ),
        // Md. Code, Com. Law 14-4502(c) (Stop the Spam Calls Act 2023): 8 a.m.-8 p.m., 3 per 24h.
        StateRule {
            cap: cap3,
            ..row(
                st("MD"),
                All,
                every_day(hm(8, 0), hm(20, 0)),
                "Md. Com. Law 14-4502(c)",
            )
        },
        // ORS 646.563 as amended by HB 3865 (2026): 8 a.m.-8 p.m., 3 per 24h.
        StateRule {
            cap: cap3,
            ..row(
                st("OR"),
                All,
                every_day(hm(8, 0), hm(20, 0)),
                "ORS 646.563 (HB 3865, 2026)",
            )
        },
        // RCW 19.158.040(2): 8 a.m.-8 p.m.
        row(
            st("WA"),
            All,
            every_day(hm(8, 0), hm(20, 0)),
            "RCW 19.158.040(2)",
        ),
        // 201 CMR 12.02(2): 8 a.m.-8 p.m.
        row(
            st("MA"),
            All,
            every_day(hm(8, 0), hm(20, 0)),
            "201 CMR 12.02(2)",
        ),
        // Wyo. Stat. 40-12-302(d): 8 a.m.-8 p.m.
        row(
            st("WY"),
            All,
            every_day(hm(8, 0), hm(20, 0)),
            "Wyo. Stat. 40-12-302(d)",
        ),
        // Ala. Admin. Code r. 770-X-5-.17: 8 a.m.-8 p.m., never on Sunday or a state
        // holiday (Ala. Code 1-3-8).
        StateRule {
            holidays: Some(0),
            ..row(
                st("AL"),
                All,
                no_sundays(hm(8, 0), hm(20, 0)),
                "Ala. Admin. Code r. 770-X-5-.17",
            )
        },
        // La. R.S. 45:844.31 (and 45:811): 8 a.m.-8 p.m., never on Sunday or a state
        // holiday (La. R.S. 1:55); declared emergencies are operator blackouts.
        StateRule {
            holidays: Some(1),
            ..row(
                st("LA"),
                All,
                no_sundays(hm(8, 0), hm(20, 0)),
                "La. R.S. 45:811, 45:844.31",
            )
        },
        // Miss. Code 77-3-723: 8 a.m.-8 p.m. "Central Standard Time", never on Sunday.
        // Read both ways: local time, and fixed UTC-6 (Etc/GMT+6 in tz's POSIX sign
        // convention), which is 9 a.m.-9 p.m. local in daylight time. The holiday ban
        // was repealed in 2023.
        StateRule {
            fixed_reading: Some(Tz::Etc__GMTPlus6),
            ..row(
                st("MS"),
                All,
                no_sundays(hm(8, 0), hm(20, 0)),
                "Miss. Code 77-3-723",
            )
        },
        // Tex. Bus. & Com. Code 301.051: 9 a.m.-9 p.m. Monday-Saturday, noon-9 p.m. Sunday.
        {
            let mut h = every_day(hm(9, 0), hm(21, 0));
            h[6] = Some((hm(12, 0), hm(21, 0)));
            row(st("TX"), All, h, "Tex. Bus. & Com. Code 301.051")
        },
        // R.I. Gen. Laws 5-61-3.6: 9 a.m.-6 p.m. Monday-Friday, 10 a.m.-5 p.m. Saturday,
        // never Sunday or a state or federal holiday (25-1-1; Monday-Friday ones).
        {
            let mut h = weekdays_only(hm(9, 0), hm(18, 0));
            h[5] = Some((hm(10, 0), hm(17, 0)));
            StateRule {
                holidays: Some(2),
                ..row(st("RI"), All, h, "R.I. Gen. Laws 5-61-3.6, 25-1-1")
            }
        },
        // Utah Code 13-25a-103(3): 8 a.m.-9 p.m., never Sunday or a legal holiday
        // (Utah Code 63G-1-301).
        StateRule {
            holidays: Some(4),
            ..row(
                st("UT"),
                All,
                no_sundays(hm(8, 0), hm(21, 0)),
                "Utah Code 13-25a-103(3)",
            )
        },
        // 73 P.S. 2245(a) before the 2026 amendment: 8 a.m.-9 p.m., no legal holidays.
        StateRule {
            holidays: Some(3),
            until: Some(pa_change_date()),
            ..row(
                st("PA"),
                All,
                every_day(hm(8, 0), hm(21, 0)),
                "73 P.S. 2245(a)",
            )
        },
        // 73 P.S. 2245(a) as amended 2026, in force 2026-10-18: 9 a.m.-7 p.m., never
        // Sunday or a legal holiday.
        StateRule {
            holidays: Some(3),
            from: Some(pa_change_date()),
            ..row(
                st("PA"),
                All,
                no_sundays(hm(9, 0), hm(19, 0)),
                "73 P.S. 2245(a) as amended 2026",
            )
        },
        // Conn. Gen. Stat. 42-288a(c): 9 a.m.-8 p.m.
        row(
            st("CT"),
            All,
            every_day(hm(9, 0), hm(20, 0)),
            "Conn. Gen. Stat. 42-288a(c)",
        ),
        // KRS 367.46955(16): 10 a.m.-9 p.m.
        row(
            st("KY"),
            All,
            every_day(hm(10, 0), hm(21, 0)),
            "KRS 367.46955(16)",
        ),
        // MCL 750.540e: 9 a.m.-9 p.m.
        row(
            st("MI"),
            All,
            every_day(hm(9, 0), hm(21, 0)),
            "MCL 750.540e",
        ),
        // Minn. Stat. 325E.30: 9 a.m.-9 p.m.
        row(
            st("MN"),
            All,
            every_day(hm(9, 0), hm(21, 0)),
            "Minn. Stat. 325E.30",
        ),
        // NMSA 57-12-22: 9 a.m.-9 p.m.
        row(
            st("NM"),
            All,
            every_day(hm(9, 0), hm(21, 0)),
            "NMSA 57-12-22",
        ),
        // 10 M.R.S. 1498(3): automated calls 9 a.m.-5 p.m. Monday-Friday only, at most
        // one per 8 hours.
        StateRule {
            cap: Some(Cap {
                calls: 1,
                per: Duration::from_secs(8 * 3600),
            }),
            ..row(
                st("ME"),
                Auto,
                weekdays_only(hm(9, 0), hm(17, 0)),
                "10 M.R.S. 1498(3)",
            )
        },
        // SDCL 37-30-28: automated calls 9 a.m.-9 p.m. Monday-Friday.
        row(
            st("SD"),
            Auto,
            weekdays_only(hm(9, 0), hm(21, 0)),
            "SDCL 37-30-28",
        ),
        // Cal. Pub. Util. Code 2872: automatic dialing-announcing devices 9 a.m.-9 p.m.
        row(
            st("CA"),
            Auto,
            every_day(hm(9, 0), hm(21, 0)),
            "Cal. Pub. Util. Code 2872",
        ),
        // NRS 597.814: automated calls 9 a.m.-9 p.m.
        row(
            st("NV"),
            Auto,
            every_day(hm(9, 0), hm(21, 0)),
            "NRS 597.814",
        ),
        // CRTC Unsolicited Telecommunications Rules, Part II (Telemarketing Rules):
        // 9 a.m.-9:30 p.m. weekdays, 10 a.m.-6 p.m. weekends, for every Canadian number.
        {
            let mut h = every_day(hm(9, 0), hm(21, 30));
            h[5] = Some((hm(10, 0), hm(18, 0)));
            h[6] = Some((hm(10, 0), hm(18, 0)));
            row(
                Scope::Country("CA"),
                All,
                h,
                "CRTC Unsolicited Telecommunications Rules, Part II",
            )
        },
    ];
    rules.shrink_to_fit();
    rules
}

/// `[compliance]` in the application's configuration.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    /// Per-state rows, keyed by two-letter code: `[compliance.states.FL]`.
    #[serde(default)]
    pub states: BTreeMap<String, StateOverride>,
    /// Operator blackouts (declared emergencies): `[[compliance.blackouts]]`.
    #[serde(default)]
    pub blackouts: Vec<BlackoutConfig>,
}

/// A configured row for one state. By default it is added to the built-in rows of
/// that state (all apply, so it can only make the rules stricter); with
/// `replace = true` the built-in rows of the state are removed first (a law changed).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StateOverride {
    #[serde(default)]
    pub replace: bool,
    /// `{ start = "09:00", end = "20:00" }`; `end = "24:00"` is midnight.
    pub hours: Option<WindowConfig>,
    /// Sunday hours when they differ from `hours` (Texas).
    pub sunday_hours: Option<WindowConfig>,
    /// Allowed days, `["mon", ...]`; default every day.
    pub days: Option<Vec<String>>,
    /// `{ calls = 3, per = "24h" }`
    pub cap: Option<CapConfig>,
    /// `"all"` (default) or `"artificial_voice"`.
    pub call_type: Option<String>,
    /// A built-in holiday calendar to ban: `"AL"`, `"LA"`, `"RI"`, `"PA"`, `"UT"`.
    pub holidays: Option<String>,
    /// The legal source to show in verdicts.
    pub source: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    pub start: String,
    pub end: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CapConfig {
    pub calls: u32,
    pub per: String,
}

/// An operator blackout: matching recipients are not called in `[start, end)`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BlackoutConfig {
    pub state: Option<String>,
    #[serde(default)]
    pub area_codes: Vec<u16>,
    /// ZIP prefixes (`"700"`, `"70112"`) or Canadian postal-code prefixes.
    #[serde(default)]
    pub postal_codes: Vec<String>,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub reason: Option<String>,
}

/// A validated blackout.
#[derive(Debug, Clone)]
pub struct Blackout {
    pub state: Option<String>,
    pub area_codes: Vec<u16>,
    pub postal_codes: Vec<String>,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub reason: String,
}

/// Invalid `[compliance]` configuration; the message names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesError {
    #[error("compliance.{key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> RulesError {
    RulesError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// Parses `HH:MM` (or `24:00`) into minutes since midnight.
pub fn parse_hhmm(s: &str) -> Option<Minutes> {
    if s == "24:00" {
        return Some(24 * 60);
    }
    NaiveTime::parse_from_str(s, "%H:%M")
        .ok()
        .map(|t| (t.hour() * 60 + t.minute()) as Minutes)
}

fn parse_window(key: &str, w: &WindowConfig) -> Result<(Minutes, Minutes), RulesError> {
    let open =
        parse_hhmm(&w.start).ok_or_else(|| invalid(format!("{key}.start"), "expected HH:MM"))?;
    let close = parse_hhmm(&w.end)
        .ok_or_else(|| invalid(format!("{key}.end"), "expected HH:MM or 24:00"))?;
    if open >= close {
        return Err(invalid(key, "start must be before end"));
    }
    Ok((open, close))
}

/// Parses `mon`..`sun` into a Monday-first index.
pub fn parse_day(s: &str) -> Option<usize> {
    ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        .iter()
        .position(|d| d.eq_ignore_ascii_case(s))
}

/// Builds the rule table from the built-in rows and the configuration.
pub fn build(
    cfg: &RulesConfig,
    known_state: impl Fn(&str) -> bool,
) -> Result<(Vec<StateRule>, Vec<Blackout>), RulesError> {
    let mut rules = builtin_rules();
    for (raw_code, o) in &cfg.states {
        // Layered configuration may lowercase keys: state codes are upper case.
        let code = &raw_code.to_ascii_uppercase();
        let key = format!("states.{raw_code}");
        if !known_state(code) {
            return Err(invalid(&key, "unknown state or province code"));
        }
        if o.replace {
            rules.retain(|r| r.scope != Scope::State(code.clone()));
        }
        let (open, close) = match &o.hours {
            Some(w) => parse_window(&format!("{key}.hours"), w)?,
            None => (0, 24 * 60),
        };
        let mut hours = every_day(open, close);
        if let Some(w) = &o.sunday_hours {
            hours[6] = Some(parse_window(&format!("{key}.sunday_hours"), w)?);
        }
        if let Some(days) = &o.days {
            let mut allowed = [false; 7];
            for d in days {
                let i = parse_day(d)
                    .ok_or_else(|| invalid(format!("{key}.days"), format!("unknown day {d:?}")))?;
                allowed[i] = true;
            }
            for (i, ok) in allowed.iter().enumerate() {
                if !ok {
                    hours[i] = None;
                }
            }
        }
        let cap = match &o.cap {
            Some(c) => {
                let per = humantime::parse_duration(&c.per)
                    .map_err(|e| invalid(format!("{key}.cap.per"), e.to_string()))?;
                if c.calls == 0 || per.is_zero() {
                    return Err(invalid(
                        format!("{key}.cap"),
                        "calls and per must be positive",
                    ));
                }
                Some(Cap {
                    calls: c.calls,
                    per,
                })
            }
            None => None,
        };
        let applies_to = match o.call_type.as_deref() {
            None | Some("all") => AppliesTo::AllCalls,
            Some("artificial_voice") => AppliesTo::ArtificialVoice,
            Some(other) => {
                return Err(invalid(
                    format!("{key}.call_type"),
                    format!("{other:?}: expected all or artificial_voice"),
                ));
            }
        };
        let holidays = match &o.holidays {
            Some(name) => Some(CALENDARS.iter().position(|c| c == name).ok_or_else(|| {
                invalid(
                    format!("{key}.holidays"),
                    format!("no built-in calendar {name:?}"),
                )
            })?),
            None => None,
        };
        let mut r = row(
            Scope::State(code.clone()),
            applies_to,
            hours,
            o.source.as_deref().unwrap_or("operator configuration"),
        );
        r.cap = cap;
        r.holidays = holidays;
        // Keep Mississippi's double reading when its row is replaced by configuration.
        if code == "MS" {
            r.fixed_reading = Some(Tz::Etc__GMTPlus6);
        }
        rules.push(r);
    }
    let mut blackouts = Vec::new();
    for (i, b) in cfg.blackouts.iter().enumerate() {
        let key = format!("blackouts[{i}]");
        if b.state.is_none() && b.area_codes.is_empty() && b.postal_codes.is_empty() {
            return Err(invalid(&key, "needs a state, area_codes or postal_codes"));
        }
        let state = b.state.as_ref().map(|s| s.to_ascii_uppercase());
        if let Some(s) = &state {
            if !known_state(s) {
                return Err(invalid(
                    format!("{key}.state"),
                    "unknown state or province code",
                ));
            }
        }
        if let Some(bad) = b.area_codes.iter().find(|a| !(200..=999).contains(*a)) {
            return Err(invalid(
                format!("{key}.area_codes"),
                format!("{bad} is not an area code"),
            ));
        }
        if b.start >= b.end {
            return Err(invalid(&key, "start must be before end"));
        }
        blackouts.push(Blackout {
            state,
            area_codes: b.area_codes.clone(),
            postal_codes: b
                .postal_codes
                .iter()
                .map(|p| p.replace(' ', "").to_ascii_uppercase())
                .collect(),
            start: b.start,
            end: b.end,
            reason: b
                .reason
                .clone()
                .unwrap_or_else(|| "operator blackout".into()),
        });
    }
    Ok((rules, blackouts))
}
