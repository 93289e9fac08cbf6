-- The X-Request-ID of the request that submitted a job: carried into every batch the
-- runner labels for it, so one id finds the submission, the runner's and the models' logs.
ALTER TABLE jobs ADD COLUMN request_id text;
