"""Batch labeling jobs in PostgreSQL: a job whose items come from a dataset, written in
bulk (COPY into a temporary table, then one ``INSERT ... ON CONFLICT``).

A batch job is an ordinary row of ``jobs``: the API shows its counts, results and
errors as it shows any job's. Its ``job_items`` are leased to the batch (``owner``) from
the moment they are added, with every attempt already spent, so the service's job runner
never claims them; the batch renews the leases while it works. If the batch dies, the
runner's reaper fails what it left (with ``STOPPED``) once the leases expire, and a rerun
labels those items. Predictions are written once per (item, model version, parameters):
a rerun finds them and labels nothing again.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields
from typing import Any
from uuid import UUID, uuid4

from modelship.core.context import current_request_id
from modelship.core.records import Project
from storage.catalog import NewItem, audit, check_open, lock_active_project
from storage.jobs import Failure, Success, finish_if_done
from storage.objects import ObjectStore
from storage.postgres import Database

STOPPED = "the batch job stopped before labeling this item; run it again"
# The attempts a leased batch item shows: the runner claims only items with attempts left.
_ALL_SPENT = 2**31 - 1


@dataclass(frozen=True)
class BatchItem(NewItem):
    """One item read from a dataset: the columns of ``items``, and why it cannot be
    labeled (``error``: its job item fails at once). An entry that yielded no content
    (unreadable, too large, outside the allowed prefixes) is an item with the empty text
    and a ``source:`` hash of where it came from, so that its failure has an item."""

    error: str | None = None


_COLUMNS = [f.name for f in fields(BatchItem)]


@dataclass(frozen=True)
class Pending:
    """An item of the job still to label."""

    item_id: UUID
    object_key: str | None
    text: str | None


@dataclass(frozen=True)
class Added:
    """What adding a chunk of a dataset did."""

    items: int  # new job items (duplicates of earlier ones in the job are not)
    pending: list[Pending]  # to label
    unused_keys: list[str]  # objects written for content the project held under other keys


def content_key(tenant: str, project_id: UUID, content_hash: str, extension: str) -> str:
    """An object key as ``ObjectStore.new_key`` makes them, with the content hash in place
    of the random part: the same bytes always go to one key, so a duplicate or a rerun
    writes nothing new."""
    folder, name = ObjectStore.new_key(tenant, str(project_id), extension).rsplit("/", 1)
    return f"{folder}/{content_hash[:32]}{name[32:]}"


class BatchStore:
    """The PostgreSQL side of batch jobs.

    Args:
        db: the database.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    async def start(
        self,
        tenant: str,
        project: Project,
        model: str,
        options: dict[str, Any],
        actor: str,
        max_open: int,
        lease_s: float,
    ) -> UUID:
        """Commit a running job with no items yet, held open for ``lease_s`` (``renew``);
        the request id names the batch run. A project already holding ``max_open``
        unfinished jobs gets 429, an archived one 409, as over the API."""
        job_id = uuid4()
        async with self._db.transaction() as conn:
            # the run read the project long before (it listed its dataset since)
            await lock_active_project(conn, project.id, share=False)
            await check_open(conn, "jobs", project.id, max_open)
            await conn.execute(
                "INSERT INTO jobs (id, project_id, status, model, label_schema_version, options,"
                " total_items, request_id, started_at, alive_until)"
                " VALUES ($1, $2, 'running', $3, $4, $5, 0, $6, now(),"
                " now() + make_interval(secs => $7))",
                job_id,
                project.id,
                model,
                project.label_schema_version,
                options,
                current_request_id.get(),
                lease_s,
            )
            await audit(conn, tenant, actor, "job.submit", f"job:{job_id}", {"batch": True})
        return job_id

    async def add(
        self,
        project_id: UUID,
        job_id: UUID,
        owner: str,
        rows: list[BatchItem],
        version: str,
        params_hash: str,
        lease_s: float,
    ) -> Added:
        """Insert a chunk's new items (one per content hash, as uploads do) and its new job
        items; settle at once the items that failed to read and those labeled before by
        ``version`` with ``params_hash``. Returns the items left to label."""
        async with self._db.transaction() as conn:
            await conn.execute(
                "CREATE TEMP TABLE batch_in (content_hash text, media_type text,"
                " byte_size bigint, width integer, height integer, object_key text, text text,"
                " filename text, error text) ON COMMIT DROP"
            )
            await conn.copy_records_to_table(
                "batch_in", records=[astuple(row) for row in rows], columns=_COLUMNS
            )
            # A job cancelled while its run was reading (the run sees it at its next report)
            # takes no more items; the objects stored for them that no item holds are the
            # run's to delete. Read without a lock (a cancel locks items, then the job): what
            # a cancel committing meanwhile misses, finish() cancels.
            status = await conn.fetchval("SELECT status FROM jobs WHERE id = $1", job_id)
            if status != "running":
                orphans = await conn.fetch(
                    "SELECT DISTINCT b.object_key FROM batch_in b"
                    " WHERE b.object_key IS NOT NULL AND NOT EXISTS (SELECT 1 FROM items i"
                    " WHERE i.project_id = $1 AND i.content_hash = b.content_hash"
                    " AND i.object_key = b.object_key)",
                    project_id,
                )
                return Added(0, [], [r["object_key"] for r in orphans])
            await conn.execute(
                "INSERT INTO items (id, project_id, content_hash, media_type, byte_size, width,"
                " height, object_key, text, filename)"
                " SELECT DISTINCT ON (content_hash) gen_random_uuid(), $1, content_hash,"
                " media_type, byte_size, width, height, object_key, text, filename"
                " FROM batch_in ORDER BY content_hash"
                " ON CONFLICT (project_id, content_hash) DO NOTHING",
                project_id,
            )
            added = await conn.fetch(
                "INSERT INTO job_items (job_id, item_id, state, attempts, lease_owner,"
                " lease_expires_at, error)"
                " SELECT DISTINCT $2::uuid, i.id, 'leased', $6::integer, $3,"
                " now() + make_interval(secs => $4), $5"
                " FROM batch_in b JOIN items i ON i.project_id = $1"
                " AND i.content_hash = b.content_hash"
                " ON CONFLICT (job_id, item_id) DO NOTHING RETURNING item_id",
                project_id,
                job_id,
                owner,
                lease_s,
                STOPPED,
                _ALL_SPENT,
            )
            ids = [row["item_id"] for row in added]
            await conn.execute(
                "UPDATE job_items ji SET state = 'failed', error = b.error, attempts = 1,"
                " lease_owner = NULL, lease_expires_at = NULL, finished_at = now()"
                " FROM batch_in b JOIN items i ON i.project_id = $3"
                " AND i.content_hash = b.content_hash"
                " WHERE b.error IS NOT NULL AND ji.job_id = $1 AND ji.item_id = i.id"
                " AND ji.item_id = ANY($2::uuid[])",
                job_id,
                ids,
                project_id,
            )
            await conn.execute(
                "UPDATE job_items ji SET state = 'succeeded', prediction_id = p.id, attempts = 0,"
                " error = NULL, lease_owner = NULL, lease_expires_at = NULL, finished_at = now()"
                " FROM predictions p WHERE ji.job_id = $1 AND ji.item_id = ANY($2::uuid[])"
                " AND ji.state = 'leased' AND p.item_id = ji.item_id"
                " AND p.model_version = $3 AND p.params_hash = $4",
                job_id,
                ids,
                version,
                params_hash,
            )
            pending = await conn.fetch(
                "SELECT i.id, i.object_key, i.text FROM job_items ji"
                " JOIN items i ON i.id = ji.item_id WHERE ji.job_id = $1"
                " AND ji.item_id = ANY($2::uuid[]) AND ji.state = 'leased'",
                job_id,
                ids,
            )
            unused = await conn.fetch(
                "SELECT DISTINCT b.object_key FROM batch_in b JOIN items i"
                " ON i.project_id = $1 AND i.content_hash = b.content_hash"
                " WHERE b.object_key IS NOT NULL AND b.error IS NULL"
                " AND i.object_key IS DISTINCT FROM b.object_key",
                project_id,
            )
            await conn.execute(
                "UPDATE jobs SET total_items = total_items + $2 WHERE id = $1", job_id, len(ids)
            )
        return Added(
            items=len(ids),
            pending=[Pending(r["id"], r["object_key"], r["text"]) for r in pending],
            unused_keys=[r["object_key"] for r in unused],
        )

    async def record(
        self,
        project_id: UUID,
        job_id: UUID,
        owner: str,
        model: str,
        successes: list[Success],
        failures: list[Failure],
    ) -> int:
        """Write labeled items' predictions and annotations and fail the others, for job
        items still leased to ``owner``; returns how many it settled. A person's decision
        on an item is never overwritten by a model."""
        async with self._db.transaction() as conn:
            await conn.execute(
                "CREATE TEMP TABLE batch_out (item_id uuid, model_version text,"
                " params_hash text, output jsonb, top_label text, top_score double precision,"
                " status text, value jsonb, label text, score double precision,"
                " uncertainty double precision) ON COMMIT DROP"
            )
            await conn.copy_records_to_table(
                "batch_out", records=[_prediction(s) for s in successes]
            )
            await conn.execute(
                "INSERT INTO predictions (item_id, model, model_version, params_hash, output,"
                " top_label, top_score) SELECT o.item_id, $3, o.model_version, o.params_hash,"
                " o.output, o.top_label, o.top_score FROM batch_out o JOIN job_items ji"
                " ON ji.job_id = $1 AND ji.item_id = o.item_id AND ji.state = 'leased'"
                " AND ji.lease_owner = $2"
                " ON CONFLICT (item_id, model_version, params_hash) DO NOTHING",
                job_id,
                owner,
                model,
            )
            settled: int = await conn.fetchval(
                "WITH settled AS ("
                " UPDATE job_items ji SET state = 'succeeded', prediction_id = p.id,"
                " attempts = 1, error = NULL, lease_owner = NULL, lease_expires_at = NULL,"
                " finished_at = now() FROM batch_out o JOIN predictions p"
                " ON p.item_id = o.item_id AND p.model_version = o.model_version"
                " AND p.params_hash = o.params_hash"
                " WHERE ji.job_id = $1 AND ji.item_id = o.item_id AND ji.state = 'leased'"
                " AND ji.lease_owner = $2 RETURNING ji.item_id, ji.prediction_id),"
                " annotated AS (INSERT INTO annotations (item_id, project_id, prediction_id,"
                " status, value, top_label, score, uncertainty, updated_by)"
                " SELECT s.item_id, $3, s.prediction_id, o.status, o.value, o.label, o.score,"
                " o.uncertainty, 'model' FROM settled s JOIN batch_out o USING (item_id)"
                " ON CONFLICT (item_id) DO UPDATE SET prediction_id = EXCLUDED.prediction_id,"
                " status = EXCLUDED.status, value = EXCLUDED.value,"
                " top_label = EXCLUDED.top_label, score = EXCLUDED.score,"
                " uncertainty = EXCLUDED.uncertainty, updated_by = 'model', updated_at = now()"
                " WHERE annotations.status IN ('pending', 'auto_approved') RETURNING 1)"
                " SELECT count(*) FROM settled",
                job_id,
                owner,
                project_id,
            )
            failed = await conn.execute(
                "UPDATE job_items ji SET state = 'failed', error = f.error, attempts = 1,"
                " lease_owner = NULL, lease_expires_at = NULL, finished_at = now()"
                " FROM unnest($3::uuid[], $4::text[]) AS f(item_id, error)"
                " WHERE ji.job_id = $1 AND ji.item_id = f.item_id AND ji.state = 'leased'"
                " AND ji.lease_owner = $2",
                job_id,
                owner,
                [f.item_id for f in failures],
                [f.error for f in failures],
            )
        return settled + int(failed.split()[-1])

    async def close_dead(self, project_id: UUID) -> int:
        """Close the project's batch jobs whose run died (it stopped renewing them:
        ``alive_until`` passed): their open items fail with ``STOPPED``, as the service's
        reaper fails them when a job runner runs. Returns how many such jobs it found."""
        async with self._db.connection() as conn:
            dead = await conn.fetch(
                "SELECT id FROM jobs WHERE project_id = $1 AND status = 'running'"
                " AND alive_until < now() ORDER BY id",
                project_id,
            )
            ids = [row["id"] for row in dead]
            await conn.execute(
                "UPDATE job_items SET state = 'failed', error = coalesce(error, $2),"
                " lease_owner = NULL, lease_expires_at = NULL, finished_at = now()"
                " WHERE (job_id, item_id) IN (SELECT job_id, item_id FROM job_items"
                " WHERE job_id = ANY($1::uuid[]) AND state = 'leased'"
                " ORDER BY job_id, item_id FOR UPDATE SKIP LOCKED)",
                ids,
                STOPPED,
            )
            for job_id in ids:
                async with conn.transaction():
                    await finish_if_done(conn, job_id)
        return len(ids)

    async def leased(self, job_id: UUID, owner: str) -> list[Pending]:
        """The job's items still leased to ``owner``, as ``add`` returned them."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                "SELECT i.id, i.object_key, i.text FROM job_items ji"
                " JOIN items i ON i.id = ji.item_id WHERE ji.job_id = $1"
                " AND ji.state = 'leased' AND ji.lease_owner = $2 ORDER BY i.id",
                job_id,
                owner,
            )
        return [Pending(r["id"], r["object_key"], r["text"]) for r in rows]

    async def renew(self, job_id: UUID, owner: str, lease_s: float) -> int:
        """Extend the leases the batch holds on its job and its open items (it is still
        working)."""
        async with self._db.transaction() as conn:
            await conn.execute(
                "UPDATE jobs SET alive_until = now() + make_interval(secs => $2) WHERE id = $1",
                job_id,
                lease_s,
            )
            status = await conn.execute(
                "UPDATE job_items SET lease_expires_at = now() + make_interval(secs => $3)"
                " WHERE job_id = $1 AND state = 'leased' AND lease_owner = $2",
                job_id,
                owner,
                lease_s,
            )
        return int(status.split()[-1])

    async def finish(self, job_id: UUID, owner: str) -> None:
        """Fail what the batch leaves unlabeled (``STOPPED``), or cancel it in a cancelled
        job, then close the job: succeeded if any item succeeded, else failed."""
        async with self._db.transaction() as conn:
            await conn.execute(
                "UPDATE job_items ji SET state = CASE WHEN j.status = 'cancelled'"
                " THEN 'cancelled' ELSE 'failed' END,"
                " error = CASE WHEN j.status = 'cancelled' THEN NULL ELSE $3 END,"
                " attempts = 0, lease_owner = NULL, lease_expires_at = NULL,"
                " finished_at = now() FROM jobs j"
                " WHERE j.id = ji.job_id AND ji.job_id = $1 AND ji.state = 'leased'"
                " AND ji.lease_owner = $2",
                job_id,
                owner,
                STOPPED,
            )
            await finish_if_done(conn, job_id)


def _prediction(success: Success) -> tuple[Any, ...]:
    output = success.output
    top = output[0] if output and "score" in output[0] else None
    assessment = success.assessment
    return (
        success.item_id,
        success.model_version,
        success.params_hash,
        output,
        top.get("label") if top else None,
        top.get("score") if top else None,
        success.status,
        assessment.value,
        assessment.top_label,
        assessment.score,
        assessment.uncertainty,
    )
