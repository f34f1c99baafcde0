//! Queue, lease, attempt, pause/halt and inbox SQL shared by both backends
//! (instantiated per database by [`worker_sql!`]). `$lock_number` is the statement
//! that serializes reservations for one number inside a transaction (PostgreSQL:
//! an advisory lock), or `None` where the caller serializes them (SQLite: one
//! process, a mutex). `$for_update` is the row-lock clause that batches and the
//! heartbeat use to lock job rows in id order (PostgreSQL: `FOR NO KEY UPDATE`), or
//! `""` where there is one writer (SQLite).

macro_rules! worker_sql {
    ($DB:ty, $Pool:ty, $Row:ty, $lock_number:expr, $for_update:expr) => {
        /// Locks the batch's job rows in id order (PostgreSQL; SQLite has one writer).
        /// Every batch that changes several jobs, and the heartbeat, takes job rows in
        /// this one order, so two of them never wait on each other in a cycle
        /// (PostgreSQL would abort one with "deadlock detected"). `FOR NO KEY UPDATE`
        /// is the strength an UPDATE of a job takes anyway; a stronger lock would also
        /// wait on the key-share locks of attempts' foreign-key checks.
        pub(crate) async fn lock_batch(conn: &mut <$DB as sqlx::Database>::Connection, ids: &[i64]) -> Result<()> {
            let for_update: &str = $for_update;
            if for_update.is_empty() || ids.is_empty() {
                return Ok(());
            }
            let mut qb = QueryBuilder::<$DB>::new("SELECT id FROM jobs WHERE id");
            super::push_in(&mut qb, ids);
            qb.push(format!(" ORDER BY id{for_update}"));
            qb.build().execute(&mut *conn).await?;
            Ok(())
        }

        use crate::store::types::*;
        use crate::store::Result;
        use sqlx::{QueryBuilder, Row};

        #[allow(dead_code)] // SQLite's; PostgreSQL runs a set-based version
        const INBOX_INSERT: &str = "INSERT INTO webhook_inbox (event_id, call_id, received_at_ms, body) \
            VALUES ($1, $2, $3, $4) ON CONFLICT (event_id) DO NOTHING";
        const RECORD_OUTCOME: &str = "UPDATE attempts SET outcome_code = $2, outcome_category = $3, outcome_source = $4, \
            outcome_at_ms = $5 WHERE id = $1 AND outcome_code IS NULL";
        const INBOX_MARK_APPLIED: &str =
            "UPDATE webhook_inbox SET applied_at_ms = $2, result = $3 WHERE event_id = $1";

        pub(crate) const JOB_COLS: &str = "id, campaign_id, phone, timezone, state, postal_code, attempts, \
            provider_retries, provider_requeues, vendor_refusals, current_attempt_id";
        pub(crate) const ATTEMPT_COLS: &str = "id, job_id, campaign_id, phone, attempt_no, idempotency_key, \
            request_body, placement, sends, created_at_ms, first_sent_at_ms, last_sent_at_ms, call_id, placed_at_ms, outcome_code";

        pub(crate) fn attempt_from_row(r: &$Row) -> Result<AttemptRow> {
            let placement: String = r.try_get("placement")?;
            Ok(AttemptRow {
                id: r.try_get("id")?,
                job_id: r.try_get("job_id")?,
                campaign_id: r.try_get("campaign_id")?,
                phone: r.try_get("phone")?,
                attempt_no: r.try_get("attempt_no")?,
                idempotency_key: r.try_get("idempotency_key")?,
                request_body: r.try_get("request_body")?,
                placement: Placement::parse(&placement),
                sends: r.try_get("sends")?,
                created_at_ms: r.try_get("created_at_ms")?,
                first_sent_at_ms: r.try_get("first_sent_at_ms")?,
                last_sent_at_ms: r.try_get("last_sent_at_ms")?,
                call_id: r.try_get("call_id")?,
                placed_at_ms: r.try_get("placed_at_ms")?,
                outcome_code: r.try_get("outcome_code")?,
            })
        }

        /// Job rows plus their current attempts (one extra query for the batch).
        pub(crate) async fn jobs_with_attempts(pool: &$Pool, rows: &[$Row]) -> Result<Vec<ClaimedJob>> {
            let mut jobs = Vec::with_capacity(rows.len());
            let mut attempt_ids = Vec::new();
            for r in rows {
                let current: Option<i64> = r.try_get("current_attempt_id")?;
                attempt_ids.extend(current);
                jobs.push((
                    ClaimedJob {
                        id: r.try_get("id")?,
                        campaign_id: r.try_get("campaign_id")?,
                        phone: r.try_get("phone")?,
                        timezone: r.try_get("timezone")?,
                        state: r.try_get("state")?,
                        postal_code: r.try_get("postal_code")?,
                        attempts: r.try_get("attempts")?,
                        provider_retries: r.try_get("provider_retries")?,
                        provider_requeues: r.try_get("provider_requeues")?,
                        vendor_refusals: r.try_get("vendor_refusals")?,
                        current_attempt: None,
                        recovered: false,
                    },
                    current,
                ));
            }
            if !attempt_ids.is_empty() {
                let mut qb = QueryBuilder::<$DB>::new(format!("SELECT {ATTEMPT_COLS} FROM attempts WHERE id"));
                super::push_in(&mut qb, &attempt_ids);
                let attempts: Vec<AttemptRow> =
                    qb.build().fetch_all(pool).await?.iter().map(attempt_from_row).collect::<Result<_>>()?;
                for (job, current) in jobs.iter_mut() {
                    if let Some(id) = current {
                        job.current_attempt = attempts.iter().find(|a| a.id == *id).cloned();
                    }
                }
            }
            Ok(jobs.into_iter().map(|(j, _)| j).collect())
        }

        pub(crate) async fn job(pool: &$Pool, id: i64) -> Result<Option<ClaimedJob>> {
            let sql = format!("SELECT {JOB_COLS} FROM jobs WHERE id = $1");
            let rows = sqlx::query(&sql).bind(id).fetch_all(pool).await?;
            Ok(jobs_with_attempts(pool, &rows).await?.into_iter().next())
        }

        pub(crate) async fn register_worker(pool: &$Pool, id: &str, hostname: &str, now_ms: i64) -> Result<()> {
            sqlx::query(
                "INSERT INTO workers (id, hostname, started_at_ms, heartbeat_ms) VALUES ($1, $2, $3, $3) \
                 ON CONFLICT (id) DO UPDATE SET heartbeat_ms = excluded.heartbeat_ms",
            )
            .bind(id)
            .bind(hostname)
            .bind(now_ms)
            .execute(pool)
            .await?;
            Ok(())
        }

        /// `db_now_ms`: the database clock (PostgreSQL) or the process clock (SQLite).
        /// Renews the worker's heartbeat and the leases of the jobs it still holds
        /// (`held`): only those, so a job whose task ended without a decision or a
        /// release (the database was down) is left to expire and be recovered.
        pub(crate) async fn heartbeat(pool: &$Pool, id: &str, held: &[i64], lease_ms: i64, db_now_ms: i64) -> Result<()> {
            let mut tx = super::begin_tx(pool).await?;
            sqlx::query("UPDATE workers SET heartbeat_ms = $2 WHERE id = $1")
                .bind(id)
                .bind(db_now_ms)
                .execute(&mut *tx)
                .await?;
            let mut held = held.to_vec();
            held.sort_unstable();
            // Rows locked in id order, as every batch locks them (no deadlock cycle).
            let for_update: &str = $for_update;
            for chunk in held.chunks(500) {
                let mut qb = QueryBuilder::<$DB>::new("UPDATE jobs SET lease_expires_ms = ");
                qb.push_bind(db_now_ms + lease_ms);
                qb.push(" WHERE id IN (SELECT id FROM jobs WHERE lease_owner = ");
                qb.push_bind(id);
                qb.push(" AND status IN ('running', 'dialing') AND id");
                super::push_in(&mut qb, chunk);
                qb.push(format!(" ORDER BY id{for_update})"));
                qb.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        }

        pub(crate) async fn live_workers(pool: &$Pool, since_ms: i64) -> Result<Vec<String>> {
            Ok(sqlx::query_scalar("SELECT id FROM workers WHERE heartbeat_ms >= $1 ORDER BY id")
                .bind(since_ms)
                .fetch_all(pool)
                .await?)
        }

        pub(crate) async fn deregister_worker(pool: &$Pool, id: &str) -> Result<()> {
            sqlx::query("DELETE FROM workers WHERE id = $1").bind(id).execute(pool).await?;
            Ok(())
        }

        pub(crate) async fn set_worker_halt(pool: &$Pool, id: &str, reason: Option<&str>) -> Result<()> {
            sqlx::query("UPDATE workers SET dialing_halted_reason = $2 WHERE id = $1")
                .bind(id)
                .bind(reason)
                .execute(pool)
                .await?;
            Ok(())
        }

        /// Expired leases back to the queue. A job whose attempt was sent is now
        /// ambiguous: the attempt becomes possibly placed (counted once) and keeps
        /// its key for the next worker.
        pub(crate) async fn recover_expired_leases(pool: &$Pool, db_now_ms: i64, now_ms: i64) -> Result<u64> {
            let mut tx = super::begin_tx(pool).await?;
            let expired: Vec<(i64, Option<i64>)> = sqlx::query_as(
                "SELECT id, current_attempt_id FROM jobs WHERE status IN ('running', 'dialing') AND lease_expires_ms < $1 \
                 ORDER BY id",
            )
            .bind(db_now_ms)
            .fetch_all(&mut *tx)
            .await?;
            let mut recovered = 0;
            for (job_id, _) in expired {
                // The attempt is the one the job has when the update takes its row
                // (RETURNING), not the one the SELECT above saw: on PostgreSQL the
                // owner's dispatch may have committed a new attempt, sent, in between
                // (the update waits for its row lock, then re-checks the condition),
                // and that attempt is as ambiguous as any (SPEC section 7).
                let row: Option<(Option<i64>,)> = sqlx::query_as(
                    "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_expires_ms = NULL, updated_at_ms = $2 \
                     WHERE id = $1 AND status IN ('running', 'dialing') AND lease_expires_ms < $3 \
                     RETURNING current_attempt_id",
                )
                .bind(job_id)
                .bind(now_ms)
                .bind(db_now_ms)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some((attempt,)) = row {
                    recovered += 1;
                    if let Some(a) = attempt {
                        possibly_placed(&mut tx, a, job_id).await?;
                    }
                }
            }
            tx.commit().await?;
            Ok(recovered)
        }

        /// A sent attempt with no answer taken is ambiguous: possibly placed for good,
        /// counted once toward max_attempts (SPEC section 7).
        async fn possibly_placed(conn: &mut <$DB as sqlx::Database>::Connection, attempt: i64, job_id: i64) -> Result<()> {
            let moved = sqlx::query(
                "UPDATE attempts SET placement = 'possibly_placed' WHERE id = $1 AND placement = 'reserved' AND sends > 0",
            )
            .bind(attempt)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if moved == 1 {
                sqlx::query("UPDATE jobs SET attempts = attempts + 1 WHERE id = $1").bind(job_id).execute(&mut *conn).await?;
            }
            Ok(())
        }

        pub(crate) async fn release(pool: &$Pool, job_id: i64, owner: &str, now_ms: i64) -> Result<()> {
            let mut tx = super::begin_tx(pool).await?;
            // A locking read (a no-op update, the same on both backends): the job's
            // status and attempt as they are, not as they were before a concurrent
            // dispatch committed. It also takes the job's row before the attempt's,
            // in the order the decision batches take them.
            let row: Option<(String, Option<i64>)> = sqlx::query_as(
                "UPDATE jobs SET updated_at_ms = updated_at_ms WHERE id = $1 AND lease_owner = $2 \
                 RETURNING status, current_attempt_id",
            )
            .bind(job_id)
            .bind(owner)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((status, attempt)) = row {
                if let (true, Some(a)) = (status == "dialing", attempt) {
                    // The request was sent and no answer was taken: ambiguous.
                    possibly_placed(&mut tx, a, job_id).await?;
                }
                sqlx::query(
                    "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_expires_ms = NULL, updated_at_ms = $3 \
                     WHERE id = $1 AND lease_owner = $2",
                )
                .bind(job_id)
                .bind(owner)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        }

        /// Epoch-ms times of the number's counted calls since `since_ms`, oldest first,
        /// each at its last send (the latest moment it can have been placed).
        #[allow(dead_code)] // SQLite's; PostgreSQL runs a set-based version
        async fn counted_calls(conn: &mut <$DB as sqlx::Database>::Connection, phone: &str, since_ms: i64) -> Result<Vec<i64>> {
            Ok(sqlx::query_scalar(
                "SELECT COALESCE(last_sent_at_ms, created_at_ms) AS at FROM attempts WHERE phone = $1 \
                 AND placement <> 'not_placed' AND COALESCE(last_sent_at_ms, created_at_ms) > $2 ORDER BY at",
            )
            .bind(phone)
            .bind(since_ms)
            .fetch_all(&mut *conn)
            .await?)
        }

        /// When the caps allow one more call: `None` if now, else the instant the
        /// oldest blocking call leaves its window.
        pub(crate) fn cap_retry_at(times: &[i64], caps: &[(u32, i64)], now_ms: i64) -> Option<i64> {
            let mut retry: Option<i64> = None;
            for &(calls, per) in caps {
                let in_window: Vec<i64> = times.iter().copied().filter(|t| *t > now_ms - per).collect();
                if in_window.len() >= calls as usize {
                    let leaving = in_window[in_window.len() - calls as usize] + per;
                    retry = Some(retry.map_or(leaving, |r| r.max(leaving)));
                }
            }
            retry
        }

        pub(crate) async fn mark_sending(pool: &$Pool, job_id: i64, attempt_id: i64, owner: &str, now_ms: i64) -> Result<bool> {
            let mut tx = super::begin_tx(pool).await?;
            let held = mark_sending_on(&mut tx, job_id, attempt_id, owner, now_ms).await?;
            tx.commit().await?;
            Ok(held)
        }

        async fn mark_sending_on(
            conn: &mut <$DB as sqlx::Database>::Connection,
            job_id: i64,
            attempt_id: i64,
            owner: &str,
            now_ms: i64,
        ) -> Result<bool> {
            let tx = conn;
            // Only while this worker still holds the lease: a worker whose lease
            // expired (and whose job another worker took over) must not send.
            let held = sqlx::query(
                "UPDATE jobs SET status = 'dialing', updated_at_ms = $3 WHERE id = $1 AND lease_owner = $2 \
                 AND status IN ('running', 'dialing')",
            )
            .bind(job_id)
            .bind(owner)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if !held {
                return Ok(false);
            }
            sqlx::query(
                "UPDATE attempts SET sends = sends + 1, first_sent_at_ms = COALESCE(first_sent_at_ms, $2), \
                 last_sent_at_ms = $2 WHERE id = $1",
            )
            .bind(attempt_id)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
            Ok(true)
        }

        pub(crate) fn counter(c: CounterChange) -> i32 {
            match c {
                CounterChange::Keep => 0,
                CounterChange::Increment => 1,
                CounterChange::Reset => 2,
            }
        }

        pub(crate) async fn update_job(pool: &$Pool, job_id: i64, guard: &Guard, u: &JobUpdate, now_ms: i64) -> Result<bool> {
            let mut tx = super::begin_tx(pool).await?;
            let applied = update_job_on(&mut tx, job_id, guard, u, now_ms).await?;
            tx.commit().await?;
            Ok(applied)
        }

        /// Several decisions in one transaction (one commit), in order.
        pub(crate) async fn update_jobs(pool: &$Pool, writes: &[JobWrite]) -> Result<Vec<bool>> {
            let mut tx = super::begin_tx(pool).await?;
            let ids: Vec<i64> = writes.iter().map(|w| w.job_id).collect();
            lock_batch(&mut tx, &ids).await?;
            let mut out = Vec::with_capacity(writes.len());
            for w in writes {
                out.push(update_job_on(&mut tx, w.job_id, &w.guard, &w.update, w.now_ms).await?);
            }
            tx.commit().await?;
            Ok(out)
        }

        async fn update_job_on(
            conn: &mut <$DB as sqlx::Database>::Connection,
            job_id: i64,
            guard: &Guard,
            u: &JobUpdate,
            now_ms: i64,
        ) -> Result<bool> {
            let tx = conn;
            if let Some(a) = &u.attempt {
                match a.placement {
                    Some(Placement::Placed) | Some(Placement::PossiblyPlaced) => {
                        let p = a.placement.map(Placement::as_str).unwrap_or("placed");
                        let first = sqlx::query("UPDATE attempts SET placement = $2 WHERE id = $1 AND placement = 'reserved'")
                            .bind(a.id)
                            .bind(p)
                            .execute(&mut *tx)
                            .await?
                            .rows_affected();
                        if first == 1 {
                            // The first time this attempt is (possibly) placed: it counts
                            // once toward max_attempts (SPEC section 7).
                            sqlx::query("UPDATE jobs SET attempts = attempts + 1 WHERE id = $1")
                                .bind(job_id)
                                .execute(&mut *tx)
                                .await?;
                        } else if a.placement == Some(Placement::Placed) {
                            sqlx::query(
                                "UPDATE attempts SET placement = 'placed' WHERE id = $1 AND placement = 'possibly_placed'",
                            )
                            .bind(a.id)
                            .execute(&mut *tx)
                            .await?;
                        }
                    }
                    // Only an attempt that was never ambiguous can become "not placed".
                    Some(Placement::NotPlaced) => {
                        sqlx::query("UPDATE attempts SET placement = 'not_placed' WHERE id = $1 AND placement = 'reserved'")
                            .bind(a.id)
                            .execute(&mut *tx)
                            .await?;
                    }
                    Some(Placement::Reserved) | None => {}
                }
                sqlx::query(
                    "UPDATE attempts SET call_id = COALESCE(call_id, $2), \
                     placed_at_ms = CASE WHEN $2 IS NOT NULL AND placed_at_ms IS NULL THEN $3 ELSE placed_at_ms END, \
                     response_status = COALESCE($4, response_status), response_code = COALESCE($5, response_code), \
                     response_category = COALESCE($6, response_category), \
                     outcome_code = COALESCE(outcome_code, $7), outcome_category = COALESCE(outcome_category, $8), \
                     outcome_source = COALESCE(outcome_source, $9), \
                     outcome_at_ms = CASE WHEN $7 IS NOT NULL AND outcome_at_ms IS NULL THEN $3 ELSE outcome_at_ms END \
                     WHERE id = $1",
                )
                .bind(a.id)
                .bind(a.call_id.as_deref())
                .bind(now_ms)
                .bind(a.response_status)
                .bind(a.response_code.as_deref())
                .bind(a.response_category.as_deref())
                .bind(a.outcome_code.as_deref())
                .bind(a.outcome_category.as_deref())
                .bind(a.outcome_source)
                .execute(&mut *tx)
                .await?;
            }
            let set = "SET status = $3, due_at_ms = COALESCE($4, due_at_ms), reason = $5, reason_source = $6, \
                 last_code = COALESCE($7, last_code), last_category = COALESCE($8, last_category), \
                 provider_retries = CASE $9 WHEN 0 THEN provider_retries WHEN 1 THEN provider_retries + 1 ELSE 0 END, \
                 provider_requeues = CASE $10 WHEN 0 THEN provider_requeues WHEN 1 THEN provider_requeues + 1 ELSE 0 END, \
                 vendor_refusals = CASE $11 WHEN 0 THEN vendor_refusals WHEN 1 THEN vendor_refusals + 1 ELSE 0 END, \
                 current_attempt_id = CASE WHEN $12 THEN NULL ELSE current_attempt_id END, \
                 lease_owner = CASE WHEN $3 IN ('running', 'dialing') THEN lease_owner ELSE NULL END, \
                 lease_expires_ms = CASE WHEN $3 IN ('running', 'dialing') THEN lease_expires_ms ELSE NULL END, \
                 updated_at_ms = $13";
            let (sql, guard_value): (String, String) = match guard {
                Guard::Lease(owner) => (format!("UPDATE jobs {set} WHERE id = $1 AND lease_owner = $2"), owner.clone()),
                Guard::Awaiting(attempt) => (
                    format!(
                        "UPDATE jobs {set} WHERE id = $1 AND status = 'awaiting_outcome' \
                         AND CAST(current_attempt_id AS TEXT) = $2"
                    ),
                    attempt.to_string(),
                ),
            };
            let applied = sqlx::query(&sql)
                .bind(job_id)
                .bind(guard_value)
                .bind(u.status)
                .bind(u.due_at_ms)
                .bind(u.reason.as_deref())
                .bind(u.reason_source)
                .bind(u.last_code.as_deref())
                .bind(u.last_category.as_deref())
                .bind(counter(u.provider_retries))
                .bind(counter(u.provider_requeues))
                .bind(counter(u.vendor_refusals))
                .bind(u.clear_current_attempt)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
            Ok(applied)
        }

        pub(crate) async fn insert_audit(pool: &$Pool, rows: &[AuditRecord]) -> Result<()> {
            let mut conn = pool.acquire().await?;
            insert_audit_on(&mut conn, rows).await
        }

        pub(crate) async fn insert_audit_on(conn: &mut <$DB as sqlx::Database>::Connection, rows: &[AuditRecord]) -> Result<()> {
            for chunk in rows.chunks(500) {
                let mut qb = QueryBuilder::<$DB>::new(
                    "INSERT INTO audit (job_id, campaign_id, phone, at_ms, stage, verdict, rule, reason, zones, states, \
                     local_times, next_allowed_ms) ",
                );
                qb.push_values(chunk, |mut b, r| {
                    b.push_bind(r.job_id)
                        .push_bind(r.campaign_id)
                        .push_bind(r.phone.clone())
                        .push_bind(r.at_ms)
                        .push_bind(r.stage)
                        .push_bind(r.verdict.clone())
                        .push_bind(r.rule.clone())
                        .push_bind(r.reason.clone())
                        .push_bind(r.zones.clone())
                        .push_bind(r.states.clone())
                        .push_bind(r.local_times.clone())
                        .push_bind(r.next_allowed_ms);
                });
                qb.build().execute(&mut *conn).await?;
            }
            Ok(())
        }

        /// `Store::dispatch`, row by row in one transaction: the reference semantics
        /// of the set-based PostgreSQL version. Job rows are locked in id order first,
        /// then new attempts are checked and recorded in number order (the order the
        /// per-number locks are taken in), each counting toward the caps of the next.
        #[allow(dead_code)] // SQLite's; PostgreSQL runs a set-based version
        pub(crate) async fn dispatch(pool: &$Pool, d: &Dispatch) -> Result<DispatchResult> {
            let mut tx = super::begin_tx(pool).await?;
            let ids: Vec<i64> = d.writes.iter().map(|w| w.job_id).chain(d.sends.iter().map(|s| s.job_id)).collect();
            lock_batch(&mut tx, &ids).await?;
            insert_audit_on(&mut tx, &d.audits).await?;
            let mut writes = Vec::with_capacity(d.writes.len());
            for w in &d.writes {
                writes.push(update_job_on(&mut tx, w.job_id, &w.guard, &w.update, w.now_ms).await?);
            }
            let mut order: Vec<usize> = (0..d.sends.len()).collect();
            order.sort_by(|a, b| d.sends[*a].phone.cmp(&d.sends[*b].phone));
            let lock: Option<&str> = $lock_number;
            if let Some(lock) = lock {
                for i in &order {
                    if matches!(d.sends[*i].send, SendKind::New { .. }) {
                        sqlx::query(lock).bind(&d.sends[*i].phone).execute(&mut *tx).await?;
                    }
                }
            }
            let mut sends = vec![Dispatched::LeaseLost; d.sends.len()];
            for i in order {
                let s = &d.sends[i];
                let held: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM jobs WHERE id = $1 AND lease_owner = $2 AND status IN ('running', 'dialing')",
                )
                .bind(s.job_id)
                .bind(&d.owner)
                .fetch_one(&mut *tx)
                .await?;
                if held != 1 {
                    continue;
                }
                sends[i] = match &s.send {
                    SendKind::Resend { attempt_id } => {
                        mark_sending_on(&mut tx, s.job_id, *attempt_id, &d.owner, s.now_ms).await?;
                        let sql = format!("SELECT {ATTEMPT_COLS} FROM attempts WHERE id = $1");
                        let row = sqlx::query(&sql).bind(attempt_id).fetch_one(&mut *tx).await?;
                        Dispatched::Sent(attempt_from_row(&row)?)
                    }
                    SendKind::New { key, body, caps, requeue_jitter_ms } => {
                        let longest = caps.iter().map(|c| c.1).max().unwrap_or(0);
                        let retry = if longest > 0 {
                            let times = counted_calls(&mut tx, &s.phone, s.now_ms - longest).await?;
                            cap_retry_at(&times, caps, s.now_ms)
                        } else {
                            None
                        };
                        if let Some(retry_at_ms) = retry {
                            let u = JobUpdate::cap_requeue(retry_at_ms + requeue_jitter_ms);
                            update_job_on(&mut tx, s.job_id, &Guard::Lease(d.owner.clone()), &u, s.now_ms).await?;
                            Dispatched::CapReached { retry_at_ms }
                        } else {
                            let sql = format!(
                                "INSERT INTO attempts (job_id, campaign_id, phone, attempt_no, idempotency_key, request_body, \
                                 placement, sends, created_at_ms, first_sent_at_ms, last_sent_at_ms) \
                                 VALUES ($1, $2, $3, (SELECT COUNT(*) FROM attempts WHERE job_id = $1) + 1, $4, $5, \
                                 'reserved', 1, $6, $6, $6) RETURNING {ATTEMPT_COLS}"
                            );
                            let row = sqlx::query(&sql)
                                .bind(s.job_id)
                                .bind(s.campaign_id)
                                .bind(&s.phone)
                                .bind(key)
                                .bind(body)
                                .bind(s.now_ms)
                                .fetch_one(&mut *tx)
                                .await?;
                            let attempt = attempt_from_row(&row)?;
                            sqlx::query(
                                "UPDATE jobs SET status = 'dialing', current_attempt_id = $2, provider_retries = 0, \
                                 updated_at_ms = $3 WHERE id = $1",
                            )
                            .bind(s.job_id)
                            .bind(attempt.id)
                            .bind(s.now_ms)
                            .execute(&mut *tx)
                            .await?;
                            Dispatched::Sent(attempt)
                        }
                    }
                };
            }
            tx.commit().await?;
            Ok(DispatchResult { writes, sends })
        }

        /// `Store::outcome_targets`, one call id at a time.
        #[allow(dead_code)] // SQLite's; PostgreSQL runs a set-based version
        pub(crate) async fn outcome_targets(pool: &$Pool, call_ids: &[String]) -> Result<Vec<OutcomeTarget>> {
            let mut out = Vec::new();
            for call_id in call_ids {
                let sql = format!(
                    "SELECT {ATTEMPT_COLS}, (SELECT attempts FROM jobs WHERE jobs.id = attempts.job_id) AS job_attempts, \
                     EXISTS (SELECT 1 FROM jobs WHERE jobs.id = attempts.job_id AND jobs.status = 'awaiting_outcome' \
                     AND jobs.current_attempt_id = attempts.id) AS awaiting, \
                     EXISTS (SELECT 1 FROM jobs WHERE jobs.id = attempts.job_id \
                     AND jobs.status IN ('queued', 'running', 'dialing') \
                     AND jobs.current_attempt_id = attempts.id) AS before_202 FROM attempts WHERE call_id = $1"
                );
                if let Some(r) = sqlx::query(&sql).bind(call_id).fetch_optional(pool).await? {
                    out.push(OutcomeTarget {
                        attempt: attempt_from_row(&r)?,
                        job_attempts: r.try_get::<Option<i32>, _>("job_attempts")?.unwrap_or(0),
                        awaiting: r.try_get("awaiting")?,
                        before_202: r.try_get("before_202")?,
                    });
                }
            }
            Ok(out)
        }

        /// `Store::apply_outcomes`, row by row in one transaction.
        pub(crate) async fn apply_outcomes(pool: &$Pool, b: &OutcomeBatch) -> Result<Vec<bool>> {
            let mut tx = super::begin_tx(pool).await?;
            let ids: Vec<i64> = b.writes.iter().map(|w| w.job_id).collect();
            lock_batch(&mut tx, &ids).await?;
            let mut applied = Vec::with_capacity(b.writes.len());
            for w in &b.writes {
                applied.push(update_job_on(&mut tx, w.job_id, &w.guard, &w.update, w.now_ms).await?);
            }
            for a in &b.recorded {
                sqlx::query(RECORD_OUTCOME)
                    .bind(a.id)
                    .bind(a.outcome_code.as_deref())
                    .bind(a.outcome_category.as_deref())
                    .bind(a.outcome_source)
                    .bind(b.now_ms)
                    .execute(&mut *tx)
                    .await?;
            }
            for m in &b.marks {
                sqlx::query(INBOX_MARK_APPLIED)
                    .bind(&m.event_id)
                    .bind(b.now_ms)
                    .bind(m.label(&applied))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(applied)
        }

        /// Stored events not yet applied, for calls whose 202 is recorded, received
        /// before `received_before_ms` (the inbox sweeper: an event whose apply failed
        /// after it was stored, or that raced its call's 202).
        pub(crate) async fn inbox_unapplied(pool: &$Pool, received_before_ms: i64, limit: u32) -> Result<Vec<InboxEvent>> {
            let rows: Vec<(String, String, String)> = sqlx::query_as(
                "SELECT i.event_id, i.call_id, i.body FROM webhook_inbox i WHERE i.applied_at_ms IS NULL \
                 AND i.received_at_ms <= $1 AND EXISTS (SELECT 1 FROM attempts a WHERE a.call_id = i.call_id) \
                 ORDER BY i.received_at_ms LIMIT $2",
            )
            .bind(received_before_ms)
            .bind(limit as i64)
            .fetch_all(pool)
            .await?;
            Ok(rows.into_iter().map(|(event_id, call_id, body)| InboxEvent { event_id, call_id, body }).collect())
        }

        pub(crate) async fn inbox_set_aside_unknown(pool: &$Pool, received_before_ms: i64, now_ms: i64) -> Result<u64> {
            Ok(sqlx::query(
                "UPDATE webhook_inbox SET applied_at_ms = $2, result = 'unknown_call' \
                 WHERE applied_at_ms IS NULL AND received_at_ms <= $1 \
                 AND NOT EXISTS (SELECT 1 FROM attempts a WHERE a.call_id = webhook_inbox.call_id)",
            )
            .bind(received_before_ms)
            .bind(now_ms)
            .execute(pool)
            .await?
            .rows_affected())
        }

        /// `Store::inbox_pending_many`, one call id at a time.
        #[allow(dead_code)] // SQLite's; PostgreSQL runs a set-based version
        pub(crate) async fn inbox_pending_many(pool: &$Pool, call_ids: &[String]) -> Result<Vec<InboxEvent>> {
            let mut out = Vec::new();
            for c in call_ids {
                out.extend(inbox_pending(pool, c).await?);
            }
            Ok(out)
        }

        /// `campaign requeue`: dropped jobs back to the queue. A job whose last
        /// attempt is possibly placed (a `provider_failed` or `idempotency_conflict`
        /// drop) gets that attempt back as its current one: the next claim re-sends
        /// it under its key, or settles it once the key is past `revdesk.key_ttl`,
        /// never a new key sooner (SPEC section 7).
        pub(crate) async fn requeue_dropped(pool: &$Pool, campaign_id: i64, reason: &str, now_ms: i64) -> Result<u64> {
            Ok(sqlx::query(
                "UPDATE jobs SET status = 'queued', due_at_ms = $3, reason = NULL, reason_source = NULL, \
                 provider_retries = 0, provider_requeues = 0, vendor_refusals = 0, \
                 current_attempt_id = (SELECT a.id FROM attempts a WHERE a.job_id = jobs.id \
                   AND a.placement = 'possibly_placed' \
                   AND a.id = (SELECT MAX(x.id) FROM attempts x WHERE x.job_id = jobs.id)), \
                 updated_at_ms = $3 WHERE campaign_id = $1 AND status = 'dropped' AND reason = $2",
            )
            .bind(campaign_id)
            .bind(reason)
            .bind(now_ms)
            .execute(pool)
            .await?
            .rows_affected())
        }

        /// Begins an automatic pause unless one is in force (SPEC section 8): the
        /// dials that were in flight when a pause began, answered the same way, are
        /// that pause, not repeats of it, so they neither double it nor move its end.
        /// An untimed pause (until `campaign resume`) replaces a timed one. With
        /// `repeat` (the pause's probe dial failed) the pause is set again, and the
        /// same cause counts up (its length doubles); a timed pause never replaces
        /// one that waits for `campaign resume`.
        pub(crate) async fn pause_campaign(pool: &$Pool, id: i64, reason: &str, until_ms: Option<i64>, now_ms: i64, repeat: bool) -> Result<()> {
            const BEGIN: &str = "UPDATE campaigns SET auto_pause_count = 1, auto_pause_reason = $2, auto_paused_until_ms = $3, \
                 probe_job_id = NULL, updated_at_ms = $4 WHERE id = $1 \
                 AND (auto_pause_reason IS NULL OR ($3 IS NULL AND auto_paused_until_ms IS NOT NULL))";
            const REPEAT: &str = "UPDATE campaigns SET auto_pause_count = CASE WHEN auto_pause_reason = $2 \
                 THEN auto_pause_count + 1 ELSE 1 END, auto_pause_reason = $2, auto_paused_until_ms = $3, \
                 probe_job_id = NULL, updated_at_ms = $4 WHERE id = $1 \
                 AND NOT (auto_pause_reason IS NOT NULL AND auto_paused_until_ms IS NULL AND $3 IS NOT NULL)";
            sqlx::query(if repeat { REPEAT } else { BEGIN })
                .bind(id)
                .bind(reason)
                .bind(until_ms)
                .bind(now_ms)
                .execute(pool)
                .await?;
            Ok(())
        }

        /// A taken probe that found no job: the pause's probe is due again at
        /// `until_ms`; nothing else changes.
        pub(crate) async fn defer_campaign_probe(pool: &$Pool, id: i64, until_ms: i64, now_ms: i64) -> Result<()> {
            sqlx::query(
                "UPDATE campaigns SET auto_paused_until_ms = $2, probe_job_id = NULL, updated_at_ms = $3 \
                 WHERE id = $1 AND auto_pause_reason IS NOT NULL AND auto_paused_until_ms IS NOT NULL",
            )
            .bind(id)
            .bind(until_ms)
            .bind(now_ms)
            .execute(pool)
            .await?;
            Ok(())
        }

        /// A timed pause's probe succeeded. A pause that waits for `campaign resume`
        /// (untimed: it may have begun while the probe was in flight) is not lifted.
        pub(crate) async fn lift_auto_pause(pool: &$Pool, id: i64, now_ms: i64) -> Result<()> {
            sqlx::query(
                "UPDATE campaigns SET auto_pause_reason = NULL, auto_paused_until_ms = NULL, probe_job_id = NULL, \
                 updated_at_ms = $2 WHERE id = $1 AND auto_paused_until_ms IS NOT NULL",
            )
            .bind(id)
            .bind(now_ms)
            .execute(pool)
            .await?;
            Ok(())
        }

        pub(crate) async fn take_campaign_probes(pool: &$Pool, now_ms: i64, hold_ms: i64) -> Result<Vec<i64>> {
            Ok(sqlx::query_scalar(
                "UPDATE campaigns SET auto_paused_until_ms = $2 WHERE auto_pause_reason IS NOT NULL \
                 AND auto_paused_until_ms IS NOT NULL AND auto_paused_until_ms <= $1 AND NOT operator_paused RETURNING id",
            )
            .bind(now_ms)
            .bind(now_ms + hold_ms)
            .fetch_all(pool)
            .await?)
        }

        pub(crate) async fn account_halt(pool: &$Pool, account: &str) -> Result<Option<AccountHalt>> {
            let row = sqlx::query(
                "SELECT account, reason, halted_at_ms, probe_at_ms, halt_count, probe_job_id FROM account_halts WHERE account = $1",
            )
            .bind(account)
            .fetch_optional(pool)
            .await?;
            row.map(|r| {
                Ok(AccountHalt {
                    account: r.try_get("account")?,
                    reason: r.try_get("reason")?,
                    halted_at_ms: r.try_get("halted_at_ms")?,
                    probe_at_ms: r.try_get("probe_at_ms")?,
                    halt_count: r.try_get("halt_count")?,
                    probe_job_id: r.try_get("probe_job_id")?,
                })
            })
            .transpose()
        }

        /// Begins an account halt unless one is in force: as with pauses, the dials
        /// in flight when it began are that halt, not repeats (SPEC section 8). With
        /// `repeat` (the halt's probe dial failed) the halt is set again, and the
        /// same cause counts up (its length doubles).
        pub(crate) async fn halt_account(pool: &$Pool, account: &str, reason: &str, probe_at_ms: i64, now_ms: i64, repeat: bool) -> Result<()> {
            const BEGIN: &str = "INSERT INTO account_halts (account, reason, halted_at_ms, probe_at_ms, halt_count) \
                 VALUES ($1, $2, $4, $3, 1) ON CONFLICT (account) DO NOTHING";
            const REPEAT: &str = "INSERT INTO account_halts (account, reason, halted_at_ms, probe_at_ms, halt_count) \
                 VALUES ($1, $2, $4, $3, 1) ON CONFLICT (account) DO UPDATE SET probe_at_ms = excluded.probe_at_ms, \
                 halt_count = CASE WHEN account_halts.reason = excluded.reason THEN account_halts.halt_count + 1 ELSE 1 END, \
                 reason = excluded.reason";
            sqlx::query(if repeat { REPEAT } else { BEGIN })
                .bind(account)
                .bind(reason)
                .bind(probe_at_ms)
                .bind(now_ms)
                .execute(pool)
                .await?;
            Ok(())
        }

        /// A taken probe that found no job: the halt's probe is due again at
        /// `probe_at_ms`; nothing else changes.
        pub(crate) async fn defer_account_probe(pool: &$Pool, account: &str, probe_at_ms: i64) -> Result<()> {
            sqlx::query("UPDATE account_halts SET probe_at_ms = $2 WHERE account = $1")
                .bind(account)
                .bind(probe_at_ms)
                .execute(pool)
                .await?;
            Ok(())
        }

        pub(crate) async fn lift_account_halt(pool: &$Pool, account: &str) -> Result<()> {
            sqlx::query("DELETE FROM account_halts WHERE account = $1").bind(account).execute(pool).await?;
            Ok(())
        }

        pub(crate) async fn take_account_probe(pool: &$Pool, account: &str, now_ms: i64, hold_ms: i64) -> Result<bool> {
            Ok(sqlx::query("UPDATE account_halts SET probe_at_ms = $3 WHERE account = $1 AND probe_at_ms <= $2")
                .bind(account)
                .bind(now_ms)
                .bind(now_ms + hold_ms)
                .execute(pool)
                .await?
                .rows_affected()
                == 1)
        }

        pub(crate) async fn attempt(pool: &$Pool, id: i64) -> Result<Option<AttemptRow>> {
            let sql = format!("SELECT {ATTEMPT_COLS} FROM attempts WHERE id = $1");
            let row = sqlx::query(&sql).bind(id).fetch_optional(pool).await?;
            row.as_ref().map(attempt_from_row).transpose()
        }

        /// `inbox_insert` for several events in one transaction, in order (a repeat
        /// inside the batch is a duplicate like any other).
        #[allow(dead_code)] // SQLite's; PostgreSQL runs a set-based version
        pub(crate) async fn inbox_insert_many(pool: &$Pool, events: &[InboxEvent], now_ms: i64) -> Result<Vec<bool>> {
            let mut tx = super::begin_tx(pool).await?;
            let mut out = Vec::with_capacity(events.len());
            for e in events {
                out.push(
                    sqlx::query(INBOX_INSERT)
                    .bind(&e.event_id)
                    .bind(&e.call_id)
                    .bind(now_ms)
                    .bind(&e.body)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                        == 1,
                );
            }
            tx.commit().await?;
            Ok(out)
        }

        #[allow(dead_code)] // SQLite's; PostgreSQL runs a set-based version
        pub(crate) async fn inbox_pending(pool: &$Pool, call_id: &str) -> Result<Vec<InboxEvent>> {
            let rows: Vec<(String, String, String)> = sqlx::query_as(
                "SELECT event_id, call_id, body FROM webhook_inbox WHERE call_id = $1 AND applied_at_ms IS NULL \
                 ORDER BY received_at_ms",
            )
            .bind(call_id)
            .fetch_all(pool)
            .await?;
            Ok(rows.into_iter().map(|(event_id, call_id, body)| InboxEvent { event_id, call_id, body }).collect())
        }

        /// Jobs still awaiting an outcome that reconciliation asked about and could
        /// not settle: their wait starts again (`updated_at_ms`), so the next passes
        /// ask about other calls first.
        pub(crate) async fn defer_reconcile(pool: &$Pool, job_ids: &[i64], now_ms: i64) -> Result<()> {
            if job_ids.is_empty() {
                return Ok(());
            }
            let mut qb = QueryBuilder::<$DB>::new("UPDATE jobs SET updated_at_ms = ");
            qb.push_bind(now_ms);
            qb.push(" WHERE status = 'awaiting_outcome' AND id");
            super::push_in(&mut qb, job_ids);
            qb.build().execute(pool).await?;
            Ok(())
        }

        /// The current attempts of the jobs that have awaited an outcome longest
        /// (since the 202, or since reconciliation last asked about them: see
        /// `defer_reconcile`), so that every pass reaches calls no earlier pass asked
        /// about (index `jobs_awaiting`).
        pub(crate) async fn unsettled_attempts(pool: &$Pool, placed_before_ms: i64, limit: u32) -> Result<Vec<AttemptRow>> {
            let sql = format!(
                "SELECT {ATTEMPT_COLS} FROM attempts WHERE id IN (SELECT current_attempt_id FROM jobs \
                 WHERE status = 'awaiting_outcome' AND updated_at_ms <= $1 \
                 ORDER BY updated_at_ms LIMIT $2) AND placed_at_ms <= $1 ORDER BY placed_at_ms"
            );
            let rows = sqlx::query(&sql).bind(placed_before_ms).bind(limit as i64).fetch_all(pool).await?;
            rows.iter().map(attempt_from_row).collect()
        }

    };
}

pub(crate) use worker_sql;
