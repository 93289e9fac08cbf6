"""``python -m bench.queue``: how fast the PostgreSQL lease queue moves items, no model.

Claims batches with ``FOR UPDATE SKIP LOCKED`` from several concurrent runners and
completes them with a stored prediction each — the queue's whole per-item cost. Compare
the result with a model's throughput: the queue must be far from the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from typing import Any

from modelship.core.config import Task
from modelship.core.records import ItemState, ProjectCreate
from modelship.core.review import model_annotation
from storage.catalog import Catalog, NewItem
from storage.jobs import JobStore, Success
from storage.postgres import Database


async def measure(dsn: str, items: int, batch: int, runners: int) -> dict[str, Any]:
    db = Database(dsn, max_size=runners + 2)
    catalog, jobs = Catalog(db), JobStore(db)
    spec = ProjectCreate(
        name=f"queue-bench-{uuid.uuid4().hex[:8]}",
        task=Task.text_classification,
        model="bench",
    )
    project = await catalog.create_project("bench", spec, "bench")
    new = [
        NewItem(content_hash=uuid.uuid4().hex, media_type="text/plain", byte_size=4, text=f"t{i}")
        for i in range(items)
    ]
    await catalog.add_items("bench", project.id, new, "bench")
    started = time.perf_counter()
    job, _ = await jobs.submit("bench", project, None, {"top_k": 1}, None, "x", "bench")
    submit_s = time.perf_counter() - started
    claim_ms: list[float] = []
    output = [{"label": "a", "score": 0.9}]

    async def runner(name: str) -> None:
        while True:
            t0 = time.perf_counter()
            claim = await jobs.claim(name, batch, lease_s=60, max_attempts=3)
            claim_ms.append((time.perf_counter() - t0) * 1000)
            if claim is None:
                return
            status, assessment = model_annotation(claim.task, output, 0.5)
            done = [Success(i.item_id, "v1", "p", output, status, assessment) for i in claim.items]
            await jobs.complete(claim, done, [], 3)

    started = time.perf_counter()
    await asyncio.gather(*(runner(f"r{i}") for i in range(runners)))
    elapsed = time.perf_counter() - started
    final = await jobs.job("bench", job.id)
    await db.close()
    assert final.counts[ItemState.succeeded] == items, final.counts
    return {
        "items": items,
        "batch": batch,
        "runners": runners,
        "submit_s": round(submit_s, 3),
        "items_per_s": round(items / elapsed),
        "claim_p50_ms": round(statistics.median(claim_ms), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--runners", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    for batch in args.batch:
        for runners in args.runners:
            print(json.dumps(asyncio.run(measure(args.dsn, args.items, batch, runners))))


if __name__ == "__main__":
    main()
