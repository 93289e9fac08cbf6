"""Writing one export, without Ray: rows stream out of PostgreSQL page by page into a
format writer (one local file, flat memory), and the file goes to object storage.

The Serve ``Exporter`` deployment runs this; tests run it in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from uuid import UUID, uuid4

from modelship.core.errors import Conflict, ModelShipError
from modelship.core.metrics import NO_METRICS, Metrics
from modelship.exports import ExportSpec, Writer, open_writer
from storage.exports import EXPORT_TASKS, ExportJob, ExportStore
from storage.services import Services

logger = logging.getLogger("modelship.exports")

PAGE_ROWS = 500
LEASE_S = 60.0  # an export whose writer died is resumed this long after
# Downloads are refused from expires_at on; the file stays this long after it, so that one
# begun before (a large file from S3 or GCS, read range by range) is not cut off.
DOWNLOAD_GRACE = timedelta(hours=1)
_WRITES = 3  # tries at a file whose category ids agree with the project's order


async def run_export(
    services: Services,
    export_id: UUID,
    retention: timedelta,
    work_dir: Path | None = None,
    metrics: Metrics = NO_METRICS,
) -> None:
    """Write export ``export_id``; it ends ``succeeded`` (its file kept for ``retention``)
    or ``failed`` with a reason. Only one process writes an export at a time: the one whose
    lease (``LEASE_S``, renewed while it writes) is current; a call for an export another
    writer holds returns at once."""
    store = ExportStore(services.db)
    owner = uuid4().hex
    job = await store.start(export_id, owner, LEASE_S)
    if job is None:
        return
    renewing = asyncio.create_task(_renew(store, export_id, owner))
    started = time.perf_counter()
    status = "failed"
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="export-") as folder:
        path = Path(folder) / "export"
        try:  # from here on, whatever fails ends the export failed, never left running
            writer = await _write(services, store, job, path)
            key = services.objects.new_key(job.tenant, str(job.project.id), writer.extension)
            await services.objects.put_file(key, path)
            size = path.stat().st_size
            if await store.finish(
                export_id, owner, key, writer.rows, size, writer.media_type, retention
            ):
                logger.info("export %s: %d rows, %d bytes", export_id, writer.rows, size)
                status = "succeeded"
            else:  # stalled past the lease: another writer took it over
                logger.warning("export %s was taken over; its file is not kept", export_id)
                await services.objects.delete(key)
                status = "taken_over"
        except ModelShipError as exc:
            await store.fail(export_id, owner, f"{exc.code}: {exc.message}")
        except Exception:
            logger.exception("export %s failed", export_id)
            await store.fail(export_id, owner, "internal error")
        finally:
            renewing.cancel()
            if status != "taken_over":
                metrics.export(job.request.format, status, time.perf_counter() - started)


async def _write(services: Services, store: ExportStore, job: ExportJob, path: Path) -> Writer:
    """The export's rows, page by page, written to ``path``; returns the closed writer."""
    categories = await store.categories(job.project)
    for _ in range(_WRITES):
        writer = await _write_once(services, store, job, path, categories)
        if len(writer.categories.names) == len(categories):
            return writer
        # A label first met while writing (one set after the order was read) was appended
        # to this file's categories: keep it at that id for the next exports. Another
        # export may have appended a different new label first (both met labels new to
        # them at once): the project's order is what later exports use, so this file is
        # written again in it rather than kept with ids that mean other labels there.
        order = await store.extend_categories(job.project.id, writer.categories.names)
        if order[: len(writer.categories.names)] == writer.categories.names:
            return writer
        categories = order
    raise Conflict(
        "the project's labels kept changing while it was exported; export again",
        "categories_changed",
    )


async def _write_once(
    services: Services, store: ExportStore, job: ExportJob, path: Path, categories: list[str]
) -> Writer:
    spec = ExportSpec(
        format=job.request.format,
        task=EXPORT_TASKS[job.project.task],
        categories=categories,
        include_images=job.request.include_images,
        name=job.project.name,
    )
    writer = open_writer(spec, path)
    with contextlib.closing(writer):
        after = None
        while page := await store.rows(job, after, PAGE_ROWS):
            for row, key in page:
                image = None
                if spec.include_images and key is not None:
                    image = await services.objects.get(key)
                writer.add(row, image)
            after = UUID(page[-1][0].item_id)
    return writer


async def _renew(store: ExportStore, export_id: UUID, owner: str) -> None:
    while True:
        await asyncio.sleep(LEASE_S / 3)
        try:
            if not await store.renew(export_id, owner, LEASE_S):
                return  # taken over: finish() will say so
        except Exception as exc:  # a blip: the next renewal may pass
            logger.warning("could not renew the lease of export %s: %r", export_id, exc)


async def delete_expired(
    services: Services, limit: int = 100, grace: timedelta = DOWNLOAD_GRACE
) -> int:
    """Delete the files of exports past their retention by ``grace`` (at most ``limit``);
    how many."""
    keys = await ExportStore(services.db).expire(limit, grace)
    for key in keys:
        try:
            await services.objects.delete(key)
        except Exception:  # the export is expired either way; the file is only an orphan
            logger.exception("could not delete expired export file %s", key)
    return len(keys)
