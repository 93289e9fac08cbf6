"""Writing one export, without Ray: rows stream out of PostgreSQL page by page into a
format writer (one local file, flat memory), and the file goes to object storage.

The Serve ``Exporter`` deployment runs this; tests run it in-process.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from uuid import UUID

from modelship.core.errors import ModelShipError
from modelship.core.metrics import NO_METRICS, Metrics
from modelship.exports import ExportSpec, open_writer
from storage.exports import EXPORT_TASKS, ExportStore
from storage.services import Services

logger = logging.getLogger("modelship.exports")

PAGE_ROWS = 500


async def run_export(
    services: Services,
    export_id: UUID,
    retention: timedelta,
    work_dir: Path | None = None,
    metrics: Metrics = NO_METRICS,
) -> None:
    """Write export ``export_id``; it ends ``succeeded`` (its file kept for ``retention``)
    or ``failed`` with a reason."""
    store = ExportStore(services.db)
    job = await store.start(export_id)
    if job is None:
        return
    started = time.perf_counter()
    status = "failed"
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="export-") as folder:
        path = Path(folder) / "export"
        try:  # from here on, whatever fails ends the export failed, never left running
            spec = ExportSpec(
                format=job.request.format,
                task=EXPORT_TASKS[job.project.task],
                categories=await store.categories(job.project),
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
            # A label first met while writing (one set after the order was read) was
            # appended to this file's categories: keep it at that id for the next exports.
            if len(writer.categories.names) > len(spec.categories):
                await store.extend_categories(job.project.id, writer.categories.names)
            key = services.objects.new_key(job.tenant, str(job.project.id), writer.extension)
            await services.objects.put_file(key, path)
            size = path.stat().st_size
            await store.finish(export_id, key, writer.rows, size, writer.media_type, retention)
            logger.info("export %s: %d rows, %d bytes", export_id, writer.rows, size)
            status = "succeeded"
        except ModelShipError as exc:
            await store.fail(export_id, f"{exc.code}: {exc.message}")
        except Exception:
            logger.exception("export %s failed", export_id)
            await store.fail(export_id, "internal error")
        finally:
            metrics.export(job.request.format, status, time.perf_counter() - started)


async def delete_expired(services: Services, limit: int = 100) -> int:
    """Delete the files of exports past their retention (at most ``limit``); how many."""
    keys = await ExportStore(services.db).expire(limit)
    for key in keys:
        try:
            await services.objects.delete(key)
        except Exception:  # the export is expired either way; the file is only an orphan
            logger.exception("could not delete expired export file %s", key)
    return len(keys)
