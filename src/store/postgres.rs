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
        Some("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"),
        " FOR NO KEY UPDATE"
    );
}

/// The counted calls (SPEC section 6, frequency cap: placed, possibly placed or
/// reserved, in every campaign) of each distinct number of `$1` counted after `$2`,
/// by number, oldest first. A call counts at its last send, the latest moment it can
/// have been placed, not at its creation (migrations/postgres/20261205000001_cap_counted_at.sql). One index probe per number by construction: `OFFSET 0`
/// keeps the lateral subquery from being flattened into a join, which the planner,
/// on an `attempts` table it has no statistics for yet (a new table filling at
/// thousands of rows a second, before autovacuum's first ANALYZE), runs as a
/// sequential scan of the whole table per batch (seen: 11-14 ms per 200 numbers at
/// 20,000 rows, growing with the table, against 3.5 ms with the probes).
const COUNTED_CALLS: &str = "SELECT p.phone, c.at \
     FROM (SELECT DISTINCT phone FROM unnest($1::text[]) AS t(phone)) p \
     CROSS JOIN LATERAL (SELECT COALESCE(a.last_sent_at_ms, a.created_at_ms) AS at FROM attempts a \
       WHERE a.phone = p.phone AND a.placement <> 'not_placed' \
       AND COALESCE(a.last_sent_at_ms, a.created_at_ms) > $2 OFFSET 0) c \
     ORDER BY p.phone, c.at";

/// Appends ` = ANY($n)` with the values (numbers or ids) as one array parameter, for a batch's
/// membership test (`WHERE phone = ANY($1)`). The statement's text is then the same
/// for every batch size, so sqlx prepares it once per connection and PostgreSQL
/// plans it from its cache. An `IN ($1, ..., $n)` list is a new statement for every
/// length: each cached by sqlx with its parameter description (up to 100 a
/// connection), which was 3.8 MB of the worker's heap late in a 40,000-dial run
/// (heaptrack, docs/benchmarks.md, session 9), and parsed again by the server.
pub(crate) fn push_in<'a, T>(qb: &mut sqlx::QueryBuilder<'a, sqlx::Postgres>, values: &'a [T])
where
    &'a [T]: sqlx::Encode<'a, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    qb.push(" = ANY(");
    qb.push_bind(values);
    qb.push(")");
}

/// [`COUNTED_CALLS`] of `phones` created after `after_ms`, outside a transaction
/// (the claim-time facts).
pub(crate) async fn counted_calls(
    pool: &PgPool,
    phones: &[String],
    after_ms: i64,
) -> sqlx::Result<Vec<(String, i64)>> {
    sqlx::query_as(COUNTED_CALLS)
        .bind(phones)
        .bind(after_ms)
        .fetch_all(pool)
        .await
}

/// Fresh planner statistics for `table` after a bulk load, as PostgreSQL's docs
/// advise ("Populating a Database: Run ANALYZE Afterwards"): until autovacuum's
/// next pass (a minute or more later) the planner would estimate a freshly loaded
/// table from defaults, and plans the batched pre-flight lookups (`phone IN (...)`)
/// on it as sequential scans (seen on PostgreSQL 15, 60 numbers against a freshly
/// loaded 1,000,000-row `dnc_numbers`: a sequential scan, 119 ms; after ANALYZE the
/// primary key, 0.1 ms).
/// ANALYZE reads a sample (30,000 rows at the default statistics target), so it
/// costs a fraction of a second on any size. The rows are committed before it
/// runs; a failure here only leaves the statistics to autovacuum, so it is logged,
/// not returned.
pub(crate) async fn analyze_after_load(pool: &PgPool, table: &'static str) {
    if let Err(e) = sqlx::query(&format!("ANALYZE {table}")).execute(pool).await {
        tracing::warn!(table, error = %e, "ANALYZE after the import failed; autovacuum will gather the statistics");
    }
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
/// before them and `due_at_ms`, `updated_at_ms` and `fresh` (true) after when `job`
/// is given.
fn copy_contact(out: &mut Vec<u8>, r: &ContactRecord, job: Option<(i64, i64)>) {
    let fields: i16 = if job.is_some() { 12 } else { 8 };
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
        out.extend_from_slice(&1i32.to_be_bytes());
        out.push(1);
    }
}

const JOB_ID_NEXTVAL: &str = "SELECT nextval(pg_get_serial_sequence('jobs', 'id'))";
const JOB_ID_CURRVAL: &str = "SELECT currval(pg_get_serial_sequence('jobs', 'id'))";
const STAGE_COPY: &str = "COPY import_contacts (phone, external_id, timezone, state, postal_code, \
     first_name, last_name, attributes) FROM STDIN WITH (FORMAT binary)";
const JOBS_COPY: &str = "COPY jobs (campaign_id, phone, external_id, timezone, state, postal_code, \
     first_name, last_name, attributes, due_at_ms, updated_at_ms, fresh) FROM STDIN WITH (FORMAT binary)";
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
/// numbers meanwhile. The COPYed rows are `fresh` (no claim-index entry: see
/// migration `20261126000002`), and their id range is recorded in `fresh_jobs`.
async fn import_direct(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    campaign_id: i64,
    due_at_ms: i64,
    mut rx: mpsc::Receiver<Vec<ContactRecord>>,
) -> Result<u64> {
    // Every id this session draws from the job sequence from here on is above
    // `before` (a sequence only grows; ids cached by other sessions belong to other
    // campaigns' rows, which the fresh claim filters out).
    let before: i64 = sqlx::query_scalar(JOB_ID_NEXTVAL)
        .fetch_one(&mut **tx)
        .await?;
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
            let last: i64 = sqlx::query_scalar(JOB_ID_CURRVAL)
                .fetch_one(&mut **tx)
                .await?;
            if d.loaded > 0 {
                sqlx::query(
                    "INSERT INTO fresh_jobs (campaign_id, next_id, last_id, due_at_ms) VALUES ($1, $2, $3, $4)",
                )
                .bind(campaign_id)
                .bind(before + 1)
                .bind(last)
                .bind(due_at_ms)
                .execute(&mut **tx)
                .await?;
            }
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

/// The campaigns (`c`) whose jobs a claim may take, for both claim statements: with
/// `only_campaign` ($5, a probe) that campaign unless the operator paused it; else
/// every campaign with no pause of either kind. `id` is the campaign id expression
/// matched against $5.
fn claimable_campaigns(id: &str, only_campaign: Option<i64>) -> String {
    match only_campaign {
        Some(_) => format!("{id} = $5 AND NOT c.operator_paused"),
        None => "NOT c.operator_paused AND c.auto_pause_reason IS NULL AND $5::bigint IS NULL"
            .to_owned(),
    }
}

/// The columns of a claimed job, as both claim statements return them.
const CLAIMED_COLUMNS: &str = "jobs.id, jobs.campaign_id, jobs.phone, jobs.timezone, jobs.state, \
     jobs.postal_code, jobs.attempts, jobs.provider_retries, jobs.provider_requeues, jobs.vendor_refusals, \
     jobs.current_attempt_id";

/// How far past its cursor one fresh claim looks, in multiples of the claim's limit.
/// The window keeps the plan independent of table statistics (a fresh import has
/// none yet): without it the planner cannot tell how many ids lie between the cursor
/// and the range's end, and may read and sort the whole remaining range for one
/// batch (measured: 31 ms per claim of 200 on a 20,000-job import, 5 ms with it).
/// The bounds come from scalar subqueries (so they are index conditions on the
/// primary key) and the campaign is compared as `campaign_id + 0`, so only the
/// window's range of the primary key is read, not every index entry of the campaign
/// (whose cost grows with the campaign's size).
const FRESH_WINDOW: i64 = 8;

/// Claims fresh jobs (never claimed, loaded by the fast import path, not in the claim
/// index) of one campaign, in id order from its `fresh_jobs` cursor, looking at most
/// `FRESH_WINDOW * limit` ids past it. The cursor row is locked for the statement's
/// transaction, so claimers of one campaign's fresh jobs take turns, and the jobs
/// under it are locked without SKIP LOCKED: the cursor only ever moves past a job that
/// this statement claims or that is no longer fresh (or past the window when fewer
/// than `limit` were found in it), so no job is passed over. If the statement fails
/// or the process dies, the cursor move rolls back with the claim.
async fn claim_fresh(
    pool: &PgPool,
    owner: &str,
    limit: u32,
    now_ms: i64,
    lease_ms: i64,
    only_campaign: Option<i64>,
) -> Result<Vec<sqlx::postgres::PgRow>> {
    let campaign_filter = claimable_campaigns("f.campaign_id", only_campaign);
    let sql = format!(
        "WITH cur AS ( \
           SELECT f.campaign_id, f.next_id, LEAST(f.last_id, f.next_id + $6 - 1) AS window_end \
           FROM fresh_jobs f JOIN campaigns c ON c.id = f.campaign_id \
           WHERE f.next_id <= f.last_id AND f.due_at_ms <= $1 AND {campaign_filter} \
           ORDER BY f.due_at_ms, f.campaign_id LIMIT 1 FOR UPDATE OF f), \
         picked AS ( \
           SELECT j.id FROM jobs j \
           WHERE j.id BETWEEN (SELECT next_id FROM cur) AND (SELECT window_end FROM cur) \
             AND j.campaign_id + 0 = (SELECT campaign_id FROM cur) AND j.fresh AND j.status = 'queued' \
           ORDER BY j.id LIMIT $2 FOR UPDATE OF j), \
         moved AS ( \
           UPDATE fresh_jobs f SET next_id = CASE WHEN (SELECT count(*) FROM picked) < $2 THEN cur.window_end + 1 \
             ELSE (SELECT max(id) FROM picked) + 1 END \
           FROM cur WHERE f.campaign_id = cur.campaign_id) \
         UPDATE jobs SET status = 'running', fresh = FALSE, lease_owner = $3, \
           lease_expires_ms = (extract(epoch from clock_timestamp()) * 1000)::bigint + $4, updated_at_ms = $1 \
         WHERE jobs.id = ANY(ARRAY(SELECT id FROM picked)) \
         RETURNING {CLAIMED_COLUMNS}"
    );
    Ok(sqlx::query(&sql)
        .bind(now_ms)
        .bind(limit as i64)
        .bind(owner)
        .bind(lease_ms)
        .bind(only_campaign)
        .bind(FRESH_WINDOW * limit as i64)
        .fetch_all(pool)
        .await?)
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

fn has_repeats(ids: impl Iterator<Item = i64>) -> bool {
    let mut seen = std::collections::HashSet::new();
    ids.into_iter().any(|id| !seen.insert(id))
}

/// `Store::update_jobs` as three set-based statements for the whole batch (job ids
/// distinct), with the semantics of `update_job` per row: the attempt part always
/// applies (a 202 is never lost), an attempt first (possibly) placed counts once
/// toward the job's attempts, and the job part applies only where its guard holds.
async fn update_jobs_set(pool: &PgPool, writes: &[JobWrite]) -> Result<Vec<bool>> {
    let mut tx = begin_tx(pool).await?;
    let ids: Vec<i64> = writes.iter().map(|w| w.job_id).collect();
    lock_jobs(&mut tx, &ids).await?;
    let applied = update_jobs_set_on(&mut tx, writes).await?;
    tx.commit().await?;
    Ok(applied)
}

/// Locks job rows in id order (`FOR NO KEY UPDATE`), the one order every batch and
/// the heartbeat take them in (no deadlock cycle); returns `(id, lease_owner,
/// status, lease live)` of each, the lease's liveness on the database clock (the
/// clock leases are set on).
async fn lock_jobs(
    tx: &mut sqlx::PgConnection,
    ids: &[i64],
) -> Result<Vec<(i64, Option<String>, String, bool)>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_as(
        "SELECT id, lease_owner, status, \
         COALESCE(lease_expires_ms > (extract(epoch from clock_timestamp()) * 1000)::bigint, FALSE) \
         FROM jobs WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE",
    )
    .bind(ids)
    .fetch_all(&mut *tx)
    .await?)
}

/// `update_jobs_set` inside a transaction that already holds the job rows' locks.
async fn update_jobs_set_on(tx: &mut sqlx::PgConnection, writes: &[JobWrite]) -> Result<Vec<bool>> {
    if writes.is_empty() {
        return Ok(Vec::new());
    }
    let with_attempt: Vec<(&JobWrite, &AttemptUpdate)> = writes
        .iter()
        .filter_map(|w| w.update.attempt.as_ref().map(|a| (w, a)))
        .collect();
    // The first time an attempt is (possibly) placed it counts once toward
    // max_attempts (SPEC section 7), whether or not the job part applies: in the
    // job's decision when it applies, else on its own below.
    let counted: Vec<i64> = if !with_attempt.is_empty() {
        let counted: Vec<i64> = sqlx::query_scalar::<_, Option<i64>>(
            "WITH u AS (SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::int[], $5::text[], \
               $6::text[], $7::text[], $8::text[], $9::text[], $10::bigint[]) \
               AS u(attempt_id, placement, call_id, response_status, response_code, response_category, \
               outcome_code, outcome_category, outcome_source, now_ms)) \
             UPDATE attempts a SET \
               placement = CASE \
                 WHEN u.placement IN ('placed', 'possibly_placed') AND o.placement = 'reserved' THEN u.placement \
                 WHEN u.placement = 'placed' AND o.placement = 'possibly_placed' THEN 'placed' \
                 WHEN u.placement = 'not_placed' AND o.placement = 'reserved' THEN 'not_placed' \
                 ELSE o.placement END, \
               call_id = COALESCE(o.call_id, u.call_id), \
               placed_at_ms = CASE WHEN u.call_id IS NOT NULL AND o.placed_at_ms IS NULL THEN u.now_ms \
                 ELSE o.placed_at_ms END, \
               response_status = COALESCE(u.response_status, o.response_status), \
               response_code = COALESCE(u.response_code, o.response_code), \
               response_category = COALESCE(u.response_category, o.response_category), \
               outcome_code = COALESCE(o.outcome_code, u.outcome_code), \
               outcome_category = COALESCE(o.outcome_category, u.outcome_category), \
               outcome_source = COALESCE(o.outcome_source, u.outcome_source), \
               outcome_at_ms = CASE WHEN u.outcome_code IS NOT NULL AND o.outcome_at_ms IS NULL THEN u.now_ms \
                 ELSE o.outcome_at_ms END \
             FROM u JOIN attempts o ON o.id = u.attempt_id \
             WHERE a.id = u.attempt_id \
             RETURNING CASE WHEN u.placement IN ('placed', 'possibly_placed') AND o.placement = 'reserved' \
               THEN a.job_id END",
        )
        .bind(with_attempt.iter().map(|(_, a)| a.id).collect::<Vec<i64>>())
        .bind(
            with_attempt
                .iter()
                .map(|(_, a)| a.placement.map(Placement::as_str))
                .collect::<Vec<Option<&str>>>(),
        )
        .bind(with_attempt.iter().map(|(_, a)| a.call_id.as_deref()).collect::<Vec<_>>())
        .bind(with_attempt.iter().map(|(_, a)| a.response_status).collect::<Vec<_>>())
        .bind(with_attempt.iter().map(|(_, a)| a.response_code.as_deref()).collect::<Vec<_>>())
        .bind(
            with_attempt
                .iter()
                .map(|(_, a)| a.response_category.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(with_attempt.iter().map(|(_, a)| a.outcome_code.as_deref()).collect::<Vec<_>>())
        .bind(
            with_attempt
                .iter()
                .map(|(_, a)| a.outcome_category.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(with_attempt.iter().map(|(_, a)| a.outcome_source).collect::<Vec<_>>())
        .bind(with_attempt.iter().map(|(w, _)| w.now_ms).collect::<Vec<i64>>())
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .flatten()
        .collect();
        counted
    } else {
        Vec::new()
    };
    let (owners, awaiting): (Vec<Option<&str>>, Vec<Option<i64>>) = writes
        .iter()
        .map(|w| match &w.guard {
            Guard::Lease(owner) => (Some(owner.as_str()), None),
            Guard::Awaiting(attempt) => (None, Some(*attempt)),
        })
        .unzip();
    let applied: Vec<i64> = sqlx::query_scalar(
        "WITH u AS (SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::bigint[], \
           $6::text[], $7::text[], $8::text[], $9::text[], $10::int[], $11::int[], $12::int[], $13::bool[], \
           $14::bigint[]) \
           AS u(job_id, owner, awaiting, status, due_at_ms, reason, reason_source, last_code, last_category, \
           retries, requeues, refusals, clear_attempt, now_ms)) \
         UPDATE jobs j SET status = u.status, due_at_ms = COALESCE(u.due_at_ms, j.due_at_ms), \
           attempts = j.attempts + CASE WHEN j.id = ANY($15) THEN 1 ELSE 0 END, \
           reason = u.reason, reason_source = u.reason_source, \
           last_code = COALESCE(u.last_code, j.last_code), last_category = COALESCE(u.last_category, j.last_category), \
           provider_retries = CASE u.retries WHEN 0 THEN j.provider_retries WHEN 1 THEN j.provider_retries + 1 ELSE 0 END, \
           provider_requeues = CASE u.requeues WHEN 0 THEN j.provider_requeues WHEN 1 THEN j.provider_requeues + 1 ELSE 0 END, \
           vendor_refusals = CASE u.refusals WHEN 0 THEN j.vendor_refusals WHEN 1 THEN j.vendor_refusals + 1 ELSE 0 END, \
           current_attempt_id = CASE WHEN u.clear_attempt THEN NULL ELSE j.current_attempt_id END, \
           lease_owner = CASE WHEN u.status IN ('running', 'dialing') THEN j.lease_owner ELSE NULL END, \
           lease_expires_ms = CASE WHEN u.status IN ('running', 'dialing') THEN j.lease_expires_ms ELSE NULL END, \
           updated_at_ms = u.now_ms \
         FROM u WHERE j.id = u.job_id AND ( \
           (u.owner IS NOT NULL AND j.lease_owner = u.owner) OR \
           (u.awaiting IS NOT NULL AND j.status = 'awaiting_outcome' AND j.current_attempt_id = u.awaiting)) \
         RETURNING j.id",
    )
    .bind(writes.iter().map(|w| w.job_id).collect::<Vec<i64>>())
    .bind(owners)
    .bind(awaiting)
    .bind(writes.iter().map(|w| w.update.status).collect::<Vec<&str>>())
    .bind(writes.iter().map(|w| w.update.due_at_ms).collect::<Vec<_>>())
    .bind(writes.iter().map(|w| w.update.reason.as_deref()).collect::<Vec<_>>())
    .bind(writes.iter().map(|w| w.update.reason_source).collect::<Vec<_>>())
    .bind(writes.iter().map(|w| w.update.last_code.as_deref()).collect::<Vec<_>>())
    .bind(writes.iter().map(|w| w.update.last_category.as_deref()).collect::<Vec<_>>())
    .bind(writes.iter().map(|w| wsql::counter(w.update.provider_retries)).collect::<Vec<i32>>())
    .bind(writes.iter().map(|w| wsql::counter(w.update.provider_requeues)).collect::<Vec<i32>>())
    .bind(writes.iter().map(|w| wsql::counter(w.update.vendor_refusals)).collect::<Vec<i32>>())
    .bind(writes.iter().map(|w| w.update.clear_current_attempt).collect::<Vec<bool>>())
    .bind(writes.iter().map(|w| w.now_ms).collect::<Vec<i64>>())
    .bind(&counted)
    .fetch_all(&mut *tx)
    .await?;
    let applied: std::collections::HashSet<i64> = applied.into_iter().collect();
    let unapplied: Vec<i64> = counted
        .into_iter()
        .filter(|id| !applied.contains(id))
        .collect();
    if !unapplied.is_empty() {
        sqlx::query("UPDATE jobs SET attempts = attempts + 1 WHERE id = ANY($1)")
            .bind(&unapplied)
            .execute(&mut *tx)
            .await?;
    }
    Ok(writes.iter().map(|w| applied.contains(&w.job_id)).collect())
}

/// Audit rows in one statement (arrays, so one prepared statement for any count).
async fn insert_audit_set(tx: &mut sqlx::PgConnection, rows: &[AuditRecord]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO audit (job_id, campaign_id, phone, at_ms, stage, verdict, rule, reason, zones, states, \
         local_times, next_allowed_ms) \
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bigint[], $5::text[], $6::text[], \
         $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::bigint[])",
    )
    .bind(rows.iter().map(|r| r.job_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.campaign_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.phone.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.at_ms).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.stage).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.verdict.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.rule.as_deref()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.reason.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.zones.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.states.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.local_times.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.next_allowed_ms).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// `ATTEMPT_COLS` qualified with the alias `a`.
fn attempt_cols_of_a() -> String {
    wsql::ATTEMPT_COLS
        .split(", ")
        .map(|c| format!("a.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `Store::dispatch` with set-based statements, in one transaction (the semantics
/// of `worker_sql::dispatch`, row for row): the advisory locks of the new attempts'
/// numbers in one statement in number order; every job row locked in id order,
/// which also tells whose lease still holds; the audit rows in one insert; the
/// counted calls of every number in one query and the caps checked here in number
/// order, each reservation counting for the next request of the same number; the
/// attempts inserted already counted as sent, the resends counted, the sent jobs
/// moved to `dialing`, and the decisions (those given and the cap requeues) applied
/// set-based.
async fn dispatch_set(pool: &PgPool, d: &Dispatch) -> Result<DispatchResult> {
    use std::collections::{HashMap, HashSet};
    let mut tx = begin_tx(pool).await?;
    let new_phones: Vec<&str> = d
        .sends
        .iter()
        .filter(|s| matches!(s.send, SendKind::New { .. }))
        .map(|s| s.phone.as_str())
        .collect();
    if !new_phones.is_empty() {
        sqlx::query(
            "SELECT pg_advisory_xact_lock(hashtextextended(p, 0)) FROM unnest($1::text[]) AS t(p) \
             GROUP BY p ORDER BY p",
        )
        .bind(&new_phones)
        .execute(&mut *tx)
        .await?;
    }
    let ids: Vec<i64> = d
        .writes
        .iter()
        .map(|w| w.job_id)
        .chain(d.sends.iter().map(|s| s.job_id))
        .collect();
    let held: HashSet<i64> = lock_jobs(&mut tx, &ids)
        .await?
        .into_iter()
        // A worker whose lease ran out (its heartbeats failed: a database outage)
        // sends nothing more: another worker's recovery may take the job any moment,
        // reading it as it was (SPEC section 7: no lease expiry may cause a second
        // call).
        .filter(|(_, owner, status, live)| {
            owner.as_deref() == Some(d.owner.as_str())
                && (status == "running" || status == "dialing")
                && *live
        })
        .map(|(id, _, _, _)| id)
        .collect();
    insert_audit_set(&mut tx, &d.audits).await?;

    let since = d
        .sends
        .iter()
        .filter_map(|s| match &s.send {
            SendKind::New { caps, .. } => {
                Some(s.now_ms - caps.iter().map(|c| c.1).max().unwrap_or(0))
            }
            SendKind::Resend { .. } => None,
        })
        .min();
    let mut counted: HashMap<String, Vec<i64>> = HashMap::new();
    if let Some(since) = since {
        let rows: Vec<(String, i64)> = sqlx::query_as(COUNTED_CALLS)
            .bind(&new_phones)
            .bind(since)
            .fetch_all(&mut *tx)
            .await?;
        for (phone, at) in rows {
            counted.entry(phone).or_default().push(at);
        }
    }

    let mut sends = vec![Dispatched::LeaseLost; d.sends.len()];
    let mut writes: Vec<JobWrite> = d.writes.clone();
    let mut insert: Vec<usize> = Vec::new();
    let mut resend: Vec<usize> = Vec::new();
    let mut order: Vec<usize> = (0..d.sends.len()).collect();
    order.sort_by(|a, b| d.sends[*a].phone.cmp(&d.sends[*b].phone));
    for i in order {
        let s = &d.sends[i];
        if !held.contains(&s.job_id) {
            continue;
        }
        match &s.send {
            SendKind::Resend { .. } => resend.push(i),
            SendKind::New {
                caps,
                requeue_jitter_ms,
                ..
            } => {
                let longest = caps.iter().map(|c| c.1).max().unwrap_or(0);
                let times = counted.entry(s.phone.clone()).or_default();
                if longest > 0 {
                    let in_window: Vec<i64> = times
                        .iter()
                        .copied()
                        .filter(|t| *t > s.now_ms - longest)
                        .collect();
                    if let Some(retry_at_ms) = wsql::cap_retry_at(&in_window, caps, s.now_ms) {
                        writes.push(JobWrite {
                            job_id: s.job_id,
                            guard: Guard::Lease(d.owner.clone()),
                            update: JobUpdate::cap_requeue(retry_at_ms + requeue_jitter_ms),
                            now_ms: s.now_ms,
                        });
                        sends[i] = Dispatched::CapReached { retry_at_ms };
                        continue;
                    }
                }
                // Recorded: it counts toward the caps of the dispatch's later sends.
                times.push(s.now_ms);
                times.sort_unstable();
                insert.push(i);
            }
        }
    }

    let mut sent: Vec<(usize, AttemptRow)> = Vec::with_capacity(insert.len() + resend.len());
    if !insert.is_empty() {
        let new_fields = |i: &usize| match &d.sends[*i].send {
            SendKind::New { key, body, .. } => (key.as_str(), body.as_str()),
            SendKind::Resend { .. } => unreachable!("only new sends are inserted"),
        };
        let sql = format!(
            "INSERT INTO attempts (job_id, campaign_id, phone, attempt_no, idempotency_key, request_body, \
             placement, sends, created_at_ms, first_sent_at_ms, last_sent_at_ms) \
             SELECT u.job_id, u.campaign_id, u.phone, \
               (SELECT COUNT(*) FROM attempts x WHERE x.job_id = u.job_id) + 1, u.idempotency_key, u.request_body, \
               'reserved', 1, u.now_ms, u.now_ms, u.now_ms \
             FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::bigint[]) \
             AS u(job_id, campaign_id, phone, idempotency_key, request_body, now_ms) \
             RETURNING {}",
            wsql::ATTEMPT_COLS
        );
        let rows = sqlx::query(&sql)
            .bind(
                insert
                    .iter()
                    .map(|i| d.sends[*i].job_id)
                    .collect::<Vec<i64>>(),
            )
            .bind(
                insert
                    .iter()
                    .map(|i| d.sends[*i].campaign_id)
                    .collect::<Vec<i64>>(),
            )
            .bind(
                insert
                    .iter()
                    .map(|i| d.sends[*i].phone.as_str())
                    .collect::<Vec<&str>>(),
            )
            .bind(
                insert
                    .iter()
                    .map(|i| new_fields(i).0)
                    .collect::<Vec<&str>>(),
            )
            .bind(
                insert
                    .iter()
                    .map(|i| new_fields(i).1)
                    .collect::<Vec<&str>>(),
            )
            .bind(
                insert
                    .iter()
                    .map(|i| d.sends[*i].now_ms)
                    .collect::<Vec<i64>>(),
            )
            .fetch_all(&mut *tx)
            .await?;
        let mut by_job: HashMap<i64, AttemptRow> = HashMap::new();
        for row in &rows {
            let a = wsql::attempt_from_row(row)?;
            by_job.insert(a.job_id, a);
        }
        for i in insert {
            let a = by_job.remove(&d.sends[i].job_id).ok_or_else(|| {
                super::StoreError::Invalid(format!(
                    "no attempt recorded for job {}",
                    d.sends[i].job_id
                ))
            })?;
            sent.push((i, a));
        }
    }
    if !resend.is_empty() {
        let ids: Vec<i64> = resend
            .iter()
            .map(|i| match d.sends[*i].send {
                SendKind::Resend { attempt_id } => attempt_id,
                SendKind::New { .. } => unreachable!("only resends are counted here"),
            })
            .collect();
        let sql = format!(
            "UPDATE attempts a SET sends = a.sends + 1, first_sent_at_ms = COALESCE(a.first_sent_at_ms, u.now_ms), \
             last_sent_at_ms = u.now_ms FROM unnest($1::bigint[], $2::bigint[]) AS u(id, now_ms) \
             WHERE a.id = u.id RETURNING {}",
            attempt_cols_of_a()
        );
        let rows = sqlx::query(&sql)
            .bind(&ids)
            .bind(
                resend
                    .iter()
                    .map(|i| d.sends[*i].now_ms)
                    .collect::<Vec<i64>>(),
            )
            .fetch_all(&mut *tx)
            .await?;
        let mut by_id: HashMap<i64, AttemptRow> = HashMap::new();
        for row in &rows {
            let a = wsql::attempt_from_row(row)?;
            by_id.insert(a.id, a);
        }
        for (i, id) in resend.into_iter().zip(ids) {
            let a = by_id
                .remove(&id)
                .ok_or_else(|| super::StoreError::Invalid(format!("no attempt {id} to resend")))?;
            sent.push((i, a));
        }
    }
    if !sent.is_empty() {
        // Every job in `sent` is in `held`: locked above in this transaction
        // (`FOR NO KEY UPDATE`) and seen leased to this worker, so no other
        // transaction can change its lease before the commit; the statement needs no
        // lease test of its own. It must not have one: `lease_owner = $owner` is
        // estimated from the statistics of the import (every lease NULL) at one row,
        // and PostgreSQL then plans a sequential scan of `jobs` for the leased rows
        // joined to the batch by a nested loop, every leased row against every batch
        // row (auto_explain, 5,000 jobs: 1,000 x 200 comparisons, 65-242 ms a batch;
        // docs/benchmarks.md, session 14). Joined on the key alone, each row is one
        // primary-key probe.
        // A new attempt starts with no provider retries used; a re-sent one keeps
        // its count (as on SQLite, and as the dial task counts on).
        let updated = sqlx::query(
            "UPDATE jobs j SET status = 'dialing', current_attempt_id = u.attempt_id, \
             provider_retries = CASE WHEN u.new THEN 0 ELSE j.provider_retries END, updated_at_ms = u.now_ms \
             FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bool[]) AS u(job_id, attempt_id, now_ms, new) \
             WHERE j.id = u.job_id",
        )
        .bind(sent.iter().map(|(i, _)| d.sends[*i].job_id).collect::<Vec<i64>>())
        .bind(sent.iter().map(|(_, a)| a.id).collect::<Vec<i64>>())
        .bind(sent.iter().map(|(i, _)| d.sends[*i].now_ms).collect::<Vec<i64>>())
        .bind(
            sent.iter()
                .map(|(i, _)| matches!(d.sends[*i].send, SendKind::New { .. }))
                .collect::<Vec<bool>>(),
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        debug_assert_eq!(updated, sent.len() as u64, "every sent job is held");
    }
    let applied = update_jobs_set_on(&mut tx, &writes).await?;
    tx.commit().await?;
    for (i, a) in sent {
        sends[i] = Dispatched::Sent(a);
    }
    Ok(DispatchResult {
        writes: applied[..d.writes.len()].to_vec(),
        sends,
    })
}

/// `Store::outcome_targets` in one query.
async fn outcome_targets_set(pool: &PgPool, call_ids: &[String]) -> Result<Vec<OutcomeTarget>> {
    let sql = format!(
        "SELECT {}, COALESCE(j.attempts, 0) AS job_attempts, \
         COALESCE(j.status = 'awaiting_outcome' AND j.current_attempt_id = a.id, FALSE) AS awaiting, \
         COALESCE(j.status IN ('queued', 'running', 'dialing') AND j.current_attempt_id = a.id, FALSE) AS before_202 \
         FROM attempts a LEFT JOIN jobs j ON j.id = a.job_id WHERE a.call_id = ANY($1)",
        attempt_cols_of_a()
    );
    let rows = sqlx::query(&sql).bind(call_ids).fetch_all(pool).await?;
    rows.iter()
        .map(|r| {
            use sqlx::Row;
            Ok(OutcomeTarget {
                attempt: wsql::attempt_from_row(r)?,
                job_attempts: r.try_get("job_attempts")?,
                awaiting: r.try_get("awaiting")?,
                before_202: r.try_get("before_202")?,
            })
        })
        .collect()
}

/// `Store::apply_outcomes` in one transaction of set-based statements.
async fn apply_outcomes_set(pool: &PgPool, b: &OutcomeBatch) -> Result<Vec<bool>> {
    let mut tx = begin_tx(pool).await?;
    let ids: Vec<i64> = b.writes.iter().map(|w| w.job_id).collect();
    lock_jobs(&mut tx, &ids).await?;
    let applied = update_jobs_set_on(&mut tx, &b.writes).await?;
    if !b.recorded.is_empty() {
        sqlx::query(
            "UPDATE attempts a SET outcome_code = u.code, outcome_category = u.category, \
             outcome_source = u.source, outcome_at_ms = $5 \
             FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[]) AS u(id, code, category, source) \
             WHERE a.id = u.id AND a.outcome_code IS NULL",
        )
        .bind(b.recorded.iter().map(|a| a.id).collect::<Vec<i64>>())
        .bind(b.recorded.iter().map(|a| a.outcome_code.as_deref()).collect::<Vec<_>>())
        .bind(b.recorded.iter().map(|a| a.outcome_category.as_deref()).collect::<Vec<_>>())
        .bind(b.recorded.iter().map(|a| a.outcome_source).collect::<Vec<_>>())
        .bind(b.now_ms)
        .execute(&mut *tx)
        .await?;
    }
    if !b.marks.is_empty() {
        sqlx::query(
            "UPDATE webhook_inbox i SET applied_at_ms = $3, result = u.result \
             FROM unnest($1::text[], $2::text[]) AS u(event_id, result) WHERE i.event_id = u.event_id",
        )
        .bind(b.marks.iter().map(|m| m.event_id.as_str()).collect::<Vec<_>>())
        .bind(b.marks.iter().map(|m| m.label(&applied)).collect::<Vec<_>>())
        .bind(b.now_ms)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(applied)
}

/// `Store::inbox_insert_many` in one statement: the first occurrence of each new
/// event id in the batch is the one stored; every other is a duplicate.
async fn inbox_insert_set(pool: &PgPool, events: &[InboxEvent], now_ms: i64) -> Result<Vec<bool>> {
    let stored: std::collections::HashSet<String> = sqlx::query_scalar(
        "INSERT INTO webhook_inbox (event_id, call_id, received_at_ms, body) \
         SELECT e, c, $3, b FROM unnest($1::text[], $2::text[], $4::text[]) WITH ORDINALITY AS u(e, c, b, n) \
         ORDER BY n ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
    )
    .bind(events.iter().map(|e| e.event_id.as_str()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.call_id.as_str()).collect::<Vec<_>>())
    .bind(now_ms)
    .bind(events.iter().map(|e| e.body.as_str()).collect::<Vec<_>>())
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    let mut first = std::collections::HashSet::new();
    Ok(events
        .iter()
        .map(|e| stored.contains(&e.event_id) && first.insert(e.event_id.as_str()))
        .collect())
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
        analyze_after_load(&self.pool, "jobs").await;
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
        // The campaigns are a filter (`campaign_id + 0 IN (...)`), so the claim index
        // is read in due order and the scan stops at the limit; a join would let the
        // planner read every index entry of the campaign instead (measured: 5.3 ms
        // for an empty claim on a 20,000-job campaign, 0.8 ms as a filter).
        let campaign_filter = claimable_campaigns("c.id", only_campaign);
        let sql = format!(
            "WITH picked AS ( \
               SELECT j.id FROM jobs j \
               WHERE j.status = 'queued' AND NOT j.fresh AND j.due_at_ms <= $1 \
                 AND (j.campaign_id + 0) IN (SELECT c.id FROM campaigns c WHERE {campaign_filter}) \
               ORDER BY j.due_at_ms, j.id LIMIT $2 FOR UPDATE OF j SKIP LOCKED) \
             UPDATE jobs SET status = 'running', lease_owner = $3, \
               lease_expires_ms = (extract(epoch from clock_timestamp()) * 1000)::bigint + $4, updated_at_ms = $1 \
             WHERE jobs.id = ANY(ARRAY(SELECT id FROM picked)) \
             RETURNING {CLAIMED_COLUMNS}"
        );
        let mut rows = sqlx::query(&sql)
            .bind(now_ms)
            .bind(limit as i64)
            .bind(owner)
            .bind(lease_ms)
            .bind(only_campaign)
            .fetch_all(&self.pool)
            .await?;
        // Fresh jobs window by window, while each window yields some (an empty one
        // ends this claim; the next claim goes on from past it).
        // The statements above committed their leases: a later error must not
        // leave those jobs leased to a worker that never learns of them (they would
        // wait out the lease and be recovered as a dead worker's). What was claimed
        // is returned; if the jobs cannot be read, they are given back.
        for _ in 0..4 {
            if rows.len() as u32 >= limit {
                break;
            }
            match claim_fresh(
                &self.pool,
                owner,
                limit - rows.len() as u32,
                now_ms,
                lease_ms,
                only_campaign,
            )
            .await
            {
                Ok(got) if got.is_empty() => break,
                Ok(got) => rows.extend(got),
                Err(e) if rows.is_empty() => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "claiming fresh jobs failed; going on with the jobs claimed");
                    break;
                }
            }
        }
        match wsql::jobs_with_attempts(&self.pool, &rows).await {
            Ok(jobs) => Ok(jobs),
            Err(e) => {
                use sqlx::Row;
                let ids: Vec<i64> = rows
                    .iter()
                    .filter_map(|r| r.try_get::<i64, _>("id").ok())
                    .collect();
                let _ = sqlx::query(
                    "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_expires_ms = NULL \
                     WHERE id = ANY($1) AND lease_owner = $2 AND status = 'running'",
                )
                .bind(&ids)
                .bind(owner)
                .execute(&self.pool)
                .await;
                Err(e)
            }
        }
    }

    async fn update_jobs(&self, writes: &[JobWrite]) -> Result<Vec<bool>> {
        if has_repeats(writes.iter().map(|w| w.job_id)) {
            // Two decisions for one job in a batch apply in order, one by one
            // (after the batch's rows are locked in id order, like every batch).
            return wsql::update_jobs(&self.pool, writes).await;
        }
        update_jobs_set(&self.pool, writes).await
    }

    async fn dispatch(&self, d: &Dispatch) -> Result<DispatchResult> {
        if has_repeats(
            d.writes
                .iter()
                .map(|w| w.job_id)
                .chain(d.sends.iter().map(|s| s.job_id)),
        ) {
            return Err(super::StoreError::Invalid(
                "a job appears twice in one dispatch".into(),
            ));
        }
        dispatch_set(&self.pool, d).await
    }

    async fn outcome_targets(&self, call_ids: &[String]) -> Result<Vec<OutcomeTarget>> {
        outcome_targets_set(&self.pool, call_ids).await
    }

    async fn apply_outcomes(&self, batch: &OutcomeBatch) -> Result<Vec<bool>> {
        if has_repeats(batch.writes.iter().map(|w| w.job_id)) {
            return wsql::apply_outcomes(&self.pool, batch).await;
        }
        apply_outcomes_set(&self.pool, batch).await
    }

    async fn inbox_insert_many(&self, events: &[InboxEvent], now_ms: i64) -> Result<Vec<bool>> {
        inbox_insert_set(&self.pool, events, now_ms).await
    }

    async fn inbox_pending_many(&self, call_ids: &[String]) -> Result<Vec<InboxEvent>> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT event_id, call_id, body FROM webhook_inbox WHERE call_id = ANY($1) AND applied_at_ms IS NULL \
             ORDER BY received_at_ms",
        )
        .bind(call_ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(event_id, call_id, body)| InboxEvent {
                event_id,
                call_id,
                body,
            })
            .collect())
    }
});
