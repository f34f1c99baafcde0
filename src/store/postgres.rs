//! The PostgreSQL store: the production backend that several replicas share.

use super::*;
use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::str::FromStr;
use tokio::sync::mpsc;

mod sql {
    crate::store::common::shared_sql!(sqlx::Postgres, sqlx::PgPool, sqlx::postgres::PgRow);
}

mod wsql {
    crate::store::worker_sql::worker_sql!(
        sqlx::Postgres,
        sqlx::PgPool,
        sqlx::postgres::PgRow,
        Some("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
    );
}

pub(crate) async fn begin_tx(
    pool: &PgPool,
) -> sqlx::Result<sqlx::Transaction<'static, sqlx::Postgres>> {
    pool.begin().await
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

    /// The database clock, in epoch ms: leases of all replicas use one clock.
    async fn db_now_ms(&self, _now_ms: i64) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint")
                .fetch_one(&self.pool)
                .await?,
        )
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
        let mut tx = begin_tx(&self.pool).await?;
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

    async fn register_worker(&self, id: &str, hostname: &str, now_ms: i64) -> Result<()> {
        wsql::register_worker(&self.pool, id, hostname, now_ms).await
    }
    async fn heartbeat(&self, id: &str, lease_ms: i64, now_ms: i64) -> Result<()> {
        let db_now = self.db_now_ms(now_ms).await?;
        wsql::heartbeat(&self.pool, id, lease_ms, db_now).await
    }
    async fn live_workers(&self, since_ms: i64) -> Result<Vec<String>> {
        wsql::live_workers(&self.pool, since_ms).await
    }
    async fn deregister_worker(&self, id: &str) -> Result<()> {
        wsql::deregister_worker(&self.pool, id).await
    }
    async fn set_worker_halt(&self, id: &str, reason: Option<&str>) -> Result<()> {
        wsql::set_worker_halt(&self.pool, id, reason).await
    }
    async fn recover_expired_leases(&self, now_ms: i64) -> Result<u64> {
        let db_now = self.db_now_ms(now_ms).await?;
        wsql::recover_expired_leases(&self.pool, db_now, now_ms).await
    }
    async fn release(&self, job_id: i64, owner: &str, now_ms: i64) -> Result<()> {
        wsql::release(&self.pool, job_id, owner, now_ms).await
    }
    async fn mark_sending(&self, job_id: i64, attempt_id: i64, now_ms: i64) -> Result<()> {
        wsql::mark_sending(&self.pool, job_id, attempt_id, now_ms).await
    }
    async fn update_job(
        &self,
        job_id: i64,
        guard: &Guard,
        update: &JobUpdate,
        now_ms: i64,
    ) -> Result<bool> {
        wsql::update_job(&self.pool, job_id, guard, update, now_ms).await
    }
    async fn job(&self, job_id: i64) -> Result<Option<ClaimedJob>> {
        wsql::job(&self.pool, job_id).await
    }
    async fn insert_audit(&self, rows: &[AuditRecord]) -> Result<()> {
        wsql::insert_audit(&self.pool, rows).await
    }
    async fn requeue_dropped(&self, campaign_id: i64, reason: &str, now_ms: i64) -> Result<u64> {
        wsql::requeue_dropped(&self.pool, campaign_id, reason, now_ms).await
    }
    async fn pause_campaign(
        &self,
        id: i64,
        reason: &str,
        until_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<()> {
        wsql::pause_campaign(&self.pool, id, reason, until_ms, now_ms).await
    }
    async fn lift_auto_pause(&self, id: i64, now_ms: i64) -> Result<()> {
        wsql::lift_auto_pause(&self.pool, id, now_ms).await
    }
    async fn take_campaign_probes(&self, now_ms: i64, hold_ms: i64) -> Result<Vec<i64>> {
        wsql::take_campaign_probes(&self.pool, now_ms, hold_ms).await
    }
    async fn account_halt(&self, account: &str) -> Result<Option<AccountHalt>> {
        wsql::account_halt(&self.pool, account).await
    }
    async fn halt_account(
        &self,
        account: &str,
        reason: &str,
        probe_at_ms: i64,
        now_ms: i64,
    ) -> Result<()> {
        wsql::halt_account(&self.pool, account, reason, probe_at_ms, now_ms).await
    }
    async fn lift_account_halt(&self, account: &str) -> Result<()> {
        wsql::lift_account_halt(&self.pool, account).await
    }
    async fn take_account_probe(&self, account: &str, now_ms: i64, hold_ms: i64) -> Result<bool> {
        wsql::take_account_probe(&self.pool, account, now_ms, hold_ms).await
    }
    async fn attempt_by_call_id(&self, call_id: &str) -> Result<Option<AttemptRow>> {
        wsql::attempt_by_call_id(&self.pool, call_id).await
    }
    async fn attempt(&self, id: i64) -> Result<Option<AttemptRow>> {
        wsql::attempt(&self.pool, id).await
    }
    async fn inbox_insert(&self, event: &InboxEvent, now_ms: i64) -> Result<bool> {
        wsql::inbox_insert(&self.pool, event, now_ms).await
    }
    async fn inbox_pending(&self, call_id: &str) -> Result<Vec<InboxEvent>> {
        wsql::inbox_pending(&self.pool, call_id).await
    }
    async fn inbox_mark_applied(&self, event_id: &str, result: &str, now_ms: i64) -> Result<()> {
        wsql::inbox_mark_applied(&self.pool, event_id, result, now_ms).await
    }
    async fn unsettled_attempts(
        &self,
        placed_before_ms: i64,
        limit: u32,
    ) -> Result<Vec<AttemptRow>> {
        wsql::unsettled_attempts(&self.pool, placed_before_ms, limit).await
    }
    async fn record_outcome_only(
        &self,
        attempt_id: i64,
        code: &str,
        category: Option<&str>,
        source: &str,
        now_ms: i64,
    ) -> Result<bool> {
        wsql::record_outcome_only(&self.pool, attempt_id, code, category, source, now_ms).await
    }

    async fn claim(
        &self,
        owner: &str,
        limit: u32,
        now_ms: i64,
        lease_ms: i64,
        only_campaign: Option<i64>,
    ) -> Result<Vec<ClaimedJob>> {
        // Lock due rows with SKIP LOCKED (concurrent workers take disjoint batches),
        // then lease them in one UPDATE. The lease runs on the database clock.
        let campaign_filter = match only_campaign {
            Some(_) => "j.campaign_id = $5 AND NOT c.operator_paused",
            None => "NOT c.operator_paused AND c.auto_pause_reason IS NULL AND $5::bigint IS NULL",
        };
        let sql = format!(
            "WITH picked AS ( \
               SELECT j.id FROM jobs j JOIN campaigns c ON c.id = j.campaign_id \
               WHERE j.status = 'queued' AND j.due_at_ms <= $1 AND {campaign_filter} \
               ORDER BY j.due_at_ms, j.id LIMIT $2 FOR UPDATE OF j SKIP LOCKED) \
             UPDATE jobs SET status = 'running', lease_owner = $3, \
               lease_expires_ms = (extract(epoch from clock_timestamp()) * 1000)::bigint + $4, updated_at_ms = $1 \
             FROM picked WHERE jobs.id = picked.id \
             RETURNING jobs.id, jobs.campaign_id, jobs.phone, jobs.timezone, jobs.state, jobs.postal_code, jobs.attempts, \
               jobs.provider_retries, jobs.provider_requeues, jobs.vendor_refusals, jobs.current_attempt_id"
        );
        let rows = sqlx::query(&sql)
            .bind(now_ms)
            .bind(limit as i64)
            .bind(owner)
            .bind(lease_ms)
            .bind(only_campaign)
            .fetch_all(&self.pool)
            .await?;
        wsql::jobs_with_attempts(&self.pool, &rows).await
    }

    async fn reserve_attempt(
        &self,
        job: &ClaimedJob,
        key: &str,
        body: &str,
        caps: &[(u32, i64)],
        now_ms: i64,
    ) -> Result<Reservation> {
        wsql::reserve_attempt(&self.pool, job, key, body, caps, now_ms).await
    }
}
