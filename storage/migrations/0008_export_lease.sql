-- An export is written by the process holding its lease, renewed while it writes. Without
-- it, an Exporter replica that started (a rolling update, a second replica) wrote every
-- running export again beside the replica still writing it, and the file of the one that
-- finished first was orphaned for good.
ALTER TABLE exports ADD COLUMN lease_owner text;
ALTER TABLE exports ADD COLUMN lease_expires_at timestamptz;
