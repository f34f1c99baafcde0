//! The PostgreSQL store: the production backend that several replicas share.

use super::{
    Backend, CampaignRow, ConsentRecord, ContactRecord, DncRecord, NumberFacts, OptOutRecord,
    Result, StatusReport, Store,
};
use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::str::FromStr;
use tokio::sync::mpsc;

mod sql {
    crate::store::common::shared_sql!(sqlx::Postgres, sqlx::PgPool, sqlx::postgres::PgRow);
}

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

#[derive(Clone)]
pub struct PgStore {
    pub(crate) pool: PgPool,
}

impl PgStore {
    pub async fn connect(url: &str, max_connections: u32) -> Result<PgStore> {
        let opts = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect_with(opts)
            .await?;
        Ok(PgStore { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Escapes one field for COPY's text format.
fn copy_field(out: &mut Vec<u8>, v: Option<&str>) {
    match v {
        None => out.extend_from_slice(b"\\N"),
        Some(s) => {
            for b in s.bytes() {
                match b {
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\t' => out.extend_from_slice(b"\\t"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\r' => out.extend_from_slice(b"\\r"),
                    _ => out.push(b),
                }
            }
        }
    }
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
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

    /// COPY into a session-local table, then one de-duplicating INSERT: the bulk
    /// path, all in one transaction so a failure leaves nothing half-written.
    async fn import_contacts(
        &self,
        campaign_id: i64,
        due_at_ms: i64,
        mut rx: mpsc::Receiver<Vec<ContactRecord>>,
    ) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "CREATE TEMP TABLE import_contacts (line BIGSERIAL, phone TEXT, external_id TEXT, timezone TEXT, \
             state TEXT, postal_code TEXT, first_name TEXT, last_name TEXT, attributes TEXT) ON COMMIT DROP",
        )
        .execute(&mut *tx)
        .await?;
        let mut copy = tx
            .copy_in_raw(
                "COPY import_contacts (phone, external_id, timezone, state, postal_code, first_name, last_name, attributes) \
                 FROM STDIN",
            )
            .await?;
        let mut buf = Vec::with_capacity(1 << 20);
        let mut complete = false;
        while let Some(batch) = rx.recv().await {
            if batch.is_empty() {
                complete = true;
                break;
            }
            for r in &batch {
                for (i, f) in [
                    Some(r.phone.as_str()),
                    r.external_id.as_deref(),
                    r.timezone.as_deref(),
                    r.state.as_deref(),
                    r.postal_code.as_deref(),
                    r.first_name.as_deref(),
                    r.last_name.as_deref(),
                    r.attributes.as_deref(),
                ]
                .into_iter()
                .enumerate()
                {
                    if i > 0 {
                        buf.push(b'\t');
                    }
                    copy_field(&mut buf, f);
                }
                buf.push(b'\n');
            }
            if buf.len() >= (1 << 20) {
                copy.send(std::mem::take(&mut buf)).await?;
                buf.reserve(1 << 20);
            }
        }
        if !buf.is_empty() {
            copy.send(buf).await?;
        }
        copy.finish().await?;
        let loaded = sqlx::query(
            "INSERT INTO jobs (campaign_id, phone, external_id, timezone, state, postal_code, first_name, \
             last_name, attributes, due_at_ms, updated_at_ms) \
             SELECT $1, phone, external_id, timezone, state, postal_code, first_name, last_name, attributes, $2, $2 \
             FROM import_contacts ORDER BY line ON CONFLICT (campaign_id, phone) DO NOTHING",
        )
        .bind(campaign_id)
        .bind(due_at_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected();
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
