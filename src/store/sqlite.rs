//! The SQLite store: the embedded default, for the demo and one worker process.

use super::{
    Backend, CampaignRow, ConsentRecord, ContactRecord, DncRecord, NumberFacts, OptOutRecord,
    Result, StatusReport, Store,
};
use async_trait::async_trait;
use sqlx::QueryBuilder;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::str::FromStr;
use std::time::Duration;
use tokio::sync::mpsc;

mod sql {
    crate::store::common::shared_sql!(sqlx::Sqlite, sqlx::SqlitePool, sqlx::sqlite::SqliteRow);
}

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

#[derive(Clone)]
pub struct SqliteStore {
    pub(crate) pool: SqlitePool,
}

impl SqliteStore {
    pub async fn connect(url: &str, max_connections: u32) -> Result<SqliteStore> {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            .connect_with(opts)
            .await?;
        Ok(SqliteStore { pool })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn apply_campaign(
        &self,
        spec: &crate::campaign::CampaignSpec,
        now_ms: i64,
    ) -> Result<(CampaignRow, bool)> {
        sql::apply_campaign(&self.pool, spec, now_ms).await
    }
    async fn campaign(&self, name: &str) -> Result<Option<CampaignRow>> {
        sql::campaign(&self.pool, name).await
    }
    async fn campaign_by_id(&self, id: i64) -> Result<Option<CampaignRow>> {
        sql::campaign_by_id(&self.pool, id).await
    }
    async fn campaigns(&self) -> Result<Vec<CampaignRow>> {
        sql::campaigns(&self.pool).await
    }
    async fn set_operator_pause(&self, name: &str, paused: bool, now_ms: i64) -> Result<bool> {
        sql::set_operator_pause(&self.pool, name, paused, now_ms).await
    }

    /// Batched multi-row INSERTs in one transaction.
    async fn import_contacts(
        &self,
        campaign_id: i64,
        due_at_ms: i64,
        mut rx: mpsc::Receiver<Vec<ContactRecord>>,
    ) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let mut loaded = 0;
        let mut complete = false;
        while let Some(batch) = rx.recv().await {
            if batch.is_empty() {
                complete = true;
                break;
            }
            for chunk in batch.chunks(sql::INSERT_BATCH) {
                let mut qb = QueryBuilder::<sqlx::Sqlite>::new(
                    "INSERT INTO jobs (campaign_id, phone, external_id, timezone, state, postal_code, first_name, \
                     last_name, attributes, due_at_ms, updated_at_ms) ",
                );
                qb.push_values(chunk, |mut b, r| {
                    b.push_bind(campaign_id)
                        .push_bind(r.phone.clone())
                        .push_bind(r.external_id.clone())
                        .push_bind(r.timezone.clone())
                        .push_bind(r.state.clone())
                        .push_bind(r.postal_code.clone())
                        .push_bind(r.first_name.clone())
                        .push_bind(r.last_name.clone())
                        .push_bind(r.attributes.clone())
                        .push_bind(due_at_ms)
                        .push_bind(due_at_ms);
                });
                qb.push(" ON CONFLICT (campaign_id, phone) DO NOTHING");
                loaded += qb.build().execute(&mut *tx).await?.rows_affected();
            }
        }
        if !complete {
            return Err(super::StoreError::Invalid(
                "import aborted before the end of the file: nothing loaded".into(),
            ));
        }
        tx.commit().await?;
        Ok(loaded)
    }

    async fn import_dnc(&self, rx: mpsc::Receiver<Vec<DncRecord>>, now_ms: i64) -> Result<u64> {
        sql::import_dnc(&self.pool, rx, now_ms).await
    }
    async fn import_opt_outs(&self, rx: mpsc::Receiver<Vec<OptOutRecord>>) -> Result<u64> {
        sql::import_opt_outs(&self.pool, rx).await
    }
    async fn import_consents(&self, rx: mpsc::Receiver<Vec<ConsentRecord>>) -> Result<u64> {
        sql::import_consents(&self.pool, rx).await
    }
    async fn facts(
        &self,
        phones: &[String],
        campaign: Option<&str>,
        counted_since_ms: i64,
    ) -> Result<Vec<NumberFacts>> {
        sql::facts(&self.pool, phones, campaign, counted_since_ms).await
    }
    async fn status(&self, campaign: Option<&str>, now_ms: i64) -> Result<StatusReport> {
        sql::status(&self.pool, campaign, now_ms).await
    }
}
