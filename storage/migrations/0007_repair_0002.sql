-- 0002 was extended after it first landed (2026-11-29, within the hour): a database that
-- applied the first 0002 lacks what was added. Adds it where it is missing; elsewhere a
-- no-op. Since then every applied migration's checksum is kept and checked, so a changed
-- migration stops the start instead.
ALTER TABLE exports ADD COLUMN IF NOT EXISTS byte_size bigint;
ALTER TABLE exports ADD COLUMN IF NOT EXISTS media_type text;
CREATE INDEX IF NOT EXISTS exports_unfinished ON exports (created_at)
    WHERE status IN ('queued', 'running');
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS name text NOT NULL DEFAULT '';
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS prefix text NOT NULL DEFAULT '';
