//! Command implementations behind `main.rs`: each returns an exit status or an
//! [`CliError`] whose kind decides the exit code (SPEC section 3).

use crate::config::{ConfigError, Settings};
use crate::import::{ImportError, ImportReport};
use crate::store::{DynStore, StoreError};
use secrecy::ExposeSecret;
use std::io::IsTerminal;
use std::path::Path;

/// Exit codes of SPEC section 3.
pub const EXIT_OK: u8 = 0;
pub const EXIT_RUNTIME: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_REJECTED_ROWS: u8 = 3;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad usage or bad configuration: exit 2.
    #[error("{0}")]
    Usage(String),
    /// A runtime failure (database unreachable, I/O error mid-way): exit 1.
    #[error("{0}")]
    Runtime(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            CliError::Runtime(_) => EXIT_RUNTIME,
        }
    }
}

impl From<ConfigError> for CliError {
    fn from(e: ConfigError) -> Self {
        CliError::Usage(e.to_string())
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UnknownCampaign(_) | StoreError::Invalid(_) => {
                CliError::Usage(e.to_string())
            }
            StoreError::Db(_) | StoreError::Migrate(_) => CliError::Runtime(e.to_string()),
        }
    }
}

impl From<ImportError> for CliError {
    fn from(e: ImportError) -> Self {
        match e {
            ImportError::Unreadable { .. } => CliError::Usage(e.to_string()),
            ImportError::Store(s) => s.into(),
            ImportError::Other(_) => CliError::Runtime(e.to_string()),
        }
    }
}

/// Opens the configured database (and migrates it when asked).
pub async fn open_store(settings: &Settings, migrate: bool) -> Result<DynStore, CliError> {
    let url = settings.database.url.expose_secret();
    let store = crate::store::connect(url, settings.database.max_connections)
        .await
        .map_err(|e| {
            CliError::Runtime(format!(
                "cannot open {}: {e}",
                crate::config::redact_url(url)
            ))
        })?;
    if migrate {
        store.migrate().await?;
    }
    Ok(store)
}

pub fn progress_for(path: &Path, json: bool) -> Box<dyn crate::import::Progress> {
    if !json && std::io::stderr().is_terminal() {
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        Box::new(crate::import::BarProgress::new(len))
    } else {
        Box::new(crate::import::NoProgress)
    }
}

/// Prints an import report and returns its exit code (3 when rows were rejected).
pub fn finish_import(what: &str, report: &ImportReport, json: bool) -> u8 {
    if json {
        println!("{}", serde_json::to_string(report).unwrap_or_default());
    } else {
        for r in &report.rejected {
            eprintln!("line {}: {}", r.line, r.reason);
        }
        if report.rejected_unlisted > 0 {
            eprintln!("... and {} more rejected rows", report.rejected_unlisted);
        }
        println!("{}", report.summary(what));
    }
    if report.rejected_count() > 0 {
        EXIT_REJECTED_ROWS
    } else {
        EXIT_OK
    }
}

/// `dialer status` as text.
pub fn status_text(report: &crate::store::StatusReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if report.campaigns.is_empty() {
        out.push_str("no campaigns\n");
    }
    for c in &report.campaigns {
        let _ = writeln!(
            out,
            "campaign {} ({}), {} attempts",
            c.name, c.state, c.attempts
        );
        let jobs: Vec<String> = c
            .jobs
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        let _ = writeln!(
            out,
            "  jobs: {}",
            if jobs.is_empty() {
                "none".into()
            } else {
                jobs.join(", ")
            }
        );
        if !c.reasons.is_empty() {
            let r: Vec<String> = c.reasons.iter().map(|(s, n)| format!("{s} {n}")).collect();
            let _ = writeln!(out, "  reasons: {}", r.join(", "));
        }
    }
    for h in &report.halted {
        let _ = writeln!(
            out,
            "account {} HALTED: {} since {}, probe at {}",
            h.account, h.reason, h.since, h.probe_at
        );
    }
    out
}

/// Logs: JSON when not on a terminal (or when configured), human-readable otherwise.
pub fn init_logging(settings: &Settings) {
    use crate::config::LogFormat;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&settings.log.level));
    let json = match settings.log.format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Cancels `token` on SIGTERM or SIGINT.
pub fn cancel_on_signals(token: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
        }
        token.cancel();
    });
}

pub fn parse_at(
    at: Option<&str>,
    clock: &crate::clock::Clock,
) -> Result<chrono::DateTime<chrono::Utc>, CliError> {
    match at {
        None => Ok(clock.now()),
        Some(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&chrono::Utc))
            .map_err(|_| {
                CliError::Usage(format!(
                    "--at `{s}` is not an RFC 3339 time like 2026-11-18T15:00:00-05:00"
                ))
            }),
    }
}

pub fn scrub_err(e: crate::scrub::ScrubError) -> CliError {
    match e {
        crate::scrub::ScrubError::Usage(m) => CliError::Usage(m),
        crate::scrub::ScrubError::Runtime(m) => CliError::Runtime(m),
    }
}
