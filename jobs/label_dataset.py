"""Label a dataset with Ray Data: ``python -m jobs.label_dataset --project P --source URI
--model NAME [--export FORMAT]``, on a local cluster or as a RayJob's entrypoint.

Two passes over the cluster. First, tasks read the source's entries into items (images
stored in object storage) and the driver adds them to the project and a job in
PostgreSQL, in bulk; items labeled before by this model version and options are settled
at once. Then an actor pool of the model's predictor (batch size, CPUs and GPUs from its
``ModelConfig``; on a KubeRay cluster, ``--model-resource gpu_group`` instead of CPUs)
labels the rest, and the driver records each labeled batch. Progress
goes to stdout as ``modelship-progress {json}`` lines (``modelship jobs status --wait``
reads them); ``GET /api/v1/jobs/{id}`` shows the same job.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import sys
import time
import uuid
from collections.abc import AsyncGenerator, Iterable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import yaml
from pydantic import ValidationError

from modelship.core.config import LabelingAppArgs, ModelConfig
from modelship.core.context import current_request_id
from modelship.core.errors import ConfigurationError, ModelShipError
from modelship.core.errortracking import start_error_tracking
from modelship.core.records import ExportFormat, ItemState, Job, JobStatus
from modelship.core.settings import Settings
from modelship.service.batch import LEASE_S, BatchRequest, BatchRun, Labeled
from modelship.service.datasets import Entry, SourceRefused, check_source
from storage.batch import BatchItem, Pending
from storage.services import Services

logger = logging.getLogger("modelship.batch")

PROGRESS = "modelship-progress"
DEFAULT_CONFIG = Path("config/serve_config.yaml")
_READ_BATCH = 64
_CHUNK = 1024  # items per bulk write
_PROGRESS_EVERY_S = 1.0
_TRIES = 3  # a batch's tries on (restarted) label actors before it is left out
_ISOLATE_BATCHES = 4  # batches' worth of items labeled one by one at most, or 1%
ISOLATED_FAILURE = (
    "unprocessable_item: labeling this item alone failed on every try"
    " (the model's process died on it, or raised)"
)

T = TypeVar("T")


async def label_dataset(
    request: BatchRequest,
    configs: list[ModelConfig],
    settings: Settings,
    actors: int = 1,
    actor_cls: type | None = None,
    model_resource: str | None = None,
) -> Job:
    """Run one batch job to its end on the connected Ray cluster; returns the job.

    Args:
        request: the project, source, model and export.
        configs: the configured models.
        settings: services, limits and the allowed prefixes.
        actors: the most label actors at once (the pool starts with one).
        actor_cls: the ``map_batches`` class labeling batches (``LabelActor``).
        model_resource: a custom resource that places label actors (``actor_resources``).
    """
    services = Services.from_settings(settings)
    try:
        run = await BatchRun.start(services, configs, settings, request)
        _connect_ray()  # once the run's checks passed: a refused run never waits on Ray
        progress = _Progress(run)
        renewing = asyncio.create_task(_renew(run))
        try:
            listed, pending = await _ingest(run, progress)
            logger.info("job %s: %d entries, %d to label", run.job_id, listed, pending.num_rows)
            if pending.num_rows and not progress.cancelled:
                asks = actor_resources(run.config, model_resource)
                await _label(run, progress, pending, actors, actor_cls, asks)
        finally:
            renewing.cancel()
            job = await run.finish()  # what is still leased (a failed run) fails, with a reason
            await progress.report(force=True)
        export = await run.export()
        if export is not None:
            print(f"export {export.id}: {export.status}, {export.rows} rows", flush=True)
        return job
    finally:
        await services.close()


def _connect_ray() -> None:
    """Join the Ray cluster (a RayJob's, or ``RAY_ADDRESS``'s), or start a local one."""
    import ray

    if not ray.is_initialized():
        ray.init()


async def _ingest(run: BatchRun, progress: _Progress) -> tuple[int, pa.Table]:
    """First pass: the dataset's items added in bulk, a listing chunk at a time (the next
    one listed while this one is read); returns how many entries were listed and the
    items to label (``_PENDING``'s columns), shortest text first: alike lengths batch
    with little padding.

    What is left to label is kept as Arrow columns, about 200 bytes an item where Python
    objects took about 850 (``Pending``, a row dict, the ids that came back): the driver
    of a job over millions of files holds it until the end."""
    pending: list[pa.Table] = [_PENDING.empty_table()]
    listed = 0
    chunks = _prefetched(run.listing)
    try:
        async with contextlib.aclosing(chunks):
            async for entries in chunks:
                listed += len(entries)
                async for added in _read(run, entries):
                    pending.append(_table(added))
                    await progress.report()
                    if progress.cancelled:
                        return listed, _by_length(pending)
    except SourceRefused as exc:  # a later chunk's listing failed: the run fails, and the
        # job shows why as a failed item (the files not listed are in no count)
        reason = f"{exc.code}: the listing stopped after {listed} entries: {exc.message}"
        await run.add(run.read(Entry(uri=run.request.source, error=reason)))
        raise ModelShipError(reason, exc.code) from None
    return listed, _by_length(pending)


async def _prefetched(listing: Iterator[list[Entry]]) -> AsyncGenerator[list[Entry], None]:
    """``listing``'s chunks, the next one listed on a worker thread while this one is
    read."""
    upcoming = asyncio.ensure_future(asyncio.to_thread(next, listing, None))
    try:
        while (chunk := await upcoming) is not None:
            upcoming = asyncio.ensure_future(asyncio.to_thread(next, listing, None))
            yield chunk
    finally:  # left early: the step under way ends on its thread, unread
        if not upcoming.cancel():
            upcoming.exception()  # done: what it raised is no news now, nor an error log


async def _read(run: BatchRun, entries: list[Entry]) -> AsyncGenerator[list[Pending], None]:
    """A chunk's entries added to the job, ``_CHUNK`` items at a time; yields what each
    addition leaves to label. Files are read by Ray tasks (and images stored) across the
    cluster; texts a manifest holds are items already, read here."""
    import ray.data

    from jobs.ingest import read_batch

    texts = [e for e in entries if not e.uri]
    for start in range(0, len(texts), _CHUNK):
        yield await run.add([item for e in texts[start : start + _CHUNK] for item in run.read(e)])
    files = [e for e in entries if e.uri]
    if not files:
        return
    columns = {f.name: [getattr(e, f.name) for e in files] for f in fields(Entry)}
    dataset = ray.data.from_arrow(_slices(pa.Table.from_pydict(columns), _READ_BATCH))
    del files, columns  # in the object store now
    read = dataset.map_batches(
        functools.partial(
            read_batch,
            images=run.images,
            settings=run.settings,
            tenant=run.request.tenant,
            project_id=str(run.project.id),
            objects_url=run.services.urls.objects,
        ),
        batch_size=_READ_BATCH,
        num_cpus=0.25,
    )
    batches = _iterate(read.iter_batches(batch_size=_CHUNK, batch_format="pyarrow"))
    async with contextlib.aclosing(batches):
        async for table in batches:
            assert isinstance(table, pa.Table)
            yield await run.add([BatchItem(**r) for r in table.to_pylist()])


def _by_length(tables: list[pa.Table]) -> pa.Table:
    table = pa.concat_tables(tables)
    return table.take(pc.sort_indices(pc.utf8_length(table["text"])))


_PENDING = pa.schema([("item_id", pa.string()), ("object_key", pa.string()), ("text", pa.string())])


def _table(pending: list[Pending]) -> pa.Table:
    """Items to label as ``_PENDING`` columns: the label actors' input rows."""
    return pa.Table.from_pydict(
        {
            "item_id": [str(p.item_id) for p in pending],
            "object_key": [p.object_key or "" for p in pending],
            "text": [p.text or "" for p in pending],
        },
        schema=_PENDING,
    )


def _slices(table: pa.Table, batch_size: int) -> list[pa.Table]:
    """A block per batch: Ray Data would otherwise cut small datasets into a block a row,
    or give a whole table one block (one task)."""
    return [table.slice(start, batch_size) for start in range(0, table.num_rows, batch_size)]


def actor_resources(config: ModelConfig, model_resource: str | None) -> dict[str, Any]:
    """What each label actor asks Ray for: the model's CPUs and GPUs; with
    ``model_resource``, one unit of it and no CPUs instead, as model replicas ask on a
    KubeRay cluster (``modelship.ops.cluster.serve_config.cluster_config``): there only GPU
    pods offer ``gpu_group``, and they offer no CPUs, so an actor asking for CPUs and a GPU
    would fit no pod."""
    if model_resource is None:
        return {"num_cpus": config.num_cpus, "num_gpus": config.num_gpus}
    return {"num_cpus": 0, "num_gpus": config.num_gpus, "resources": {model_resource: 1}}


async def _label(
    run: BatchRun,
    progress: _Progress,
    pending: pa.Table,
    actors: int,
    actor_cls: type | None,
    asks: dict[str, Any],
) -> None:
    """Second pass: an actor pool of the model labels what is pending (in ``_ingest``'s
    length order); the driver records each labeled batch.

    A batch whose actor dies (or raises) on every try is left out rather than retried for
    ever; its items are then labeled one by one, so an item that kills the model's
    process fails alone (``ISOLATED_FAILURE``). Past a few batches' worth, the model, not
    an item, is at fault: the run fails."""
    size = run.config.batching.max_batch_size
    await _label_pass(run, progress, pending, size, actors, actor_cls, asks)
    if progress.cancelled:
        return
    # what no batch came back for is still leased to the run: the database says which
    left = await run.leased()
    if not left:
        return
    if len(left) > max(_ISOLATE_BATCHES * size, pending.num_rows // 100):
        raise ModelShipError(f"the label actors failed on every try at {len(left)} items")
    logger.warning("job %s: labeling %d items alone, their batches failed", run.job_id, len(left))
    await _label_pass(run, progress, _table(left), 1, actors, actor_cls, asks)
    failed = await run.leased()
    if failed and not progress.cancelled:
        await run.record(
            [Labeled(str(p.item_id), "", run.version, ISOLATED_FAILURE) for p in failed]
        )


async def _label_pass(
    run: BatchRun,
    progress: _Progress,
    rows: pa.Table,
    size: int,
    actors: int,
    actor_cls: type | None,
    asks: dict[str, Any],
) -> None:
    """``rows`` labeled in batches of ``size`` and recorded. A batch is tried ``_TRIES``
    times; one that fails each time is left out (its items stay leased to the run)."""
    import ray.data

    from jobs.predict import LabelActor

    dataset = ray.data.from_arrow(_slices(rows, size))
    labeled = dataset.map_batches(
        actor_cls or LabelActor,
        batch_size=size,
        compute=ray.data.ActorPoolStrategy(
            min_size=1,
            max_size=max(1, actors),
            # alone, an item shares no actor it might kill with another in flight
            max_tasks_in_flight_per_actor=1 if size == 1 else None,
        ),
        fn_constructor_kwargs={
            "config": run.config,
            "settings": run.settings,
            "objects_url": run.services.urls.objects,
            "version": run.version,
            "options": run.options,
        },
        max_task_retries=_TRIES - 1,  # Ray Data's default retries a batch for ever
        **asks,
    )
    labeled.context.max_errored_blocks = -1  # a failed batch is left out; the rest goes on
    batches = _iterate(labeled.iter_batches(batch_size=256, batch_format="numpy"))
    async with contextlib.aclosing(batches):
        async for batch in batches:
            columns = (batch["item_id"], batch["output"], batch["version"], batch["error"])
            await run.record([Labeled(*map(str, row)) for row in zip(*columns, strict=True)])
            await progress.report()
            if progress.cancelled:
                break


async def _iterate(batches: Iterable[T]) -> AsyncGenerator[T, None]:
    """Ray Data's blocking iterator, stepped on a worker thread: the event loop (leases,
    PostgreSQL) keeps running while the cluster works."""
    iterator = iter(batches)
    done = object()
    try:
        while (batch := await asyncio.to_thread(next, iterator, done)) is not done:
            yield batch  # type: ignore[misc]
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:  # a generator left early: Ray Data stops its pipeline
            await asyncio.to_thread(close)


async def _renew(run: BatchRun) -> None:
    while True:
        await asyncio.sleep(LEASE_S / 3)
        try:
            await run.renew()
        except Exception as exc:
            logger.warning("could not renew the batch's leases: %r", exc)


class _Progress:
    """Prints the job's progress as the API computes it, at most once a second; notes a
    cancellation (``POST /jobs/{id}/cancel``), which stops the run at its next batch."""

    def __init__(self, run: BatchRun) -> None:
        self._run = run
        self._last = 0.0
        self.cancelled = False

    async def report(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._last < _PROGRESS_EVERY_S:
            return
        self._last = time.monotonic()
        job = await self._run.job()
        self.cancelled = job.status is JobStatus.cancelled
        counts = job.counts
        line = {
            "job_id": str(job.id),
            "project_id": str(job.project_id),
            "status": job.status.value,
            "total": job.total_items,
            "done": counts[ItemState.succeeded]
            + counts[ItemState.failed]
            + counts[ItemState.cancelled],
            "succeeded": counts[ItemState.succeeded],
            "failed": counts[ItemState.failed],
        }
        print(f"{PROGRESS} {json.dumps(line)}", flush=True)


def load_args(path: Path) -> LabelingAppArgs:
    """The models and settings of a serve config (its first application's ``args``), or
    of a file holding those ``args`` alone.

    Raises:
        ConfigurationError: the file cannot be read or holds neither (the file named).
    """
    try:
        document: Any = yaml.safe_load(path.read_text())
        if isinstance(document, dict) and "applications" in document:
            document = document["applications"][0]["args"]
        return LabelingAppArgs.model_validate(document)
    except (OSError, yaml.YAMLError, LookupError, TypeError, ValidationError) as exc:
        raise ConfigurationError(f"{path}: not a serve config or its args ({exc})") from None


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs.label_dataset", description=__doc__)
    parser.add_argument("--project", required=True, help="a project id, or a name (created if new)")
    parser.add_argument("--source", required=True, help="folder, file or manifest: an fsspec URI")
    parser.add_argument("--model", help="a configured model; default: the project's")
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help="serve config with the models"
    )
    parser.add_argument("--tenant", help="default: MODELSHIP_TENANT")
    parser.add_argument(
        "--export", choices=[f.value for f in ExportFormat], help="export at the end"
    )
    parser.add_argument(
        "--export-all", action="store_true", help="every item, not only approved ones"
    )
    parser.add_argument("--actors", type=int, default=1, help="most label actors at once")
    parser.add_argument(
        "--model-resource",
        metavar="RESOURCE",
        help="each label actor asks one unit of this custom Ray resource and no CPUs, as"
        " model replicas do on a KubeRay cluster (gpu_group); default: the model's CPUs",
    )
    parser.add_argument("--request-id", help="names the run in the job, logs and audit")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when the job succeeded, 1 when it ran but failed, 2 when it was refused."""
    ns = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        args = load_args(ns.config)
        start_error_tracking(args.settings, "batch")
        check_source(ns.source, args.settings)
    except (OSError, KeyError, ValidationError, ModelShipError) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    request = BatchRequest(
        project=ns.project,
        source=ns.source,
        model=ns.model,
        tenant=ns.tenant or args.settings.tenant,
        actor=f"batch:{ns.request_id}" if ns.request_id else "batch",
        export=ExportFormat(ns.export) if ns.export else None,
        export_all=ns.export_all,
    )
    current_request_id.set(ns.request_id or f"batch-{uuid.uuid4().hex[:12]}")
    try:
        job = asyncio.run(
            label_dataset(
                request, args.models, args.settings, ns.actors, model_resource=ns.model_resource
            )
        )
    except ModelShipError as exc:  # 4xx: refused before the job began; 5xx: the run failed
        if exc.status >= 500:  # an error to look at (and report, with error tracking on)
            logger.error("batch job failed: %s", exc, exc_info=exc)
        print(f"{'refused' if exc.status < 500 else 'failed'}: {exc}", file=sys.stderr)
        return 2 if exc.status < 500 else 1
    print(
        f"job {job.id}: {job.status.value}, {job.counts[ItemState.succeeded]} succeeded,"
        f" {job.counts[ItemState.failed]} failed of {job.total_items}",
        flush=True,
    )
    return 0 if job.status == "succeeded" else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
