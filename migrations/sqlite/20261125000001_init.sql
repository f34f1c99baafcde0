-- revdesk-dialer schema (SQLite). Times are epoch milliseconds (BIGINT) on both
-- backends, so the two stores share their SQL; `*_ms` names say so.

CREATE TABLE campaigns (
    id                    INTEGER PRIMARY KEY,
    name                  TEXT NOT NULL UNIQUE,
    from_number           TEXT NOT NULL,
    call_type             TEXT NOT NULL CHECK (call_type IN ('artificial_voice', 'live')),
    require_consent       TEXT CHECK (require_consent IN ('express', 'express_written')),
    max_attempts          INTEGER NOT NULL,
    cap_calls             INTEGER,
    cap_per_ms            BIGINT,
    rate_per_second       REAL,
    window_start          TEXT NOT NULL,
    window_end            TEXT NOT NULL,
    days                  TEXT NOT NULL,
    retry                 TEXT NOT NULL DEFAULT '{}',
    spec                  TEXT NOT NULL,
    -- An operator's pause: only `campaign resume` lifts it.
    operator_paused       BOOLEAN NOT NULL DEFAULT FALSE,
    operator_paused_at_ms BIGINT,
    -- An automatic pause (vendor answer): until a time, or until resume when NULL.
    auto_pause_reason     TEXT,
    auto_paused_until_ms  BIGINT,
    auto_pause_count      INTEGER NOT NULL DEFAULT 0,
    probe_job_id          BIGINT,
    created_at_ms         BIGINT NOT NULL,
    updated_at_ms         BIGINT NOT NULL
);

-- A contact in a campaign is its job: one row, created by the import.
CREATE TABLE jobs (
    id                INTEGER PRIMARY KEY,
    -- No foreign key: the bulk import checks the campaign once, under a lock,
    -- rather than a trigger per row; campaigns are never deleted.
    campaign_id       BIGINT NOT NULL,
    phone             TEXT NOT NULL,
    external_id       TEXT,
    timezone          TEXT,
    state             TEXT,
    postal_code       TEXT,
    first_name        TEXT,
    last_name         TEXT,
    attributes        TEXT,
    status            TEXT NOT NULL DEFAULT 'queued' CHECK (status IN
                        ('queued', 'running', 'dialing', 'awaiting_outcome', 'done', 'dropped', 'exhausted')),
    due_at_ms         BIGINT NOT NULL,
    attempts          INTEGER NOT NULL DEFAULT 0,
    lease_owner       TEXT,
    lease_expires_ms  BIGINT,
    last_code         TEXT,
    last_category     TEXT,
    reason            TEXT,
    reason_source     TEXT,
    provider_retries  INTEGER NOT NULL DEFAULT 0,
    provider_requeues INTEGER NOT NULL DEFAULT 0,
    vendor_refusals   INTEGER NOT NULL DEFAULT 0,
    current_attempt_id BIGINT,
    updated_at_ms     BIGINT NOT NULL,
    UNIQUE (campaign_id, phone)
);
-- The claim path: due queued jobs in due order.
CREATE INDEX jobs_claimable ON jobs (due_at_ms, id) WHERE status = 'queued';
-- Lease recovery.
CREATE INDEX jobs_leased ON jobs (lease_expires_ms) WHERE status IN ('running', 'dialing');
CREATE INDEX jobs_awaiting ON jobs (updated_at_ms) WHERE status = 'awaiting_outcome';

CREATE TABLE attempts (
    id               INTEGER PRIMARY KEY,
    job_id           BIGINT NOT NULL REFERENCES jobs (id),
    campaign_id      BIGINT NOT NULL,
    phone            TEXT NOT NULL,
    attempt_no       INTEGER NOT NULL,
    idempotency_key  TEXT NOT NULL UNIQUE,
    -- The exact request body, re-sent byte for byte on every retry.
    request_body     TEXT NOT NULL,
    -- reserved: recorded, not yet answered (counts: it may be placed any moment)
    -- placed: 202; possibly_placed: an ambiguous answer and no 202 since (for good)
    -- not_placed: a definitive 4xx with no ambiguous predecessor
    placement        TEXT NOT NULL CHECK (placement IN
                       ('reserved', 'placed', 'possibly_placed', 'not_placed')),
    sends            INTEGER NOT NULL DEFAULT 0,
    created_at_ms    BIGINT NOT NULL,
    first_sent_at_ms BIGINT,
    last_sent_at_ms  BIGINT,
    response_status  INTEGER,
    response_code    TEXT,
    response_category TEXT,
    call_id          TEXT UNIQUE,
    placed_at_ms     BIGINT,
    outcome_code     TEXT,
    outcome_category TEXT,
    outcome_at_ms    BIGINT,
    outcome_source   TEXT
);
-- Frequency caps count a number's attempts in a rolling window, across campaigns.
CREATE INDEX attempts_phone_time ON attempts (phone, created_at_ms);
CREATE INDEX attempts_job ON attempts (job_id);

CREATE TABLE dnc_numbers (
    phone       TEXT NOT NULL,
    source      TEXT NOT NULL,
    added_at_ms BIGINT NOT NULL,
    PRIMARY KEY (phone, source)
);
CREATE TABLE dnc_area_codes (
    npa         TEXT NOT NULL,
    source      TEXT NOT NULL,
    added_at_ms BIGINT NOT NULL,
    PRIMARY KEY (npa, source)
);
-- campaign '' = every campaign.
CREATE TABLE opt_outs (
    phone           TEXT NOT NULL,
    campaign        TEXT NOT NULL DEFAULT '',
    opted_out_at_ms BIGINT NOT NULL,
    source          TEXT NOT NULL,
    PRIMARY KEY (phone, campaign)
);
CREATE TABLE consents (
    phone          TEXT NOT NULL,
    campaign       TEXT NOT NULL DEFAULT '',
    kind           TEXT NOT NULL CHECK (kind IN ('express', 'express_written')),
    granted_at_ms  BIGINT NOT NULL,
    expires_at_ms  BIGINT,
    revoked_at_ms  BIGINT,
    PRIMARY KEY (phone, campaign, kind, granted_at_ms)
);

CREATE TABLE account_halts (
    account       TEXT PRIMARY KEY,
    reason        TEXT NOT NULL,
    halted_at_ms  BIGINT NOT NULL,
    probe_at_ms   BIGINT NOT NULL,
    halt_count    INTEGER NOT NULL DEFAULT 1,
    probe_job_id  BIGINT
);

CREATE TABLE workers (
    id                    TEXT PRIMARY KEY,
    hostname              TEXT NOT NULL,
    started_at_ms         BIGINT NOT NULL,
    heartbeat_ms          BIGINT NOT NULL,
    dialing_halted_reason TEXT
);

CREATE TABLE webhook_inbox (
    event_id       TEXT PRIMARY KEY,
    call_id        TEXT NOT NULL,
    received_at_ms BIGINT NOT NULL,
    body           TEXT NOT NULL,
    applied_at_ms  BIGINT,
    result         TEXT
);
CREATE INDEX webhook_inbox_pending ON webhook_inbox (call_id) WHERE applied_at_ms IS NULL;

-- One row per pre-flight verdict: what was checked, in which zones, and why.
CREATE TABLE audit (
    id              INTEGER PRIMARY KEY,
    job_id          BIGINT,
    campaign_id     BIGINT,
    phone           TEXT NOT NULL,
    at_ms           BIGINT NOT NULL,
    stage           TEXT NOT NULL,
    verdict         TEXT NOT NULL,
    rule            TEXT,
    reason          TEXT NOT NULL,
    zones           TEXT NOT NULL,
    states          TEXT NOT NULL,
    local_times     TEXT NOT NULL,
    next_allowed_ms BIGINT
);
CREATE INDEX audit_job ON audit (job_id);
CREATE INDEX audit_phone ON audit (phone, at_ms);
