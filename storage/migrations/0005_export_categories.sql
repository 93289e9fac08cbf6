-- The order of a project's export categories: a category's id in COCO, YOLO and Hugging
-- Face files is its position here. The first export fixes it and later ones only append,
-- so an id keeps its meaning across exports (a model trained on an older file stays right).
CREATE TABLE export_categories (
    project_id uuid PRIMARY KEY REFERENCES projects (id),
    names      jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
