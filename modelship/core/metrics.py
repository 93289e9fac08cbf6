"""Prometheus metrics through ``ray.serve.metrics``, exported by Ray's metrics agent (its
``--metrics-export-port``) next to Ray's own ``ray_serve_*``, with a ``ray_`` prefix and the
deployment, replica and application as tags.

Each deployment creates ``ServeMetrics()`` in its constructor (the metrics must be made
inside the replica to carry its tags). Code that also runs without Ray takes a
``Metrics`` and gets ``NO_METRICS`` there.
"""

from __future__ import annotations

from typing import Any, Protocol

from modelship.core import ray_compat
from modelship.core.records import ExportFormat


def _keys(*names: str) -> Any:
    """Tag keys (Ray annotates them as a 1-tuple, ``Tuple[str]``; any length works)."""
    return names


_SECONDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
_BATCH = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0]


class Metrics(Protocol):
    def request(self, route: str, method: str, status: int, seconds: float) -> None: ...

    def batch(self, model: str, task: str, size: int, seconds: float) -> None: ...

    def model_loaded(self, model: str, seconds: float) -> None: ...

    def decision(self, task: str, decision: str) -> None: ...

    def queue_depth(self, items: int) -> None: ...

    def job_items_failed(self, cause: str, items: int) -> None: ...

    def export(self, format: str, status: str, seconds: float) -> None: ...


class _NoMetrics:
    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        pass

    def batch(self, model: str, task: str, size: int, seconds: float) -> None:
        pass

    def model_loaded(self, model: str, seconds: float) -> None:
        pass

    def decision(self, task: str, decision: str) -> None:
        pass

    def queue_depth(self, items: int) -> None:
        pass

    def job_items_failed(self, cause: str, items: int) -> None:
        pass

    def export(self, format: str, status: str, seconds: float) -> None:
        pass


NO_METRICS: Metrics = _NoMetrics()


class ServeMetrics:
    """The metrics, recorded from inside a Serve replica."""

    def __init__(self) -> None:
        from ray.serve.metrics import Counter, Gauge, Histogram

        self._requests = Counter(
            "modelship_http_requests",
            description="HTTP requests by route template, method and status.",
            tag_keys=_keys("route", "method", "status"),
        )
        self._latency = Histogram(
            "modelship_http_request_seconds",
            description="HTTP request latency inside the ingress, by route template and method.",
            boundaries=_SECONDS,
            # the method tells an upload (POST .../items) from a listing on the same route
            tag_keys=_keys("route", "method"),
        )
        self._items = Counter(
            "modelship_items_labeled",
            description="Items labeled, by model and task.",
            tag_keys=_keys("model", "task"),
        )
        self._batch_size = Histogram(
            "modelship_inference_batch_size",
            description="Items per forward pass.",
            boundaries=_BATCH,
            tag_keys=_keys("model"),
        )
        self._batch_seconds = Histogram(
            "modelship_inference_seconds",
            description="Forward-pass latency per batch.",
            boundaries=_SECONDS,
            tag_keys=_keys("model"),
        )
        # A histogram, not a gauge: Ray exports a gauge only while it is being set, and a
        # model loads once per replica.
        self._load = Histogram(
            "modelship_model_load_seconds",
            description="How long models took to load, per replica start.",
            boundaries=[0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0],
            tag_keys=_keys("model"),
        )
        self._decisions = Counter(
            "modelship_predictions",
            description="Job predictions auto-approved or sent to review.",
            tag_keys=_keys("task", "decision"),
        )
        self._queue = Gauge(
            "modelship_job_queue_items",
            description="Job items queued or leased (not yet finished).",
        )
        self._failed = Counter(
            "modelship_job_items_failed",
            description="Job items that ended failed: cause 'item' (the item itself, every"
            " attempt) or 'lease_expired' (its runner died on every attempt).",
            tag_keys=_keys("cause"),
        )
        self._exports = Counter(
            "modelship_exports",
            description="Exports finished, by format and status.",
            tag_keys=_keys("format", "status"),
        )
        self._export_seconds = Histogram(
            "modelship_export_seconds",
            description="How long an export took.",
            boundaries=[0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0],
            tag_keys=_keys("format"),
        )

        # Rare events start at 0 (Prometheus' rate() cannot see a series' first increment):
        # the alert on failed job items and the exports panel count their first one.
        for cause in ("item", "lease_expired"):
            ray_compat.start_at_zero(self._failed, {"cause": cause})
        for format in ExportFormat:
            for status in ("succeeded", "failed"):
                ray_compat.start_at_zero(self._exports, {"format": format, "status": status})

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        self._requests.inc(tags={"route": route, "method": method, "status": str(status)})
        self._latency.observe(seconds, tags={"route": route, "method": method})

    def batch(self, model: str, task: str, size: int, seconds: float) -> None:
        self._items.inc(size, tags={"model": model, "task": task})
        self._batch_size.observe(size, tags={"model": model})
        self._batch_seconds.observe(seconds, tags={"model": model})

    def model_loaded(self, model: str, seconds: float) -> None:
        self._load.observe(seconds, tags={"model": model})

    def decision(self, task: str, decision: str) -> None:
        self._decisions.inc(tags={"task": task, "decision": decision})

    def queue_depth(self, items: int) -> None:
        self._queue.set(items)

    def job_items_failed(self, cause: str, items: int) -> None:
        self._failed.inc(items, tags={"cause": cause})

    def export(self, format: str, status: str, seconds: float) -> None:
        self._exports.inc(tags={"format": format, "status": status})
        self._export_seconds.observe(seconds, tags={"format": format})
