"""Durable labeling jobs: a PostgreSQL lease queue (``FOR UPDATE SKIP LOCKED``).

A job's items are rows of ``job_items``. A runner *claims* a batch — the rows become
``leased`` until ``lease_expires_at``, to an owner name of that claim alone (the runner's
name and a token), so a claim that outlived its lease can never complete, renew or give
back rows a newer claim holds, even one of the same runner — and *completes* it: each
success writes its prediction and moves the row to ``succeeded`` in one transaction, but
only while the claim still owns the lease. A runner that dies leaves leases that expire;
the next claim takes those rows again. So delivery is at-least-once, every row ends in
exactly one terminal state, and a prediction is stored once per (item, model version,
parameters).

Every statement that writes several ``job_items`` rows locks them in ``item_id`` order,
and a completion writes predictions and annotations in that order too, so completions,
cancels, renewals and the reaper never wait on each other in a cycle (a deadlock).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID, uuid4

import asyncpg

from modelship.core.config import Task
from modelship.core.context import current_request_id
from modelship.core.errors import Conflict, InvalidInput, NotFound
from modelship.core.records import ErrorCount, ItemState, Job, JobResult, Project
from modelship.core.review import Assessment
from storage.catalog import audit, check_open, lock_active_project
from storage.postgres import Database

_OPEN = "(ji.state = 'queued' OR (ji.state = 'leased' AND ji.lease_expires_at < now()))"
# A claim whose oldest job's open items are all being claimed by others tries the next
# job, up to this many, rather than come back empty while newer jobs wait.
_CLAIM_JOBS = 8


@dataclass(frozen=True)
class ClaimedItem:
    item_id: UUID
    attempts: int
    content_hash: str
    media_type: str
    object_key: str | None
    text: str | None


@dataclass(frozen=True)
class Claim:
    """A leased batch of one job's items."""

    job_id: UUID
    project_id: UUID
    tenant: str
    model: str
    task: Task
    auto_approve_threshold: float
    options: dict[str, Any]
    items: list[ClaimedItem]
    request_id: str | None = None  # of the request that submitted the job
    owner: str = ""  # the lease owner of this claim's rows: the runner's name and a token


@dataclass(frozen=True)
class Success:
    """A labeled item, with the annotation its prediction gets (decided by the caller)."""

    item_id: UUID
    model_version: str
    params_hash: str
    output: list[dict[str, Any]]
    status: str  # "auto_approved" or "pending"
    assessment: Assessment


@dataclass(frozen=True)
class Failure:
    item_id: UUID
    error: str


class Completed(NamedTuple):
    """What a completion recorded: rows the claim still held, and failures that ended
    their row (no attempt left) rather than queueing it again."""

    counted: int
    failed: int


class JobStore:
    """Submitting, watching and running jobs."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # --- the API side ------------------------------------------------------------------

    async def submit(
        self,
        tenant: str,
        project: Project,
        item_ids: list[UUID] | None,
        options: dict[str, Any],
        idempotency_key: str | None,
        request_hash: str,
        actor: str,
        max_open: int | None = None,
    ) -> tuple[Job, bool]:
        """Commit a job and its queue rows; returns (job, created). 202 only after this.
        With ``max_open``, a project already holding that many unfinished jobs gets 429.
        The job is read after the transaction: a connection held while taking a second one
        would starve the pool when as many submissions race as it has connections."""
        job_id, created = await self._submit(
            tenant, project, item_ids, options, idempotency_key, request_hash, actor, max_open
        )
        return await self.job(tenant, job_id), created

    async def _submit(
        self,
        tenant: str,
        project: Project,
        item_ids: list[UUID] | None,
        options: dict[str, Any],
        idempotency_key: str | None,
        request_hash: str,
        actor: str,
        max_open: int | None,
    ) -> tuple[UUID, bool]:
        async with self._db.transaction() as conn:
            # The project's row first: an archive cannot land before the job commits, and a
            # retry with the same key waits for the first try to commit and replays its job
            # (looked up before the lock, it counted that job against ``max_open``: 429).
            await lock_active_project(conn, project.id, share=False)
            if idempotency_key is not None:
                found = await _by_key(conn, project.id, idempotency_key, request_hash)
                if found is not None:
                    return found, False
            if max_open is not None:
                await check_open(conn, "jobs", project.id, max_open)
            if item_ids is not None:
                known = await conn.fetchval(
                    "SELECT count(*) FROM items WHERE project_id = $1 AND id = ANY($2::uuid[])",
                    project.id,
                    item_ids,
                )
                if known != len(set(item_ids)):
                    raise InvalidInput(
                        f"{len(set(item_ids)) - known} item ids are not in this project",
                        "unknown_items",
                    )
            job_id = uuid4()
            inserted = await conn.fetchval(
                "INSERT INTO jobs (id, project_id, status, model, label_schema_version, options,"
                " total_items, idempotency_key, request_hash, request_id)"
                " VALUES ($1, $2, 'queued', $3, $4, $5, 0, $6, $7, $8)"
                " ON CONFLICT (project_id, idempotency_key) DO NOTHING RETURNING id",
                job_id,
                project.id,
                project.model,
                project.label_schema_version,
                options,
                idempotency_key,
                request_hash,
                current_request_id.get(),
            )
            if inserted is None:  # a concurrent retry with the same key won
                assert idempotency_key is not None
                found = await _by_key(conn, project.id, idempotency_key, request_hash)
                assert found is not None
                return found, False
            total = await conn.fetchval(
                "WITH added AS (INSERT INTO job_items (job_id, item_id)"
                " SELECT $1, id FROM items WHERE project_id = $2"
                " AND ($3::uuid[] IS NULL OR id = ANY($3::uuid[])) RETURNING 1)"
                " SELECT count(*) FROM added",
                job_id,
                project.id,
                item_ids,
            )
            if total == 0:
                raise InvalidInput("the project has no items to label", "no_items")
            await conn.execute("UPDATE jobs SET total_items = $2 WHERE id = $1", job_id, total)
            await audit(conn, tenant, actor, "job.submit", f"job:{job_id}", {"items": total})
        return job_id, True

    async def job(self, tenant: str, job_id: UUID) -> Job:
        async with self._db.connection() as conn:
            row = await conn.fetchrow(
                "SELECT j.*, now() AS now FROM jobs j JOIN projects p ON p.id = j.project_id"
                " WHERE j.id = $1 AND p.tenant = $2",
                job_id,
                tenant,
            )
            if row is None:
                raise NotFound(f"no job {job_id}", "unknown_job")
            counts = {
                ItemState(r["state"]): r["n"]
                for r in await conn.fetch(
                    "SELECT state, count(*) AS n FROM job_items WHERE job_id = $1 GROUP BY state",
                    job_id,
                )
            }
            errors = await conn.fetch(
                "SELECT error, count(*) AS n FROM job_items WHERE job_id = $1 AND state = 'failed'"
                " GROUP BY error ORDER BY n DESC, error LIMIT 10",
                job_id,
            )
        return _job(row, counts, [ErrorCount(error=e["error"], count=e["n"]) for e in errors])

    async def cancel(self, tenant: str, job_id: UUID, actor: str) -> Job:
        """Cancel the job's open items and the job; 409 if it finished first. The status is
        read under the locks the last completion takes too, so a job that finishes while
        it is being cancelled is either cancelled or reported finished, never both."""
        await self.job(tenant, job_id)  # 404 for another tenant's job
        async with self._db.transaction() as conn:  # items, then the job: as runners lock
            await conn.execute(
                "UPDATE job_items SET state = 'cancelled', lease_owner = NULL,"
                " finished_at = now() WHERE (job_id, item_id) IN (SELECT job_id, item_id"
                " FROM job_items WHERE job_id = $1 AND state IN ('queued', 'leased')"
                " ORDER BY item_id FOR UPDATE)",
                job_id,
            )
            await _lock_job(conn, job_id)
            cancelled = await conn.execute(
                "UPDATE jobs SET status = 'cancelled', finished_at = coalesce(finished_at, now())"
                " WHERE id = $1 AND status IN ('queued', 'running')",
                job_id,
            )
            if cancelled.split()[-1] != "1":
                raise Conflict(f"job {job_id} already finished", "job_finished")
            await audit(conn, tenant, actor, "job.cancel", f"job:{job_id}")
        return await self.job(tenant, job_id)

    async def results(
        self, tenant: str, job_id: UUID, after: UUID | None, limit: int
    ) -> tuple[list[JobResult], UUID | None]:
        await self.job(tenant, job_id)  # 404 for another tenant's job
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                "SELECT ji.item_id, ji.state, ji.attempts, ji.error, p.model, p.model_version,"
                " p.output FROM job_items ji LEFT JOIN predictions p ON p.id = ji.prediction_id"
                " WHERE ji.job_id = $1 AND ($2::uuid IS NULL OR ji.item_id > $2)"
                " ORDER BY ji.item_id LIMIT $3",
                job_id,
                after,
                limit + 1,
            )
        results = [
            JobResult(
                item_id=r["item_id"],
                state=r["state"],
                attempts=r["attempts"],
                error=r["error"],
                model=r["model"],
                model_version=r["model_version"],
                output=r["output"],
            )
            for r in rows[:limit]
        ]
        return results, results[-1].item_id if len(rows) > limit else None

    # --- the runner side ---------------------------------------------------------------

    async def claim(
        self, owner: str, limit: int, lease_s: float, max_attempts: int
    ) -> Claim | None:
        """Lease up to ``limit`` open items of the oldest job that has any not being claimed
        right now, to an owner name of this claim alone (``owner`` and a token:
        ``Claim.owner``)."""
        owner = f"{owner}/{uuid4().hex[:12]}"
        async with self._db.transaction() as conn:
            rows: list[asyncpg.Record] = []
            passed: list[UUID] = []  # jobs whose open items other claims hold right now
            while not rows and len(passed) < _CLAIM_JOBS:
                # One statement: the job, its items, and the job's id even when no item was
                # left to this claim (a row of NULLs but ``chosen``); no row: no job at all.
                found = await conn.fetch(
                    f"""
                    WITH job AS (
                        SELECT j.id FROM jobs j
                        WHERE j.status IN ('queued', 'running') AND NOT j.id = ANY($5::uuid[])
                        AND EXISTS (SELECT 1 FROM job_items ji
                            WHERE ji.job_id = j.id AND {_OPEN} AND ji.attempts < $4)
                        ORDER BY j.created_at LIMIT 1
                    ), picked AS (
                        SELECT ji.job_id, ji.item_id FROM job_items ji
                        JOIN job ON ji.job_id = job.id
                        WHERE {_OPEN} AND ji.attempts < $4
                        ORDER BY ji.item_id LIMIT $2 FOR UPDATE OF ji SKIP LOCKED
                    ), leased AS (
                        UPDATE job_items ji SET state = 'leased', attempts = ji.attempts + 1,
                            lease_owner = $1,
                            lease_expires_at = now() + make_interval(secs => $3)
                        FROM picked
                        WHERE ji.job_id = picked.job_id AND ji.item_id = picked.item_id
                        RETURNING ji.job_id, ji.item_id, ji.attempts
                    )
                    SELECT job.id AS chosen, leased.* FROM job LEFT JOIN leased ON true
                    """,
                    owner,
                    limit,
                    lease_s,
                    max_attempts,
                    passed,
                )
                if not found:
                    return None
                rows = [row for row in found if row["item_id"] is not None]
                passed.append(found[0]["chosen"])
            if not rows:
                return None
            job_id = rows[0]["job_id"]
            # Only a queued job's row is written (and locked) here: finishers lock running ones.
            await conn.execute(
                "UPDATE jobs SET status = 'running', started_at = now()"
                " WHERE id = $1 AND status = 'queued'",
                job_id,
            )
            job = await conn.fetchrow(
                "SELECT j.project_id, j.model, j.options, j.request_id, p.tenant, p.task,"
                " p.auto_approve_threshold FROM jobs j"
                " JOIN projects p ON p.id = j.project_id WHERE j.id = $1",
                job_id,
            )
            attempts = {r["item_id"]: r["attempts"] for r in rows}
            items = await conn.fetch(
                "SELECT id, content_hash, media_type, object_key, text FROM items"
                " WHERE id = ANY($1::uuid[]) ORDER BY id",
                list(attempts),
            )
        return Claim(
            job_id=job_id,
            project_id=job["project_id"],
            tenant=job["tenant"],
            model=job["model"],
            task=Task(job["task"]),
            auto_approve_threshold=job["auto_approve_threshold"],
            options=job["options"],
            request_id=job["request_id"],
            owner=owner,
            items=[
                ClaimedItem(
                    item_id=i["id"],
                    attempts=attempts[i["id"]],
                    content_hash=i["content_hash"],
                    media_type=i["media_type"],
                    object_key=i["object_key"],
                    text=i["text"],
                )
                for i in items
            ],
        )

    async def renew(self, claim: Claim, lease_s: float) -> int:
        """Extend the leases the claim still holds (its runner is still working)."""
        async with self._db.connection() as conn:
            status = await conn.execute(
                "UPDATE job_items SET lease_expires_at = now() + make_interval(secs => $3)"
                " WHERE (job_id, item_id) IN (SELECT job_id, item_id FROM job_items"
                " WHERE job_id = $1 AND state = 'leased' AND lease_owner = $2"
                " ORDER BY item_id FOR UPDATE)",
                claim.job_id,
                claim.owner,
                lease_s,
            )
        return int(status.split()[-1])

    async def complete(
        self,
        claim: Claim,
        successes: list[Success],
        failures: list[Failure],
        max_attempts: int,
        on_decision: Callable[[str], None] | None = None,
    ) -> Completed:
        """Record outcomes of rows the claim still holds. A
        failed item is queued again, or ends failed once the attempts its row has spent
        reach ``max_attempts``. ``on_decision`` hears each new prediction's review status
        (after commit)."""
        counted = failed = 0
        decisions: list[str] = []
        owner = claim.owner
        async with self._db.transaction() as conn:
            await conn.execute(
                "SELECT 1 FROM job_items WHERE job_id = $1 AND item_id = ANY($2::uuid[])"
                " ORDER BY item_id FOR UPDATE",
                claim.job_id,
                [item.item_id for item in claim.items],
            )
            for success in sorted(successes, key=lambda s: s.item_id):
                owned = await _release(conn, owner, claim.job_id, success.item_id, "succeeded")
                if owned is None:
                    continue
                output = success.output
                top = output[0] if output and "score" in output[0] else None
                prediction_id = await conn.fetchval(
                    "INSERT INTO predictions (item_id, model, model_version, params_hash,"
                    " output, top_label, top_score) VALUES ($1, $2, $3, $4, $5, $6, $7)"
                    " ON CONFLICT (item_id, model_version, params_hash) DO NOTHING RETURNING id",
                    success.item_id,
                    claim.model,
                    success.model_version,
                    success.params_hash,
                    output,
                    top.get("label") if top else None,
                    top.get("score") if top else None,
                )
                if prediction_id is None:  # labeled before (another job): reuse it
                    prediction_id = await conn.fetchval(
                        "SELECT id FROM predictions WHERE item_id = $1 AND model_version = $2"
                        " AND params_hash = $3",
                        success.item_id,
                        success.model_version,
                        success.params_hash,
                    )
                await conn.execute(
                    "UPDATE job_items SET prediction_id = $3 WHERE job_id = $1 AND item_id = $2",
                    claim.job_id,
                    success.item_id,
                    prediction_id,
                )
                decisions.append(await _annotate(conn, claim.project_id, success, prediction_id))
                counted += 1
            for failure in failures:
                state = await _release(
                    conn, owner, claim.job_id, failure.item_id, None, failure.error, max_attempts
                )
                counted += state is not None
                failed += state == "failed"
            await finish_if_done(conn, claim.job_id)
        if on_decision is not None:
            for decision in decisions:
                on_decision(decision)
        return Completed(counted, failed)

    async def open_items(self) -> int:
        """Job items queued or leased, across every job: the queue's depth."""
        async with self._db.connection() as conn:
            depth: int = await conn.fetchval(
                "SELECT count(*) FROM job_items WHERE state IN ('queued', 'leased')"
            )
        return depth

    async def reap(self, max_attempts: int) -> int:
        """Fail items with no attempt left that no claim will take: leased ones whose
        every attempt ended in an expired lease (their runner died), and queued ones that
        spent their attempts under a higher ``max_attempts`` than this one. Then close
        jobs left with no open item, but for a batch job whose run still renews it
        (``alive_until``: it reads its next chunk). Rows a late runner is completing are
        skipped (the next reap sees them, if still open)."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                "UPDATE job_items SET state = 'failed', lease_owner = NULL, finished_at = now(),"
                " lease_expires_at = NULL,"
                " error = coalesce(error, 'lease expired ' || attempts || ' times')"
                " WHERE (job_id, item_id) IN (SELECT job_id, item_id FROM job_items"
                " WHERE attempts >= $1 AND (state = 'queued'"
                " OR (state = 'leased' AND lease_expires_at < now()))"
                " ORDER BY job_id, item_id FOR UPDATE SKIP LOCKED)"
                " RETURNING job_id",
                max_attempts,
            )
            stalled = await conn.fetch(
                "SELECT id FROM jobs j WHERE status IN ('queued', 'running')"
                " AND (alive_until IS NULL OR alive_until < now()) AND NOT EXISTS ("
                " SELECT 1 FROM job_items WHERE job_id = j.id AND state IN ('queued', 'leased'))"
            )
            for job_id in sorted({r["job_id"] for r in rows} | {r["id"] for r in stalled}):
                async with conn.transaction():
                    await finish_if_done(conn, job_id)
        return len(rows)

    async def release(
        self, owner: str, job_id: UUID | None = None, item_ids: list[UUID] | None = None
    ) -> int:
        """Give leases back without spending an attempt: those of a claim (``owner`` is its
        ``Claim.owner``) whose batch failed through no fault of its items, or every lease
        of a runner's claims (``owner`` is the runner's name: a clean shutdown)."""
        async with self._db.connection() as conn:
            status = await conn.execute(
                "UPDATE job_items SET state = 'queued', lease_owner = NULL,"
                " lease_expires_at = NULL, attempts = greatest(attempts - 1, 0)"
                " WHERE (job_id, item_id) IN (SELECT job_id, item_id FROM job_items"
                " WHERE state = 'leased'"
                " AND (lease_owner = $1 OR starts_with(lease_owner, $1 || '/'))"
                " AND ($2::uuid IS NULL OR job_id = $2)"
                " AND ($3::uuid[] IS NULL OR item_id = ANY($3::uuid[]))"
                " ORDER BY job_id, item_id FOR UPDATE)",
                owner,
                job_id,
                item_ids,
            )
        return int(status.split()[-1])


async def _by_key(
    conn: asyncpg.Connection, project_id: UUID, key: str, request_hash: str
) -> UUID | None:
    row = await conn.fetchrow(
        "SELECT id, request_hash FROM jobs WHERE project_id = $1 AND idempotency_key = $2",
        project_id,
        key,
    )
    if row is None:
        return None
    if row["request_hash"] != request_hash:
        raise Conflict(
            "this Idempotency-Key was used with a different request", "idempotency_key_reused"
        )
    job_id: UUID = row["id"]
    return job_id


async def _release(
    conn: asyncpg.Connection,
    owner: str,
    job_id: UUID,
    item_id: UUID,
    state: str | None,
    error: str | None = None,
    max_attempts: int = 0,
) -> str | None:
    """End the claim's lease on one row: to the terminal ``state``, or (``None``, a
    failure) queued again while the row has attempts left under ``max_attempts``, else
    failed. Returns the row's new state; ``None`` if the claim no longer held it."""
    new_state: str | None = await conn.fetchval(
        "UPDATE job_items SET error = $5, lease_owner = NULL, lease_expires_at = NULL,"
        " state = coalesce($4::text, CASE WHEN attempts >= $6 THEN 'failed' ELSE 'queued' END),"
        " finished_at = CASE WHEN $4::text IS NOT NULL OR attempts >= $6 THEN now() END"
        " WHERE job_id = $1 AND item_id = $2 AND state = 'leased' AND lease_owner = $3"
        " RETURNING state",
        job_id,
        item_id,
        owner,
        state,
        error,
        max_attempts,
    )
    return new_state


async def _lock_job(conn: asyncpg.Connection, job_id: UUID) -> None:
    """The per-job lock completions hold while they close a job (``finish_if_done``)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1::uuid::text, 0))", job_id)


async def finish_if_done(conn: asyncpg.Connection, job_id: UUID) -> None:
    """Close the job if no item is open. Runners completing its last batches at once must
    not each see the other's items still open: a lock per job, held to commit, orders
    them, and the later one's check (a new snapshot) sees what the earlier one committed.
    An advisory lock rather than the job row's: nothing else takes it, so it cannot join
    a deadlock with the row locks of claims and completions."""
    await _lock_job(conn, job_id)
    await conn.execute(
        "UPDATE jobs SET finished_at = now(), status = CASE WHEN EXISTS ("
        "  SELECT 1 FROM job_items WHERE job_id = $1 AND state = 'succeeded')"
        " THEN 'succeeded' ELSE 'failed' END"
        " WHERE id = $1 AND status IN ('queued', 'running') AND NOT EXISTS ("
        "  SELECT 1 FROM job_items WHERE job_id = $1 AND state IN ('queued', 'leased'))",
        job_id,
    )


def _job(row: asyncpg.Record, counts: dict[ItemState, int], errors: list[ErrorCount]) -> Job:
    total = row["total_items"]
    done = sum(counts.get(s, 0) for s in (ItemState.succeeded, ItemState.failed))
    finished = done + counts.get(ItemState.cancelled, 0)
    rate = eta = None
    started: datetime | None = row["started_at"]
    if started is not None and done:
        end: datetime = row["finished_at"] or row["now"]
        elapsed = max((end - started).total_seconds(), 1e-3)
        rate = done / elapsed
        eta = (total - finished) / rate if row["finished_at"] is None else 0.0
    return Job(
        id=row["id"],
        project_id=row["project_id"],
        status=row["status"],
        model=row["model"],
        label_schema_version=row["label_schema_version"],
        total_items=total,
        counts={state: counts.get(state, 0) for state in ItemState},
        progress=finished / total if total else 1.0,
        items_per_s=rate,
        eta_s=eta,
        errors=errors,
        request_id=row["request_id"],
        created_at=row["created_at"],
        started_at=started,
        finished_at=row["finished_at"],
    )


async def _annotate(
    conn: asyncpg.Connection, project_id: UUID, success: Success, prediction_id: int
) -> str:
    """Write the item's annotation from a new prediction; a person's decision is never
    overwritten by a model."""
    assessment = success.assessment
    await conn.execute(
        "INSERT INTO annotations (item_id, project_id, prediction_id, status, value, top_label,"
        " score, uncertainty, updated_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'model')"
        " ON CONFLICT (item_id) DO UPDATE SET prediction_id = EXCLUDED.prediction_id,"
        " status = EXCLUDED.status, value = EXCLUDED.value, top_label = EXCLUDED.top_label,"
        " score = EXCLUDED.score, uncertainty = EXCLUDED.uncertainty,"
        " updated_by = 'model', updated_at = now()"
        " WHERE annotations.status IN ('pending', 'auto_approved')",
        success.item_id,
        project_id,
        prediction_id,
        success.status,
        assessment.value,
        assessment.top_label,
        assessment.score,
        assessment.uncertainty,
    )
    return success.status
