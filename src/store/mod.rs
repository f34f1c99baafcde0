//! Persistence: the [`Store`] trait and its PostgreSQL and SQLite implementations.
//!
//! Times are epoch milliseconds on both backends so most SQL is shared (see
//! `common.rs`); what differs (bulk COPY, `FOR UPDATE SKIP LOCKED`, advisory locks,
//! the database clock) lives in `postgres.rs` and `sqlite.rs`.

mod common;

/// The `Store` implementation shared by both backends: every method whose SQL is
/// written once (`common.rs`, `worker_sql.rs`) delegates to the backend module's
/// `sql`/`wsql` instantiation; `$specific` holds the methods that differ (bulk
/// import, claim, reservation). Generating the whole impl keeps `async_trait` in
/// charge of every method.
macro_rules! impl_store {
    ($T:ty, $backend:expr, { $($specific:tt)* }) => {
        #[async_trait::async_trait]
        impl crate::store::Store for $T {
            fn backend(&self) -> Backend {
                $backend
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

            async fn heartbeat(&self, id: &str, held: &[i64], lease_ms: i64, now_ms: i64) -> Result<()> {
                let db_now = self.db_now_ms(now_ms).await?;
                wsql::heartbeat(&self.pool, id, held, lease_ms, db_now).await
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

            async fn mark_sending(&self, job_id: i64, attempt_id: i64, owner: &str, now_ms: i64) -> Result<bool> {
                wsql::mark_sending(&self.pool, job_id, attempt_id, owner, now_ms).await
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
                wsql::pause_campaign(&self.pool, id, reason, until_ms, now_ms, false).await
            }

            async fn repause_campaign(
                &self,
                id: i64,
                reason: &str,
                until_ms: Option<i64>,
                now_ms: i64,
            ) -> Result<()> {
                wsql::pause_campaign(&self.pool, id, reason, until_ms, now_ms, true).await
            }

            async fn defer_campaign_probe(&self, id: i64, until_ms: i64, now_ms: i64) -> Result<()> {
                wsql::defer_campaign_probe(&self.pool, id, until_ms, now_ms).await
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
                wsql::halt_account(&self.pool, account, reason, probe_at_ms, now_ms, false).await
            }

            async fn rehalt_account(
                &self,
                account: &str,
                reason: &str,
                probe_at_ms: i64,
                now_ms: i64,
            ) -> Result<()> {
                wsql::halt_account(&self.pool, account, reason, probe_at_ms, now_ms, true).await
            }

            async fn defer_account_probe(&self, account: &str, probe_at_ms: i64) -> Result<()> {
                wsql::defer_account_probe(&self.pool, account, probe_at_ms).await
            }

            async fn lift_account_halt(&self, account: &str) -> Result<()> {
                wsql::lift_account_halt(&self.pool, account).await
            }

            async fn take_account_probe(&self, account: &str, now_ms: i64, hold_ms: i64) -> Result<bool> {
                wsql::take_account_probe(&self.pool, account, now_ms, hold_ms).await
            }

            async fn attempt(&self, id: i64) -> Result<Option<AttemptRow>> {
                wsql::attempt(&self.pool, id).await
            }

            async fn inbox_unapplied(&self, received_before_ms: i64, limit: u32) -> Result<Vec<InboxEvent>> {
                wsql::inbox_unapplied(&self.pool, received_before_ms, limit).await
            }

            async fn inbox_set_aside_unknown(&self, received_before_ms: i64, now_ms: i64) -> Result<u64> {
                wsql::inbox_set_aside_unknown(&self.pool, received_before_ms, now_ms).await
            }

            async fn unsettled_attempts(
                &self,
                placed_before_ms: i64,
                limit: u32,
            ) -> Result<Vec<AttemptRow>> {
                wsql::unsettled_attempts(&self.pool, placed_before_ms, limit).await
            }

            async fn defer_reconcile(&self, job_ids: &[i64], now_ms: i64) -> Result<()> {
                wsql::defer_reconcile(&self.pool, job_ids, now_ms).await
            }

            $($specific)*
        }
    };
}
pub(crate) use impl_store;

pub mod postgres;
pub mod sqlite;
pub mod types;
mod worker_sql;

pub use types::*;

use async_trait::async_trait;
use std::sync::Arc;
use tokio::sync::mpsc;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unknown campaign `{0}`")]
    UnknownCampaign(String),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The shared store: a PostgreSQL or SQLite implementation behind one trait.
pub type DynStore = Arc<dyn Store>;

/// Opens the store named by a `postgres://` or `sqlite://` URL.
pub async fn connect(url: &str, max_connections: u32) -> Result<DynStore> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(
            postgres::PgStore::connect(url, max_connections).await?,
        ))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(
            sqlite::SqliteStore::connect(url, max_connections).await?,
        ))
    } else {
        Err(StoreError::Invalid(format!(
            "unsupported database URL scheme in `{}`",
            crate::config::redact_url(url)
        )))
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `postgres` or `sqlite`.
    fn backend(&self) -> Backend;

    /// Applies the embedded migrations.
    async fn migrate(&self) -> Result<()>;

    /// True when the database answers.
    async fn ping(&self) -> Result<()>;

    // ---- campaigns ----

    /// Creates or updates a campaign by name; returns (row, created).
    async fn apply_campaign(
        &self,
        spec: &crate::campaign::CampaignSpec,
        now_ms: i64,
    ) -> Result<(CampaignRow, bool)>;
    async fn campaign(&self, name: &str) -> Result<Option<CampaignRow>>;
    async fn campaign_by_id(&self, id: i64) -> Result<Option<CampaignRow>>;
    async fn campaigns(&self) -> Result<Vec<CampaignRow>>;
    /// Sets or lifts the operator's pause. Resume also lifts an automatic pause
    /// that waits for an operator (`until` NULL). Returns false for an unknown name.
    async fn set_operator_pause(&self, name: &str, paused: bool, now_ms: i64) -> Result<bool>;

    // ---- imports (streaming: batches arrive on a bounded channel) ----

    /// Loads contacts into a campaign in one transaction; one job per new phone.
    /// Returns how many were loaded (the rest were duplicates).
    async fn import_contacts(
        &self,
        campaign_id: i64,
        due_at_ms: i64,
        rx: mpsc::Receiver<Vec<ContactRecord>>,
    ) -> Result<u64>;
    async fn import_dnc(&self, rx: mpsc::Receiver<Vec<DncRecord>>, now_ms: i64) -> Result<u64>;
    async fn import_opt_outs(&self, rx: mpsc::Receiver<Vec<OptOutRecord>>) -> Result<u64>;
    async fn import_consents(&self, rx: mpsc::Receiver<Vec<ConsentRecord>>) -> Result<u64>;

    // ---- facts for pre-flight ----

    /// DNC, opt-out, consent and counted-call facts for a batch of numbers, as of now.
    /// `campaign` scopes opt-outs and consents (global ones always apply).
    async fn facts(
        &self,
        phones: &[String],
        campaign: Option<&str>,
        counted_since_ms: i64,
    ) -> Result<Vec<NumberFacts>>;

    // ---- status ----

    async fn status(&self, campaign: Option<&str>, now_ms: i64) -> Result<StatusReport>;

    // ---- workers ----

    async fn register_worker(&self, id: &str, hostname: &str, now_ms: i64) -> Result<()>;
    /// Renews the worker's heartbeat and the leases of the jobs it still holds
    /// (`held`, the ids its tasks own): a job whose task ended without a decision or
    /// a release (the database was down) is not renewed, so its lease expires and it
    /// is recovered like a dead worker's.
    async fn heartbeat(&self, id: &str, held: &[i64], lease_ms: i64, now_ms: i64) -> Result<()>;
    /// Workers whose heartbeat is newer than `since_ms` (this one included).
    async fn live_workers(&self, since_ms: i64) -> Result<Vec<String>>;
    async fn deregister_worker(&self, id: &str) -> Result<()>;
    async fn set_worker_halt(&self, id: &str, reason: Option<&str>) -> Result<()>;

    // ---- the queue ----

    /// Claims up to `limit` due jobs under a lease (PostgreSQL: `FOR UPDATE SKIP
    /// LOCKED`; the lease runs on the database clock). Paused campaigns are skipped;
    /// `only_campaign` restricts the claim (a campaign's probe dial).
    async fn claim(
        &self,
        owner: &str,
        limit: u32,
        now_ms: i64,
        lease_ms: i64,
        only_campaign: Option<i64>,
    ) -> Result<Vec<ClaimedJob>>;
    /// Returns jobs whose lease expired to `queued` (a sent attempt becomes
    /// possibly placed and keeps its key). Returns how many were recovered.
    async fn recover_expired_leases(&self, now_ms: i64) -> Result<u64>;
    /// Gives a claimed job back unchanged (shutdown, pause, halt).
    async fn release(&self, job_id: i64, owner: &str, now_ms: i64) -> Result<()>;
    /// Marks the job `dialing` and counts one more send of its attempt, before the
    /// request leaves (so a crash after this point is seen as ambiguous). False when
    /// this worker no longer holds the lease: it must not send.
    async fn mark_sending(
        &self,
        job_id: i64,
        attempt_id: i64,
        owner: &str,
        now_ms: i64,
    ) -> Result<bool>;
    /// Applies a decision. The attempt part always applies (a 202 is never lost);
    /// the job part only while the guard holds. Returns whether the job part applied.
    async fn update_job(
        &self,
        job_id: i64,
        guard: &Guard,
        update: &JobUpdate,
        now_ms: i64,
    ) -> Result<bool>;
    /// `update_job` for several jobs in one transaction (one commit): the batched
    /// acknowledgement (the queue-alone reference of the load run uses it). Results in
    /// the order given.
    async fn update_jobs(&self, writes: &[JobWrite]) -> Result<Vec<bool>>;
    /// Records a group of claimed jobs before any of them is dialed (see
    /// [`Dispatch`]), in one transaction: the verdicts, the decisions of blocked
    /// jobs and the sends stand together or not at all. Each new attempt is checked
    /// against every cap and recorded atomically with it (numbers locked in one
    /// order, SPEC section 6), across all campaigns and workers, and each send is
    /// counted and its job moved to `dialing` before the request leaves (so a crash
    /// after this point is seen as ambiguous); only for jobs whose lease `owner`
    /// still holds. Job ids must be distinct.
    async fn dispatch(&self, d: &Dispatch) -> Result<DispatchResult>;
    async fn job(&self, job_id: i64) -> Result<Option<ClaimedJob>>;
    async fn insert_audit(&self, rows: &[AuditRecord]) -> Result<()>;
    /// `dialer campaign requeue NAME --reason R`: dropped jobs back to the queue.
    async fn requeue_dropped(&self, campaign_id: i64, reason: &str, now_ms: i64) -> Result<u64>;

    // ---- pauses and halts ----

    /// Begins an automatic pause (vendor answer) unless one is in force; `until_ms`
    /// None waits for `campaign resume` (and replaces a timed pause in force). The
    /// dials in flight when a pause began are that pause, not repeats of it.
    async fn pause_campaign(
        &self,
        id: i64,
        reason: &str,
        until_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<()>;
    /// The pause's probe dial failed: paused again; the same cause counts up
    /// (`auto_pause_count`, which doubles the next length).
    async fn repause_campaign(
        &self,
        id: i64,
        reason: &str,
        until_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<()>;
    /// A taken probe found no job: the pause's probe is due again at `until_ms`.
    async fn defer_campaign_probe(&self, id: i64, until_ms: i64, now_ms: i64) -> Result<()>;
    async fn lift_auto_pause(&self, id: i64, now_ms: i64) -> Result<()>;
    /// Campaigns whose automatic pause has ended and that wait for a probe dial:
    /// takes the probe (pushing the pause by `hold_ms`) and returns their ids.
    async fn take_campaign_probes(&self, now_ms: i64, hold_ms: i64) -> Result<Vec<i64>>;
    async fn account_halt(&self, account: &str) -> Result<Option<AccountHalt>>;
    /// Begins an account halt unless one is in force (the dials in flight when it
    /// began are that halt, not repeats of it).
    async fn halt_account(
        &self,
        account: &str,
        reason: &str,
        probe_at_ms: i64,
        now_ms: i64,
    ) -> Result<()>;
    /// The halt's probe dial failed: halted again; the same cause counts up
    /// (`halt_count`, which doubles the next length).
    async fn rehalt_account(
        &self,
        account: &str,
        reason: &str,
        probe_at_ms: i64,
        now_ms: i64,
    ) -> Result<()>;
    /// A taken probe found no job: the halt's probe is due again at `probe_at_ms`.
    async fn defer_account_probe(&self, account: &str, probe_at_ms: i64) -> Result<()>;
    async fn lift_account_halt(&self, account: &str) -> Result<()>;
    /// Takes the account's probe dial if it is due (one worker wins), pushing the
    /// next probe by `hold_ms`.
    async fn take_account_probe(&self, account: &str, now_ms: i64, hold_ms: i64) -> Result<bool>;

    // ---- outcomes ----

    async fn attempt(&self, id: i64) -> Result<Option<AttemptRow>>;
    /// Keeps webhook events (one statement or transaction for the batch); for each,
    /// false when its id was seen before (or earlier in the same batch).
    async fn inbox_insert_many(&self, events: &[InboxEvent], now_ms: i64) -> Result<Vec<bool>>;
    /// Unapplied stored events of these calls (their 202s were just recorded).
    async fn inbox_pending_many(&self, call_ids: &[String]) -> Result<Vec<InboxEvent>>;
    /// Unapplied events received before `received_before_ms` whose call's 202 is
    /// recorded: the sweeper applies them (an apply that failed after the event was
    /// stored, or an event that raced its 202).
    async fn inbox_unapplied(&self, received_before_ms: i64, limit: u32)
    -> Result<Vec<InboxEvent>>;
    /// Events still unapplied that were received before `received_before_ms` and
    /// whose call no attempt of ours has (a call placed by something else on the
    /// account, or one whose 202 can no longer be recorded): marked applied with
    /// result `unknown_call`, kept, so the sweeper stops reading them every second.
    /// Returns how many.
    async fn inbox_set_aside_unknown(&self, received_before_ms: i64, now_ms: i64) -> Result<u64>;
    /// The attempts of these call ids, with where their jobs stand.
    async fn outcome_targets(&self, call_ids: &[String]) -> Result<Vec<OutcomeTarget>>;
    /// Applies outcomes in one transaction (see [`OutcomeBatch`]); returns which
    /// job writes applied.
    async fn apply_outcomes(&self, batch: &OutcomeBatch) -> Result<Vec<bool>>;
    /// The current attempts of jobs still awaiting an outcome, placed at or before
    /// `placed_before_ms` (reconciliation). Keyed on the job, not on the attempt's
    /// outcome columns: an outcome recorded while the job was not awaiting it (lease
    /// lost after the 202) must not leave the job waiting for good.
    async fn unsettled_attempts(
        &self,
        placed_before_ms: i64,
        limit: u32,
    ) -> Result<Vec<AttemptRow>>;
    /// Starts the wait of these jobs, if still awaiting an outcome, again from
    /// `now_ms`: reconciliation asked about their calls and could not settle them
    /// (not ended yet, or the lookup failed). Without it the same oldest calls
    /// would fill every pass and the calls behind them would never be asked about.
    async fn defer_reconcile(&self, job_ids: &[i64], now_ms: i64) -> Result<()>;
}

/// Epoch milliseconds to RFC 3339 (UTC), for output.
pub fn ms_to_rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// The current time as epoch milliseconds.
pub fn now_ms(clock: &crate::clock::Clock) -> i64 {
    clock.now().timestamp_millis()
}
