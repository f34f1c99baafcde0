//! The SQLite store: the embedded default, for the demo and one worker process.

use super::*;
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

/// Nothing on SQLite: its planner takes an index for an equality or `IN` on the
/// indexed column without statistics, and its ANALYZE reads the whole table.
pub(crate) async fn analyze_after_load(_pool: &SqlitePool, _table: &'static str) {}

/// Appends ` IN ($n, ...)` with one parameter a value, for a batch's membership test
/// (SQLite has no array parameters; it plans the list as one index probe a value).
pub(crate) fn push_in<'a, T>(qb: &mut QueryBuilder<'a, sqlx::Sqlite>, values: &'a [T])
where
    &'a T: sqlx::Encode<'a, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    qb.push(" IN (");
    let mut sep = qb.separated(", ");
    for v in values {
        sep.push_bind(v);
    }
    qb.push(")");
}

/// The counted calls (SPEC section 6, frequency cap: placed, possibly placed or
/// reserved, in every campaign) of `phones` counted after `after_ms` (at their last
/// send: migrations/sqlite/20261205000001_cap_counted_at.sql), by number,
/// oldest first (SQLite plans `phone IN (...)` as one index probe per number).
pub(crate) async fn counted_calls(
    pool: &SqlitePool,
    phones: &[String],
    after_ms: i64,
) -> sqlx::Result<Vec<(String, i64)>> {
    let mut qb = QueryBuilder::<sqlx::Sqlite>::new(
        "SELECT phone, COALESCE(last_sent_at_ms, created_at_ms) AS at FROM attempts \
         WHERE placement <> 'not_placed' AND COALESCE(last_sent_at_ms, created_at_ms) > ",
    );
    qb.push_bind(after_ms);
    qb.push(" AND phone");
    push_in(&mut qb, phones);
    qb.push(" ORDER BY phone, at");
    qb.build_query_as().fetch_all(pool).await
}

mod wsql {
    crate::store::worker_sql::worker_sql!(
        sqlx::Sqlite,
        sqlx::SqlitePool,
        sqlx::sqlite::SqliteRow,
        None,
        ""
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

    /// One process: the process clock is the clock.
    async fn db_now_ms(&self, now_ms: i64) -> Result<i64> {
        Ok(now_ms)
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

super::impl_store!(SqliteStore, Backend::Sqlite, {
    async fn import_contacts(
        &self,
        campaign_id: i64,
        due_at_ms: i64,
        mut rx: mpsc::Receiver<Vec<ContactRecord>>,
    ) -> Result<u64> {
        let mut tx = begin_tx(&self.pool).await?;
        // The campaign is checked once (no per-row foreign key; never deleted).
        let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM campaigns WHERE id = $1")
            .bind(campaign_id)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(super::StoreError::UnknownCampaign(campaign_id.to_string()));
        }
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

    async fn update_jobs(&self, writes: &[JobWrite]) -> Result<Vec<bool>> {
        wsql::update_jobs(&self.pool, writes).await
    }

    async fn dispatch(&self, d: &Dispatch) -> Result<DispatchResult> {
        // `BEGIN IMMEDIATE` takes the single writer's lock for the whole dispatch, so
        // the cap check and the reservation are one atomic step (SPEC section 6).
        wsql::dispatch(&self.pool, d).await
    }

    async fn outcome_targets(&self, call_ids: &[String]) -> Result<Vec<OutcomeTarget>> {
        wsql::outcome_targets(&self.pool, call_ids).await
    }

    async fn apply_outcomes(&self, batch: &OutcomeBatch) -> Result<Vec<bool>> {
        wsql::apply_outcomes(&self.pool, batch).await
    }

    async fn inbox_insert_many(&self, events: &[InboxEvent], now_ms: i64) -> Result<Vec<bool>> {
        wsql::inbox_insert_many(&self.pool, events, now_ms).await
    }

    async fn inbox_pending_many(&self, call_ids: &[String]) -> Result<Vec<InboxEvent>> {
        wsql::inbox_pending_many(&self.pool, call_ids).await
    }
});
