//! The SQLite store: the embedded default, for the demo and one worker process.

use super::*;
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

mod wsql {
    crate::store::worker_sql::worker_sql!(
        sqlx::Sqlite,
        sqlx::SqlitePool,
        sqlx::sqlite::SqliteRow,
        None
    );
}

/// Write transactions take the write lock up front (`BEGIN IMMEDIATE`): a deferred
/// transaction that reads and then writes fails with SQLITE_BUSY when another
/// connection wrote in between, where an immediate one waits (busy_timeout).
pub(crate) async fn begin_tx(
    pool: &SqlitePool,
) -> sqlx::Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
    pool.begin_with("BEGIN IMMEDIATE").await
}

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

#[derive(Clone)]
pub struct SqliteStore {
    pub(crate) pool: SqlitePool,
    reserve_lock: std::sync::Arc<tokio::sync::Mutex<()>>,
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
        Ok(SqliteStore {
            pool,
            reserve_lock: Default::default(),
        })
    }

    /// One process: the process clock is the clock.
    async fn db_now_ms(&self, now_ms: i64) -> Result<i64> {
        Ok(now_ms)
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
        let mut tx = begin_tx(&self.pool).await?;
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
        // One statement: SQLite runs it atomically (a single writer).
        let campaign_filter = match only_campaign {
            Some(_) => {
                "campaign_id = $5 AND campaign_id IN (SELECT id FROM campaigns WHERE NOT operator_paused)"
            }
            None => {
                "campaign_id IN (SELECT id FROM campaigns WHERE NOT operator_paused AND auto_pause_reason IS NULL) \
                     AND $5 IS NULL"
            }
        };
        let sql = format!(
            "UPDATE jobs SET status = 'running', lease_owner = $3, lease_expires_ms = $1 + $4, updated_at_ms = $1 \
             WHERE id IN (SELECT id FROM jobs WHERE status = 'queued' AND due_at_ms <= $1 AND {campaign_filter} \
               ORDER BY due_at_ms, id LIMIT $2) \
             RETURNING id, campaign_id, phone, timezone, state, postal_code, attempts, provider_retries, \
               provider_requeues, vendor_refusals, current_attempt_id"
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
        // One process serves SQLite: a mutex makes check-and-record atomic.
        let _guard = self.reserve_lock.lock().await;
        wsql::reserve_attempt(&self.pool, job, key, body, caps, now_ms).await
    }
}
