"""Health beyond live/ready: every check with its latency, system resources, a request
summary of this ingress replica, and the history of recent checks."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import psutil
from pydantic import BaseModel

from modelship.core.messages import ModelInfo
from storage.services import Services


class CheckResult(BaseModel):
    name: str
    status: str  # "ok" or "failed"
    latency_ms: float
    detail: str = ""


class HealthReport(BaseModel):
    status: str  # "healthy", "degraded" (a model not ready) or "unhealthy" (a service down)
    checked_at: datetime
    checks: list[CheckResult]


class RequestWindow:
    """The latest requests' statuses and latencies, for a JSON summary without Prometheus."""

    def __init__(self, size: int = 1000) -> None:
        self._seen: deque[tuple[int, float]] = deque(maxlen=size)
        self.total = 0

    def add(self, status: int, seconds: float) -> None:
        self._seen.append((status, seconds))
        self.total += 1

    def summary(self) -> dict[str, Any]:
        latencies = sorted(seconds for _, seconds in self._seen)
        by_class: dict[str, int] = {}
        for status, _ in self._seen:
            by_class[f"{status // 100}xx"] = by_class.get(f"{status // 100}xx", 0) + 1

        def percentile(q: float) -> float | None:
            if not latencies:
                return None
            return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 2)

        return {
            "total": self.total,
            "window": len(latencies),
            "by_status": by_class,
            "latency_ms": {
                "p50": percentile(0.5),
                "p95": percentile(0.95),
                "p99": percentile(0.99),
                "mean": round(statistics.fmean(latencies) * 1000, 2) if latencies else None,
            },
        }


class HealthMonitor:
    """Runs the checks (``models`` describes every configured model) and keeps the last
    ``history`` reports."""

    def __init__(
        self,
        models: Callable[[], Awaitable[list[ModelInfo]]],
        services: Services | None,
        history: int = 100,
        max_age_s: float = 5.0,
    ) -> None:
        self._max_age_s = max_age_s
        self._latest: tuple[float, HealthReport] | None = None
        self._lock = asyncio.Lock()
        self._models = models
        self._services = services
        self.history: deque[HealthReport] = deque(maxlen=history)
        self.started = time.monotonic()

    async def check(self) -> HealthReport:
        """The latest report if younger than ``max_age_s``, else a fresh one: however often
        health is asked for, the services and models are checked at most that often."""
        async with self._lock:
            if self._latest and time.monotonic() - self._latest[0] < self._max_age_s:
                return self._latest[1]
            report = await self._check()
            self._latest = (time.monotonic(), report)
            return report

    async def _check(self) -> HealthReport:
        started = time.perf_counter()
        infos = await self._models()
        model_ms = (time.perf_counter() - started) * 1000
        checks = [
            CheckResult(
                name=f"model:{info.name}",
                status="ok" if info.ready else "failed",
                latency_ms=round(model_ms, 2),
                detail=info.version or "not loaded",
            )
            for info in infos
        ]
        if self._services is not None:
            for name, (up, seconds) in (await self._services.check()).items():
                checks.append(
                    CheckResult(
                        name=name,
                        status="ok" if up else "failed",
                        latency_ms=round(seconds * 1000, 2),
                    )
                )
        report = HealthReport(status=_overall(checks), checked_at=datetime.now(UTC), checks=checks)
        self.history.append(report)
        return report

    def uptime_s(self) -> float:
        return round(time.monotonic() - self.started, 1)


def _overall(checks: Sequence[CheckResult]) -> str:
    failed = {c.name for c in checks if c.status != "ok"}
    if not failed:
        return "healthy"
    if all(name.startswith("model:") for name in failed):
        return "degraded"
    return "unhealthy"


async def system_resources(path: str) -> dict[str, Any]:
    """CPU, memory and disk of the machine this replica runs on, and its own memory."""

    def read() -> dict[str, Any]:
        memory = psutil.virtual_memory()
        disk = psutil.disk_usage(path)
        return {
            "cpu_percent": psutil.cpu_percent(interval=0.1),
            "cpu_count": psutil.cpu_count(),
            "memory": {
                "total": memory.total,
                "available": memory.available,
                "percent": memory.percent,
            },
            "disk": {"path": path, "total": disk.total, "free": disk.free, "percent": disk.percent},
            "process_rss": psutil.Process().memory_info().rss,
        }

    return await asyncio.to_thread(read)
