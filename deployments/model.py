"""The ModelReplica deployment: one per configured model, forward passes in dynamic batches."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from pydantic import ValidationError
from ray import serve

from modelship.core import tracing
from modelship.core.config import ModelConfig
from modelship.core.errors import ModelShipError
from modelship.core.errortracking import start_error_tracking
from modelship.core.logs import to_serve_logs
from modelship.core.messages import ItemOptions, ItemResult, ModelInfo, Output, Prepared
from modelship.core.metrics import ServeMetrics
from modelship.core.settings import Settings
from modelship.predictors import ModelStore, Predictor, build_predictor, describe
from modelship.predictors.base import batching_order
from modelship.predictors.prepare import image_info, predict_items, prepare_payload

logger = logging.getLogger("modelship.model")

_UNHEALTHY_AFTER_FAILURES = 3
_PROBE_WHEN_IDLE_S = 30.0


@serve.deployment(name="ModelReplica", max_ongoing_requests=32)
class ModelReplica:
    """Loads one model and labels prepared items in dynamic batches.

    Batch size and wait come from ``user_config`` and change live in ``reconfigure``.
    Batches run on ``concurrent_batches`` dedicated threads (one by default: called from
    several threads, torch's intra-op pool stops spinning and small batches get slower;
    with ``torch_threads: 1`` each batch runs on its own thread instead, which is what
    holds up when other processes share the cores).

    Args:
        config: the model to serve.
        settings: where the model store caches files.
    """

    def __init__(self, config: ModelConfig, settings: Settings) -> None:
        to_serve_logs()
        start_error_tracking(settings, config.deployment_name)
        self._config = config
        self._settings = settings
        self._batching = config.batching
        torch.set_num_threads(config.torch_threads or max(1, math.ceil(config.num_cpus)))
        device = "cuda" if config.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        started = time.perf_counter()
        files = ModelStore(settings.models_dir).resolve(config.source)
        self._predictor: Predictor[Any, Any] = build_predictor(config, files, device)
        self._predictor.load()
        self._executor = ThreadPoolExecutor(
            max_workers=config.concurrent_batches, thread_name_prefix="torch"
        )
        self._infer = serve.batch(
            max_batch_size=self._batching.max_batch_size,
            batch_wait_timeout_s=self._batching.batch_wait_timeout_s,
            max_concurrent_batches=config.concurrent_batches,
        )(self._run_batch)
        self._batch_sizes: deque[int] = deque(maxlen=10_000)
        self._batches = self._items = 0
        self._running = 0  # batches started and not finished (some may wait for a thread)
        self._executing = self._executing_peak = 0  # batches on the threads now, and at most
        self._executing_lock = threading.Lock()
        self._pending = 0  # items in Serve's batch queue or in a batch from it
        self._direct = 0  # requests labeled without the batch queue (it was idle)
        self._failures = 0
        self._last_success = time.monotonic()
        self._metrics = ServeMetrics()
        self._metrics.model_loaded(config.name, time.perf_counter() - started)
        logger.info(
            "loaded model %s (%s) on %s in %.1fs",
            config.name,
            files.version,
            device,
            time.perf_counter() - started,
        )

    def reconfigure(self, user_config: Any) -> None:
        """Apply new batching settings without reloading the model: ``user_config``'s
        fields over the model's ``batching`` (a field left out keeps the configured value).

        An invalid ``user_config`` is refused: the error, naming the field, goes to the log
        and the replica keeps the batching it runs (``info`` shows it). Raising here would
        make Serve stop this replica, so a ``serve deploy`` with a typo in it would take a
        serving model down."""
        try:
            batching = self._config.batching.overlaid(user_config)
        except (TypeError, ValidationError) as exc:
            logger.error(
                "%s: user_config %r refused, batching stays %s: %s",
                self._config.deployment_name,
                user_config,
                self._batching.model_dump(),
                exc,
            )
            return
        self._batching = batching
        self._infer.set_max_batch_size(batching.max_batch_size)  # type: ignore[attr-defined]
        self._infer.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)  # type: ignore[attr-defined]

    async def label(
        self, payloads: list[bytes | str], options: ItemOptions
    ) -> list[ItemResult | ModelShipError]:
        """Raw payloads prepared here, then labeled as ``predict`` does: texts tokenised,
        images decoded and transformed with every guard (``prepare_payload``; at most
        ``max_concurrent_decodes`` at once in this process). A bad item gets its error, in
        its place. Preparing runs on a worker thread, before the items join the batch
        queue, so a batch never waits for a decode.

        The graph sends texts here, and images of models prepared ``inline``
        (``ModelConfig.preprocessed_in``): one call instead of a Preprocessor call and a
        model call (``modelship.service.serving.label_call``).
        """
        with tracing.span("preprocess", model=self._config.name, items=len(payloads)):
            prepared = await asyncio.to_thread(self._prepare, payloads, options)
        return await self.predict(prepared)

    def _prepare(
        self, payloads: list[bytes | str], options: ItemOptions
    ) -> list[Prepared | ModelShipError]:
        predictor, settings = self._predictor, self._settings
        return [prepare_payload(predictor, payload, options, settings) for payload in payloads]

    async def predict(
        self, items: list[Prepared | ModelShipError]
    ) -> list[ItemResult | ModelShipError]:
        """Label items; each joins this replica's batch queue alongside other requests'.

        An item that failed before (an error from ``Preprocessor.prepare_each`` or
        ``label``) comes back as it is, in its place. Items join the queue in
        ``batching_order`` and results come back in input order. When nothing is queued or
        running, the items run at once as their own batch: waiting out the batch window for
        company that is not coming only adds latency (a request arriving meanwhile batches
        as usual, next to this one).
        """
        good = [item for item in items if not isinstance(item, ModelShipError)]
        results = iter(self._results(await self._label(good), good) if good else [])
        return [item if isinstance(item, ModelShipError) else next(results) for item in items]

    async def _label(self, items: list[Prepared]) -> list[Output | ModelShipError]:
        idle = self._running == 0 and self._pending == 0
        if idle and len(items) <= self._batching.max_batch_size:
            self._direct += 1
            return await self._run_batch(items)
        # Into the queue alike items together, so the batches cut from it pad little.
        order = batching_order(items)
        self._pending += len(items)
        try:
            outputs = await asyncio.gather(*(self._infer(items[i]) for i in order))
        finally:
            self._pending -= len(items)
        by_index = dict(zip(order, outputs, strict=True))
        return [by_index[i] for i in range(len(items))]

    def _results(
        self, outputs: list[Output | ModelShipError], items: list[Prepared]
    ) -> list[ItemResult | ModelShipError]:
        version = self._predictor.version
        return [
            output
            if isinstance(output, ModelShipError)
            else ItemResult(output, version, image_info(item))
            for output, item in zip(outputs, items, strict=True)
        ]

    async def _run_batch(self, batch: list[Prepared]) -> list[Output | ModelShipError]:
        """One dynamic batch (``self._infer`` is this behind Serve's batch queue)."""
        self._batch_sizes.append(len(batch))
        self._batches += 1
        self._items += len(batch)
        self._running += 1
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            # Serve runs a batch in the context of its first request, so the span joins that
            # request's trace.
            with tracing.span("predict", model=self._config.name, batch_size=len(batch)):
                outputs = await loop.run_in_executor(self._executor, self._forward, batch)
        except ModelShipError:
            raise
        except Exception:
            self._failures += 1
            raise
        finally:
            self._running -= 1
        self._metrics.batch(
            self._config.name, self._config.task, len(batch), time.perf_counter() - started
        )
        self._failures = 0
        self._last_success = time.monotonic()
        return outputs

    def _forward(self, batch: list[Prepared]) -> list[Output | ModelShipError]:
        """The predictor on one batch, on an executor thread (an item the model cannot take
        fails alone: ``predict_items``); counts batches running."""
        with self._executing_lock:
            self._executing += 1
            self._executing_peak = max(self._executing_peak, self._executing)
        try:
            return predict_items(self._predictor, batch, self._config.name)
        finally:
            with self._executing_lock:
                self._executing -= 1

    def info(self) -> ModelInfo:
        return describe(self._config, self._predictor, self._batching)

    def stats(self) -> dict[str, Any]:
        """Batches and items since start, the latest batch sizes, and the process id."""
        return {
            "pid": os.getpid(),
            "batches": self._batches,
            "items": self._items,
            "batch_sizes": list(self._batch_sizes),
            "concurrent_batches_peak": self._executing_peak,
            "direct_requests": self._direct,
        }

    async def check_health(self) -> None:
        """Fail (so Serve replaces this replica) when the model no longer runs."""
        if self._failures >= _UNHEALTHY_AFTER_FAILURES:
            raise RuntimeError(f"{self._failures} consecutive batches failed")
        if time.monotonic() - self._last_success < _PROBE_WHEN_IDLE_S:
            return
        predictor = self._predictor
        item = predictor.preprocess(predictor.probe(), predictor.probe_options())
        await asyncio.get_running_loop().run_in_executor(self._executor, predictor.predict, [item])
        self._last_success = time.monotonic()
