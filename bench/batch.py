"""``python -m bench.batch``: a batch job's labeling rate on Ray Data against the
in-process limit, on the same texts.

The limit is the predictor in this process (``label_items``: tokenise and predict, the
work a label actor does), length-sorted batches of the model's batch size, torch on every
core. The batch job is ``jobs.label_dataset`` end to end on a fresh local Ray cluster and
a fresh database: its *labeling rate* counts items over the span in which the label
actors' results were recorded (the job items' ``finished_at``), so actor start-up and the
first pass are reported apart, not averaged in. Prints one JSON object with the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import torch

from bench.workloads import LABELS, texts
from modelship.core.config import BatchingConfig, LabelSpec, ModelConfig, Task
from modelship.core.messages import ItemOptions
from modelship.core.settings import Settings
from modelship.predictors import ModelStore, build_predictor
from modelship.predictors.prepare import label_items
from modelship.service.batch import BatchRequest

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def model(batch: int, torch_threads: int | None, num_cpus: float) -> ModelConfig:
    return ModelConfig(
        name="minilm",
        task=Task.zero_shot_text_classification,
        source="packaged:all-minilm-l6-v2",
        labels=[LabelSpec(name=name) for name in LABELS],
        batching=BatchingConfig(max_batch_size=batch),
        torch_threads=torch_threads,
        num_cpus=num_cpus,
    )


def limit(config: ModelConfig, items: list[str], settings: Settings, seconds: float) -> float:
    """Items/s of whole passes over ``items`` in this process: the better of one stream of
    batches on every core and one single-threaded stream per core (as ``bench.limit``)."""
    predictor = build_predictor(config, ModelStore(settings.models_dir).resolve(config.source))
    predictor.load()
    options = ItemOptions(top_k=config.top_k, labels=tuple(config.labels or ()))
    pool = sorted(items, key=len)
    size = config.batching.max_batch_size
    batches = [pool[i : i + size] for i in range(0, len(pool), size)]

    def run(batch: list[str]) -> None:
        label_items(predictor, list(batch), options, settings)

    cores = os.cpu_count() or 1
    best = 0.0
    for streams in sorted({1, cores}):
        torch.set_num_threads(max(1, cores // streams))
        with ThreadPoolExecutor(streams) as executor:
            run(batches[0])  # warm
            done, started = 0, time.perf_counter()
            while done == 0 or time.perf_counter() - started < seconds:
                list(executor.map(run, batches))
                done += len(pool)
            best = max(best, done / (time.perf_counter() - started))
    return best


async def batch_job(
    config: ModelConfig, items: list[str], settings: Settings, actors: int
) -> dict[str, Any]:
    """One ``label_dataset`` run: its wall time, and its labeling rate from PostgreSQL. The
    driver records results in chunks, each at one ``finished_at``: the rate counts the
    items recorded after the first chunk over the span from the first to the last."""
    from jobs.label_dataset import label_dataset

    source = Path(settings.data_dir) / "datasets" / "texts.txt"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text("".join(text + "\n" for text in items))
    request = BatchRequest(project="bench", source=str(source), model=config.name)
    started = time.perf_counter()
    job = await label_dataset(request, [config], settings, actors=actors)
    wall = time.perf_counter() - started
    assert settings.database_url is not None
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        span = await conn.fetchrow(
            "WITH labeled AS (SELECT finished_at FROM job_items WHERE job_id = $1"
            " AND attempts = 1), first AS (SELECT min(finished_at) AS t FROM labeled)"
            " SELECT count(*) FILTER (WHERE finished_at > first.t) AS n,"
            " extract(epoch FROM max(finished_at) - first.t) AS s,"
            " extract(epoch FROM first.t - (SELECT started_at FROM jobs WHERE id = $1))"
            " AS before FROM labeled, first GROUP BY first.t",
            job.id,
        )
    finally:
        await conn.close()
    return {
        "status": job.status.value,
        "items": job.total_items,
        "wall_s": round(wall, 2),
        "first_result_after_s": round(float(span["before"]), 2),
        "labeling_items_per_s": round(span["n"] / max(float(span["s"]), 1e-3), 1),
        "end_to_end_items_per_s": round(job.total_items / wall, 1),
    }


async def _database(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.batch", description=__doc__)
    parser.add_argument("--texts", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=32, help="the model's max_batch_size")
    parser.add_argument("--actors", type=int, default=2, help="label actors at most")
    parser.add_argument("--torch-threads", type=int, default=1, help="per label actor")
    parser.add_argument("--seconds", type=float, default=20, help="the limit's duration")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ns = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ray

    cores = os.cpu_count() or 1
    name = f"modelship_bench_{uuid.uuid4().hex[:8]}"
    root = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    asyncio.run(_database(f"CREATE DATABASE {name}"))
    try:
        settings = Settings(
            data_dir=root,
            database_url=ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}",
            redis_url=ns.redis,  # unused by batch jobs; set, so that none is started
            object_store_url=str(root / "objects"),
        )
        items = sorted(set(texts(ns.texts).items))  # type: ignore[type-var]
        config = model(ns.batch, ns.torch_threads, num_cpus=cores / ns.actors)
        inprocess = limit(config, [str(t) for t in items], settings, ns.seconds)
        ray.init(
            num_cpus=cores,
            include_dashboard=False,
            object_store_memory=512 * 1024**2,
            _temp_dir=temp_dir,
            runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}},
        )
        job = asyncio.run(batch_job(config, [str(t) for t in items], settings, ns.actors))
        ray.shutdown()
        report = {
            "texts": len(items),
            "batch": ns.batch,
            "actors": ns.actors,
            "torch_threads_per_actor": ns.torch_threads,
            "cores": cores,
            "limit_items_per_s": round(inprocess, 1),
            "batch_job": job,
            "ratio": round(job["labeling_items_per_s"] / inprocess, 2),
            "ratio_end_to_end": round(job["end_to_end_items_per_s"] / inprocess, 2),
        }
        print(json.dumps(report, indent=2))
    finally:
        asyncio.run(_database(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
