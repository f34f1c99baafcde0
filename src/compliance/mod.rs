//! The pure pre-flight compliance engine (SPEC.md section 6).
//!
//! No I/O: the caller passes the facts (DNC, opt-out, consents, counted calls) and the
//! instant. Build an [`Engine`] once from [`RulesConfig`]; build a [`Recipient`] per
//! contact (zones and states, precomputable); call [`Engine::evaluate`] when a job is
//! claimed and [`Engine::evaluate_time`] again right before every request.
//!
//! Time rule, the conservative one: collect every candidate zone of the recipient
//! and allow an instant only if, in every one of them, the local time is inside every
//! applicable window on an allowed day. Windows are half-open `[open, close)`.

mod caps;
pub mod holidays;
pub mod rules;
pub mod verdict;
pub mod zones;

#[cfg(test)]
mod tests;

pub use rules::{
    AppliesTo, Blackout, BlackoutConfig, Cap, CapConfig, RulesConfig, RulesError, Scope,
    StateOverride, StateRule, WindowConfig,
};
pub use verdict::{Outcome, Rule, SCRUB_CSV_HEADER, Verdict, explain_text};

use crate::phone::PhoneNumber;
use chrono::{DateTime, Datelike, NaiveDate, NaiveTime, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use holidays::Calendar;
use rules::Minutes;
use zones::{PrefixZones, TABLES};

/// How far ahead the engine looks for an allowed instant before dropping the job.
pub const HORIZON_DAYS: i64 = 14;

/// What kind of voice places the call; "automated" state rows apply to
/// artificial-voice calls only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallType {
    /// RevDesk dispatches AI agents: an artificial voice (FCC 24-17, 2024). The default.
    ArtificialVoice,
    Live,
}

impl CallType {
    /// `artificial_voice` or `live` (the campaign file's `call_type`).
    pub fn parse(s: &str) -> Option<CallType> {
        match s {
            "artificial_voice" => Some(CallType::ArtificialVoice),
            "live" => Some(CallType::Live),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CallType::ArtificialVoice => "artificial_voice",
            CallType::Live => "live",
        }
    }

    /// SPEC.md section 6: a campaign that does not set `require_consent` needs
    /// `express_written` for artificial-voice calls (47 CFR 64.1200(a)(2)-(3)) and
    /// none for live ones.
    pub fn default_consent(self) -> Option<ConsentKind> {
        match self {
            CallType::ArtificialVoice => Some(ConsentKind::ExpressWritten),
            CallType::Live => None,
        }
    }
}

/// A kind of prior consent. `ExpressWritten` also satisfies `Express`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConsentKind {
    Express,
    ExpressWritten,
}

impl ConsentKind {
    /// Whether a record of this kind satisfies a requirement of `required`.
    pub fn satisfies(self, required: ConsentKind) -> bool {
        match (self, required) {
            (ConsentKind::ExpressWritten, _) | (ConsentKind::Express, ConsentKind::Express) => true,
            (ConsentKind::Express, ConsentKind::ExpressWritten) => false,
        }
    }

    /// `express` or `express_written` (the consents file's `kind`).
    pub fn parse(s: &str) -> Option<ConsentKind> {
        match s {
            "express" => Some(ConsentKind::Express),
            "express_written" => Some(ConsentKind::ExpressWritten),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ConsentKind::Express => "express",
            ConsentKind::ExpressWritten => "express_written",
        }
    }
}

/// One consent record for the number (global or for this campaign).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentFact {
    pub kind: ConsentKind,
    pub granted_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ConsentFact {
    /// Granted, not expired and not revoked at `now`.
    pub fn valid_at(&self, now: DateTime<Utc>) -> bool {
        self.granted_at <= now
            && self.expires_at.is_none_or(|e| now < e)
            && self.revoked_at.is_none_or(|r| now < r)
    }
}

/// What the store knows about the number, read when the job is claimed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// On any loaded DNC list (the number or its whole area code).
    pub dnc: bool,
    /// Opted out globally or for this campaign.
    pub opted_out: bool,
    pub consents: Vec<ConsentFact>,
    /// Calls placed or possibly placed to this number, all campaigns (SPEC.md section 6).
    pub counted_calls: Vec<DateTime<Utc>>,
}

/// The campaign's side of the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Recipient-local window, `[start, end)`; `end = 00:00` means midnight (24:00).
    pub window_start: NaiveTime,
    pub window_end: NaiveTime,
    /// Allowed recipient-local days, Monday first.
    pub days: [bool; 7],
    pub require_consent: Option<ConsentKind>,
    pub frequency_cap: Option<Cap>,
    pub call_type: CallType,
}

impl Policy {
    /// No campaign (`dialer check`/`scrub` without `--campaign`): an artificial-voice
    /// call (the stricter case) under the law's rules only: whole-day window, every
    /// day, no campaign cap and no consent requirement (consent is a campaign setting).
    pub fn check_default() -> Policy {
        Policy {
            window_start: NaiveTime::MIN,
            window_end: NaiveTime::MIN,
            days: [true; 7],
            require_consent: None,
            frequency_cap: None,
            call_type: CallType::ArtificialVoice,
        }
    }

    fn window_minutes(&self) -> (Minutes, Minutes) {
        let m = |t: NaiveTime| (t.hour() * 60 + t.minute()) as Minutes;
        let close = if self.window_end == NaiveTime::MIN {
            24 * 60
        } else {
            m(self.window_end)
        };
        (m(self.window_start), close)
    }
}

/// One place where the rules are read: a candidate zone with every applicable row,
/// or a fixed-offset reading of one row (Mississippi).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Check {
    tz: Tz,
    only_row: Option<u16>,
}

/// A contact resolved to candidate zones and applicable states. Precomputable.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipient {
    pub zones: Vec<Tz>,
    pub states: Vec<String>,
    /// A Canadian number or a Canadian province: the CRTC rules apply.
    pub canada: bool,
    pub npa: Option<u16>,
    /// Where each zone came from, in plain words (for `dialer check`).
    pub zone_sources: Vec<String>,
    rows: Vec<u16>,
    checks: Vec<Check>,
    blackouts: Vec<u16>,
}

/// The rule table, holiday calendars and blackouts, built once from configuration.
#[derive(Debug, Clone)]
pub struct Engine {
    rules: Vec<StateRule>,
    calendars: Vec<Calendar>,
    blackouts: Vec<Blackout>,
}

/// What source a window bound or day ban came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Src {
    Campaign,
    Row(u16),
}

/// The rules of one local date at one check.
#[derive(Debug, Clone, Copy)]
struct Plan {
    day_block: Option<(Src, Option<&'static str>)>,
    open: Minutes,
    close: Minutes,
    open_by: Src,
    close_by: Src,
}

/// Why an instant is blocked.
#[derive(Debug, Clone, Copy)]
enum Block {
    Blackout(u16),
    Day {
        check: Check,
        date: NaiveDate,
        src: Src,
        holiday: Option<&'static str>,
    },
    Window {
        check: Check,
        local: NaiveTime,
        plan: Plan,
    },
}

impl Block {
    fn rule(&self) -> Rule {
        match self {
            Block::Blackout(_) | Block::Day { .. } => Rule::CallingDay,
            Block::Window { .. } => Rule::CallingWindow,
        }
    }
}

fn fmt_minutes(m: Minutes) -> String {
    format!("{:02}:{:02}", m / 60, m % 60)
}

fn ceil_minute(t: DateTime<Utc>) -> DateTime<Utc> {
    let rem = t.timestamp().rem_euclid(60);
    if rem == 0 && t.timestamp_subsec_nanos() == 0 {
        t
    } else {
        let floor = t
            - TimeDelta::seconds(rem)
            - TimeDelta::nanoseconds(i64::from(t.timestamp_subsec_nanos()));
        floor + TimeDelta::minutes(1)
    }
}

impl Engine {
    pub fn new(cfg: &RulesConfig) -> Result<Engine, RulesError> {
        let (rules, blackouts) = rules::build(cfg, |code| TABLES.state(code).is_some())?;
        Ok(Engine {
            rules,
            calendars: rules::builtin_calendars(),
            blackouts,
        })
    }

    /// The rule rows in force (built-in plus configured), for display and tests.
    pub fn rules(&self) -> &[StateRule] {
        &self.rules
    }

    /// Candidate zones and applicable states of a contact (SPEC.md section 6):
    /// the contact's `timezone`; the zones of its state (from `state`, or from
    /// `postal_code`); the zones of the number's prefix, down to NPA-NXX. A
    /// non-geographic number with nothing else known gets every zone of its country.
    /// States: the contact's and the area code's (both apply).
    pub fn recipient(
        &self,
        phone: &PhoneNumber,
        timezone: Option<Tz>,
        state: Option<&str>,
        postal_code: Option<&str>,
    ) -> Recipient {
        let mut zones: Vec<Tz> = Vec::new();
        let mut sources = Vec::new();
        let add = |zones: &mut Vec<Tz>, z: &[Tz]| {
            for tz in z {
                if !zones.contains(tz) {
                    zones.push(*tz);
                }
            }
        };
        if let Some(tz) = timezone {
            add(&mut zones, &[tz]);
            sources.push(format!("{}: the contact's time zone", tz.name()));
        }
        let mut states: Vec<String> = Vec::new();
        let mut contact_states: Vec<String> = Vec::new();
        if let Some(s) = state
            .map(|s| s.trim().to_ascii_uppercase())
            .filter(|s| !s.is_empty())
        {
            contact_states.push(s);
        }
        if let Some(p) = postal_code {
            for s in TABLES.postal_states(p) {
                if !contact_states.contains(&s) {
                    contact_states.push(s);
                }
            }
        }
        for s in &contact_states {
            if let Some(sz) = TABLES.state(s) {
                add(&mut zones, &sz.zones);
                let names: Vec<&str> = sz.zones.iter().map(|z| z.name()).collect();
                sources.push(format!("{}: the contact's state {s}", names.join(", ")));
                states.push(s.clone());
            } else {
                sources.push(format!("unknown state {s:?} ignored"));
            }
        }
        let npa = phone.npa();
        let mut canada = false;
        if let (Some(npa), true) = (npa, phone.is_nanp()) {
            for s in TABLES.area_code_states(npa) {
                if !states.contains(s) {
                    states.push(s.clone());
                }
            }
            canada = TABLES.area_code_region(npa) == Some("CA");
            match TABLES.prefix_zones(&phone.as_str()[2..]) {
                PrefixZones::Geographic(prefix, z) => {
                    add(&mut zones, z);
                    let names: Vec<&str> = z.iter().map(|z| z.name()).collect();
                    let overlay = TABLES
                        .overlay_parent(npa)
                        .map(|p| format!(" (overlay of area code {p})"))
                        .unwrap_or_default();
                    sources.push(format!(
                        "{}: the number's prefix +{prefix}{overlay}",
                        names.join(", ")
                    ));
                }
                PrefixZones::NonGeographic if zones.is_empty() => {
                    let all = if canada {
                        TABLES.ca_all()
                    } else {
                        TABLES.us_all()
                    };
                    add(&mut zones, all);
                    sources.push(if canada {
                        "every Canadian zone: non-geographic number, nothing else known".into()
                    } else {
                        "every zone of the 50 states, DC, PR and USVI: non-geographic number, nothing else known"
                            .into()
                    });
                }
                PrefixZones::NonGeographic => {
                    sources.push("the number's prefix is non-geographic: not used".into());
                }
            }
        }
        canada |= states
            .iter()
            .any(|s| TABLES.state(s).is_some_and(|z| z.country == "CA"));
        let mut rows = Vec::new();
        for (i, r) in self.rules.iter().enumerate() {
            let applies = match &r.scope {
                Scope::Everyone => true,
                Scope::State(s) => states.contains(s),
                Scope::Country(c) => *c == "CA" && canada,
            };
            if applies {
                rows.push(i as u16);
            }
        }
        let mut checks: Vec<Check> = zones
            .iter()
            .map(|&tz| Check { tz, only_row: None })
            .collect();
        for &i in &rows {
            if let Some(tz) = self.rules[i as usize].fixed_reading {
                checks.push(Check {
                    tz,
                    only_row: Some(i),
                });
            }
        }
        let postal = postal_code.map(|p| p.replace(' ', "").to_ascii_uppercase());
        let blackouts = self
            .blackouts
            .iter()
            .enumerate()
            .filter(|(_, b)| {
                b.state.as_ref().is_some_and(|s| states.contains(s))
                    || npa.is_some_and(|n| b.area_codes.contains(&n))
                    || postal
                        .as_ref()
                        .is_some_and(|p| b.postal_codes.iter().any(|bp| p.starts_with(bp.as_str())))
            })
            .map(|(i, _)| i as u16)
            .collect();
        Recipient {
            zones,
            states,
            canada,
            npa,
            zone_sources: sources,
            rows,
            checks,
            blackouts,
        }
    }

    fn row_applies(&self, i: u16, policy: &Policy, date: NaiveDate) -> bool {
        let r = &self.rules[i as usize];
        let by_type = match (r.applies_to, policy.call_type) {
            (AppliesTo::AllCalls, _) | (AppliesTo::ArtificialVoice, CallType::ArtificialVoice) => {
                true
            }
            (AppliesTo::ArtificialVoice, CallType::Live) => false,
        };
        by_type && r.in_force(date)
    }

    fn plan(&self, r: &Recipient, policy: &Policy, check: Check, date: NaiveDate) -> Plan {
        let wd = date.weekday().num_days_from_monday() as usize;
        let mut p = Plan {
            day_block: None,
            open: 0,
            close: 24 * 60,
            open_by: Src::Campaign,
            close_by: Src::Campaign,
        };
        let apply_row = |p: &mut Plan, i: u16| {
            if !self.row_applies(i, policy, date) {
                return;
            }
            let row = &self.rules[i as usize];
            match row.hours[wd] {
                None => {
                    if p.day_block.is_none() {
                        p.day_block = Some((Src::Row(i), None));
                    }
                }
                Some((o, c)) => {
                    if o > p.open {
                        p.open = o;
                        p.open_by = Src::Row(i);
                    }
                    if c < p.close {
                        p.close = c;
                        p.close_by = Src::Row(i);
                    }
                }
            }
            if let Some(cal) = row.holidays.and_then(|c| self.calendars.get(c)) {
                if p.day_block.is_none() && cal.bans(date) {
                    p.day_block = Some((Src::Row(i), cal.holiday_name(date)));
                }
            }
        };
        match check.only_row {
            Some(i) => apply_row(&mut p, i),
            None => {
                if !policy.days[wd] {
                    p.day_block = Some((Src::Campaign, None));
                }
                let (o, c) = policy.window_minutes();
                p.open = o;
                p.close = c;
                for &i in &r.rows {
                    apply_row(&mut p, i);
                }
            }
        }
        p
    }

    fn check_at(
        &self,
        r: &Recipient,
        policy: &Policy,
        check: Check,
        t: DateTime<Utc>,
    ) -> Option<Block> {
        let local = t.with_timezone(&check.tz);
        let date = local.date_naive();
        let plan = self.plan(r, policy, check, date);
        if let Some((src, holiday)) = plan.day_block {
            return Some(Block::Day {
                check,
                date,
                src,
                holiday,
            });
        }
        let secs = local.num_seconds_from_midnight();
        if secs < u32::from(plan.open) * 60 || secs >= u32::from(plan.close) * 60 {
            return Some(Block::Window {
                check,
                local: local.time(),
                plan,
            });
        }
        None
    }

    /// The first blocking reason at `t`: blackout, then a day ban in any check, then
    /// a window in any check.
    fn block_at(&self, r: &Recipient, policy: &Policy, t: DateTime<Utc>) -> Option<Block> {
        for &b in &r.blackouts {
            let bo = &self.blackouts[b as usize];
            if bo.start <= t && t < bo.end {
                return Some(Block::Blackout(b));
            }
        }
        let mut window = None;
        for &c in &r.checks {
            match self.check_at(r, policy, c, t) {
                Some(day @ Block::Day { .. }) => return Some(day),
                Some(w) if window.is_none() => window = Some(w),
                Some(_) | None => {}
            }
        }
        window
    }

    /// Whether every time rule (blackouts, days, windows in every zone) allows `t`.
    pub fn time_allowed(&self, r: &Recipient, policy: &Policy, t: DateTime<Utc>) -> bool {
        !r.checks.is_empty() && self.block_at(r, policy, t).is_none()
    }

    /// The earliest instant `>= t` when `check` alone allows a call, or `None` past `limit`.
    fn next_open(
        &self,
        r: &Recipient,
        policy: &Policy,
        check: Check,
        t: DateTime<Utc>,
        limit: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&check.tz);
        let mut date = local.date_naive();
        let t_secs = local.num_seconds_from_midnight();
        let mut first = true;
        loop {
            let plan = self.plan(r, policy, check, date);
            if plan.day_block.is_none() && plan.open < plan.close {
                let open_secs = u32::from(plan.open) * 60;
                let start_secs = if first {
                    t_secs.max(open_secs)
                } else {
                    open_secs
                };
                if start_secs < u32::from(plan.close) * 60 {
                    if first && start_secs == t_secs {
                        return Some(t);
                    }
                    let at = resolve_local(check.tz, date, start_secs).max(t);
                    if at > limit {
                        return None;
                    }
                    return Some(at);
                }
            }
            first = false;
            date = date.succ_opt()?;
            if resolve_local(check.tz, date, 0) > limit {
                return None;
            }
        }
    }

    /// The earliest instant `>= from` (minute precision) allowed by every time rule,
    /// or `None` if there is none within 14 days (an active blackout extends the
    /// search: it only delays to its end).
    pub fn next_allowed(
        &self,
        r: &Recipient,
        policy: &Policy,
        from: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        if r.checks.is_empty() {
            return None;
        }
        let mut t = from;
        let mut limit = from + TimeDelta::days(HORIZON_DAYS);
        // Each step moves t to the earliest instant one blocking rule allows, so no
        // allowed instant is skipped; the loop ends when no rule blocks t.
        for _ in 0..10_000 {
            if t > limit {
                return None;
            }
            match self.block_at(r, policy, t) {
                None => return Some(t),
                Some(Block::Blackout(b)) => {
                    t = ceil_minute(self.blackouts[b as usize].end).max(t);
                    limit = limit.max(t + TimeDelta::days(HORIZON_DAYS));
                }
                Some(Block::Day { check, .. } | Block::Window { check, .. }) => {
                    let next = self.next_open(r, policy, check, t, limit)?;
                    // Progress even if a DST gap resolved at or before t.
                    t = if next > t {
                        next
                    } else {
                        ceil_minute(t + TimeDelta::seconds(1))
                    };
                }
            }
        }
        None
    }

    fn base_verdict(
        &self,
        r: &Recipient,
        now: DateTime<Utc>,
        outcome: Outcome,
        reason: String,
    ) -> Verdict {
        Verdict {
            outcome,
            reason,
            zones: r.zones.clone(),
            states: r.states.clone(),
            local_times: r
                .zones
                .iter()
                .map(|z| (*z, now.with_timezone(z).fixed_offset()))
                .collect(),
            next_allowed_at: match outcome {
                Outcome::Allow => Some(now),
                Outcome::Requeue { at, .. } => Some(at),
                Outcome::Drop { .. } => None,
            },
        }
    }

    /// Every rule in SPEC.md section 6 order (the number rules were applied when the
    /// `PhoneNumber` was parsed): DNC, opt-out, consent, calling day, calling window,
    /// frequency cap.
    pub fn evaluate(
        &self,
        r: &Recipient,
        policy: &Policy,
        facts: &Facts,
        now: DateTime<Utc>,
    ) -> Verdict {
        self.blocking_verdict(r, policy, facts, now)
            .unwrap_or_else(|| self.allow_verdict(r, now))
    }

    /// [`Engine::evaluate`] when a rule blocks, `None` when every rule allows: the
    /// same rules in the same order (`evaluate` is this plus the allow verdict), without
    /// building a verdict nobody records. The worker's check right before every
    /// request uses it: when the call may go, it builds no verdict (no allocation).
    pub fn blocking_verdict(
        &self,
        r: &Recipient,
        policy: &Policy,
        facts: &Facts,
        now: DateTime<Utc>,
    ) -> Option<Verdict> {
        if facts.dnc {
            return Some(self.base_verdict(
                r,
                now,
                Outcome::Drop { rule: Rule::Dnc },
                "on a Do-Not-Call list".into(),
            ));
        }
        if facts.opted_out {
            return Some(self.base_verdict(
                r,
                now,
                Outcome::Drop {
                    rule: Rule::OptedOut,
                },
                "the contact opted out".into(),
            ));
        }
        if let Some(kind) = policy.require_consent {
            if !facts
                .consents
                .iter()
                .any(|c| c.kind.satisfies(kind) && c.valid_at(now))
            {
                return Some(self.base_verdict(
                    r,
                    now,
                    Outcome::Drop {
                        rule: Rule::NoConsent,
                    },
                    format!(
                        "no {} consent valid now (granted, not expired, not revoked)",
                        kind.as_str()
                    ),
                ));
            }
        }
        if let Some(time) = self.time_block(r, policy, now) {
            return Some(time);
        }
        let (release, why) = self.cap_release(r, policy, facts, now)?;
        Some(match self.next_allowed(r, policy, ceil_minute(release)) {
            Some(at) => self.base_verdict(
                r,
                now,
                Outcome::Requeue {
                    rule: Rule::FrequencyCap,
                    at,
                },
                format!(
                    "{why}; the oldest counted call leaves the window at {}",
                    release.to_rfc3339()
                ),
            ),
            None => self.base_verdict(
                r,
                now,
                Outcome::Drop {
                    rule: Rule::CallingWindow,
                },
                format!("{why}; no allowed time within {HORIZON_DAYS} days after the cap clears"),
            ),
        })
    }

    /// When every cap that `facts.counted_calls` reaches at `now` is clear again, and
    /// why. Allocates only for a cap that is reached.
    fn cap_release(
        &self,
        r: &Recipient,
        policy: &Policy,
        facts: &Facts,
        now: DateTime<Utc>,
    ) -> Option<(DateTime<Utc>, String)> {
        if facts.counted_calls.is_empty() {
            return None;
        }
        let today = now.date_naive();
        // Each cap with the row it comes from (None: the campaign's).
        let state_caps = r.rows.iter().filter_map(|&i| {
            // A cap row counts on any date it is in force around now; UTC date is close
            // enough for the effective-date filter (no capped row has one).
            (self.row_applies(i, policy, today) || self.row_applies(i, policy, today.succ_opt()?))
                .then(|| self.rules[i as usize].cap.map(|c| (c, Some(i))))
                .flatten()
        });
        let campaign = policy.frequency_cap.map(|c| (c, None));
        // The latest release: (release, cap, its row, counted calls inside its window).
        let mut worst: Option<(DateTime<Utc>, Cap, Option<u16>, usize)> = None;
        for (cap, row) in campaign.into_iter().chain(state_caps) {
            let Ok(per) = TimeDelta::from_std(cap.per) else {
                continue;
            };
            let since = now - per;
            let count = facts.counted_calls.iter().filter(|&&c| c > since).count();
            if count < cap.calls as usize {
                continue;
            }
            let mut inside: Vec<DateTime<Utc>> = facts
                .counted_calls
                .iter()
                .copied()
                .filter(|&c| c > since)
                .collect();
            inside.sort_unstable();
            // The cap clears when all but calls-1 of the counted calls have left the window.
            let release = inside[inside.len() - cap.calls as usize] + per;
            if worst.as_ref().is_none_or(|(w, ..)| release > *w) {
                worst = Some((release, cap, row, count));
            }
        }
        let (release, cap, row, count) = worst?;
        let label = match row {
            None => format!(
                "campaign cap {}/{}",
                cap.calls,
                humantime::format_duration(cap.per)
            ),
            Some(i) => {
                let row = &self.rules[i as usize];
                format!(
                    "{} cap {}/{} ({})",
                    row.label(),
                    cap.calls,
                    humantime::format_duration(cap.per),
                    row.source
                )
            }
        };
        let why = format!(
            "{count} counted calls in the last {} reach the {label}",
            humantime::format_duration(cap.per)
        );
        Some((release, why))
    }

    /// The time rules only (calling day, calling window, blackouts).
    pub fn evaluate_time(&self, r: &Recipient, policy: &Policy, now: DateTime<Utc>) -> Verdict {
        self.time_block(r, policy, now)
            .unwrap_or_else(|| self.allow_verdict(r, now))
    }

    /// [`Engine::evaluate_time`] when a time rule blocks, `None` when they allow.
    fn time_block(&self, r: &Recipient, policy: &Policy, now: DateTime<Utc>) -> Option<Verdict> {
        if r.checks.is_empty() {
            return Some(self.base_verdict(
                r,
                now,
                Outcome::Drop {
                    rule: Rule::CallingWindow,
                },
                "no time zone is known for this number, so its calling window cannot be checked"
                    .into(),
            ));
        }
        let block = self.block_at(r, policy, now)?;
        let why = self.describe(&block);
        Some(match self.next_allowed(r, policy, now) {
            Some(at) => self.base_verdict(
                r,
                now,
                Outcome::Requeue {
                    rule: block.rule(),
                    at,
                },
                why,
            ),
            None => self.base_verdict(
                r,
                now,
                Outcome::Drop {
                    rule: Rule::CallingWindow,
                },
                format!("{why}; no allowed time within {HORIZON_DAYS} days"),
            ),
        })
    }

    fn allow_verdict(&self, r: &Recipient, now: DateTime<Utc>) -> Verdict {
        self.base_verdict(
            r,
            now,
            Outcome::Allow,
            "allowed: every rule passes in every candidate zone".into(),
        )
    }

    fn src_text(&self, src: Src) -> String {
        match src {
            Src::Campaign => "the campaign".into(),
            Src::Row(i) => {
                let row = &self.rules[i as usize];
                let kind = match row.applies_to {
                    AppliesTo::AllCalls => "",
                    AppliesTo::ArtificialVoice => " (artificial-voice calls)",
                };
                format!("{}{kind}: {}", row.label(), row.source)
            }
        }
    }

    fn describe(&self, block: &Block) -> String {
        let zone = |c: &Check| match c.only_row {
            None => c.tz.name().to_owned(),
            Some(_) => format!(
                "{} (fixed UTC-6 \"Central Standard Time\" reading)",
                c.tz.name()
            ),
        };
        match block {
            Block::Blackout(b) => {
                let bo = &self.blackouts[*b as usize];
                format!(
                    "operator blackout until {}: {}",
                    bo.end.to_rfc3339(),
                    bo.reason
                )
            }
            Block::Day {
                check,
                date,
                src,
                holiday,
            } => {
                let what = match (src, holiday) {
                    (Src::Campaign, _) => "not one of the campaign's days".to_owned(),
                    (_, Some(h)) => format!("a holiday ({h}) under {}", self.src_text(*src)),
                    (_, None) => format!("not a calling day under {}", self.src_text(*src)),
                };
                format!(
                    "{} in {} is {what}",
                    date.format("%a %Y-%m-%d"),
                    zone(check)
                )
            }
            Block::Window { check, local, plan } => {
                let by = if (local.hour() * 60 + local.minute()) < u32::from(plan.open) {
                    plan.open_by
                } else {
                    plan.close_by
                };
                if plan.open >= plan.close {
                    format!(
                        "no calling window is left in {} that day (set by {})",
                        zone(check),
                        self.src_text(by)
                    )
                } else {
                    format!(
                        "{} in {} is outside the calling window {}-{} (set by {})",
                        local.format("%H:%M"),
                        zone(check),
                        fmt_minutes(plan.open),
                        fmt_minutes(plan.close),
                        self.src_text(by)
                    )
                }
            }
        }
    }
}

/// The earliest instant whose local time in `tz` is `secs` after midnight of `date`;
/// a time inside a spring-forward gap resolves to the end of the gap.
fn resolve_local(tz: Tz, date: NaiveDate, secs: u32) -> DateTime<Utc> {
    let base = date.and_hms_opt(0, 0, 0).unwrap_or_default() + TimeDelta::seconds(i64::from(secs));
    for step in 0..=240 {
        let naive = base + TimeDelta::minutes(step);
        if let Some(t) = tz.from_local_datetime(&naive).earliest() {
            return t.with_timezone(&Utc);
        }
    }
    // No zone has a gap longer than four hours; fall back to reading it as UTC.
    Utc.from_utc_datetime(&base)
}
