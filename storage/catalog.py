"""Projects, their label schemas, and items: rows in, typed models out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid4

import asyncpg

from modelship.core.config import LabelSpec
from modelship.core.context import current_request_id
from modelship.core.errors import Conflict, NotFound, QuotaExceeded
from modelship.core.records import Item, Project, ProjectCreate, ProjectUpdate
from storage.postgres import Database

_PROJECT_COLUMNS = """
    p.id, p.name, p.task, p.model, p.label_schema_version, p.confidence_threshold,
    p.auto_approve_threshold, p.archived_at, p.created_at, p.updated_at, s.labels
"""
_PROJECT_FROM = """
    FROM projects p
    JOIN label_schemas s ON s.project_id = p.id AND s.version = p.label_schema_version
"""


def _project(row: asyncpg.Record) -> Project:
    labels = row["labels"]
    return Project(
        id=row["id"],
        name=row["name"],
        task=row["task"],
        model=row["model"],
        labels=[LabelSpec.model_validate(label) for label in labels] if labels else None,
        label_schema_version=row["label_schema_version"],
        confidence_threshold=row["confidence_threshold"],
        auto_approve_threshold=row["auto_approve_threshold"],
        archived=row["archived_at"] is not None,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _labels_value(labels: list[LabelSpec] | None) -> list[dict[str, Any]]:
    return [label.model_dump() for label in labels or []]


@dataclass(frozen=True)
class NewItem:
    """An item checked and stored in object storage (or a text), not yet in the database."""

    content_hash: str
    media_type: str
    byte_size: int
    width: int | None = None
    height: int | None = None
    object_key: str | None = None
    text: str | None = None
    filename: str | None = None


_ITEM_COLUMNS = (
    "id, project_id, content_hash, media_type, byte_size, width, height, filename, created_at"
)


class Catalog:
    """Projects and items of a tenant."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create_project(self, tenant: str, spec: ProjectCreate, actor: str) -> Project:
        project_id = uuid4()
        try:
            async with self._db.transaction() as conn:
                await conn.execute(
                    "INSERT INTO projects (id, tenant, name, task, model, confidence_threshold,"
                    " auto_approve_threshold) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    project_id,
                    tenant,
                    spec.name,
                    spec.task.value,
                    spec.model,
                    spec.confidence_threshold,
                    spec.auto_approve_threshold,
                )
                await conn.execute(
                    "INSERT INTO label_schemas (project_id, version, labels) VALUES ($1, 1, $2)",
                    project_id,
                    _labels_value(spec.labels),
                )
                await audit(conn, tenant, actor, "project.create", f"project:{project_id}")
        except asyncpg.UniqueViolationError:
            raise Conflict(f"a project named {spec.name!r} exists", "duplicate_name") from None
        return await self.project(tenant, project_id)

    async def project(self, tenant: str, project_id: UUID) -> Project:
        async with self._db.connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {_PROJECT_COLUMNS} {_PROJECT_FROM} WHERE p.id = $1 AND p.tenant = $2",
                project_id,
                tenant,
            )
        if row is None:
            raise NotFound(f"no project {project_id}", "unknown_project")
        return _project(row)

    async def owning_project(self, tenant: str, kind: str, id_: UUID) -> UUID | None:
        """The project a job or export belongs to (None: not this tenant's)."""
        table = {"job": "jobs", "export": "exports"}[kind]
        async with self._db.connection() as conn:
            found: UUID | None = await conn.fetchval(
                f"SELECT t.project_id FROM {table} t JOIN projects p ON p.id = t.project_id"
                " WHERE t.id = $1 AND p.tenant = $2",
                id_,
                tenant,
            )
        return found

    async def projects(self, tenant: str, include_archived: bool = False) -> list[Project]:
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                f"SELECT {_PROJECT_COLUMNS} {_PROJECT_FROM} WHERE p.tenant = $1"
                " AND ($2 OR p.archived_at IS NULL) ORDER BY p.created_at, p.id",
                tenant,
                include_archived,
            )
        return [_project(row) for row in rows]

    async def update_project(
        self, tenant: str, project_id: UUID, change: ProjectUpdate, actor: str
    ) -> Project:
        current = await self.project(tenant, project_id)
        if current.archived:
            raise Conflict(f"project {project_id} is archived", "project_archived")
        fields = change.model_dump(exclude_unset=True, exclude={"labels"})
        try:
            async with self._db.transaction() as conn:
                await lock_active_project(conn, project_id, share=False)
                version = current.label_schema_version
                if change.labels is not None:
                    version = await conn.fetchval(
                        "UPDATE projects SET label_schema_version = label_schema_version + 1"
                        " WHERE id = $1 RETURNING label_schema_version",
                        project_id,
                    )
                    await conn.execute(
                        "INSERT INTO label_schemas (project_id, version, labels)"
                        " VALUES ($1, $2, $3)",
                        project_id,
                        version,
                        _labels_value(change.labels),
                    )
                assignments = ", ".join(f"{name} = ${i + 2}" for i, name in enumerate(fields))
                await conn.execute(
                    "UPDATE projects SET updated_at = now()"
                    + (f", {assignments}" if assignments else "")
                    + " WHERE id = $1",
                    project_id,
                    *fields.values(),
                )
                details = {**fields, "label_schema_version": version}
                await audit(conn, tenant, actor, "project.update", f"project:{project_id}", details)
        except asyncpg.UniqueViolationError:
            raise Conflict(f"a project named {change.name!r} exists", "duplicate_name") from None
        return await self.project(tenant, project_id)

    async def archive_project(self, tenant: str, project_id: UUID, actor: str) -> Project:
        await self.project(tenant, project_id)
        async with self._db.transaction() as conn:
            await conn.execute(
                "UPDATE projects SET archived_at = coalesce(archived_at, now()), updated_at = now()"
                " WHERE id = $1",
                project_id,
            )
            await audit(conn, tenant, actor, "project.archive", f"project:{project_id}")
        return await self.project(tenant, project_id)

    async def existing_hashes(self, project_id: UUID, hashes: list[str]) -> dict[str, UUID]:
        """Content hash → item id, for those hashes the project already holds."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                "SELECT content_hash, id FROM items WHERE project_id = $1"
                " AND content_hash = ANY($2::text[])",
                project_id,
                hashes,
            )
        return {row["content_hash"]: row["id"] for row in rows}

    async def referenced_keys(self, keys: list[str]) -> set[str]:
        """Those of ``keys`` that an item row names (committed uploads)."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                "SELECT object_key FROM items WHERE object_key = ANY($1::text[])", keys
            )
        return {row["object_key"] for row in rows}

    async def add_items(
        self, tenant: str, project_id: UUID, new: list[NewItem], actor: str
    ) -> tuple[list[Item], dict[str, UUID]]:
        """Insert items; returns (created, hash → id of those another upload got first)."""
        rows: list[asyncpg.Record] = []
        async with self._db.transaction() as conn:
            await lock_active_project(conn, project_id, share=True)
            for item in new:
                row = await conn.fetchrow(
                    "INSERT INTO items (id, project_id, content_hash, media_type, byte_size,"
                    " width, height, object_key, text, filename)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
                    f" ON CONFLICT (project_id, content_hash) DO NOTHING RETURNING {_ITEM_COLUMNS}",
                    uuid4(),
                    project_id,
                    item.content_hash,
                    item.media_type,
                    item.byte_size,
                    item.width,
                    item.height,
                    item.object_key,
                    item.text,
                    item.filename,
                )
                if row is not None:
                    rows.append(row)
            if rows:
                await audit(
                    conn,
                    tenant,
                    actor,
                    "items.upload",
                    f"project:{project_id}",
                    {"count": len(rows)},
                )
        created = {row["content_hash"] for row in rows}
        lost = [item.content_hash for item in new if item.content_hash not in created]
        raced = await self.existing_hashes(project_id, lost) if lost else {}
        return [Item(**dict(row)) for row in rows], raced

    async def items(
        self, project_id: UUID, after: UUID | None, limit: int
    ) -> tuple[list[Item], UUID | None]:
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                f"SELECT {_ITEM_COLUMNS} FROM items WHERE project_id = $1"
                " AND ($2::uuid IS NULL OR id > $2) ORDER BY id LIMIT $3",
                project_id,
                after,
                limit + 1,
            )
        items = [Item(**dict(row)) for row in rows[:limit]]
        return items, items[-1].id if len(rows) > limit else None


async def audit(
    conn: asyncpg.Connection,
    tenant: str,
    actor: str,
    action: str,
    subject: str,
    details: dict[str, Any] | None = None,
) -> None:
    """Record who did what, in the caller's transaction, with the request's id."""
    await conn.execute(
        "INSERT INTO audit_events (tenant, actor, action, subject, details, request_id)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        tenant,
        actor,
        action,
        subject,
        details or {},
        current_request_id.get(),
    )


async def lock_active_project(conn: asyncpg.Connection, project_id: UUID, share: bool) -> None:
    """409 when the project is archived, read under a lock on its row held to commit: an
    archive (which updates the row) waits for this transaction, or this one sees it. A check
    before the transaction let a job, an upload or a change land on a project archived
    meanwhile. ``share``: a share lock (uploads, which may run side by side); else an
    update lock (a submission, which ``check_open`` takes anyway)."""
    archived = await conn.fetchval(
        "SELECT archived_at IS NOT NULL FROM projects WHERE id = $1"
        + (" FOR SHARE" if share else " FOR UPDATE"),
        project_id,
    )
    if archived:
        raise Conflict(f"project {project_id} is archived", "project_archived")


async def check_open(conn: asyncpg.Connection, table: str, project_id: UUID, limit: int) -> None:
    """429 when the project has ``limit`` unfinished rows in ``table`` (jobs or exports).
    The project row is locked, so two submissions cannot both take the last place."""
    await conn.execute("SELECT 1 FROM projects WHERE id = $1 FOR UPDATE", project_id)
    open_ = await conn.fetchval(
        f"SELECT count(*) FROM {table} WHERE project_id = $1 AND status IN ('queued', 'running')",
        project_id,
    )
    if open_ >= limit:
        raise QuotaExceeded(
            f"the project has {open_} unfinished {table}; at most {limit} at once",
            retry_after_s=30,
        )
