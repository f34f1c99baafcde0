//! The PostgreSQL store: the production backend that several replicas share.

use super::*;
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

super::impl_store!(PgStore, Backend::Postgres, {
    async fn import_contacts(
        &self,
        campaign_id: i64,
        due_at_ms: i64,
        mut rx: mpsc::Receiver<Vec<ContactRecord>>,
    ) -> Result<u64> {
        let mut tx = begin_tx(&self.pool).await?;
        // One import per campaign at a time (two-key advisory lock space, apart from
        // the per-number locks), and the campaign checked once here instead of by a
        // foreign-key trigger on every row (campaigns are never deleted).
        sqlx::query("SELECT pg_advisory_xact_lock(1, $1::int)")
            .bind(campaign_id as i32)
            .execute(&mut *tx)
            .await?;
        let exists: Option<i64> =
            sqlx::query_scalar("SELECT id FROM campaigns WHERE id = $1 FOR SHARE")
                .bind(campaign_id)
                .fetch_optional(&mut *tx)
                .await?;
        if exists.is_none() {
            return Err(super::StoreError::UnknownCampaign(campaign_id.to_string()));
        }
        sqlx::query("SET LOCAL work_mem = '128MB'")
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            // No serial column: a sequence call per row costs; file order is the
            // insertion order of this fresh temporary table (ctid) where it matters.
            "CREATE TEMP TABLE import_contacts (phone TEXT, external_id TEXT, timezone TEXT, \
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
        if !complete {
            return Err(super::StoreError::Invalid(
                "import aborted before the end of the file: nothing loaded".into(),
            ));
        }
        // Fast path: a file with no number already in the campaign (and none
        // repeated) loads with a plain INSERT: no speculative insertion. A unique
        // violation rolls back to the savepoint and the de-duplicating path runs.
        // The campaign lock (taken above) keeps concurrent imports into the same
        // campaign from racing between the two.
        sqlx::query("SAVEPOINT fast_import")
            .execute(&mut *tx)
            .await?;
        let fast = sqlx::query(
            "INSERT INTO jobs (campaign_id, phone, external_id, timezone, state, postal_code, first_name, \
             last_name, attributes, due_at_ms, updated_at_ms) \
             SELECT $1, phone, external_id, timezone, state, postal_code, first_name, last_name, attributes, $2, $2 \
             FROM import_contacts",
        )
        .bind(campaign_id)
        .bind(due_at_ms)
        .execute(&mut *tx)
        .await;
        let loaded = match fast {
            Ok(r) => r.rows_affected(),
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => {
                sqlx::query("ROLLBACK TO SAVEPOINT fast_import")
                    .execute(&mut *tx)
                    .await?;
                // First occurrence of each phone in the file, minus the campaign's
                // existing numbers, in file order.
                sqlx::query(
                    "INSERT INTO jobs (campaign_id, phone, external_id, timezone, state, postal_code, first_name, \
                     last_name, attributes, due_at_ms, updated_at_ms) \
                     SELECT $1, phone, external_id, timezone, state, postal_code, first_name, last_name, attributes, $2, $2 \
                     FROM (SELECT DISTINCT ON (phone) ctid AS line, * FROM import_contacts ORDER BY phone, ctid) t \
                     WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.campaign_id = $1 AND j.phone = t.phone) \
                     ORDER BY line",
                )
                .bind(campaign_id)
                .bind(due_at_ms)
                .execute(&mut *tx)
                .await?
                .rows_affected()
            }
            Err(e) => return Err(e.into()),
        };
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
});
