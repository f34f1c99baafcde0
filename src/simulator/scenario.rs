//! The scenario file: what the simulator answers, to whom, and how calls end.
//!
//! Every field has a default, so an empty file (or [`Scenario::default`]) is the
//! "no scenario" behaviour of SPEC.md section 10: any non-empty bearer key, every
//! valid dial accepted, every call `completed`. `config/simulator.example.toml`
//! documents each field with a comment.

use crate::revdesk::codes::{Category, Code, Phase};
use chrono::{NaiveTime, Weekday};
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Why a scenario file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid scenario {path}: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("invalid scenario: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    /// Accepted API keys; empty means any non-empty bearer key.
    pub api_keys: Vec<String>,
    /// Keys that authenticate but have no access: 403 `forbidden`.
    pub forbidden_keys: Vec<String>,
    /// Where `phone_call.ended` webhooks go; none means no webhooks.
    pub webhook_url: Option<String>,
    pub webhook_secret: String,
    /// Seeds every random choice (faults, outcome mix, duplicates), so a run repeats.
    pub seed: u64,
    /// Added before every dial answer, after the call is placed (a webhook with a
    /// shorter outcome delay then arrives before the 202).
    #[serde(deserialize_with = "duration")]
    pub latency: Duration,
    /// How long `stall` and `accept_then_stall` hold the response before answering.
    #[serde(deserialize_with = "duration")]
    pub stall_for: Duration,
    /// Added before every `GET /v1/calls/{id}` answer (a slow vendor, for
    /// reconciliation tests).
    #[serde(deserialize_with = "duration")]
    pub get_latency: Duration,
    /// `Retry-After` seconds sent with `rate_limited` and `no_number_available`.
    pub retry_after_secs: u64,
    /// Shape of the 202 body: `data_id` (`{"data":{"id"}}`), `data_call_id` or `call_id`.
    pub accept_shape: AcceptShape,
    /// Calling minutes on the account; every placed call takes `minutes_per_call`.
    /// When spent: 402 `voice_usage_exhausted`. None: unlimited.
    pub minutes_budget: Option<u64>,
    pub minutes_per_call: u64,
    /// Calls in progress at once; one more gets 429 `no_number_available`.
    pub max_concurrent_calls: Option<usize>,
    /// Dial requests per second; above it, 429 `rate_limited` with `Retry-After`.
    pub rate_per_second: Option<u32>,
    /// Built-in emergency / special-service check (`destination_blocked`).
    pub block_special_numbers: bool,
    /// Server-side Do-Not-Call list (`dnc_suppressed`): E.164 numbers, or prefixes ending in `*`.
    pub dnc: Vec<String>,
    /// Server-side opt-outs (`recipient_opted_out`), same forms.
    pub opt_outs: Vec<String>,
    /// Server-side calling window and days; none: no check.
    pub calling_window: Option<CallingWindow>,
    /// Random faults, drawn per request from the seeded generator.
    pub faults: Faults,
    pub outcomes: Outcomes,
    pub webhook: WebhookDelivery,
    /// Per-number and per-prefix behaviour; the exact number wins, then the longest prefix.
    pub rules: Vec<Rule>,
    /// Keep the `/_sim/requests` log (on by default; off only for memory-bound soak runs).
    pub log_requests: bool,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            api_keys: Vec::new(),
            forbidden_keys: Vec::new(),
            webhook_url: None,
            webhook_secret: String::new(),
            seed: 1,
            latency: Duration::ZERO,
            stall_for: Duration::from_secs(120),
            get_latency: Duration::ZERO,
            retry_after_secs: 1,
            accept_shape: AcceptShape::DataId,
            minutes_budget: None,
            minutes_per_call: 1,
            max_concurrent_calls: None,
            rate_per_second: None,
            block_special_numbers: true,
            dnc: Vec::new(),
            opt_outs: Vec::new(),
            calling_window: None,
            faults: Faults::default(),
            outcomes: Outcomes::default(),
            webhook: WebhookDelivery::default(),
            rules: Vec::new(),
            log_requests: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AcceptShape {
    DataId,
    DataCallId,
    CallId,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallingWindow {
    /// IANA zone in which `start`/`end`/`days` are read (one zone for every number:
    /// the simulator is a stand-in, not a second compliance engine).
    #[serde(deserialize_with = "time_zone")]
    pub timezone: chrono_tz::Tz,
    #[serde(deserialize_with = "clock_time")]
    pub start: NaiveTime,
    #[serde(deserialize_with = "clock_time")]
    pub end: NaiveTime,
    #[serde(default = "all_days", deserialize_with = "weekdays")]
    pub days: Vec<Weekday>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Share of requests answered with a random `provider_error` (5xx) envelope.
    pub error_rate: f64,
    /// Share of requests stalled without placing a call.
    pub stall_rate: f64,
    /// Share of requests whose call is placed and whose response then stalls.
    pub accept_then_stall_rate: f64,
    /// Share of requests whose connection is closed without an answer.
    pub drop_rate: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Outcomes {
    /// Time from the 202 to the call's end (its outcome on `GET` and the webhook).
    #[serde(deserialize_with = "duration")]
    pub delay: Duration,
    /// Outcome weights for numbers no rule decides, e.g. `{ completed = 8, busy = 1 }`.
    pub mix: BTreeMap<String, u32>,
}

impl Default for Outcomes {
    fn default() -> Self {
        Outcomes {
            delay: Duration::from_millis(200),
            mix: BTreeMap::from([("completed".to_owned(), 1)]),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookDelivery {
    /// Further attempts after a non-2xx or failed delivery.
    pub retries: u32,
    /// First retry delay; doubles on each further retry.
    #[serde(deserialize_with = "duration")]
    pub backoff: Duration,
    /// Per-attempt timeout.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Share of events delivered a second time (same event id) after the first success.
    pub duplicate_rate: f64,
    /// Random extra delay, up to this, before each event: events then arrive out of order.
    #[serde(deserialize_with = "duration")]
    pub reorder_jitter: Duration,
}

impl Default for WebhookDelivery {
    fn default() -> Self {
        WebhookDelivery {
            retries: 5,
            backoff: Duration::from_millis(100),
            timeout: Duration::from_secs(5),
            duplicate_rate: 0.0,
            reorder_jitter: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rule {
    /// Exact E.164 number this rule applies to (or use `prefix`).
    pub number: Option<String>,
    /// Prefix of the numbers this rule applies to, e.g. `+1415555`.
    pub prefix: Option<String>,
    /// Answers to successive dial requests for a number, the last repeating.
    pub script: Vec<Action>,
    /// Outcomes of successive calls placed to a number, the last repeating; empty: the mix.
    pub outcomes: Vec<Outcome>,
    /// False: calls never get a webhook (only `GET` shows their end).
    #[serde(default = "yes")]
    pub webhook: bool,
    /// True: `GET /v1/calls/{id}` answers 404 `not_found` for these calls (a vendor
    /// that lost or expired them), for reconciliation tests.
    pub forget: bool,
    /// How long calls to these numbers last; none: `outcomes.delay`.
    #[serde(default, deserialize_with = "opt_duration")]
    pub duration: Option<Duration>,
}

impl Rule {
    pub fn for_number(number: &str, script: &[&str]) -> Result<Rule, ScenarioError> {
        Ok(Rule {
            number: Some(number.to_owned()),
            script: script
                .iter()
                .map(|s| Action::parse(s))
                .collect::<Result<_, _>>()?,
            webhook: true,
            ..Rule::default()
        })
    }
}

/// One synchronous answer of a script.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Answer as the simulator otherwise would (server-side checks still apply).
    Accept,
    /// Hold the response for `stall_for`, place nothing, then answer 500 `internal_error`.
    Stall,
    /// Place the call, hold the response for `stall_for`, then answer the 202.
    AcceptThenStall,
    /// Close the connection without answering (nothing placed).
    Drop,
    /// 502 with an HTML page, as a proxy in front of the API would send.
    Html502,
    /// 500 with an empty body.
    Empty500,
    /// 500 with a JSON envelope cut in the middle.
    TruncatedJson,
    /// A redirect (`redirect301`, `302`, `303`, `307`, `308`) to the dial endpoint
    /// itself, as a proxy or a moved API would send; nothing placed. A client that
    /// followed it would send the dial again (307/308) or as a GET (301-303).
    Redirect(u16),
    /// An error envelope. Written as a known code (`dnc_suppressed`), whose category
    /// and status come from the reference, or as `code:category:status` for codes
    /// the reference does not list (`category` may be empty: no category).
    Error {
        code: String,
        category: Option<String>,
        status: u16,
    },
}

impl Action {
    pub fn parse(s: &str) -> Result<Action, ScenarioError> {
        Ok(match s {
            "accept" => Action::Accept,
            "stall" => Action::Stall,
            "accept_then_stall" => Action::AcceptThenStall,
            "drop" => Action::Drop,
            "html502" => Action::Html502,
            "empty500" => Action::Empty500,
            "truncated_json" => Action::TruncatedJson,
            _ if s.starts_with("redirect") => match s["redirect".len()..].parse::<u16>() {
                Ok(status @ (301 | 302 | 303 | 307 | 308)) => Action::Redirect(status),
                _ => {
                    return Err(ScenarioError::Invalid(format!(
                        "`{s}`: write redirect301, redirect302, redirect303, redirect307 or redirect308"
                    )));
                }
            },
            _ => {
                if let Some((code, rest)) = s.split_once(':') {
                    let (category, status) = rest.split_once(':').ok_or_else(|| {
                        ScenarioError::Invalid(format!("`{s}`: write code:category:status"))
                    })?;
                    let status = status
                        .parse::<u16>()
                        .ok()
                        .filter(|st| (400..=599).contains(st))
                        .ok_or_else(|| ScenarioError::Invalid(format!("`{s}`: bad HTTP status")))?;
                    Action::Error {
                        code: code.to_owned(),
                        category: (!category.is_empty()).then(|| category.to_owned()),
                        status,
                    }
                } else {
                    let code = Code::parse(s).ok_or_else(|| {
                        ScenarioError::Invalid(format!("unknown script answer `{s}`"))
                    })?;
                    let info = code.info();
                    let status = match (info.phase, info.http_status) {
                        (Phase::Sync | Phase::Http, Some(status)) => status,
                        (Phase::Async, _) | (_, None) => {
                            return Err(ScenarioError::Invalid(format!(
                                "`{s}` is an outcome, not a dial answer: put it in `outcomes`"
                            )));
                        }
                    };
                    Action::Error {
                        code: code.as_str().to_owned(),
                        category: info.category.map(|c| c.as_str().to_owned()),
                        status,
                    }
                }
            }
        })
    }
}

impl<'de> Deserialize<'de> for Action {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Action::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// How a placed call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    /// An asynchronous code: known (`busy`, ...) with its reference category, or
    /// written `code:category` for one the reference does not list.
    Failed {
        code: String,
        category: String,
    },
}

impl Outcome {
    pub fn parse(s: &str) -> Result<Outcome, ScenarioError> {
        if s == "completed" {
            return Ok(Outcome::Completed);
        }
        if let Some((code, category)) = s.split_once(':') {
            return Ok(Outcome::Failed {
                code: code.to_owned(),
                category: category.to_owned(),
            });
        }
        match Code::parse(s).map(|c| (c, c.info())) {
            Some((code, info)) if info.phase == Phase::Async => Ok(Outcome::Failed {
                code: code.as_str().to_owned(),
                category: info
                    .category
                    .map_or("unreachable", Category::as_str)
                    .to_owned(),
            }),
            _ => Err(ScenarioError::Invalid(format!(
                "unknown outcome `{s}` (completed, busy, no_answer, voicemail_reached, \
                 number_unreachable, call_declined, carrier_rejected, or code:category)"
            ))),
        }
    }

    pub fn code(&self) -> &str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Failed { code, .. } => code,
        }
    }
}

impl<'de> Deserialize<'de> for Outcome {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Outcome::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn load(path: impl AsRef<Path>) -> Result<Scenario, ScenarioError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let scenario: Scenario = toml::from_str(&text).map_err(|source| ScenarioError::Parse {
            path: path.display().to_string(),
            source: Box::new(source),
        })?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Parses and validates a scenario from TOML text.
    pub fn from_toml_str(text: &str) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario = toml::from_str(text).map_err(|source| ScenarioError::Parse {
            path: "<inline>".to_owned(),
            source: Box::new(source),
        })?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Checks what serde cannot: rates, mix weights, rules naming one target.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let invalid = |m: String| Err(ScenarioError::Invalid(m));
        for (name, rate) in [
            ("faults.error_rate", self.faults.error_rate),
            ("faults.stall_rate", self.faults.stall_rate),
            (
                "faults.accept_then_stall_rate",
                self.faults.accept_then_stall_rate,
            ),
            ("faults.drop_rate", self.faults.drop_rate),
            ("webhook.duplicate_rate", self.webhook.duplicate_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return invalid(format!("{name} must be between 0 and 1"));
            }
        }
        let f = &self.faults;
        if f.error_rate + f.stall_rate + f.accept_then_stall_rate + f.drop_rate > 1.0 {
            return invalid("the fault rates add up to more than 1".to_owned());
        }
        for name in self.outcomes.mix.keys() {
            Outcome::parse(name)?;
        }
        if self
            .outcomes
            .mix
            .values()
            .map(|w| u64::from(*w))
            .sum::<u64>()
            == 0
        {
            return invalid("outcomes.mix needs a positive weight".to_owned());
        }
        if self.rate_per_second == Some(0) {
            return invalid("rate_per_second must be positive".to_owned());
        }
        if let Some(url) = &self.webhook_url {
            if self.webhook_secret.is_empty() {
                return invalid("webhook_url needs a webhook_secret".to_owned());
            }
            match reqwest::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                Ok(_) => return invalid(format!("webhook_url {url:?} must be http or https")),
                Err(e) => return invalid(format!("webhook_url {url:?} is not a URL: {e}")),
            }
        }
        for (i, rule) in self.rules.iter().enumerate() {
            match (&rule.number, &rule.prefix) {
                (Some(_), None) | (None, Some(_)) => {}
                (Some(_), Some(_)) | (None, None) => {
                    return invalid(format!("rules[{i}] needs exactly one of number, prefix"));
                }
            }
        }
        Ok(())
    }
}

fn yes() -> bool {
    true
}

fn all_days() -> Vec<Weekday> {
    vec![
        Weekday::Mon,
        Weekday::Tue,
        Weekday::Wed,
        Weekday::Thu,
        Weekday::Fri,
        Weekday::Sat,
        Weekday::Sun,
    ]
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(serde::de::Error::custom)
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

fn time_zone<'de, D: Deserializer<'de>>(d: D) -> Result<chrono_tz::Tz, D::Error> {
    let s = String::deserialize(d)?;
    s.parse::<chrono_tz::Tz>()
        .map_err(|_| serde::de::Error::custom(format!("unknown time zone `{s}`")))
}

fn clock_time<'de, D: Deserializer<'de>>(d: D) -> Result<NaiveTime, D::Error> {
    let s = String::deserialize(d)?;
    NaiveTime::parse_from_str(&s, "%H:%M").map_err(serde::de::Error::custom)
}

fn weekdays<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Weekday>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| {
            s.parse::<Weekday>()
                .map_err(|_| serde::de::Error::custom(format!("bad day `{s}`")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_default_scenario() {
        let s = Scenario::from_toml_str("").expect("empty is valid");
        assert!(s.api_keys.is_empty() && s.rules.is_empty() && s.webhook_url.is_none());
        assert_eq!(s.outcomes.mix.get("completed"), Some(&1));
    }

    #[test]
    fn a_webhook_url_that_is_not_an_http_url_is_refused_naming_it() {
        for (url, says) in [
            ("not a url", "is not a URL"),
            ("ftp://x/hook", "must be http or https"),
        ] {
            let toml = format!("webhook_url = {url:?}\nwebhook_secret = \"s\"");
            let e = Scenario::from_toml_str(&toml).expect_err(url).to_string();
            assert!(e.contains("webhook_url") && e.contains(says), "{url}: {e}");
        }
        let ok = "webhook_url = \"http://127.0.0.1:9000/webhooks/revdesk\"\nwebhook_secret = \"s\"";
        assert!(Scenario::from_toml_str(ok).is_ok());
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(Scenario::from_toml_str("api_key = ['x']").is_err());
        assert!(Scenario::from_toml_str("[[rules]]\nnumber='+1'\nscritp=['busy']").is_err());
    }

    #[test]
    fn script_answers_take_status_and_category_from_the_reference() {
        assert_eq!(
            Action::parse("no_active_number").expect("known"),
            Action::Error {
                code: "no_active_number".into(),
                category: Some("invalid_request".into()),
                status: 409
            }
        );
        assert_eq!(
            Action::parse("unauthorized").expect("known"),
            Action::Error {
                code: "unauthorized".into(),
                category: None,
                status: 401
            }
        );
        assert_eq!(
            Action::parse("rate_limited::429").expect("explicit"),
            Action::Error {
                code: "rate_limited".into(),
                category: None,
                status: 429
            }
        );
        assert!(
            Action::parse("busy").is_err(),
            "an outcome is not a dial answer"
        );
        assert!(Action::parse("nonsense").is_err());
    }

    #[test]
    fn redirect_answers_name_a_redirect_status() {
        assert_eq!(
            Action::parse("redirect307").expect("307"),
            Action::Redirect(307)
        );
        assert_eq!(
            Action::parse("redirect301").expect("301"),
            Action::Redirect(301)
        );
        for bad in ["redirect", "redirect200", "redirect304", "redirectx"] {
            let e = Action::parse(bad).expect_err(bad).to_string();
            assert!(e.contains(bad) && e.contains("redirect307"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_committed_example_scenario_loads() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/simulator.example.toml");
        let s = Scenario::load(path).expect("the example is valid");
        assert!(!s.rules.is_empty());
    }
}
