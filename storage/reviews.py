"""Annotations (an item's current label), review decisions, the review queue, statistics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from modelship.core.errors import Conflict, NotFound
from modelship.core.records import (
    Annotation,
    BulkApproveRequest,
    Item,
    ItemDetail,
    LabelStats,
    Project,
    ProjectStats,
    ReviewAction,
    ReviewQueueEntry,
    ReviewRecord,
)
from storage.catalog import audit
from storage.postgres import Database

_HUMAN = ("approved", "corrected", "rejected")
_TARGET_FIELDS = ("width", "height", "text", "status", "value", "prediction_id")


@dataclass(frozen=True)
class ReviewTarget:
    """An item as a review decision needs it: its size or text, its current annotation
    (``status`` None: not labeled yet)."""

    item_id: UUID
    width: int | None
    height: int | None
    text: str | None
    status: str | None
    value: list[dict[str, Any]] | None
    prediction_id: int | None


_ITEM = "i.id, i.project_id, i.content_hash, i.media_type, i.byte_size, i.width, i.height,"
_ITEM += " i.filename, i.created_at"
_ANNOTATION = (
    "a.item_id, a.status, a.value, a.top_label, a.score, a.uncertainty, a.updated_by,"
    " a.updated_at, p.model, p.model_version, p.output AS prediction"
)
_STRATEGIES = {
    "uncertainty": "a.uncertainty DESC, a.item_id",
    "random": "md5(a.item_id::text || $4), a.item_id",
    "label": "a.uncertainty DESC, a.item_id",
}


def _annotation(row: asyncpg.Record) -> Annotation:
    return Annotation(
        item_id=row["item_id"],
        status=row["status"],
        value=row["value"],
        top_label=row["top_label"],
        score=row["score"],
        uncertainty=row["uncertainty"],
        model=row["model"],
        model_version=row["model_version"],
        prediction=row["prediction"],
        updated_by=row["updated_by"],
        updated_at=row["updated_at"],
    )


def _item(row: asyncpg.Record) -> Item:
    return Item(**{key: row[key] for key in Item.model_fields})


class ReviewStore:
    """People's decisions on a project's labels."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def queue(
        self, project_id: UUID, strategy: str, label: str | None, limit: int, seed: str
    ) -> list[ReviewQueueEntry]:
        """Pending items, most uncertain first (or in a seeded random order, or one label's)."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                f"SELECT {_ITEM}, i.text, {_ANNOTATION} FROM annotations a"
                " JOIN items i ON i.id = a.item_id JOIN predictions p ON p.id = a.prediction_id"
                " WHERE a.project_id = $1 AND a.status = 'pending'"
                " AND ($2::text IS NULL OR a.top_label = $2)"
                f" ORDER BY {_STRATEGIES[strategy]} LIMIT $3",
                project_id,
                label,
                limit,
                *([seed] if strategy == "random" else []),
            )
        return [
            ReviewQueueEntry(item=_item(row), text=row["text"], annotation=_annotation(row))
            for row in rows
        ]

    async def detail(self, project_id: UUID, item_id: UUID) -> ItemDetail:
        async with self._db.connection() as conn:
            item = await conn.fetchrow(
                f"SELECT {_ITEM}, i.text FROM items i WHERE i.id = $1 AND i.project_id = $2",
                item_id,
                project_id,
            )
            if item is None:
                raise NotFound(f"no item {item_id} in this project", "unknown_item")
            annotation = await conn.fetchrow(
                f"SELECT {_ANNOTATION} FROM annotations a"
                " JOIN predictions p ON p.id = a.prediction_id WHERE a.item_id = $1",
                item_id,
            )
            reviews = await conn.fetch(
                "SELECT id, action, reviewer, before, after, created_at FROM reviews"
                " WHERE item_id = $1 ORDER BY id",
                item_id,
            )
        return ItemDetail(
            item=_item(item),
            text=item["text"],
            annotation=_annotation(annotation) if annotation else None,
            reviews=[
                ReviewRecord(
                    id=r["id"],
                    action=r["action"],
                    reviewer=r["reviewer"],
                    before=r["before"],
                    after=r["after"],
                    created_at=r["created_at"],
                )
                for r in reviews
            ],
        )

    async def target(self, project_id: UUID, item_id: UUID) -> ReviewTarget:
        """The item as a review decision needs it (404 if not in the project)."""
        async with self._db.connection() as conn:
            row = await conn.fetchrow(
                "SELECT i.width, i.height, i.text, a.status, a.value, a.prediction_id"
                " FROM items i LEFT JOIN annotations a ON a.item_id = i.id"
                " WHERE i.id = $1 AND i.project_id = $2",
                item_id,
                project_id,
            )
        if row is None:
            raise NotFound(f"no item {item_id} in this project", "unknown_item")
        return ReviewTarget(item_id, **{key: row[key] for key in _TARGET_FIELDS})

    async def record(
        self,
        tenant: str,
        project_id: UUID,
        target: ReviewTarget,
        action: ReviewAction,
        status: str,
        value: list[dict[str, Any]],
        reviewer: str,
    ) -> None:
        """Apply a decision made on ``target`` and record it (who, when, before, after) in
        one transaction; 409 if the annotation changed since ``target`` was read: its
        status, prediction or value (two corrections of one label share the status)."""
        async with self._db.transaction() as conn:
            updated = await conn.execute(
                "UPDATE annotations SET status = $2, value = $3, top_label = $4,"
                " updated_by = $5, updated_at = now() WHERE item_id = $1 AND status = $6"
                " AND prediction_id = $7 AND value = $8",
                target.item_id,
                status,
                value,
                value[0]["label"] if value else None,
                reviewer,
                target.status,
                target.prediction_id,
                target.value,
            )
            if updated.split()[-1] != "1":
                raise Conflict(
                    "the item's label changed meanwhile; read it again", "review_conflict"
                )
            before = {"status": target.status, "value": target.value}
            await _record(
                conn,
                target.prediction_id,
                target.item_id,
                project_id,
                action,
                reviewer,
                before,
                {"status": status, "value": value},
            )
            await audit(conn, tenant, reviewer, f"review.{action}", f"item:{target.item_id}")

    async def bulk_approve(
        self, tenant: str, project: Project, request: BulkApproveRequest, actor: str, limit: int
    ) -> int:
        """Approve at most ``limit`` matching pending annotations in one transaction."""
        async with self._db.transaction() as conn:
            rows = await conn.fetch(
                "SELECT a.item_id, a.status, a.value, a.prediction_id FROM annotations a"
                " WHERE a.project_id = $1 AND a.status = 'pending'"
                " AND ($2::float8 IS NULL OR a.score >= $2)"
                " AND ($3::text IS NULL OR a.top_label = $3) ORDER BY a.item_id LIMIT $4"
                " FOR UPDATE",
                project.id,
                request.min_score,
                request.label,
                limit,
            )
            await conn.execute(
                "UPDATE annotations SET status = 'approved', updated_by = $2, updated_at = now()"
                " WHERE item_id = ANY($1::uuid[])",
                [row["item_id"] for row in rows],
                actor,
            )
            for row in rows:
                before = {"status": row["status"], "value": row["value"]}
                after = {"status": "approved", "value": row["value"]}
                await _record(
                    conn,
                    row["prediction_id"],
                    row["item_id"],
                    project.id,
                    ReviewAction.approve,
                    actor,
                    before,
                    after,
                )
            await audit(
                conn,
                tenant,
                actor,
                "review.bulk_approve",
                f"project:{project.id}",
                {"approved": len(rows), **request.model_dump()},
            )
        return len(rows)

    async def stats(self, project: Project) -> ProjectStats:
        async with self._db.connection() as conn:
            items = await conn.fetchval(
                "SELECT count(*) FROM items WHERE project_id = $1", project.id
            )
            by_status = {
                r["status"]: r["n"]
                for r in await conn.fetch(
                    "SELECT status, count(*) AS n FROM annotations WHERE project_id = $1"
                    " GROUP BY status",
                    project.id,
                )
            }
            finals = await conn.fetch(
                "SELECT e->>'label' AS label, count(DISTINCT a.item_id) AS n FROM annotations a,"
                " jsonb_array_elements(a.value) e WHERE a.project_id = $1 GROUP BY 1",
                project.id,
            )
            # The model's label against the person's decision, on reviewed items.
            judged = await conn.fetch(
                "SELECT a.status, p.output->0->>'label' AS predicted,"
                " a.value->0->>'label' AS final FROM annotations a"
                " JOIN predictions p ON p.id = a.prediction_id"
                " WHERE a.project_id = $1 AND a.status IN ('approved', 'corrected', 'rejected')",
                project.id,
            )
        return _stats(project, items, by_status, {r["label"]: r["n"] for r in finals}, judged)


async def _record(
    conn: asyncpg.Connection,
    prediction_id: int | None,
    item_id: UUID,
    project_id: UUID,
    action: ReviewAction,
    reviewer: str,
    before: dict[str, Any],
    after: dict[str, Any],
) -> None:
    await conn.execute(
        "INSERT INTO reviews (prediction_id, item_id, project_id, action, reviewer, before, after)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)",
        prediction_id,
        item_id,
        project_id,
        action.value,
        reviewer,
        before,
        after,
    )


def _stats(
    project: Project,
    items: int,
    by_status: dict[str, int],
    finals: dict[str, int],
    judged: list[asyncpg.Record],
) -> ProjectStats:
    labeled = sum(by_status.values())
    reviewed: dict[str, list[bool]] = {}
    for row in judged:
        # Approved keeps the model's label; a correction to the same top label keeps it too.
        kept = row["status"] == "approved" or (
            row["status"] == "corrected" and row["final"] == row["predicted"]
        )
        reviewed.setdefault(row["predicted"] or "", []).append(kept)
    names = [label.name for label in project.labels or []]
    names += sorted((set(finals) | set(reviewed)) - set(names) - {""})
    labels = []
    for name in names:
        verdicts = reviewed.get(name, [])
        labels.append(
            LabelStats(
                label=name,
                items=finals.get(name, 0),
                reviewed=len(verdicts),
                model_correct=sum(verdicts),
                accuracy=sum(verdicts) / len(verdicts) if verdicts else None,
            )
        )
    all_verdicts = [v for verdicts in reviewed.values() for v in verdicts]
    return ProjectStats(
        items=items,
        labeled=labeled,
        by_status={s: by_status.get(s, 0) for s in ("pending", "auto_approved", *_HUMAN)},
        auto_approval_rate=by_status.get("auto_approved", 0) / labeled if labeled else None,
        reviewed=len(all_verdicts),
        model_accuracy=sum(all_verdicts) / len(all_verdicts) if all_verdicts else None,
        labels=labels,
    )
