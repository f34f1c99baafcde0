-- Import speed (issue 2): phone numbers are ASCII E.164 strings, compared byte by
-- byte. The "C" collation makes every comparison a memcmp instead of a locale
-- strcoll (the unique (campaign_id, phone) index is checked once per imported row).
-- All phone columns change together, so joins between them keep one collation.
ALTER TABLE jobs ALTER COLUMN phone TYPE TEXT COLLATE "C";
ALTER TABLE attempts ALTER COLUMN phone TYPE TEXT COLLATE "C";
ALTER TABLE dnc_numbers ALTER COLUMN phone TYPE TEXT COLLATE "C";
ALTER TABLE opt_outs ALTER COLUMN phone TYPE TEXT COLLATE "C";
ALTER TABLE consents ALTER COLUMN phone TYPE TEXT COLLATE "C";
ALTER TABLE audit ALTER COLUMN phone TYPE TEXT COLLATE "C";
-- Job ids come from the identity sequence in blocks of 1,000 per session instead of
-- one sequence access per row (ids may have gaps; nothing relies on them having none).
ALTER TABLE jobs ALTER COLUMN id SET CACHE 1000;
