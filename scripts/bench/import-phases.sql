-- Server-side phases of `dialer import contacts` on PostgreSQL (the statements of
-- src/store/postgres.rs::import_contacts), timed one by one with psql \timing.
-- Run by scripts/bench-import with PHASES=1 (it puts the file in for :'csv'; :cid is the campaign).
\timing on
BEGIN;
CREATE TEMP TABLE import_contacts (line BIGSERIAL, phone TEXT, external_id TEXT, timezone TEXT,
  state TEXT, postal_code TEXT, first_name TEXT, last_name TEXT, attributes TEXT) ON COMMIT DROP;
\echo phase 1: COPY into the unindexed temp table
\copy import_contacts (phone, external_id) FROM :'csv' WITH (FORMAT csv, HEADER true)
\echo phase 2: INSERT ... SELECT ... ORDER BY line ON CONFLICT DO NOTHING into jobs
INSERT INTO jobs (campaign_id, phone, external_id, timezone, state, postal_code, first_name,
  last_name, attributes, due_at_ms, updated_at_ms)
  SELECT :cid, phone, external_id, timezone, state, postal_code, first_name, last_name, attributes, 0, 0
  FROM import_contacts ORDER BY line ON CONFLICT (campaign_id, phone) DO NOTHING;
\echo phase 3: COMMIT
COMMIT;
