-- Export files are kept for a while, then deleted: an export ends 'expired' past expires_at.
ALTER TABLE exports ADD COLUMN expires_at timestamptz;
CREATE INDEX exports_expiry ON exports (expires_at) WHERE status = 'succeeded';
