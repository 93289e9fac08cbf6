-- ModelShip's first schema: projects, items, durable jobs and their results.
-- Reviews, exports, API keys and audit events get their tables now so later migrations
-- only add columns; the code that fills them lands with the issues that need them.

CREATE TABLE projects (
    id                     uuid PRIMARY KEY,
    tenant                 text NOT NULL,
    name                   text NOT NULL,
    task                   text NOT NULL,
    model                  text NOT NULL,
    confidence_threshold   double precision NOT NULL CHECK (confidence_threshold BETWEEN 0 AND 1),
    auto_approve_threshold double precision NOT NULL CHECK (auto_approve_threshold BETWEEN 0 AND 1),
    label_schema_version   integer NOT NULL DEFAULT 1,
    archived_at            timestamptz,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX projects_tenant_name ON projects (tenant, name) WHERE archived_at IS NULL;

-- Every version of a project's labels is kept: a job records the version it used.
CREATE TABLE label_schemas (
    project_id uuid NOT NULL REFERENCES projects (id),
    version    integer NOT NULL,
    labels     jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, version)
);

CREATE TABLE items (
    id            uuid PRIMARY KEY,
    project_id    uuid NOT NULL REFERENCES projects (id),
    content_hash  text NOT NULL,
    media_type    text NOT NULL,
    byte_size     bigint NOT NULL,
    width         integer,
    height        integer,
    object_key    text,
    text          text,
    filename      text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CHECK ((object_key IS NULL) <> (text IS NULL)),
    UNIQUE (project_id, content_hash)
);
CREATE INDEX items_project ON items (project_id, id);

CREATE TABLE jobs (
    id                   uuid PRIMARY KEY,
    project_id           uuid NOT NULL REFERENCES projects (id),
    status               text NOT NULL CHECK (
                             status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    model                text NOT NULL,
    label_schema_version integer NOT NULL,
    options              jsonb NOT NULL,
    total_items          integer NOT NULL,
    idempotency_key      text,
    request_hash         text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    started_at           timestamptz,
    finished_at          timestamptz,
    UNIQUE (project_id, idempotency_key)
);
CREATE INDEX jobs_active ON jobs (created_at) WHERE status IN ('queued', 'running');

-- The work queue: one row per (job, item). A lease is (lease_owner, lease_expires_at);
-- an expired lease makes the row claimable again. Terminal states never change.
CREATE TABLE job_items (
    job_id           uuid NOT NULL REFERENCES jobs (id),
    item_id          uuid NOT NULL REFERENCES items (id),
    state            text NOT NULL DEFAULT 'queued' CHECK (
                         state IN ('queued', 'leased', 'succeeded', 'failed', 'cancelled')),
    attempts         integer NOT NULL DEFAULT 0,
    lease_owner      text,
    lease_expires_at timestamptz,
    error            text,
    prediction_id    bigint,
    finished_at      timestamptz,
    PRIMARY KEY (job_id, item_id)
);
CREATE INDEX job_items_open ON job_items (job_id, state, lease_expires_at)
    WHERE state IN ('queued', 'leased');

-- One prediction per (item, model version, parameters): labels and top_k change a
-- zero-shot model's output without changing its weights, so they are part of the key.
CREATE TABLE predictions (
    id            bigserial PRIMARY KEY,
    item_id       uuid NOT NULL REFERENCES items (id),
    model         text NOT NULL,
    model_version text NOT NULL,
    params_hash   text NOT NULL,
    output        jsonb NOT NULL,
    top_label     text,
    top_score     double precision,
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (item_id, model_version, params_hash)
);

CREATE TABLE reviews (
    id            bigserial PRIMARY KEY,
    prediction_id bigint NOT NULL REFERENCES predictions (id),
    action        text NOT NULL CHECK (action IN ('approve', 'correct', 'reject')),
    reviewer      text NOT NULL,
    before        jsonb,
    after         jsonb,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE exports (
    id          uuid PRIMARY KEY,
    project_id  uuid NOT NULL REFERENCES projects (id),
    format      text NOT NULL,
    selection   jsonb NOT NULL,
    status      text NOT NULL,
    object_key  text,
    row_count   integer,
    error       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);

CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    tenant      text NOT NULL,
    key_hash    text NOT NULL UNIQUE,
    scopes      text[] NOT NULL,
    project_ids uuid[],
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE audit_events (
    id         bigserial PRIMARY KEY,
    tenant     text NOT NULL,
    actor      text NOT NULL,
    action     text NOT NULL,
    subject    text NOT NULL,
    details    jsonb NOT NULL DEFAULT '{}',
    request_id text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_events_subject ON audit_events (subject, created_at);
