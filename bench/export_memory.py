"""``python -m bench.export_memory``: an export's memory against the project's size.

Fills projects of 1,000 and 100,000 labeled detection items straight into PostgreSQL
(``COPY``), runs the real export path (``modelship.service.exporter.run_export``: pages from
PostgreSQL → format writer → object storage) for each format, and reports the peak of
Python memory traced during the export. Flat memory means the two peaks are close.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
import tracemalloc
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from modelship.core.config import LabelSpec
from modelship.core.config import Task as ModelTask
from modelship.core.records import ExportCreate, ExportFormat, ExportSelection, ProjectCreate
from modelship.core.settings import Settings
from modelship.service.exporter import run_export
from storage.catalog import Catalog
from storage.exports import ExportStore
from storage.services import Services

LABELS = ["cat", "dog", "bird"]


async def fill(services: Services, items: int) -> Any:
    """A detection project with ``items`` images, each with 0-3 boxes, auto-approved."""
    spec = ProjectCreate(
        name=f"export-bench-{uuid.uuid4().hex[:8]}",
        task=ModelTask.object_detection,
        model="bench",
        labels=[LabelSpec(name=name) for name in LABELS],
    )
    project = await Catalog(services.db).create_project("bench", spec, "bench")
    rng = random.Random(items)
    item_rows, prediction_rows, annotation_rows = [], [], []
    for index in range(items):
        item_id = uuid.uuid4()
        width, height = rng.choice([(640, 480), (1280, 720), (300, 1000)])
        boxes = [
            {"label": rng.choice(LABELS), "score": 0.9, "box": [10.0, 20.0, 100.0, 80.0]}
            for _ in range(rng.randint(0, 3))
        ]
        item_rows.append(
            (
                item_id,
                project.id,
                uuid.uuid4().hex,
                "image/jpeg",
                1000,
                width,
                height,
                f"default/{project.id}/{uuid.uuid4().hex}.jpg",
                f"img{index}.jpg",
            )
        )
        prediction_rows.append((index + 1, item_id, "bench", "v1", "p", boxes))
        annotation_rows.append((item_id, project.id, index + 1, boxes))
    async with services.db.transaction() as conn:
        offset = await conn.fetchval("SELECT coalesce(max(id), 0) FROM predictions")
        await conn.copy_records_to_table(
            "items",
            records=item_rows,
            columns=[
                "id",
                "project_id",
                "content_hash",
                "media_type",
                "byte_size",
                "width",
                "height",
                "object_key",
                "filename",
            ],
        )
        await conn.copy_records_to_table(
            "predictions",
            records=[(offset + r[0], *r[1:]) for r in prediction_rows],
            columns=["id", "item_id", "model", "model_version", "params_hash", "output"],
        )
        await conn.execute("SELECT setval('predictions_id_seq', $1)", offset + items)
        await conn.copy_records_to_table(
            "annotations",
            records=[
                (r[0], r[1], offset + r[2], "auto_approved", r[3], 0.9, 0.1, "model")
                for r in annotation_rows
            ],
            columns=[
                "item_id",
                "project_id",
                "prediction_id",
                "status",
                "value",
                "score",
                "uncertainty",
                "updated_by",
            ],
        )
    return project


async def measure(services: Services, project: Any, fmt: ExportFormat) -> dict[str, Any]:
    request = ExportCreate(format=fmt, selection=ExportSelection.approved)
    export = await ExportStore(services.db).create("bench", project, request, "bench")
    tracemalloc.start()
    started = time.perf_counter()
    await run_export(services, export.id, timedelta(hours=1))
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    done, _ = await ExportStore(services.db).get("bench", export.id)
    assert done.status == "succeeded", done
    return {
        "rows": done.rows,
        "peak_mib": round(peak / 2**20, 2),
        "seconds": round(seconds, 2),
        "bytes": done.bytes,
    }


async def main(dsn: str, sizes: list[int], formats: list[ExportFormat]) -> None:
    root = Path(tempfile.mkdtemp(prefix="export-bench-"))
    settings = Settings(
        data_dir=root,
        database_url=dsn,
        redis_url="redis://127.0.0.1:6379/0",
        object_store_url=str(root / "objects"),
    )
    services = Services.from_settings(settings)
    try:
        projects = {size: await fill(services, size) for size in sizes}
        for fmt in formats:
            results = {size: await measure(services, projects[size], fmt) for size in sizes}
            small, large = results[sizes[0]], results[sizes[-1]]
            ratio = round(large["peak_mib"] / max(small["peak_mib"], 1e-3), 2)
            print(json.dumps({"format": fmt, "by_items": results, "peak_ratio": ratio}))
    finally:
        await services.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000])
    parser.add_argument("--formats", nargs="+", default=["coco", "yolo", "hf", "csv"])
    args = parser.parse_args()
    asyncio.run(main(args.dsn, args.sizes, [ExportFormat(f) for f in args.formats]))
