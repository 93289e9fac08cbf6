-- The current label of every labeled item: the model's prediction, auto-approved or
-- waiting for review, until a person approves, corrects or rejects it. ``reviews`` keeps
-- every decision (who, when, before, after); this row is the latest state.
CREATE TABLE annotations (
    item_id       uuid PRIMARY KEY REFERENCES items (id),
    project_id    uuid NOT NULL REFERENCES projects (id),
    prediction_id bigint NOT NULL REFERENCES predictions (id),
    status        text NOT NULL CHECK (
                      status IN ('pending', 'auto_approved', 'approved', 'corrected', 'rejected')),
    value         jsonb NOT NULL,
    top_label     text,
    score         double precision,
    uncertainty   double precision NOT NULL,
    updated_by    text NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX annotations_queue ON annotations (project_id, status, uncertainty DESC, item_id);

ALTER TABLE reviews ADD COLUMN item_id uuid REFERENCES items (id);
ALTER TABLE reviews ADD COLUMN project_id uuid REFERENCES projects (id);
CREATE INDEX reviews_item ON reviews (item_id, id);

ALTER TABLE exports ADD COLUMN byte_size bigint;
ALTER TABLE exports ADD COLUMN media_type text;
CREATE INDEX exports_unfinished ON exports (created_at) WHERE status IN ('queued', 'running');

-- API keys are named and shown by their prefix (the secret part is only ever hashed).
ALTER TABLE api_keys ADD COLUMN name text NOT NULL DEFAULT '';
ALTER TABLE api_keys ADD COLUMN prefix text NOT NULL DEFAULT '';
