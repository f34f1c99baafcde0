//! SQL shared by both backends, written once and instantiated per database by
//! [`shared_sql!`]. Placeholders are `$N`, which both PostgreSQL and SQLite accept.

/// Generates a module of functions over one concrete sqlx database.
macro_rules! shared_sql {
    ($DB:ty, $Pool:ty, $Row:ty) => {
        use crate::store::types::*;
        use crate::store::{Result, StoreError};
        use sqlx::{QueryBuilder, Row};

        pub(crate) const CAMPAIGN_COLS: &str = "id, name, from_number, call_type, require_consent, max_attempts, \
            cap_calls, cap_per_ms, rate_per_second, window_start, window_end, days, retry, spec, \
            operator_paused, auto_pause_reason, auto_paused_until_ms, auto_pause_count";

        pub(crate) fn campaign_from_row(r: &$Row) -> Result<CampaignRow> {
            Ok(CampaignRow {
                id: r.try_get("id")?,
                name: r.try_get("name")?,
                from_number: r.try_get("from_number")?,
                call_type: r.try_get("call_type")?,
                require_consent: r.try_get("require_consent")?,
                max_attempts: r.try_get("max_attempts")?,
                cap_calls: r.try_get("cap_calls")?,
                cap_per_ms: r.try_get("cap_per_ms")?,
                rate_per_second: r.try_get("rate_per_second")?,
                window_start: r.try_get("window_start")?,
                window_end: r.try_get("window_end")?,
                days: r.try_get("days")?,
                retry: r.try_get("retry")?,
                spec: r.try_get("spec")?,
                operator_paused: r.try_get("operator_paused")?,
                auto_pause_reason: r.try_get("auto_pause_reason")?,
                auto_paused_until_ms: r.try_get("auto_paused_until_ms")?,
                auto_pause_count: r.try_get("auto_pause_count")?,
            })
        }

        pub(crate) async fn campaign(pool: &$Pool, name: &str) -> Result<Option<CampaignRow>> {
            let sql = format!("SELECT {CAMPAIGN_COLS} FROM campaigns WHERE name = $1");
            let row = sqlx::query(&sql).bind(name).fetch_optional(pool).await?;
            row.as_ref().map(campaign_from_row).transpose()
        }

        pub(crate) async fn campaign_by_id(pool: &$Pool, id: i64) -> Result<Option<CampaignRow>> {
            let sql = format!("SELECT {CAMPAIGN_COLS} FROM campaigns WHERE id = $1");
            let row = sqlx::query(&sql).bind(id).fetch_optional(pool).await?;
            row.as_ref().map(campaign_from_row).transpose()
        }

        pub(crate) async fn campaigns(pool: &$Pool) -> Result<Vec<CampaignRow>> {
            let sql = format!("SELECT {CAMPAIGN_COLS} FROM campaigns ORDER BY name");
            let rows = sqlx::query(&sql).fetch_all(pool).await?;
            rows.iter().map(campaign_from_row).collect()
        }

        pub(crate) async fn apply_campaign(
            pool: &$Pool,
            spec: &crate::campaign::CampaignSpec,
            now_ms: i64,
        ) -> Result<(CampaignRow, bool)> {
            let retry = serde_json::to_string(&spec.retry).map_err(|e| StoreError::Invalid(e.to_string()))?;
            let (cap_calls, cap_per_ms) = match spec.frequency_cap {
                Some((calls, per)) => (Some(calls as i32), Some(per.get().as_millis() as i64)),
                None => (None, None),
            };
            let mut tx = super::begin_tx(pool).await?;
            let existing: Option<i64> = sqlx::query_scalar("SELECT id FROM campaigns WHERE name = $1")
                .bind(&spec.name)
                .fetch_optional(&mut *tx)
                .await?;
            let created = existing.is_none();
            let q = if created {
                "INSERT INTO campaigns (from_number, call_type, require_consent, max_attempts, cap_calls, \
                 cap_per_ms, rate_per_second, window_start, window_end, days, retry, spec, \
                 created_at_ms, updated_at_ms, name) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13, $14)"
            } else {
                "UPDATE campaigns SET from_number = $1, call_type = $2, require_consent = $3, \
                 max_attempts = $4, cap_calls = $5, cap_per_ms = $6, rate_per_second = $7, \
                 window_start = $8, window_end = $9, days = $10, retry = $11, spec = $12, \
                 updated_at_ms = $13 WHERE name = $14"
            };
            sqlx::query(q)
                .bind(spec.from_number.as_str())
                .bind(spec.call_type.as_str())
                .bind(spec.require_consent.as_db())
                .bind(spec.max_attempts as i32)
                .bind(cap_calls)
                .bind(cap_per_ms)
                .bind(spec.rate_per_second)
                .bind(spec.window_start.format("%H:%M").to_string())
                .bind(spec.window_end.format("%H:%M").to_string())
                .bind(spec.days_csv())
                .bind(retry)
                .bind(&spec.source)
                .bind(now_ms)
                .bind(&spec.name)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            let row = campaign(pool, &spec.name).await?.ok_or_else(|| StoreError::UnknownCampaign(spec.name.clone()))?;
            Ok((row, created))
        }

        pub(crate) async fn set_operator_pause(pool: &$Pool, name: &str, paused: bool, now_ms: i64) -> Result<bool> {
            let res = if paused {
                sqlx::query(
                    "UPDATE campaigns SET operator_paused = TRUE, operator_paused_at_ms = $2, updated_at_ms = $2 \
                     WHERE name = $1",
                )
                .bind(name)
                .bind(now_ms)
                .execute(pool)
                .await?
            } else {
                // An operator's resume lifts every pause, including automatic ones
                // that wait for an operator (caller_id_not_verified, request_rejected)
                // and resets the doubling.
                sqlx::query(
                    "UPDATE campaigns SET operator_paused = FALSE, operator_paused_at_ms = NULL, \
                     auto_pause_reason = NULL, auto_paused_until_ms = NULL, auto_pause_count = 0, \
                     probe_job_id = NULL, updated_at_ms = $2 WHERE name = $1",
                )
                .bind(name)
                .bind(now_ms)
                .execute(pool)
                .await?
            };
            Ok(res.rows_affected() > 0)
        }

        /// Rows per multi-row INSERT (SQLite allows 32766 bound variables).
        pub(crate) const INSERT_BATCH: usize = 1000;

        pub(crate) async fn import_dnc(
            pool: &$Pool,
            mut rx: tokio::sync::mpsc::Receiver<Vec<DncRecord>>,
            now_ms: i64,
        ) -> Result<u64> {
            let mut tx = super::begin_tx(pool).await?;
            let mut loaded = 0;
            let mut complete = false;
            while let Some(batch) = rx.recv().await {
                if batch.is_empty() {
                    complete = true;
                    break;
                }
                let (numbers, areas): (Vec<_>, Vec<_>) =
                    batch.into_iter().partition(|r| matches!(r, DncRecord::Number { .. }));
                for chunk in numbers.chunks(INSERT_BATCH) {
                    let mut qb = QueryBuilder::<$DB>::new("INSERT INTO dnc_numbers (phone, source, added_at_ms) ");
                    qb.push_values(chunk, |mut b, r| {
                        if let DncRecord::Number { phone, source } = r {
                            b.push_bind(phone.clone()).push_bind(source.clone()).push_bind(now_ms);
                        }
                    });
                    qb.push(" ON CONFLICT DO NOTHING");
                    loaded += qb.build().execute(&mut *tx).await?.rows_affected();
                }
                for chunk in areas.chunks(INSERT_BATCH) {
                    let mut qb = QueryBuilder::<$DB>::new("INSERT INTO dnc_area_codes (npa, source, added_at_ms) ");
                    qb.push_values(chunk, |mut b, r| {
                        if let DncRecord::AreaCode { npa, source } = r {
                            b.push_bind(npa.clone()).push_bind(source.clone()).push_bind(now_ms);
                        }
                    });
                    qb.push(" ON CONFLICT DO NOTHING");
                    loaded += qb.build().execute(&mut *tx).await?.rows_affected();
                }
            }
            if !complete {
                return Err(StoreError::Invalid("import aborted before the end of the file: nothing loaded".into()));
            }
            tx.commit().await?;
            super::analyze_after_load(pool, "dnc_numbers").await;
            Ok(loaded)
        }

        pub(crate) async fn import_opt_outs(
            pool: &$Pool,
            mut rx: tokio::sync::mpsc::Receiver<Vec<OptOutRecord>>,
        ) -> Result<u64> {
            let mut tx = super::begin_tx(pool).await?;
            let mut loaded = 0;
            let mut complete = false;
            while let Some(batch) = rx.recv().await {
                if batch.is_empty() {
                    complete = true;
                    break;
                }
                for chunk in batch.chunks(INSERT_BATCH) {
                    let mut qb = QueryBuilder::<$DB>::new(
                        "INSERT INTO opt_outs (phone, campaign, opted_out_at_ms, source) ",
                    );
                    qb.push_values(chunk, |mut b, r| {
                        b.push_bind(r.phone.clone())
                            .push_bind(r.campaign.clone())
                            .push_bind(r.opted_out_at_ms)
                            .push_bind(r.source.clone());
                    });
                    // An opt-out is never removed or moved later by a re-import.
                    qb.push(" ON CONFLICT DO NOTHING");
                    loaded += qb.build().execute(&mut *tx).await?.rows_affected();
                }
            }
            if !complete {
                return Err(StoreError::Invalid("import aborted before the end of the file: nothing loaded".into()));
            }
            tx.commit().await?;
            super::analyze_after_load(pool, "opt_outs").await;
            Ok(loaded)
        }

        pub(crate) async fn import_consents(
            pool: &$Pool,
            mut rx: tokio::sync::mpsc::Receiver<Vec<ConsentRecord>>,
        ) -> Result<u64> {
            let mut tx = super::begin_tx(pool).await?;
            let mut loaded = 0;
            let mut complete = false;
            while let Some(batch) = rx.recv().await {
                if batch.is_empty() {
                    complete = true;
                    break;
                }
                for chunk in batch.chunks(INSERT_BATCH) {
                    let mut qb = QueryBuilder::<$DB>::new(
                        "INSERT INTO consents (phone, campaign, kind, granted_at_ms, expires_at_ms, revoked_at_ms) ",
                    );
                    qb.push_values(chunk, |mut b, r| {
                        b.push_bind(r.phone.clone())
                            .push_bind(r.campaign.clone())
                            .push_bind(r.kind.clone())
                            .push_bind(r.granted_at_ms)
                            .push_bind(r.expires_at_ms)
                            .push_bind(r.revoked_at_ms);
                    });
                    // The same grant in a later file can only narrow it: a revocation
                    // is applied and never undone, and an expiry is applied where the
                    // grant had none or a later one, never lengthened or removed (a
                    // consent that ends is no longer "valid now", SPEC section 6;
                    // 47 CFR 64.1200(a)(2)-(3)). Renewing a consent is a new grant.
                    qb.push(
                        " ON CONFLICT (phone, campaign, kind, granted_at_ms) DO UPDATE SET \
                         revoked_at_ms = COALESCE(consents.revoked_at_ms, excluded.revoked_at_ms), \
                         expires_at_ms = CASE WHEN excluded.expires_at_ms IS NOT NULL AND \
                           (consents.expires_at_ms IS NULL OR excluded.expires_at_ms < consents.expires_at_ms) \
                           THEN excluded.expires_at_ms ELSE consents.expires_at_ms END \
                         WHERE (consents.revoked_at_ms IS NULL AND excluded.revoked_at_ms IS NOT NULL) \
                           OR (excluded.expires_at_ms IS NOT NULL AND \
                             (consents.expires_at_ms IS NULL OR excluded.expires_at_ms < consents.expires_at_ms))",
                    );
                    loaded += qb.build().execute(&mut *tx).await?.rows_affected();
                }
            }
            if !complete {
                return Err(StoreError::Invalid("import aborted before the end of the file: nothing loaded".into()));
            }
            tx.commit().await?;
            super::analyze_after_load(pool, "consents").await;
            Ok(loaded)
        }

        pub(crate) async fn facts(
            pool: &$Pool,
            phones: &[String],
            campaign: Option<&str>,
            counted_since_ms: i64,
        ) -> Result<Vec<NumberFacts>> {
            use std::collections::HashMap;
            let mut out: Vec<NumberFacts> =
                phones.iter().map(|p| NumberFacts { phone: p.clone(), ..Default::default() }).collect();
            if phones.is_empty() {
                return Ok(out);
            }
            let index: HashMap<&str, usize> = phones.iter().enumerate().map(|(i, p)| (p.as_str(), i)).collect();
            let campaign = campaign.unwrap_or("");

            let mut qb = QueryBuilder::<$DB>::new("SELECT phone, source FROM dnc_numbers WHERE phone");
            super::push_in(&mut qb, phones);
            for r in qb.build().fetch_all(pool).await? {
                let phone: String = r.try_get("phone")?;
                if let Some(&i) = index.get(phone.as_str()) {
                    out[i].dnc = true;
                    out[i].dnc_source = Some(r.try_get("source")?);
                }
            }

            // A whole area code may be listed (SPEC section 5: `NPAXXXXXXX`).
            let npas: Vec<String> = phones
                .iter()
                .filter(|p| p.starts_with("+1") && p.len() == 12)
                .map(|p| p[2..5].to_owned())
                .collect();
            if !npas.is_empty() {
                let mut qb = QueryBuilder::<$DB>::new("SELECT npa, source FROM dnc_area_codes WHERE npa");
                super::push_in(&mut qb, &npas);
                for r in qb.build().fetch_all(pool).await? {
                    let npa: String = r.try_get("npa")?;
                    let source: String = r.try_get("source")?;
                    for f in out.iter_mut() {
                        if f.phone.len() == 12 && f.phone.starts_with("+1") && f.phone[2..5] == npa {
                            f.dnc = true;
                            f.dnc_source.get_or_insert_with(|| source.clone());
                        }
                    }
                }
            }

            let mut qb = QueryBuilder::<$DB>::new("SELECT phone FROM opt_outs WHERE campaign IN ('', ");
            qb.push_bind(campaign.to_owned());
            qb.push(") AND phone");
            super::push_in(&mut qb, phones);
            for r in qb.build().fetch_all(pool).await? {
                let phone: String = r.try_get("phone")?;
                if let Some(&i) = index.get(phone.as_str()) {
                    out[i].opted_out = true;
                }
            }

            let mut qb = QueryBuilder::<$DB>::new(
                "SELECT phone, kind, granted_at_ms, expires_at_ms, revoked_at_ms FROM consents WHERE campaign IN ('', ",
            );
            qb.push_bind(campaign.to_owned());
            qb.push(") AND phone");
            super::push_in(&mut qb, phones);
            for r in qb.build().fetch_all(pool).await? {
                let phone: String = r.try_get("phone")?;
                if let Some(&i) = index.get(phone.as_str()) {
                    out[i].consents.push(ConsentFactRow {
                        kind: r.try_get("kind")?,
                        granted_at_ms: r.try_get("granted_at_ms")?,
                        expires_at_ms: r.try_get("expires_at_ms")?,
                        revoked_at_ms: r.try_get("revoked_at_ms")?,
                    });
                }
            }

            // Counted calls: placed, possibly placed, or reserved (about to be sent),
            // in every campaign (SPEC section 6, frequency cap). The shared query is
            // strictly after its bound; `- 1` (times are integer milliseconds) makes it
            // include a call at exactly `counted_since_ms`, as `facts` promises. The
            // verdict filters each cap's window itself, so a superset is safe.
            for (phone, at) in super::counted_calls(pool, phones, counted_since_ms - 1).await? {
                if let Some(&i) = index.get(phone.as_str()) {
                    out[i].counted_calls_ms.push(at);
                }
            }
            Ok(out)
        }

        pub(crate) async fn status(pool: &$Pool, campaign_name: Option<&str>, now_ms: i64) -> Result<StatusReport> {
            use std::collections::BTreeMap;
            let all = campaigns(pool).await?;
            let selected: Vec<CampaignRow> = match campaign_name {
                Some(n) => {
                    let c: Vec<_> = all.into_iter().filter(|c| c.name == n).collect();
                    if c.is_empty() {
                        return Err(StoreError::UnknownCampaign(n.to_owned()));
                    }
                    c
                }
                None => all,
            };
            let mut out = Vec::new();
            for c in selected {
                let mut jobs: BTreeMap<String, i64> = crate::store::types::JOB_STATES
                    .iter()
                    .map(|s| (s.to_string(), 0))
                    .collect();
                let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM jobs WHERE campaign_id = $1 GROUP BY status")
                    .bind(c.id)
                    .fetch_all(pool)
                    .await?;
                for r in rows {
                    jobs.insert(r.try_get("status")?, r.try_get("n")?);
                }
                let mut reasons = BTreeMap::new();
                let rows = sqlx::query(
                    "SELECT reason, COUNT(*) AS n FROM jobs WHERE campaign_id = $1 AND status IN ('dropped', 'exhausted') \
                     AND reason IS NOT NULL GROUP BY reason",
                )
                .bind(c.id)
                .fetch_all(pool)
                .await?;
                for r in rows {
                    reasons.insert(r.try_get("reason")?, r.try_get("n")?);
                }
                let attempts: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM attempts WHERE campaign_id = $1")
                    .bind(c.id)
                    .fetch_one(pool)
                    .await?;
                out.push(CampaignStatus { state: c.state_label(now_ms), name: c.name, jobs, reasons, attempts });
            }
            let rows = sqlx::query("SELECT account, reason, halted_at_ms, probe_at_ms FROM account_halts ORDER BY account")
                .fetch_all(pool)
                .await?;
            let mut halted = Vec::new();
            for r in rows {
                halted.push(HaltStatus {
                    account: r.try_get("account")?,
                    reason: r.try_get("reason")?,
                    since: crate::store::ms_to_rfc3339(r.try_get("halted_at_ms")?),
                    probe_at: crate::store::ms_to_rfc3339(r.try_get("probe_at_ms")?),
                });
            }
            Ok(StatusReport { campaigns: out, halted })
        }
    };
}

pub(crate) use shared_sql;
