-- Frequency caps (SPEC section 6; 47 CFR 64.1200(c)(2) and the state caps of
-- section 6's table): a call counts at the moment it was, or may have been,
-- placed. An attempt keeps its key and may be re-sent for up to revdesk.key_ttl
-- (SPEC section 7), and any of those sends may be the one that places the call:
-- the last send is the latest moment it can have been placed, so a counted call
-- is timed by `COALESCE(last_sent_at_ms, created_at_ms)` (every send sets
-- last_sent_at_ms; an attempt reserved and never sent counts from its creation).
-- Timed by creation, an attempt created at 10:00 and placed by a re-send at 17:00
-- left a 24-hour window at 10:00 the next day, 7 hours early. Only a re-send
-- changes the indexed expression, so the 202 and outcome updates stay as they were.
DROP INDEX attempts_phone_time;
CREATE INDEX attempts_phone_counted ON attempts (phone, COALESCE(last_sent_at_ms, created_at_ms));
