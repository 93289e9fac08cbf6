"""Export records, and the rows an export streams out of PostgreSQL page by page."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg

from modelship.core.config import Task
from modelship.core.errors import NotFound
from modelship.core.records import Export, ExportCreate, ExportSelection, Project
from modelship.core.rows import Box, ExportRow, ExportTask, Label, Span
from storage.catalog import Catalog, audit, check_open
from storage.postgres import Database

EXPORT_TASKS = {
    Task.image_classification: ExportTask.image_classification,
    Task.zero_shot_text_classification: ExportTask.text_classification,
    Task.text_classification: ExportTask.text_classification,
    Task.object_detection: ExportTask.object_detection,
    Task.token_classification: ExportTask.token_classification,
}
_SELECTIONS = {
    ExportSelection.approved: "a.status IN ('auto_approved', 'approved', 'corrected')",
    ExportSelection.all: "TRUE",
    ExportSelection.min_score: "(a.status IN ('approved', 'corrected')"
    " OR (a.status IN ('pending', 'auto_approved') AND a.score >= $4))",
}


@dataclass(frozen=True)
class ExportJob:
    """What the exporter needs to write one export."""

    id: UUID
    tenant: str
    project: Project
    request: ExportCreate


def _export(row: asyncpg.Record) -> Export:
    # Expired from expires_at on, as downloads are refused, though the sweep marks the row
    # (and deletes the file) only DOWNLOAD_GRACE later.
    status = row["status"]
    expires_at = row["expires_at"]
    if status == "succeeded" and expires_at is not None and expires_at <= datetime.now(UTC):
        status = "expired"
    done = status == "succeeded"
    return Export(
        id=row["id"],
        project_id=row["project_id"],
        format=row["format"],
        selection=row["selection"],
        status=status,
        rows=row["row_count"],
        bytes=row["byte_size"],
        media_type=row["media_type"],
        error=row["error"],
        created_at=row["created_at"],
        finished_at=row["finished_at"],
        expires_at=row["expires_at"],
        download_url=f"/api/v1/exports/{row['id']}/download" if done else None,
    )


class ExportStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self,
        tenant: str,
        project: Project,
        request: ExportCreate,
        actor: str,
        max_open: int | None = None,
    ) -> Export:
        """Record a queued export (429 past ``max_open`` unfinished ones in the project)."""
        export_id = uuid4()
        async with self._db.transaction() as conn:
            if max_open is not None:
                await check_open(conn, "exports", project.id, max_open)
            row = await conn.fetchrow(
                "INSERT INTO exports (id, project_id, format, selection, status)"
                " VALUES ($1, $2, $3, $4, 'queued') RETURNING *",
                export_id,
                project.id,
                request.format.value,
                request.model_dump(mode="json", exclude={"format"}),
            )
            await audit(conn, tenant, actor, "export.create", f"export:{export_id}")
        return _export(row)

    async def get(self, tenant: str, export_id: UUID) -> tuple[Export, str | None]:
        """The export and its object key (None until it succeeded)."""
        async with self._db.connection() as conn:
            row = await conn.fetchrow(
                "SELECT e.* FROM exports e JOIN projects p ON p.id = e.project_id"
                " WHERE e.id = $1 AND p.tenant = $2",
                export_id,
                tenant,
            )
        if row is None:
            raise NotFound(f"no export {export_id}", "unknown_export")
        return _export(row), row["object_key"]

    async def unfinished(self) -> list[UUID]:
        """Exports no process is writing: queued, or running with a lapsed lease."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                "SELECT id FROM exports WHERE status IN ('queued', 'running')"
                " AND (lease_expires_at IS NULL OR lease_expires_at < now()) ORDER BY created_at"
            )
        return [row["id"] for row in rows]

    async def start(self, export_id: UUID, owner: str, lease_s: float) -> ExportJob | None:
        """Mark the export running, leased to ``owner`` for ``lease_s``; None if it is gone,
        finished, or leased to another writer."""
        async with self._db.connection() as conn:
            row = await conn.fetchrow(
                "UPDATE exports e SET status = 'running', lease_owner = $2,"
                " lease_expires_at = now() + make_interval(secs => $3) FROM projects p"
                " WHERE e.id = $1 AND p.id = e.project_id AND e.status IN ('queued', 'running')"
                " AND (e.lease_expires_at IS NULL OR e.lease_expires_at < now())"
                " RETURNING e.format, e.selection, p.tenant, p.id AS project_id",
                export_id,
                owner,
                lease_s,
            )
        if row is None:
            return None
        project = await Catalog(self._db).project(row["tenant"], row["project_id"])
        request = ExportCreate.model_validate({"format": row["format"], **row["selection"]})
        return ExportJob(export_id, row["tenant"], project, request)

    async def renew(self, export_id: UUID, owner: str, lease_s: float) -> bool:
        """Extend ``owner``'s lease; False when it no longer holds it."""
        async with self._db.connection() as conn:
            status = await conn.execute(
                "UPDATE exports SET lease_expires_at = now() + make_interval(secs => $3)"
                " WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
                export_id,
                owner,
                lease_s,
            )
        return status == "UPDATE 1"

    async def finish(
        self,
        export_id: UUID,
        owner: str,
        object_key: str,
        rows: int,
        size: int,
        media_type: str,
        retention: timedelta,
    ) -> bool:
        """Record the written file; False when ``owner`` lost the export to another writer
        (its lease lapsed), whose file counts instead."""
        async with self._db.connection() as conn:
            status = await conn.execute(
                "UPDATE exports SET status = 'succeeded', object_key = $3, row_count = $4,"
                " byte_size = $5, media_type = $6, finished_at = now(),"
                " expires_at = now() + $7, lease_owner = NULL, lease_expires_at = NULL"
                " WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
                export_id,
                owner,
                object_key,
                rows,
                size,
                media_type,
                retention,
            )
        return status == "UPDATE 1"

    async def expire(self, limit: int, grace: timedelta) -> list[str]:
        """Mark up to ``limit`` succeeded exports expired ``grace`` ago; their object keys
        (to delete: a key whose deletion fails is only an orphaned file, never a download
        that points nowhere)."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                "WITH due AS (SELECT id, object_key FROM exports WHERE status = 'succeeded'"
                " AND expires_at <= now() - $2::interval ORDER BY expires_at LIMIT $1"
                " FOR UPDATE SKIP LOCKED)"
                " UPDATE exports e SET status = 'expired', object_key = NULL FROM due"
                " WHERE e.id = due.id RETURNING due.object_key",
                limit,
                grace,
            )
        return [row[0] for row in rows if row[0]]

    async def fail(self, export_id: UUID, owner: str, error: str) -> None:
        """End the export failed, unless ``owner`` lost it to another writer."""
        async with self._db.connection() as conn:
            await conn.execute(
                "UPDATE exports SET status = 'failed', error = $3, finished_at = now(),"
                " lease_owner = NULL, lease_expires_at = NULL"
                " WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
                export_id,
                owner,
                error,
            )

    async def categories(self, project: Project) -> list[str]:
        """The project's category order, which an export's category ids are positions in.

        The first export fixes it: the label list's names in order, then every other label
        used, sorted. Later exports keep it and append what is new to it (a name added to
        the label list, a label first used since), in that same order; reordering or
        shortening the label list moves nothing, so an id never changes meaning.
        """
        names = [label.name for label in project.labels or []]
        async with self._db.connection() as conn:
            used = await conn.fetch(
                "SELECT DISTINCT e->>'label' AS label FROM annotations a,"
                " jsonb_array_elements(a.value) e WHERE a.project_id = $1",
                project.id,
            )
        others = sorted({r["label"] for r in used if r["label"]} - set(names))
        return await self.extend_categories(project.id, names + others)

    async def extend_categories(self, project_id: UUID, names: list[str]) -> list[str]:
        """Append to the project's category order the ``names`` it lacks, in their order;
        the whole order.

        Under a lock on the project's order, so exports that start at once agree on every id.
        """
        async with self._db.transaction() as conn:
            await conn.execute(
                "INSERT INTO export_categories (project_id, names) VALUES ($1, '[]')"
                " ON CONFLICT (project_id) DO NOTHING",
                project_id,
            )
            order: list[str] = await conn.fetchval(
                "SELECT names FROM export_categories WHERE project_id = $1 FOR UPDATE",
                project_id,
            )
            known = set(order)
            new = [name for name in dict.fromkeys(names) if name not in known]
            if new:
                order = [*order, *new]
                await conn.execute(
                    "UPDATE export_categories SET names = $2, updated_at = now()"
                    " WHERE project_id = $1",
                    project_id,
                    order,
                )
        return order

    async def rows(
        self, job: ExportJob, after: UUID | None, limit: int
    ) -> list[tuple[ExportRow, str | None]]:
        """One page of the selection, by item id: (row, the item's object key)."""
        selection = job.request.selection
        task = EXPORT_TASKS[job.project.task]
        # An image item whose file could not be read (a batch job's failed entry) has no
        # size and no file: image formats cannot hold it.
        images_only = " AND i.width IS NOT NULL" if task.on_images else ""
        async with self._db.connection() as conn:
            records = await conn.fetch(
                "SELECT i.id, i.filename, i.media_type, i.width, i.height, i.text, i.object_key,"
                " coalesce(a.status, 'unlabeled') AS status, a.value, p.model, p.model_version"
                " FROM items i LEFT JOIN annotations a ON a.item_id = i.id"
                " LEFT JOIN predictions p ON p.id = a.prediction_id"
                " WHERE i.project_id = $1 AND ($2::uuid IS NULL OR i.id > $2)"
                f" AND {_SELECTIONS[selection]}{images_only} ORDER BY i.id LIMIT $3",
                job.project.id,
                after,
                limit,
                *([job.request.min_score] if selection is ExportSelection.min_score else []),
            )
        return [(_row(record, task), record["object_key"]) for record in records]


def _row(record: asyncpg.Record, task: ExportTask) -> ExportRow:
    value: list[dict[str, Any]] = record["value"] or []
    labels, boxes, entities = [], [], []
    for entry in value:
        if task is ExportTask.object_detection:
            boxes.append(Box(entry["label"], entry.get("score"), *entry["box"]))
        elif task is ExportTask.token_classification:
            entities.append(
                Span(
                    entry["label"], entry["start"], entry["end"], entry["text"], entry.get("score")
                )
            )
        else:
            labels.append(Label(entry["label"], entry.get("score")))
    return ExportRow(
        item_id=str(record["id"]),
        filename=record["filename"],
        media_type=record["media_type"],
        width=record["width"],
        height=record["height"],
        text=record["text"],
        status=record["status"],
        labels=labels,
        boxes=boxes,
        entities=entities,
        model=record["model"],
        model_version=record["model_version"],
    )
