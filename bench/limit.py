"""The ceiling: the predictor called in-process on pre-processed batches, no server."""

from __future__ import annotations

import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from bench.workloads import LABELS, Workload
from modelship.core.config import LabelSpec, ModelConfig, Task
from modelship.core.messages import ItemOptions
from modelship.core.settings import Settings
from modelship.predictors import ModelStore, Predictor, build_predictor
from modelship.predictors.prepare import prepare_image


def load(kind: str, cache: Any) -> Predictor[Any, Any]:
    if kind == "text":
        config = ModelConfig(
            name="minilm",
            task=Task.zero_shot_text_classification,
            source="packaged:all-minilm-l6-v2",
            labels=[LabelSpec(name=name) for name in LABELS],
        )
    else:
        config = ModelConfig(
            name="efficientnet-lite0",
            task=Task.image_classification,
            source="packaged:efficientnet-lite0",
        )
    predictor = build_predictor(config, ModelStore(cache).resolve(config.source))
    predictor.load()
    return predictor


def prepare(predictor: Predictor[Any, Any], workload: Workload) -> list[Any]:
    """Every input decoded/tokenised once, up front: the limit excludes that work."""
    if workload.kind == "text":
        options = ItemOptions(top_k=3, labels=tuple(LabelSpec(name=n) for n in LABELS))
        return [predictor.preprocess(text, options) for text in workload.items]
    settings = Settings()
    options = ItemOptions(top_k=5)
    return [prepare_image(predictor, data, options, settings) for data in workload.items]  # type: ignore[arg-type]


def throughput(
    predictor: Predictor[Any, Any],
    items: list[Any],
    batch: int,
    sort: bool,
    seconds: float,
    streams: int = 1,
) -> float:
    """Items/s over whole passes through ``items`` (at least one, more while under
    ``seconds``); ``sort`` groups the whole pool by length first. ``streams`` batches run
    at once, each on its share of the cores' torch threads (as a replica's
    ``concurrent_batches`` with ``torch_threads`` do): on two cores MiniLM ran 374 items/s
    as two single-threaded streams and 278 as one stream on two threads.

    Whole passes: a sorted pool cut off by the clock would skip its longest, costliest
    texts and overstate the ceiling (by 1.5x here, before this was fixed).
    """
    pool = sorted(items, key=len) if sort and hasattr(items[0], "input_ids") else items
    batches = [pool[i : i + batch] for i in range(0, len(pool), batch)]
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // streams))
    try:
        with ThreadPoolExecutor(streams) as executor:
            predictor.predict(batches[0])  # warm
            done, start = 0, time.perf_counter()
            while done == 0 or time.perf_counter() - start < seconds:
                list(executor.map(predictor.predict, batches))
                done += len(pool)
            return done / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


def single_item_p50_ms(
    predictor: Predictor[Any, Any], workload: Workload, count: int, with_preprocess: bool
) -> float:
    """Median latency of one item in-process; with or without decoding/tokenising it."""
    prepared = prepare(predictor, Workload(workload.kind, workload.items[:count]))
    times = []
    for raw, item in zip(workload.items[:count], prepared, strict=True):
        start = time.perf_counter()
        if with_preprocess:
            prepare(predictor, Workload(workload.kind, (raw,)))
        predictor.predict([item])
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)
