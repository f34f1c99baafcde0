//! Typed settings: layering, validation and secrets (SPEC section 4).
//!
//! Layers, later wins: the built-in defaults (`config/default.toml`, embedded),
//! `./config/default.toml` when present, the `--config` file, then environment
//! variables `DIALER__SECTION__KEY`. `REVDESK_API_KEY` sets the API key. Secrets may
//! be given as `*_file` paths. Every key must exist in the defaults: an unknown key
//! is an error that names it. Secrets are `SecretString`s: never in `Debug` output.

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The embedded defaults: the documentation of every key.
pub const DEFAULTS_TOML: &str = include_str!("../config/default.toml");

/// A configuration problem, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration key `{key}`: {message}")]
    Key { key: String, message: String },
    #[error("configuration file {path}: {message}")]
    File { path: String, message: String },
    #[error("configuration: {0}")]
    Other(String),
}

fn key_err(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        key: key.to_owned(),
        message: message.into(),
    }
}

/// A duration written like `500ms`, `10m`, `24h`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl Dur {
    pub fn parse(s: &str) -> Result<Dur, String> {
        humantime::parse_duration(s.trim())
            .map(Dur)
            .map_err(|e| format!("`{s}` is not a duration like 500ms, 10m or 24h ({e})"))
    }
    pub fn get(self) -> Duration {
        self.0
    }
    pub fn chrono(self) -> chrono::Duration {
        chrono::Duration::from_std(self.0).unwrap_or(chrono::Duration::MAX)
    }
}

impl fmt::Debug for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        let s = String::deserialize(d)?;
        Dur::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// `voicemail = "done"` or a delay before calling again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoicemailPolicy {
    Done,
    After(Dur),
}

impl<'de> Deserialize<'de> for VoicemailPolicy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim() == "done" {
            Ok(VoicemailPolicy::Done)
        } else {
            Dur::parse(&s).map(VoicemailPolicy::After).map_err(|e| {
                serde::de::Error::custom(format!("expected \"done\" or a duration: {e}"))
            })
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub outcome_timeout: Dur,
    pub database: DatabaseSettings,
    pub revdesk: RevdeskSettings,
    pub webhook: WebhookSettings,
    pub http: HttpSettings,
    pub rate: RateSettings,
    pub worker: WorkerSettings,
    pub log: LogSettings,
    pub retry: RetrySettings,
    /// State-rule overrides and operator blackouts (validated by the engine).
    #[serde(default)]
    pub compliance: crate::compliance::RulesConfig,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// May hold a password: kept secret.
    pub url: SecretString,
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    pub max_connections: u32,
    pub migrate_on_start: bool,
}

impl fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &redact_url(self.url.expose_secret()))
            .field("max_connections", &self.max_connections)
            .field("migrate_on_start", &self.migrate_on_start)
            .finish()
    }
}

/// The URL with any password replaced, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevdeskSettings {
    pub base_url: String,
    #[serde(default)]
    pub api_key: Option<SecretString>,
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    pub connect_timeout: Dur,
    pub timeout: Dur,
    pub key_ttl: Dur,
    pub http2: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    #[serde(default)]
    pub secret: Option<SecretString>,
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    pub tolerance: Dur,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub listen: String,
    /// Inbound connections kept open between requests (HTTP keep-alive); one
    /// accepted while this many are open is closed after its response.
    pub keep_alive_connections: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateSettings {
    pub per_second: f64,
    pub burst: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub max_in_flight: u32,
    pub batch_size: u32,
    pub lease: Dur,
    pub poll_interval: Dur,
    pub shutdown_grace: Dur,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Auto,
    Json,
    Text,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub show_numbers: bool,
    pub level: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    pub busy: Dur,
    pub no_answer: Dur,
    pub voicemail: VoicemailPolicy,
    pub no_active_number: Dur,
    pub compliance_min: Dur,
    pub cap_min: Dur,
    pub vendor_refusals: u32,
    pub account_halt: Dur,
    pub provider_max: u32,
    pub provider_requeues: u32,
}

/// Where to read configuration from, besides the built-in defaults.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// The `--config FILE`.
    pub file: Option<PathBuf>,
    /// Consider `./config/default.toml` (true for the CLI).
    pub local_defaults: bool,
    /// Environment variables (name, value); normally `std::env::vars()`.
    pub env: Vec<(String, String)>,
    /// Extra overrides applied last (tests, demo), as `key.path = TOML value`.
    pub overrides: Vec<(String, toml::Value)>,
}

impl Sources {
    /// The CLI's sources: `--config`, `./config/default.toml`, the process environment.
    pub fn cli(file: Option<PathBuf>) -> Sources {
        Sources {
            file,
            local_defaults: true,
            env: std::env::vars().collect(),
            overrides: vec![],
        }
    }
}

impl Settings {
    /// The built-in defaults alone (no files, no environment).
    pub fn defaults() -> Settings {
        Settings::load(&Sources::default()).expect("embedded defaults are valid")
    }

    /// Loads, layers and validates the configuration.
    pub fn load(sources: &Sources) -> Result<Settings, ConfigError> {
        let defaults: toml::Table = DEFAULTS_TOML
            .parse()
            .map_err(|e| ConfigError::Other(format!("embedded defaults: {e}")))?;
        let mut merged = defaults.clone();
        if sources.local_defaults {
            let local = Path::new("config/default.toml");
            if local.exists() {
                merge_file(&mut merged, &defaults, local)?;
            }
        }
        if let Some(path) = &sources.file {
            merge_file(&mut merged, &defaults, path)?;
        }
        for (name, value) in &sources.env {
            let Some(rest) = name.strip_prefix("DIALER__") else {
                continue;
            };
            let key = rest.to_ascii_lowercase().replace("__", ".");
            check_known(&defaults, &key)?;
            set_path(&mut merged, &key, env_value(&defaults, &key, value));
        }
        if let Some((_, v)) = sources.env.iter().find(|(k, _)| k == "REVDESK_API_KEY") {
            if !v.is_empty() {
                set_path(
                    &mut merged,
                    "revdesk.api_key",
                    toml::Value::String(v.clone()),
                );
            }
        }
        for (key, value) in &sources.overrides {
            check_known(&defaults, key)?;
            set_path(&mut merged, key, value.clone());
        }
        let mut settings: Settings = deserialize_named(merged)?;
        settings.read_secret_files()?;
        settings.validate()?;
        crate::compliance::Engine::new(&settings.compliance)
            .map_err(|e| key_err("compliance", e.to_string()))?;
        Ok(settings)
    }

    fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        if let Some(p) = &self.database.url_file {
            self.database.url = read_secret("database.url_file", p)?;
        }
        if let Some(p) = &self.revdesk.api_key_file {
            self.revdesk.api_key = Some(read_secret("revdesk.api_key_file", p)?);
        }
        if let Some(p) = &self.webhook.secret_file {
            self.webhook.secret = Some(read_secret("webhook.secret_file", p)?);
        }
        Ok(())
    }

    /// The host of `revdesk.base_url` when it is plain `http://` to a host that is
    /// not loopback: the API key would cross the network in clear text. Allowed (a
    /// mesh or egress proxy may add the TLS), but the worker says so at start.
    pub fn cleartext_api_host(&self) -> Option<String> {
        let url = reqwest::Url::parse(&self.revdesk.base_url).ok()?;
        if url.scheme() != "http" {
            return None;
        }
        let host = url.host_str()?;
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        (!loopback).then(|| host.to_owned())
    }

    /// Checks values that parse but make no sense, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let url = self.database.url.expose_secret();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(key_err(
                "database.url",
                format!(
                    "`{}` is not a sqlite:// or postgres:// URL",
                    redact_url(url)
                ),
            ));
        }
        if self.database.max_connections == 0 {
            return Err(key_err("database.max_connections", "must be at least 1"));
        }
        let base = &self.revdesk.base_url;
        match reqwest::Url::parse(base) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            Ok(_) => {
                return Err(key_err(
                    "revdesk.base_url",
                    format!("`{base}` is not an http(s) URL"),
                ));
            }
            Err(e) => {
                return Err(key_err(
                    "revdesk.base_url",
                    format!("`{base}` is not a URL ({e})"),
                ));
            }
        }
        if let Some(k) = &self.revdesk.api_key {
            if k.expose_secret().trim().is_empty() {
                return Err(key_err("revdesk.api_key", "is empty"));
            }
        }
        positive("revdesk.connect_timeout", self.revdesk.connect_timeout)?;
        positive("revdesk.timeout", self.revdesk.timeout)?;
        positive("revdesk.key_ttl", self.revdesk.key_ttl)?;
        positive("webhook.tolerance", self.webhook.tolerance)?;
        self.http.listen.parse::<SocketAddr>().map_err(|e| {
            key_err(
                "http.listen",
                format!("`{}` is not ADDRESS:PORT ({e})", self.http.listen),
            )
        })?;
        if !(self.rate.per_second.is_finite() && self.rate.per_second > 0.0) {
            return Err(key_err(
                "rate.per_second",
                format!("must be a positive number, not {}", self.rate.per_second),
            ));
        }
        if self.rate.burst == 0 {
            return Err(key_err("rate.burst", "must be at least 1"));
        }
        if self.worker.max_in_flight == 0 {
            return Err(key_err("worker.max_in_flight", "must be at least 1"));
        }
        if self.worker.batch_size == 0 {
            return Err(key_err("worker.batch_size", "must be at least 1"));
        }
        if self.worker.lease.get() < Duration::from_secs(3) {
            return Err(key_err(
                "worker.lease",
                "must be at least 3s (heartbeats renew it every third)",
            ));
        }
        positive("worker.poll_interval", self.worker.poll_interval)?;
        positive("outcome_timeout", self.outcome_timeout)?;
        self.log
            .level
            .parse::<tracing_subscriber::EnvFilter>()
            .map_err(|e| {
                key_err(
                    "log.level",
                    format!("`{}` is not a filter directive ({e})", self.log.level),
                )
            })?;
        positive("retry.busy", self.retry.busy)?;
        positive("retry.no_answer", self.retry.no_answer)?;
        positive("retry.account_halt", self.retry.account_halt)?;
        positive("retry.no_active_number", self.retry.no_active_number)?;
        Ok(())
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.http.listen.parse().expect("validated")
    }
}

fn positive(key: &str, d: Dur) -> Result<(), ConfigError> {
    if d.get().is_zero() {
        Err(key_err(key, "must be longer than zero"))
    } else {
        Ok(())
    }
}

fn read_secret(key: &str, path: &Path) -> Result<SecretString, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| key_err(key, format!("cannot read {}: {e}", path.display())))?;
    let value = text.trim().to_owned();
    if value.is_empty() {
        return Err(key_err(key, format!("{} is empty", path.display())));
    }
    Ok(SecretString::from(value))
}

fn merge_file(
    merged: &mut toml::Table,
    defaults: &toml::Table,
    path: &Path,
) -> Result<(), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
    merge_table(merged, defaults, table, "")
}

fn merge_table(
    into: &mut toml::Table,
    defaults: &toml::Table,
    from: toml::Table,
    prefix: &str,
) -> Result<(), ConfigError> {
    for (k, v) in from {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        check_known(defaults, &key)?;
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(dst)), toml::Value::Table(src)) => {
                merge_table(dst, defaults, src, &key)?;
            }
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
    Ok(())
}

/// Keys that are documented but commented out in the defaults (optional secrets).
const OPTIONAL_KEYS: &[&str] = &[
    "database.url_file",
    "revdesk.api_key",
    "revdesk.api_key_file",
    "webhook.secret",
    "webhook.secret_file",
];

fn check_known(defaults: &toml::Table, key: &str) -> Result<(), ConfigError> {
    // `[compliance]` is an open table (states, blackouts) checked by its own types.
    if OPTIONAL_KEYS.contains(&key) || key == "compliance" || key.starts_with("compliance.") {
        return Ok(());
    }
    let mut table = defaults;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        match table.get(*part) {
            Some(toml::Value::Table(t)) if i + 1 < parts.len() => table = t,
            Some(_) if i + 1 == parts.len() => return Ok(()),
            _ => break,
        }
    }
    Err(key_err(
        key,
        "unknown key (every key is listed in config/default.toml)",
    ))
}

/// Environment values are strings: give them the type of the default they replace.
fn env_value(defaults: &toml::Table, key: &str, raw: &str) -> toml::Value {
    let mut table = defaults;
    let parts: Vec<&str> = key.split('.').collect();
    let mut default = None;
    for (i, part) in parts.iter().enumerate() {
        match table.get(*part) {
            Some(toml::Value::Table(t)) if i + 1 < parts.len() => table = t,
            Some(v) if i + 1 == parts.len() => default = Some(v),
            _ => break,
        }
    }
    let parsed = match default {
        Some(toml::Value::Integer(_)) => raw.trim().parse::<i64>().ok().map(toml::Value::Integer),
        Some(toml::Value::Float(_)) => raw.trim().parse::<f64>().ok().map(toml::Value::Float),
        Some(toml::Value::Boolean(_)) => raw.trim().parse::<bool>().ok().map(toml::Value::Boolean),
        _ => None,
    };
    parsed.unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

fn set_path(table: &mut toml::Table, key: &str, value: toml::Value) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().expect("non-empty key");
    let mut t = table;
    for p in parts {
        let entry = t
            .entry(p.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        t = entry.as_table_mut().expect("just made a table");
    }
    t.insert(last.to_owned(), value);
}

/// Deserializes, turning serde's error into one that names the key.
fn deserialize_named(merged: toml::Table) -> Result<Settings, ConfigError> {
    let text = toml::to_string(&merged).map_err(|e| ConfigError::Other(e.to_string()))?;
    let de = toml::Deserializer::parse(&text).map_err(|e| ConfigError::Other(e.to_string()))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let msg = e.inner().message().to_owned();
        // Never echo a secret's value back in an error.
        let secret = OPTIONAL_KEYS.contains(&key.as_str()) || key == "database.url";
        key_err(
            &key,
            if secret {
                "invalid value".to_owned()
            } else {
                msg
            },
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_with(
        overrides: &[(&str, toml::Value)],
        env: &[(&str, &str)],
    ) -> Result<Settings, ConfigError> {
        Settings::load(&Sources {
            file: None,
            local_defaults: false,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            overrides: overrides
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        })
    }

    #[test]
    fn a_plain_http_api_url_off_loopback_is_named_as_cleartext() {
        let mut s = Settings::defaults();
        assert_eq!(s.cleartext_api_host(), None, "the https default");
        for (url, want) in [
            ("http://127.0.0.1:18181", None),
            ("http://localhost:8080/", None),
            ("http://[::1]:9000", None),
            ("https://api.example.com", None),
            ("http://api.example.com", Some("api.example.com")),
            ("http://10.0.0.7:8080", Some("10.0.0.7")),
        ] {
            s.revdesk.base_url = url.to_owned();
            assert_eq!(s.cleartext_api_host().as_deref(), want, "{url}");
        }
    }

    #[test]
    fn defaults_load_and_match_the_spec() {
        let s = Settings::defaults();
        assert_eq!(s.database.url.expose_secret(), "sqlite://dialer.db");
        assert_eq!(s.revdesk.base_url, "https://api.revdesk.com");
        assert_eq!(s.http.listen, "0.0.0.0:9000");
        assert_eq!(s.outcome_timeout.get(), Duration::from_secs(600));
        assert_eq!(s.worker.lease.get(), Duration::from_secs(60));
        assert_eq!(s.retry.provider_requeues, 10);
        assert_eq!(s.retry.voicemail, VoicemailPolicy::Done);
    }

    #[test]
    fn environment_overrides_files_and_is_typed() {
        let s = load_with(
            &[],
            &[
                ("DIALER__RATE__PER_SECOND", "2.5"),
                ("DIALER__WORKER__BATCH_SIZE", "7"),
            ],
        )
        .unwrap();
        assert_eq!(s.rate.per_second, 2.5);
        assert_eq!(s.worker.batch_size, 7);
    }

    #[test]
    fn revdesk_api_key_env_sets_the_key() {
        let s = load_with(&[], &[("REVDESK_API_KEY", "sk_live_abc")]).unwrap();
        assert_eq!(s.revdesk.api_key.unwrap().expose_secret(), "sk_live_abc");
    }

    #[test]
    fn negative_rate_is_rejected_naming_the_key() {
        let e = load_with(&[("rate.per_second", toml::Value::Float(-1.0))], &[]).unwrap_err();
        assert!(e.to_string().contains("rate.per_second"), "{e}");
    }

    #[test]
    fn unknown_key_in_a_section_is_rejected_naming_it() {
        let e = load_with(&[], &[("DIALER__WORKER__BACH_SIZE", "3")]).unwrap_err();
        assert!(e.to_string().contains("worker.bach_size"), "{e}");
    }

    #[test]
    fn unparseable_url_is_rejected_naming_the_key() {
        let e = load_with(
            &[("revdesk.base_url", toml::Value::String("not a url".into()))],
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("revdesk.base_url"), "{e}");
    }

    #[test]
    fn bad_duration_names_the_key() {
        let e = load_with(&[], &[("DIALER__WORKER__LEASE", "sixty")]).unwrap_err();
        assert!(e.to_string().contains("worker.lease"), "{e}");
    }

    #[test]
    fn secrets_are_never_in_debug_output() {
        let s = load_with(
            &[(
                "database.url",
                toml::Value::String("postgres://u:hunter2@db/x".into()),
            )],
            &[
                ("REVDESK_API_KEY", "sk_live_supersecret"),
                ("DIALER__WEBHOOK__SECRET", "whsec_topsecret"),
            ],
        )
        .unwrap();
        let dbg = format!("{s:?}");
        assert!(
            !dbg.contains("hunter2") && !dbg.contains("supersecret") && !dbg.contains("topsecret"),
            "{dbg}"
        );
    }

    #[test]
    fn a_file_layer_merges_section_by_section() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "[worker]\nbatch_size = 9\n[database]\nmax_connections = 3\n",
        )
        .unwrap();
        let s = Settings::load(&Sources {
            file: Some(p),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            (
                s.worker.batch_size,
                s.database.max_connections,
                s.worker.max_in_flight
            ),
            (9, 3, 100)
        );
    }

    #[test]
    fn the_kubernetes_config_map_uses_only_known_keys() {
        let text = include_str!("../deploy/k8s/config.toml");
        let table: toml::Table = text.parse().unwrap();
        let defaults: toml::Table = DEFAULTS_TOML.parse().unwrap();
        let mut merged = defaults.clone();
        merge_table(&mut merged, &defaults, table, "").unwrap();
    }

    #[test]
    fn compliance_overrides_are_validated_naming_the_section() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "[compliance.states.FL]\nhours = { start = \"09:00\", end = \"19:00\" }\nbogus = 1\n",
        )
        .unwrap();
        let e = Settings::load(&Sources {
            file: Some(p),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("compliance"), "{e}");
    }

    #[test]
    fn secret_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        std::fs::write(&p, "sk_from_file\n").unwrap();
        let s = load_with(
            &[(
                "revdesk.api_key_file",
                toml::Value::String(p.display().to_string()),
            )],
            &[],
        )
        .unwrap();
        assert_eq!(s.revdesk.api_key.unwrap().expose_secret(), "sk_from_file");
    }
}
