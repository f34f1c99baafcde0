//! Persistence: the [`Store`] trait and its PostgreSQL and SQLite implementations.
//!
//! Times are epoch milliseconds on both backends so most SQL is shared (see
//! `common.rs`); what differs (bulk COPY, `FOR UPDATE SKIP LOCKED`, advisory locks,
//! the database clock) lives in `postgres.rs` and `sqlite.rs`.

mod common;
pub mod postgres;
pub mod sqlite;
pub mod types;

pub use types::*;

use async_trait::async_trait;
use std::sync::Arc;
use tokio::sync::mpsc;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unknown campaign `{0}`")]
    UnknownCampaign(String),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The shared store: a PostgreSQL or SQLite implementation behind one trait.
pub type DynStore = Arc<dyn Store>;

/// Opens the store named by a `postgres://` or `sqlite://` URL.
pub async fn connect(url: &str, max_connections: u32) -> Result<DynStore> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(
            postgres::PgStore::connect(url, max_connections).await?,
        ))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(
            sqlite::SqliteStore::connect(url, max_connections).await?,
        ))
    } else {
        Err(StoreError::Invalid(format!(
            "unsupported database URL scheme in `{}`",
            crate::config::redact_url(url)
        )))
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `postgres` or `sqlite`.
    fn backend(&self) -> Backend;

    /// Applies the embedded migrations.
    async fn migrate(&self) -> Result<()>;

    /// True when the database answers.
    async fn ping(&self) -> Result<()>;

    // ---- campaigns ----

    /// Creates or updates a campaign by name; returns (row, created).
    async fn apply_campaign(
        &self,
        spec: &crate::campaign::CampaignSpec,
        now_ms: i64,
    ) -> Result<(CampaignRow, bool)>;
    async fn campaign(&self, name: &str) -> Result<Option<CampaignRow>>;
    async fn campaign_by_id(&self, id: i64) -> Result<Option<CampaignRow>>;
    async fn campaigns(&self) -> Result<Vec<CampaignRow>>;
    /// Sets or lifts the operator's pause. Resume also lifts an automatic pause
    /// that waits for an operator (`until` NULL). Returns false for an unknown name.
    async fn set_operator_pause(&self, name: &str, paused: bool, now_ms: i64) -> Result<bool>;

    // ---- imports (streaming: batches arrive on a bounded channel) ----

    /// Loads contacts into a campaign in one transaction; one job per new phone.
    /// Returns how many were loaded (the rest were duplicates).
    async fn import_contacts(
        &self,
        campaign_id: i64,
        due_at_ms: i64,
        rx: mpsc::Receiver<Vec<ContactRecord>>,
    ) -> Result<u64>;
    async fn import_dnc(&self, rx: mpsc::Receiver<Vec<DncRecord>>, now_ms: i64) -> Result<u64>;
    async fn import_opt_outs(&self, rx: mpsc::Receiver<Vec<OptOutRecord>>) -> Result<u64>;
    async fn import_consents(&self, rx: mpsc::Receiver<Vec<ConsentRecord>>) -> Result<u64>;

    // ---- facts for pre-flight ----

    /// DNC, opt-out, consent and counted-call facts for a batch of numbers, as of now.
    /// `campaign` scopes opt-outs and consents (global ones always apply).
    async fn facts(
        &self,
        phones: &[String],
        campaign: Option<&str>,
        counted_since_ms: i64,
    ) -> Result<Vec<NumberFacts>>;

    // ---- status ----

    async fn status(&self, campaign: Option<&str>, now_ms: i64) -> Result<StatusReport>;
}

/// Epoch milliseconds to RFC 3339 (UTC), for output.
pub fn ms_to_rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// The current time as epoch milliseconds.
pub fn now_ms(clock: &crate::clock::Clock) -> i64 {
    clock.now().timestamp_millis()
}
