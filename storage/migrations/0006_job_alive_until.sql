-- A batch run (jobs.label_dataset) holds its job open by renewing this while it lives. The
-- service's reaper closes running jobs with no open item (a run that died between chunks),
-- but not one whose run renewed it within its lease: that run is still reading files.
ALTER TABLE jobs ADD COLUMN alive_until timestamptz;
