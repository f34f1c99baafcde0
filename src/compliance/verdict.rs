//! The verdict: what the engine decided, why, and the evidence (zones, states, local
//! times), plus its renderings for `dialer check` (text, JSON) and `dialer scrub` (CSV).

use crate::phone::PhoneError;
use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use chrono_tz::Tz;
use serde_json::{Map, Value, json};

/// The pre-flight rules, in SPEC.md section 6 order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    InvalidNumber,
    DestinationBlocked,
    Dnc,
    OptedOut,
    NoConsent,
    CallingDay,
    CallingWindow,
    FrequencyCap,
}

impl Rule {
    /// The SPEC name, shared with the vendor's reasons and the metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::InvalidNumber => "invalid_number",
            Rule::DestinationBlocked => "destination_blocked",
            Rule::Dnc => "dnc",
            Rule::OptedOut => "opted_out",
            Rule::NoConsent => "no_consent",
            Rule::CallingDay => "calling_day",
            Rule::CallingWindow => "calling_window",
            Rule::FrequencyCap => "frequency_cap",
        }
    }

    /// The rule with this SPEC name (for reading stored verdicts back).
    pub fn parse(name: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|r| r.as_str() == name)
    }

    pub const ALL: [Rule; 8] = [
        Rule::InvalidNumber,
        Rule::DestinationBlocked,
        Rule::Dnc,
        Rule::OptedOut,
        Rule::NoConsent,
        Rule::CallingDay,
        Rule::CallingWindow,
        Rule::FrequencyCap,
    ];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    Requeue { rule: Rule, at: DateTime<Utc> },
    Drop { rule: Rule },
}

impl Outcome {
    /// `allow`, `requeue` or `drop`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Requeue { .. } => "requeue",
            Outcome::Drop { .. } => "drop",
        }
    }

    pub fn rule(&self) -> Option<Rule> {
        match self {
            Outcome::Allow => None,
            Outcome::Requeue { rule, .. } | Outcome::Drop { rule } => Some(*rule),
        }
    }
}

/// One verdict, self-contained enough to be stored as the audit record.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub outcome: Outcome,
    /// Plain words: which rule, which zone, which local time, which legal source.
    pub reason: String,
    pub zones: Vec<Tz>,
    pub states: Vec<String>,
    pub local_times: Vec<(Tz, DateTime<FixedOffset>)>,
    /// `now` for an allow, the requeue time for a requeue, `None` for a drop.
    pub next_allowed_at: Option<DateTime<Utc>>,
}

fn rfc3339<T: chrono::TimeZone>(t: &DateTime<T>) -> String
where
    T::Offset: std::fmt::Display,
{
    t.to_rfc3339_opts(SecondsFormat::Secs, false)
}

impl Verdict {
    /// The verdict for a raw number that did not parse: `destination_blocked` for a
    /// special number, `invalid_number` otherwise. No zones are known.
    pub fn rejected(err: &PhoneError, _raw: &str) -> Verdict {
        let rule = match err {
            PhoneError::Blocked(_) => Rule::DestinationBlocked,
            PhoneError::Invalid(_) => Rule::InvalidNumber,
        };
        Verdict {
            outcome: Outcome::Drop { rule },
            reason: err.to_string(),
            zones: Vec::new(),
            states: Vec::new(),
            local_times: Vec::new(),
            next_allowed_at: None,
        }
    }

    pub fn is_allow(&self) -> bool {
        self.outcome == Outcome::Allow
    }

    pub fn rule(&self) -> Option<Rule> {
        self.outcome.rule()
    }

    /// SPEC.md section 3's object: `{"phone", "verdict", "rule", "reason", "zones",
    /// "states", "local_times": {ZONE: RFC3339}, "next_allowed_at"}`.
    pub fn to_json(&self, phone: &str) -> Value {
        let mut local = Map::new();
        for (z, t) in &self.local_times {
            local.insert(z.name().to_owned(), Value::String(rfc3339(t)));
        }
        json!({
            "phone": phone,
            "verdict": self.outcome.as_str(),
            "rule": self.rule().map(Rule::as_str),
            "reason": self.reason,
            "zones": self.zones.iter().map(|z| z.name()).collect::<Vec<_>>(),
            "states": self.states,
            "local_times": local,
            "next_allowed_at": self.next_allowed_at.map(|t| rfc3339(&t)),
        })
    }

    /// The `scrub --format csv` fields: `phone,verdict,rule,reason,zones,next_allowed_at`
    /// (zones joined by `;`). Quoting is the CSV writer's job.
    pub fn csv_fields(&self, phone: &str) -> [String; 6] {
        [
            phone.to_owned(),
            self.outcome.as_str().to_owned(),
            self.rule().map(Rule::as_str).unwrap_or("").to_owned(),
            self.reason.clone(),
            self.zones
                .iter()
                .map(|z| z.name())
                .collect::<Vec<_>>()
                .join(";"),
            self.next_allowed_at
                .map(|t| rfc3339(&t))
                .unwrap_or_default(),
        ]
    }
}

/// The CSV header of `scrub --format csv`.
pub const SCRUB_CSV_HEADER: [&str; 6] = [
    "phone",
    "verdict",
    "rule",
    "reason",
    "zones",
    "next_allowed_at",
];

/// `dialer check`'s text: the verdict, each rule in SPEC order in plain words, the
/// zones and local times used, and the next allowed time.
pub fn explain_text(v: &Verdict, phone: &str) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "{phone}: {}", v.outcome.as_str().to_uppercase());
    let blocking = v.rule();
    let _ = writeln!(
        s,
        "  rules (checked in order, the first that blocks decides):"
    );
    let mut reached = true;
    for rule in Rule::ALL {
        let words = match rule {
            Rule::DestinationBlocked => "special number (emergency, N11, 555-01XX, 555-1212, 900)",
            Rule::InvalidNumber => "valid number",
            Rule::Dnc => "not on a Do-Not-Call list",
            Rule::OptedOut => "not opted out",
            Rule::NoConsent => "consent on record when the campaign requires it",
            Rule::CallingDay => {
                "an allowed calling day in every zone (campaign days, Sundays, holidays, blackouts)"
            }
            Rule::CallingWindow => {
                "inside the calling window in every zone (campaign window and legal hours)"
            }
            Rule::FrequencyCap => "under the frequency caps (campaign and state)",
        };
        let status = if Some(rule) == blocking {
            reached = false;
            "BLOCKED"
        } else if reached {
            "ok"
        } else {
            "not checked"
        };
        let _ = writeln!(s, "    {:<20} {:<12} {words}", rule.as_str(), status);
    }
    let _ = writeln!(s, "  reason: {}", v.reason);
    if !v.states.is_empty() {
        let _ = writeln!(s, "  states: {}", v.states.join(", "));
    }
    if v.zones.is_empty() {
        let _ = writeln!(s, "  time zones: none used");
    } else {
        let _ = writeln!(s, "  time zones (all must allow the call):");
        for z in &v.zones {
            match v.local_times.iter().find(|(lz, _)| lz == z) {
                Some((_, t)) => {
                    let _ = writeln!(
                        s,
                        "    {:<32} local time {}",
                        z.name(),
                        t.format("%a %Y-%m-%d %H:%M %:z")
                    );
                }
                None => {
                    let _ = writeln!(s, "    {}", z.name());
                }
            }
        }
    }
    let next = match (&v.outcome, v.next_allowed_at) {
        (Outcome::Drop { .. }, _) | (_, None) => "never (dropped)".to_owned(),
        (Outcome::Allow, Some(_)) => "now".to_owned(),
        (Outcome::Requeue { .. }, Some(t)) => rfc3339(&t),
    };
    let _ = writeln!(s, "  next allowed: {next}");
    s
}
