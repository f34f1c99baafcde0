//! Campaign files (`dialer campaign apply FILE.toml`, SPEC section 3), validated at
//! construction: once a [`CampaignSpec`] exists it is valid.

use crate::config::{Dur, VoicemailPolicy};
use chrono::NaiveTime;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    #[error("campaign file {path}: {message}")]
    File { path: String, message: String },
    #[error("campaign `{field}`: {message}")]
    Field {
        field: &'static str,
        message: String,
    },
}

fn field(field: &'static str, message: impl Into<String>) -> CampaignError {
    CampaignError::Field {
        field,
        message: message.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallType {
    /// RevDesk dispatches AI agents: the FCC treats AI-generated voices as artificial
    /// (FCC Declaratory Ruling, CG Docket 23-362, Feb. 2024), so this is the default.
    ArtificialVoice,
    Live,
}

impl CallType {
    pub fn as_str(self) -> &'static str {
        match self {
            CallType::ArtificialVoice => "artificial_voice",
            CallType::Live => "live",
        }
    }
}

/// The raw file, as written by an operator.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CampaignFile {
    name: String,
    from_number: String,
    window: WindowFile,
    #[serde(default = "all_days")]
    days: Vec<String>,
    #[serde(default = "default_max_attempts")]
    max_attempts: u32,
    #[serde(default)]
    require_consent: Option<toml::Value>,
    #[serde(default)]
    frequency_cap: Option<CapFile>,
    #[serde(default)]
    rate_per_second: Option<f64>,
    #[serde(default)]
    call_type: Option<CallType>,
    #[serde(default)]
    retry: RetryOverrides,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowFile {
    start: String,
    end: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CapFile {
    calls: u32,
    per: Dur,
}

fn all_days() -> Vec<String> {
    ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        .map(String::from)
        .to_vec()
}
fn default_max_attempts() -> u32 {
    3
}

/// A campaign's `[retry]` table: each value overrides the configuration's `retry.*`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_dur")]
    pub busy: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_dur")]
    pub no_answer: Option<Dur>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_voicemail"
    )]
    pub voicemail: Option<VoicemailPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_dur")]
    pub no_active_number: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_dur")]
    pub compliance_min: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_dur")]
    pub cap_min: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_refusals: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_dur")]
    pub account_halt: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_max: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_requeues: Option<u32>,
}

mod opt_dur {
    use crate::config::Dur;
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &Option<Dur>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.serialize_str(&d.to_string()),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Dur>, D::Error> {
        Option::<Dur>::deserialize(d)
    }
}

mod opt_voicemail {
    use crate::config::VoicemailPolicy;
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &Option<VoicemailPolicy>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(VoicemailPolicy::Done) => s.serialize_str("done"),
            Some(VoicemailPolicy::After(d)) => s.serialize_str(&d.to_string()),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<VoicemailPolicy>, D::Error> {
        Option::<VoicemailPolicy>::deserialize(d)
    }
}

/// The consent a campaign requires before a call (47 CFR 64.1200(a)(2)-(3)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsentRequirement {
    None,
    Express,
    ExpressWritten,
}

impl ConsentRequirement {
    pub fn as_db(self) -> Option<&'static str> {
        match self {
            ConsentRequirement::None => None,
            ConsentRequirement::Express => Some("express"),
            ConsentRequirement::ExpressWritten => Some("express_written"),
        }
    }
    pub fn label(self) -> &'static str {
        self.as_db().unwrap_or("none")
    }
}

/// A validated campaign.
#[derive(Debug, Clone, PartialEq)]
pub struct CampaignSpec {
    pub name: String,
    pub from_number: String,
    pub window_start: NaiveTime,
    pub window_end: NaiveTime,
    /// Allowed days, Monday first.
    pub days: [bool; 7],
    pub max_attempts: u32,
    pub require_consent: ConsentRequirement,
    pub frequency_cap: Option<(u32, Dur)>,
    pub rate_per_second: Option<f64>,
    pub call_type: CallType,
    pub retry: RetryOverrides,
    /// The file's text, kept for the record.
    pub source: String,
}

pub const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// A campaign name: 1-64 characters of letters, digits, `-`, `_`, `.`.
pub fn validate_name(name: &str) -> Result<(), CampaignError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(field(
            "name",
            format!("`{name}` must be 1-64 letters, digits, '-', '_' or '.'"),
        ))
    }
}

impl CampaignSpec {
    pub fn load(path: &std::path::Path) -> Result<CampaignSpec, CampaignError> {
        let text = std::fs::read_to_string(path).map_err(|e| CampaignError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        CampaignSpec::parse(&text).map_err(|e| CampaignError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    pub fn parse(text: &str) -> Result<CampaignSpec, CampaignError> {
        let file: CampaignFile = toml::from_str(text).map_err(|e| CampaignError::File {
            path: "<campaign>".into(),
            message: e.to_string(),
        })?;
        validate_name(&file.name)?;
        // The caller ID is not a destination: the special-number rules do not apply
        // to it (the SPEC's own example uses a fictional 555-01XX number), only the
        // E.164 shape the vendor requires.
        let from_number = validate_e164(&file.from_number)
            .map_err(|e| field("from_number", format!("`{}`: {e}", file.from_number)))?;
        let window_start = parse_hhmm(&file.window.start).map_err(|m| field("window.start", m))?;
        let window_end = parse_hhmm(&file.window.end).map_err(|m| field("window.end", m))?;
        if window_start >= window_end {
            return Err(field(
                "window",
                "start must be before end (recipient local time, same day)",
            ));
        }
        let mut days = [false; 7];
        for d in &file.days {
            let i = DAY_NAMES
                .iter()
                .position(|n| n.eq_ignore_ascii_case(d.trim()))
                .ok_or_else(|| field("days", format!("`{d}` is not one of mon..sun")))?;
            days[i] = true;
        }
        if !days.iter().any(|d| *d) {
            return Err(field("days", "at least one day is required"));
        }
        if file.max_attempts == 0 {
            return Err(field("max_attempts", "must be at least 1"));
        }
        let call_type = file.call_type.unwrap_or(CallType::ArtificialVoice);
        let require_consent = match &file.require_consent {
            // Artificial-voice calls need prior express written consent for
            // telemarketing (47 CFR 64.1200(a)(2)); the safer default.
            None => match call_type {
                CallType::ArtificialVoice => ConsentRequirement::ExpressWritten,
                CallType::Live => ConsentRequirement::None,
            },
            Some(toml::Value::Boolean(false)) => ConsentRequirement::None,
            Some(toml::Value::String(s)) if s == "express" => ConsentRequirement::Express,
            Some(toml::Value::String(s)) if s == "express_written" => {
                ConsentRequirement::ExpressWritten
            }
            Some(other) => {
                return Err(field(
                    "require_consent",
                    format!("{other} is not false, \"express\" or \"express_written\""),
                ));
            }
        };
        let frequency_cap = match file.frequency_cap {
            None => None,
            Some(c) if c.calls == 0 => {
                return Err(field("frequency_cap.calls", "must be at least 1"));
            }
            Some(c) if c.per.get().is_zero() => {
                return Err(field("frequency_cap.per", "must be longer than zero"));
            }
            Some(c) => Some((c.calls, c.per)),
        };
        if let Some(r) = file.rate_per_second {
            if !(r.is_finite() && r > 0.0) {
                return Err(field(
                    "rate_per_second",
                    format!("must be a positive number, not {r}"),
                ));
            }
        }
        Ok(CampaignSpec {
            name: file.name,
            from_number,
            window_start,
            window_end,
            days,
            max_attempts: file.max_attempts,
            require_consent,
            frequency_cap,
            rate_per_second: file.rate_per_second,
            call_type,
            retry: file.retry,
            source: text.to_owned(),
        })
    }

    pub fn days_csv(&self) -> String {
        DAY_NAMES
            .iter()
            .zip(self.days)
            .filter(|(_, on)| *on)
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// `+` and 8 to 15 digits, the first not 0 (ITU-T E.164).
pub fn validate_e164(s: &str) -> Result<String, String> {
    let t = s.trim();
    let digits = t.strip_prefix('+').ok_or("must start with + (E.164)")?;
    if (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
    {
        Ok(t.to_owned())
    } else {
        Err("is not an E.164 number (+ and 8-15 digits)".into())
    }
}

/// Parses the `days` column back.
pub fn parse_days(csv: &str) -> [bool; 7] {
    let mut days = [false; 7];
    for d in csv.split(',') {
        if let Some(i) = DAY_NAMES.iter().position(|n| *n == d.trim()) {
            days[i] = true;
        }
    }
    days
}

pub fn parse_hhmm(s: &str) -> Result<NaiveTime, String> {
    NaiveTime::parse_from_str(s.trim(), "%H:%M")
        .map_err(|_| format!("`{s}` is not a time like 09:00"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
name = "renewals-2026"
from_number = "+14155550100"
window = { start = "09:00", end = "20:00" }
days = ["mon", "tue", "wed", "thu", "fri", "sat"]
max_attempts = 3
frequency_cap = { calls = 3, per = "24h" }
rate_per_second = 5
[retry]
busy = "10m"
no_answer = "1h"
voicemail = "done"
"#;

    #[test]
    fn the_spec_example_parses_with_the_artificial_voice_consent_default() {
        let s = CampaignSpec::parse(FILE).unwrap();
        assert_eq!(s.name, "renewals-2026");
        assert_eq!(s.call_type, CallType::ArtificialVoice);
        assert_eq!(s.require_consent, ConsentRequirement::ExpressWritten);
        assert_eq!(s.days_csv(), "mon,tue,wed,thu,fri,sat");
        assert_eq!(s.frequency_cap.unwrap().0, 3);
        assert_eq!(s.retry.voicemail, Some(VoicemailPolicy::Done));
    }

    #[test]
    fn live_campaigns_need_no_consent_by_default() {
        let s = CampaignSpec::parse(
            &format!("{FILE}\n")
                .replace("max_attempts = 3", "max_attempts = 3\ncall_type = \"live\""),
        )
        .unwrap();
        assert_eq!(s.require_consent, ConsentRequirement::None);
    }

    #[test]
    fn bad_fields_are_named() {
        let e = CampaignSpec::parse(&FILE.replace("09:00", "9am")).unwrap_err();
        assert!(e.to_string().contains("window.start"), "{e}");
        let e = CampaignSpec::parse(&FILE.replace("\"sat\"", "\"sab\"")).unwrap_err();
        assert!(e.to_string().contains("days"), "{e}");
        let e = CampaignSpec::parse(&FILE.replace("rate_per_second = 5", "rate_per_second = -1"))
            .unwrap_err();
        assert!(e.to_string().contains("rate_per_second"), "{e}");
        let e =
            CampaignSpec::parse(&FILE.replace("max_attempts = 3", "max_attempts = 3\nbogus = 1"))
                .unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }
}
