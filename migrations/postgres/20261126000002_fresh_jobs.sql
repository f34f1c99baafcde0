-- Import speed (issue 2): a job loaded by the fast import path (a campaign's first
-- import) is "fresh" until it is first claimed, and a fresh job has no entry in the
-- claim index: the COPY of a 1M-row file then maintains two indexes (the primary key
-- and the unique (campaign_id, phone)) instead of three. Fresh jobs are claimed in
-- id order through the primary key, from the id range their import recorded in
-- `fresh_jobs`; the claim clears `fresh`, so a job that is requeued later is in the
-- claim index like any other. Only the claim ever clears the flag, and only a
-- queued job is ever fresh.
ALTER TABLE jobs ADD COLUMN fresh BOOLEAN NOT NULL DEFAULT FALSE;
DROP INDEX jobs_claimable;
CREATE INDEX jobs_claimable ON jobs (due_at_ms, id) WHERE status = 'queued' AND NOT fresh;

-- One row per campaign whose first import took the fast path: its jobs' ids lie in
-- [next_id, last_id] (with other campaigns' ids possibly among them); the claim
-- takes them in id order, advancing next_id in the claiming transaction, under the
-- row's lock (so a claim that rolls back, or a crash, moves nothing).
CREATE TABLE fresh_jobs (
    campaign_id  BIGINT PRIMARY KEY,
    next_id      BIGINT NOT NULL,
    last_id      BIGINT NOT NULL,
    due_at_ms    BIGINT NOT NULL
);
