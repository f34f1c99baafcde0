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

/// COPY's binary format (no text parsing on the server): the stream header.
const BINARY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The end-of-data marker of the binary format.
const BINARY_TRAILER: &[u8] = &(-1i16).to_be_bytes();

fn copy_text(out: &mut Vec<u8>, v: Option<&str>) {
    match v {
        None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        Some(s) => {
            out.extend_from_slice(&(s.len() as i32).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
}

fn copy_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&8i32.to_be_bytes());
    out.extend_from_slice(&v.to_be_bytes());
}

/// One row in COPY binary format: the eight contact fields, with `campaign_id`
/// before them and `due_at_ms`, `updated_at_ms` after when `job` is given.
fn copy_contact(out: &mut Vec<u8>, r: &ContactRecord, job: Option<(i64, i64)>) {
    let fields: i16 = if job.is_some() { 11 } else { 8 };
    out.extend_from_slice(&fields.to_be_bytes());
    if let Some((campaign_id, _)) = job {
        copy_i64(out, campaign_id);
    }
    for f in [
        Some(r.phone.as_str()),
        r.external_id.as_deref(),
        r.timezone.as_deref(),
        r.state.as_deref(),
        r.postal_code.as_deref(),
        r.first_name.as_deref(),
        r.last_name.as_deref(),
        r.attributes.as_deref(),
    ] {
        copy_text(out, f);
    }
    if let Some((_, due_at_ms)) = job {
        copy_i64(out, due_at_ms);
        copy_i64(out, due_at_ms);
    }
}

const STAGE_COPY: &str = "COPY import_contacts (phone, external_id, timezone, state, postal_code, \
     first_name, last_name, attributes) FROM STDIN WITH (FORMAT binary)";
const JOBS_COPY: &str = "COPY jobs (campaign_id, phone, external_id, timezone, state, postal_code, \
     first_name, last_name, attributes, due_at_ms, updated_at_ms) FROM STDIN WITH (FORMAT binary)";
/// Staged rows into `jobs`, first occurrence of each number in file order, skipping
/// numbers the campaign already has (`ON CONFLICT DO NOTHING` also skips repeats
/// within the statement, keeping the first in `ctid` order).
const STAGED_INSERT: &str = "INSERT INTO jobs (campaign_id, phone, external_id, timezone, state, postal_code, \
     first_name, last_name, attributes, due_at_ms, updated_at_ms) \
     SELECT $1, phone, external_id, timezone, state, postal_code, first_name, last_name, attributes, $2, $2 \
     FROM import_contacts ORDER BY ctid ON CONFLICT (campaign_id, phone) DO NOTHING";
/// Bits of the "seen" filter of the direct path: 16 MiB, so a 1M-row file sends
/// ~0.75 % of its rows down the slower de-duplicating path by hash collision.
const SEEN_BITS: usize = 1 << 27;
/// Rows held for the de-duplicating path before they are flushed (bounded memory).
const SIDE_ROWS: usize = 20_000;

fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The fast path, for a campaign with no jobs yet: rows are COPYed straight into
/// `jobs` (no staging table, no per-row conflict check). Uniqueness inside the file
/// is kept by a bitmap of number hashes: a row whose bit is clear has a number not
/// seen before and goes to COPY; a row whose bit is set (a repeat, or a hash
/// collision) is held aside and inserted through the de-duplicating statement, in
/// file order. The caller holds the campaign's import lock, so no other import adds
/// numbers meanwhile.
async fn import_direct(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    campaign_id: i64,
    due_at_ms: i64,
    mut rx: mpsc::Receiver<Vec<ContactRecord>>,
) -> Result<u64> {
    let mut d = Direct {
        job: (campaign_id, due_at_ms),
        seen: vec![0u64; SEEN_BITS / 64],
        side: Vec::new(),
        loaded: 0,
    };
    loop {
        let segment = d.copy_segment(tx, &mut rx).await?;
        if let Segment::Aborted = segment {
            return Err(super::StoreError::Invalid(
                "import aborted before the end of the file: nothing loaded".into(),
            ));
        }
        d.loaded += insert_side(tx, campaign_id, due_at_ms, &mut d.side).await?;
        if let Segment::End = segment {
            return Ok(d.loaded);
        }
    }
}

struct Direct {
    /// `(campaign_id, due_at_ms)` of every row.
    job: (i64, i64),
    seen: Vec<u64>,
    side: Vec<ContactRecord>,
    loaded: u64,
}

enum Segment {
    /// The end-of-stream marker arrived.
    End,
    /// Enough rows are held aside: insert them, then COPY on (COPY and other
    /// statements cannot interleave on one connection).
    SideFull,
    /// The channel closed without the marker: the parse failed.
    Aborted,
}

impl Direct {
    async fn copy_segment(
        &mut self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        rx: &mut mpsc::Receiver<Vec<ContactRecord>>,
    ) -> Result<Segment> {
        let mut copy = tx.copy_in_raw(JOBS_COPY).await?;
        let mut buf = Vec::with_capacity(1 << 20);
        buf.extend_from_slice(BINARY_HEADER);
        let segment = loop {
            let Some(batch) = rx.recv().await else {
                break Segment::Aborted;
            };
            if batch.is_empty() {
                break Segment::End;
            }
            for r in batch {
                let h = fnv1a(&r.phone) as usize % SEEN_BITS;
                let (word, bit) = (h / 64, 1u64 << (h % 64));
                if self.seen[word] & bit != 0 {
                    self.side.push(r);
                    continue;
                }
                self.seen[word] |= bit;
                copy_contact(&mut buf, &r, Some(self.job));
                self.loaded += 1;
            }
            if buf.len() >= (1 << 20) {
                copy.send(std::mem::take(&mut buf)).await?;
                buf.reserve(1 << 20);
            }
            if self.side.len() >= SIDE_ROWS {
                break Segment::SideFull;
            }
        };
        if let Segment::Aborted = segment {
            copy.abort("import aborted").await?;
            return Ok(segment);
        }
        buf.extend_from_slice(BINARY_TRAILER);
        copy.send(buf).await?;
        copy.finish().await?;
        Ok(segment)
    }
}

/// Inserts the held rows through the staging table, de-duplicated, in file order.
async fn insert_side(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    campaign_id: i64,
    due_at_ms: i64,
    side: &mut Vec<ContactRecord>,
) -> Result<u64> {
    if side.is_empty() {
        return Ok(0);
    }
    let mut buf = Vec::with_capacity(side.len() * 64);
    buf.extend_from_slice(BINARY_HEADER);
    for r in side.drain(..) {
        copy_contact(&mut buf, &r, None);
    }
    buf.extend_from_slice(BINARY_TRAILER);
    let mut copy = tx.copy_in_raw(STAGE_COPY).await?;
    copy.send(buf).await?;
    copy.finish().await?;
    let n = sqlx::query(STAGED_INSERT)
        .bind(campaign_id)
        .bind(due_at_ms)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    sqlx::query("TRUNCATE import_contacts")
        .execute(&mut **tx)
        .await?;
    Ok(n)
}

/// The path for a campaign that already has jobs (a re-import, a second file):
/// every row is staged, then inserted unless the campaign has the number.
async fn import_staged(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    campaign_id: i64,
    due_at_ms: i64,
    mut rx: mpsc::Receiver<Vec<ContactRecord>>,
) -> Result<u64> {
    let mut copy = tx.copy_in_raw(STAGE_COPY).await?;
    let mut buf = Vec::with_capacity(1 << 20);
    buf.extend_from_slice(BINARY_HEADER);
    let mut complete = false;
    while let Some(batch) = rx.recv().await {
        if batch.is_empty() {
            complete = true;
            break;
        }
        for r in &batch {
            copy_contact(&mut buf, r, None);
        }
        if buf.len() >= (1 << 20) {
            copy.send(std::mem::take(&mut buf)).await?;
            buf.reserve(1 << 20);
        }
    }
    if !complete {
        copy.abort("import aborted").await?;
        return Err(super::StoreError::Invalid(
            "import aborted before the end of the file: nothing loaded".into(),
        ));
    }
    buf.extend_from_slice(BINARY_TRAILER);
    copy.send(buf).await?;
    copy.finish().await?;
    Ok(sqlx::query(STAGED_INSERT)
        .bind(campaign_id)
        .bind(due_at_ms)
        .execute(&mut **tx)
        .await?
        .rows_affected())
}

super::impl_store!(PgStore, Backend::Postgres, {
    async fn import_contacts(
        &self,
        campaign_id: i64,
        due_at_ms: i64,
        rx: mpsc::Receiver<Vec<ContactRecord>>,
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
        let empty: bool =
            sqlx::query_scalar("SELECT NOT EXISTS (SELECT 1 FROM jobs WHERE campaign_id = $1)")
                .bind(campaign_id)
                .fetch_one(&mut *tx)
                .await?;
        let loaded = if empty {
            import_direct(&mut tx, campaign_id, due_at_ms, rx).await?
        } else {
            import_staged(&mut tx, campaign_id, due_at_ms, rx).await?
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

    async fn reserve_attempts(&self, reqs: &[ReserveRequest]) -> Result<Vec<Reservation>> {
        wsql::reserve_attempts(&self.pool, reqs).await
    }
});
