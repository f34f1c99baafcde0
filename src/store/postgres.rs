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
/// every campaign with no pause of either kind. `t` is the alias whose
/// `campaign_id` is matched.
fn claimable_campaigns(t: &str, only_campaign: Option<i64>) -> String {
    match only_campaign {
        Some(_) => format!("{t}.campaign_id = $5 AND NOT c.operator_paused"),
        None => "NOT c.operator_paused AND c.auto_pause_reason IS NULL AND $5::bigint IS NULL"
            .to_owned(),
    }
}

/// The columns of a claimed job, as both claim statements return them.
const CLAIMED_COLUMNS: &str = "jobs.id, jobs.campaign_id, jobs.phone, jobs.timezone, jobs.state, \
     jobs.postal_code, jobs.attempts, jobs.provider_retries, jobs.provider_requeues, jobs.vendor_refusals, \
     jobs.current_attempt_id";

/// Claims fresh jobs (never claimed, loaded by the fast import path, not in the claim
/// index) of one campaign, in id order from its `fresh_jobs` cursor. The cursor row
/// is locked for the statement's transaction, so claimers of one campaign's fresh
/// jobs take turns, and the jobs under it are locked without SKIP LOCKED: the
/// cursor only ever moves past a job that this statement claims or that is no
/// longer fresh, so no job is passed over. If the statement fails or the process
/// dies, the cursor move rolls back with the claim.
async fn claim_fresh(
    pool: &PgPool,
    owner: &str,
    limit: u32,
    now_ms: i64,
    lease_ms: i64,
    only_campaign: Option<i64>,
) -> Result<Vec<sqlx::postgres::PgRow>> {
    let campaign_filter = claimable_campaigns("f", only_campaign);
    let sql = format!(
        "WITH cur AS ( \
           SELECT f.campaign_id, f.next_id, f.last_id FROM fresh_jobs f JOIN campaigns c ON c.id = f.campaign_id \
           WHERE f.next_id <= f.last_id AND f.due_at_ms <= $1 AND {campaign_filter} \
           ORDER BY f.due_at_ms, f.campaign_id LIMIT 1 FOR UPDATE OF f), \
         picked AS ( \
           SELECT j.id FROM jobs j JOIN cur ON j.campaign_id = cur.campaign_id \
           WHERE j.id BETWEEN cur.next_id AND cur.last_id AND j.fresh AND j.status = 'queued' \
           ORDER BY j.id LIMIT $2 FOR UPDATE OF j), \
         moved AS ( \
           UPDATE fresh_jobs f SET next_id = CASE WHEN (SELECT count(*) FROM picked) < $2 THEN cur.last_id + 1 \
             ELSE (SELECT max(id) FROM picked) + 1 END \
           FROM cur WHERE f.campaign_id = cur.campaign_id) \
         UPDATE jobs SET status = 'running', fresh = FALSE, lease_owner = $3, \
           lease_expires_ms = (extract(epoch from clock_timestamp()) * 1000)::bigint + $4, updated_at_ms = $1 \
         FROM picked WHERE jobs.id = picked.id \
         RETURNING {CLAIMED_COLUMNS}"
    );
    Ok(sqlx::query(&sql)
        .bind(now_ms)
        .bind(limit as i64)
        .bind(owner)
        .bind(lease_ms)
        .bind(only_campaign)
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
    wsql::lock_batch(&mut tx, &ids).await?;
    let with_attempt: Vec<(&JobWrite, &AttemptUpdate)> = writes
        .iter()
        .filter_map(|w| w.update.attempt.as_ref().map(|a| (w, a)))
        .collect();
    if !with_attempt.is_empty() {
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
        if !counted.is_empty() {
            // The first time an attempt is (possibly) placed it counts once toward
            // max_attempts (SPEC section 7), whether or not the job part applies.
            sqlx::query("UPDATE jobs SET attempts = attempts + 1 WHERE id = ANY($1)")
                .bind(&counted)
                .execute(&mut *tx)
                .await?;
        }
    }
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
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let applied: std::collections::HashSet<i64> = applied.into_iter().collect();
    Ok(writes.iter().map(|w| applied.contains(&w.job_id)).collect())
}

/// `Store::mark_sending_many` as one statement (job ids distinct): each job moves to
/// `dialing` and its attempt counts a send only while `owner` holds the lease.
async fn mark_sending_set(pool: &PgPool, marks: &[SendMark], owner: &str) -> Result<Vec<bool>> {
    let q = sqlx::query_scalar(
        "WITH u AS (SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS u(job_id, attempt_id, now_ms)), \
         held AS (UPDATE jobs j SET status = 'dialing', updated_at_ms = u.now_ms FROM u \
           WHERE j.id = u.job_id AND j.lease_owner = $4 AND j.status IN ('running', 'dialing') RETURNING j.id), \
         sent AS (UPDATE attempts a SET sends = a.sends + 1, first_sent_at_ms = COALESCE(a.first_sent_at_ms, u.now_ms), \
           last_sent_at_ms = u.now_ms FROM u WHERE a.id = u.attempt_id AND u.job_id IN (SELECT id FROM held) \
           RETURNING a.id) \
         SELECT id FROM held",
    )
    .bind(marks.iter().map(|m| m.job_id).collect::<Vec<i64>>())
    .bind(marks.iter().map(|m| m.attempt_id).collect::<Vec<i64>>())
    .bind(marks.iter().map(|m| m.now_ms).collect::<Vec<i64>>())
    .bind(owner);
    let held: Vec<i64> = if marks.len() == 1 {
        // One job (the per-job worker's path): the statement alone is atomic and one
        // row needs no lock order, so one round trip instead of five.
        q.fetch_all(pool).await?
    } else {
        let mut tx = begin_tx(pool).await?;
        let ids: Vec<i64> = marks.iter().map(|m| m.job_id).collect();
        wsql::lock_batch(&mut tx, &ids).await?;
        let held = q.fetch_all(&mut *tx).await?;
        tx.commit().await?;
        held
    };
    let held: std::collections::HashSet<i64> = held.into_iter().collect();
    Ok(marks.iter().map(|m| held.contains(&m.job_id)).collect())
}

/// `Store::reserve_attempts` with set-based statements (job ids distinct): the
/// numbers' advisory locks in one statement, in number order (the order the
/// per-job path uses too); the counted calls of every number in one query; the
/// caps checked here in request order by number, each reservation counting for the
/// next request of the same number; the attempts inserted and the jobs pointed at
/// them in two statements. One transaction, so the check and the reservation stay
/// atomic against every other worker (SPEC section 6).
async fn reserve_attempts_set(pool: &PgPool, reqs: &[ReserveRequest]) -> Result<Vec<Reservation>> {
    use std::collections::HashMap;
    let mut tx = begin_tx(pool).await?;
    let phones: Vec<&str> = reqs.iter().map(|r| r.job.phone.as_str()).collect();
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended(p, 0)) FROM unnest($1::text[]) AS t(p) \
         GROUP BY p ORDER BY p",
    )
    .bind(&phones)
    .execute(&mut *tx)
    .await?;
    let since = reqs
        .iter()
        .map(|r| r.now_ms - r.caps.iter().map(|c| c.1).max().unwrap_or(0))
        .min()
        .unwrap_or(0);
    let mut counted: HashMap<String, Vec<i64>> = HashMap::new();
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT phone, created_at_ms FROM attempts WHERE phone = ANY($1) AND placement <> 'not_placed' \
         AND created_at_ms > $2 ORDER BY phone, created_at_ms",
    )
    .bind(&phones)
    .bind(since)
    .fetch_all(&mut *tx)
    .await?;
    for (phone, at) in rows {
        counted.entry(phone).or_default().push(at);
    }
    let job_ids: Vec<i64> = reqs.iter().map(|r| r.job.id).collect();
    let numbers: HashMap<i64, i64> = sqlx::query_as(
        "SELECT job_id, COUNT(*) FROM attempts WHERE job_id = ANY($1) GROUP BY job_id",
    )
    .bind(&job_ids)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();

    let mut order: Vec<usize> = (0..reqs.len()).collect();
    order.sort_by(|a, b| reqs[*a].job.phone.cmp(&reqs[*b].job.phone));
    let mut out: Vec<Option<Reservation>> = vec![None; reqs.len()];
    let mut insert: Vec<usize> = Vec::new();
    for i in order {
        let r = &reqs[i];
        let longest = r.caps.iter().map(|c| c.1).max().unwrap_or(0);
        let times = counted.entry(r.job.phone.clone()).or_default();
        if longest > 0 {
            let in_window: Vec<i64> = times
                .iter()
                .copied()
                .filter(|t| *t > r.now_ms - longest)
                .collect();
            if let Some(retry_at_ms) = wsql::cap_retry_at(&in_window, &r.caps, r.now_ms) {
                out[i] = Some(Reservation::CapReached { retry_at_ms });
                continue;
            }
        }
        // Reserved: it counts toward the caps of the batch's later requests.
        times.push(r.now_ms);
        times.sort_unstable();
        insert.push(i);
    }
    if !insert.is_empty() {
        let sql = format!(
            "INSERT INTO attempts (job_id, campaign_id, phone, attempt_no, idempotency_key, request_body, \
             placement, created_at_ms) \
             SELECT job_id, campaign_id, phone, attempt_no, idempotency_key, request_body, 'reserved', created_at_ms \
             FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::int[], $5::text[], $6::text[], $7::bigint[]) \
             AS u(job_id, campaign_id, phone, attempt_no, idempotency_key, request_body, created_at_ms) \
             RETURNING {}",
            wsql::ATTEMPT_COLS
        );
        let rows = sqlx::query(&sql)
            .bind(insert.iter().map(|i| reqs[*i].job.id).collect::<Vec<i64>>())
            .bind(
                insert
                    .iter()
                    .map(|i| reqs[*i].job.campaign_id)
                    .collect::<Vec<i64>>(),
            )
            .bind(
                insert
                    .iter()
                    .map(|i| reqs[*i].job.phone.as_str())
                    .collect::<Vec<&str>>(),
            )
            .bind(
                insert
                    .iter()
                    .map(|i| numbers.get(&reqs[*i].job.id).copied().unwrap_or(0) as i32 + 1)
                    .collect::<Vec<i32>>(),
            )
            .bind(
                insert
                    .iter()
                    .map(|i| reqs[*i].key.as_str())
                    .collect::<Vec<&str>>(),
            )
            .bind(
                insert
                    .iter()
                    .map(|i| reqs[*i].body.as_str())
                    .collect::<Vec<&str>>(),
            )
            .bind(insert.iter().map(|i| reqs[*i].now_ms).collect::<Vec<i64>>())
            .fetch_all(&mut *tx)
            .await?;
        let mut by_job: HashMap<i64, AttemptRow> = HashMap::new();
        for row in &rows {
            let a = wsql::attempt_from_row(row)?;
            by_job.insert(a.job_id, a);
        }
        let ids: Vec<i64> = by_job.keys().copied().collect();
        wsql::lock_batch(&mut tx, &ids).await?;
        sqlx::query(
            "UPDATE jobs j SET current_attempt_id = u.attempt_id \
             FROM unnest($1::bigint[], $2::bigint[]) AS u(job_id, attempt_id) WHERE j.id = u.job_id",
        )
        .bind(by_job.keys().copied().collect::<Vec<i64>>())
        .bind(by_job.values().map(|a| a.id).collect::<Vec<i64>>())
        .execute(&mut *tx)
        .await?;
        for i in insert {
            let a = by_job.remove(&reqs[i].job.id).ok_or_else(|| {
                super::StoreError::Invalid(format!(
                    "no attempt reserved for job {}",
                    reqs[i].job.id
                ))
            })?;
            out[i] = Some(Reservation::Reserved(a));
        }
    }
    tx.commit().await?;
    Ok(out
        .into_iter()
        .map(|r| r.expect("every request answered"))
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
        let campaign_filter = claimable_campaigns("j", only_campaign);
        let sql = format!(
            "WITH picked AS ( \
               SELECT j.id FROM jobs j JOIN campaigns c ON c.id = j.campaign_id \
               WHERE j.status = 'queued' AND NOT j.fresh AND j.due_at_ms <= $1 AND {campaign_filter} \
               ORDER BY j.due_at_ms, j.id LIMIT $2 FOR UPDATE OF j SKIP LOCKED) \
             UPDATE jobs SET status = 'running', lease_owner = $3, \
               lease_expires_ms = (extract(epoch from clock_timestamp()) * 1000)::bigint + $4, updated_at_ms = $1 \
             FROM picked WHERE jobs.id = picked.id \
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
        if (rows.len() as u32) < limit {
            rows.extend(
                claim_fresh(
                    &self.pool,
                    owner,
                    limit - rows.len() as u32,
                    now_ms,
                    lease_ms,
                    only_campaign,
                )
                .await?,
            );
        }
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

    async fn update_jobs(&self, writes: &[JobWrite]) -> Result<Vec<bool>> {
        if has_repeats(writes.iter().map(|w| w.job_id)) {
            // Two decisions for one job in a batch apply in order, one by one
            // (after the batch's rows are locked in id order, like every batch).
            return wsql::update_jobs(&self.pool, writes).await;
        }
        update_jobs_set(&self.pool, writes).await
    }

    async fn mark_sending_many(&self, marks: &[SendMark], owner: &str) -> Result<Vec<bool>> {
        if has_repeats(marks.iter().map(|m| m.job_id)) {
            return wsql::mark_sending_many(&self.pool, marks, owner).await;
        }
        mark_sending_set(&self.pool, marks, owner).await
    }

    async fn reserve_attempts(&self, reqs: &[ReserveRequest]) -> Result<Vec<Reservation>> {
        if has_repeats(reqs.iter().map(|r| r.job.id)) {
            return wsql::reserve_attempts(&self.pool, reqs).await;
        }
        reserve_attempts_set(&self.pool, reqs).await
    }
});
