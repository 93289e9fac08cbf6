"""The job runner's loop, without Ray: claim a batch, label it, record the outcomes.

The Serve ``JobRunner`` deployment runs this with a labeler backed by the Preprocessor
and ModelReplica handles (``ServeLabeler``); tests run it with the in-process
``LocalLabeler``. Either way
an item gets exactly the prediction the synchronous routes give for the same bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from typing import Any
from uuid import UUID

from modelship.core import tracing
from modelship.core.config import LabelSpec
from modelship.core.context import request_scope
from modelship.core.errors import ModelShipError
from modelship.core.messages import ItemOptions
from modelship.core.metrics import NO_METRICS, Metrics
from modelship.core.review import model_annotation
from modelship.core.settings import Settings
from modelship.core.tracing import SpanKind
from modelship.service.labeling import Labeler, model_version
from storage.jobs import Claim, ClaimedItem, Failure, JobStore, Success
from storage.objects import ObjectNotFound, ObjectStore
from storage.redis import Cache

logger = logging.getLogger("modelship.jobs")

_REAP_EVERY_S = 5.0
_VERSION_TTL_S = 10.0
_MAX_BACKOFF_S = 10.0


def job_options(
    top_k: int, score_threshold: float, labels: list[LabelSpec] | None
) -> dict[str, Any]:
    """What a job stores of a project's settings, and what its predictions depend on."""
    return {
        "top_k": top_k,
        "score_threshold": score_threshold,
        "labels": [label.model_dump() for label in labels] if labels else None,
    }


def item_options(options: dict[str, Any]) -> ItemOptions:
    labels = options.get("labels")
    return ItemOptions(
        top_k=options["top_k"],
        score_threshold=options["score_threshold"],
        labels=tuple(LabelSpec.model_validate(label) for label in labels) if labels else None,
    )


def params_hash(options: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]


class JobRunner:
    """Drives queued job items through a labeler.

    Args:
        jobs: the queue.
        objects: where uploaded files are.
        cache: the prediction cache (a miss when Redis is down).
        labeler: runs the models.
        settings: batch size, lease, attempts, poll interval.
        owner: this runner's lease owner name, unique per process.
        metrics: where review decisions, the queue depth and failed items are recorded.
    """

    def __init__(
        self,
        jobs: JobStore,
        objects: ObjectStore,
        cache: Cache,
        labeler: Labeler,
        settings: Settings,
        owner: str,
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self._jobs = jobs
        self._objects = objects
        self._cache = cache
        self._labeler = labeler
        self._settings = settings
        self.owner = owner
        self._metrics = metrics
        self._versions: dict[str, tuple[str, float]] = {}
        self._last_reap = 0.0
        self.items_done = 0

    async def run_forever(self, stop: asyncio.Event) -> None:
        """``job_concurrency`` loops claiming batches until ``stop`` is set."""
        await asyncio.gather(*(self._loop(stop) for _ in range(self._settings.job_concurrency)))

    async def _loop(self, stop: asyncio.Event) -> None:
        backoff = 0.0
        while not stop.is_set():
            try:
                if not await self.run_once():
                    await self._cache.wait_for_jobs(self._settings.job_poll_s)
                backoff = 0.0
            except Exception as exc:  # an outage: PostgreSQL, the model, the object store
                backoff = min(_MAX_BACKOFF_S, backoff * 2 or 0.5)
                logger.warning("job runner %s: %r; retrying in %.1fs", self.owner, exc, backoff)
                await _sleep_unless(stop, backoff)

    async def run_once(self) -> int:
        """Claim and finish one batch; returns how many items it settled (0: no work)."""
        settings = self._settings
        if time.monotonic() - self._last_reap > _REAP_EVERY_S:
            self._last_reap = time.monotonic()
            if reaped := await self._jobs.reap(settings.job_max_attempts):
                self._metrics.job_items_failed("lease_expired", reaped)
            self._metrics.queue_depth(await self._jobs.open_items())
        claim = await self._jobs.claim(
            self.owner, settings.job_batch_size, settings.job_lease_s, settings.job_max_attempts
        )
        if claim is None:
            return 0
        # One trace per batch, and the submitting request's id on every call and log line.
        with (
            request_scope(claim.request_id),
            tracing.span(
                "job batch",
                SpanKind.CONSUMER,
                job_id=str(claim.job_id),
                request_id=claim.request_id,
                model=claim.model,
                items=len(claim.items),
            ),
        ):
            return await self._settle(claim)

    async def _settle(self, claim: Claim) -> int:
        settings = self._settings
        started = time.perf_counter()
        renewing = asyncio.create_task(self._renew(claim))
        try:
            successes, failures = await self._label(claim)
            completed = await self._jobs.complete(
                claim,
                successes,
                failures,
                settings.job_max_attempts,
                on_decision=lambda decision: self._metrics.decision(claim.task, decision),
            )
        except Exception:
            # Not the items' fault (an outage, a model replica down, a completion that
            # could not commit): give the batch back without spending an attempt.
            renewing.cancel()
            await self._jobs.release(claim.owner, claim.job_id, [i.item_id for i in claim.items])
            raise
        finally:
            renewing.cancel()
        self.items_done += completed.counted
        if completed.failed:
            self._metrics.job_items_failed("item", completed.failed)
        logger.info(
            "job batch settled",
            extra={
                "job": str(claim.job_id),  # Serve's formatter drops "job_id" (Ray's own)
                "model": claim.model,
                "items": len(claim.items),
                "failed": len(failures),
                "latency_ms": round((time.perf_counter() - started) * 1000, 1),
            },
        )
        return max(completed.counted, 1)

    async def _renew(self, claim: Claim) -> None:
        """Keep the batch's leases while it is being labeled, however long that takes: a
        lease only expires when its runner is gone, so no item is labeled twice by two
        live runners."""
        lease_s = self._settings.job_lease_s
        while True:
            await asyncio.sleep(lease_s / 3)
            try:
                await self._jobs.renew(claim, lease_s)
            except Exception as exc:
                logger.warning("job runner %s could not renew its leases: %r", self.owner, exc)

    async def _label(self, claim: Claim) -> tuple[list[Success], list[Failure]]:
        options = item_options(claim.options)
        params = params_hash(claim.options)
        version = await self._version(claim.model)
        keys = {
            i.item_id: self._cache.prediction_key(version, params, i.content_hash)
            for i in claim.items
        }
        cached = await self._cache.get_many(list(keys.values()))
        successes = [
            _success(claim, i.item_id, version, params, cached[keys[i.item_id]])
            for i in claim.items
            if keys[i.item_id] in cached
        ]
        failures: list[Failure] = []
        todo: list[ClaimedItem] = []
        payloads: list[Any] = []
        misses = [item for item in claim.items if keys[item.item_id] not in cached]
        fetched = await asyncio.gather(
            *(self._payload(item) for item in misses), return_exceptions=True
        )
        for item, payload in zip(misses, fetched, strict=True):
            if isinstance(payload, ObjectNotFound):
                failures.append(Failure(item.item_id, "the stored file is missing"))
            elif isinstance(payload, BaseException):
                raise payload  # the object store is down: not the item's fault
            else:
                payloads.append(payload)
                todo.append(item)
        outcomes = await self._labeler.label(claim.model, payloads, options) if todo else []
        fresh: dict[str, Any] = {}
        for item, outcome in zip(todo, outcomes, strict=True):
            if isinstance(outcome, ModelShipError):
                failures.append(Failure(item.item_id, f"{outcome.code}: {outcome.message}"))
                continue
            output = [o.model_dump() for o in outcome.output]
            successes.append(_success(claim, item.item_id, outcome.version, params, output))
            fresh[self._cache.prediction_key(outcome.version, params, item.content_hash)] = output
        await self._cache.put_many(fresh)
        return successes, failures

    async def _payload(self, item: ClaimedItem) -> bytes | str:
        if item.text is not None:
            return item.text
        assert item.object_key is not None
        return await self._objects.get(item.object_key)

    async def _version(self, model: str) -> str:
        cached = self._versions.get(model)
        if cached is not None and time.monotonic() - cached[1] < _VERSION_TTL_S:
            return cached[0]
        version = await model_version(self._labeler, model)
        self._versions[model] = (version, time.monotonic())
        return version


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def _success(
    claim: Claim, item_id: UUID, version: str, params: str, output: list[dict[str, Any]]
) -> Success:
    """An item's outcome, with the annotation its prediction gets in the project."""
    status, assessment = model_annotation(claim.task, output, claim.auto_approve_threshold)
    return Success(item_id, version, params, output, status, assessment)
