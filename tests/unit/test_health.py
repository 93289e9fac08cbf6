"""/health, /health/detailed, /health/metrics and /health/history on real services."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from pydantic import SecretStr

from modelship.core.errors import ModelNotReady, Overloaded
from modelship.core.messages import ModelInfo
from modelship.core.settings import Settings
from modelship.service.labeling import LocalLabeler, ModelInfos
from storage.services import Services
from tests.conftest import PACKAGED_MODELS
from tests.unit.flow import api_client

pytestmark = pytest.mark.asyncio(loop_scope="module")
SERVICES = {"database", "redis", "object_storage"}


async def test_health_and_details(client: httpx.AsyncClient) -> None:
    health = await client.get("/health")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "healthy"
    assert SERVICES | {"model:minilm", "model:efficientnet-lite0"} <= set(body["checks"])
    assert set(body["checks"].values()) == {"ok"}

    detailed = (await client.get("/health/detailed")).json()
    assert detailed["status"] == "healthy" and detailed["uptime_s"] >= 0
    checks = {c["name"]: c for c in detailed["checks"]}
    assert all(checks[name]["latency_ms"] >= 0 for name in SERVICES)
    assert checks["model:minilm"]["detail"].startswith("sha256:")
    system = detailed["system"]
    assert system["cpu_count"] >= 1 and 0 < system["memory"]["percent"] <= 100
    assert system["disk"]["free"] > 0 and system["process_rss"] > 0
    assert detailed["checked_at"].endswith("Z") or "+00:00" in detailed["checked_at"]


async def test_request_summary_and_history(client: httpx.AsyncClient) -> None:
    before = (await client.get("/health/metrics")).json()["requests"]["total"]
    for _ in range(3):
        assert (await client.get("/api/v1/models")).status_code == 200
    assert (await client.get("/api/v1/nope")).status_code == 404
    summary = (await client.get("/health/metrics")).json()
    requests = summary["requests"]
    assert requests["total"] == before + 4  # health routes are not counted
    assert requests["by_status"]["2xx"] >= 3 and requests["by_status"]["4xx"] >= 1
    assert requests["latency_ms"]["p50"] > 0
    assert summary["system"]["cpu_count"] >= 1

    # checks are cached for a few seconds: asking again reuses the latest report
    first = (await client.get("/health/detailed")).json()
    again = (await client.get("/health/detailed")).json()
    assert again["checked_at"] == first["checked_at"]
    reports = (await client.get("/health/history")).json()["reports"]
    assert reports[-1]["checked_at"] == first["checked_at"] and reports[-1]["status"] == "healthy"
    assert [r["checked_at"] for r in reports].count(first["checked_at"]) == 1


@asynccontextmanager
async def _api(local: LocalLabeler, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API with storage, on ``settings`` (a service pointed at nothing, say)."""
    services = Services.from_settings(settings)
    try:
        async with api_client(local, services, settings) as http:
            yield http
    finally:
        await services.close()


async def test_a_service_down_is_unhealthy(local: LocalLabeler, job_settings: Settings) -> None:
    down = job_settings.model_copy(
        update={"database_url": SecretStr("postgresql://postgres@127.0.0.1:1/none")}
    )
    async with _api(local, down) as http:
        health = await http.get("/health")
        assert health.status_code == 503
        assert health.json()["status"] == "unhealthy"
        assert health.json()["checks"]["database"] == "failed"
        assert health.json()["checks"]["redis"] == "ok"
        history = (await http.get("/health/history")).json()["reports"]
        assert history[-1]["status"] == "unhealthy"
        assert (await http.get("/health/live")).status_code == 200


@pytest.mark.parametrize("fail_open", [True, False])
async def test_redis_down_keeps_a_replica_ready_unless_the_limiter_then_refuses(
    local: LocalLabeler, job_settings: Settings, fail_open: bool
) -> None:
    """Redis only caches and rate-limits, but /health/ready answered 503 while it was down:
    a Redis outage took every replica out of the load balancer, though each still served."""
    down = job_settings.model_copy(
        update={
            "redis_url": SecretStr("redis://127.0.0.1:1/0"),
            "rate_limit_per_minute": 60,
            "rate_limit_fail_open": fail_open,
        }
    )
    async with _api(local, down) as http:
        ready = await http.get("/health/ready")
        assert ready.json()["checks"]["redis"] == "unavailable"
        assert ready.status_code == (200 if fail_open else 503)


class _BusyAfterOneAnswer(LocalLabeler):
    """The real labeler, whose models answer once and then fail as ``failure`` says."""

    failure: Exception | None = None

    async def info(self, model: str) -> ModelInfo:
        if self.failure is not None:
            raise self.failure
        return await super().info(model)


async def test_a_model_too_busy_to_describe_itself_stays_ready_a_while(
    local: LocalLabeler, job_settings: Settings
) -> None:
    """Under load a replica's queue is full of labeling work: its description timed out and
    /health/ready said a loaded model was not ready."""
    labeler = _BusyAfterOneAnswer(PACKAGED_MODELS, job_settings, local.predictors)
    infos = ModelInfos(labeler, PACKAGED_MODELS[:1], timeout_s=1.0, busy_s=0.5)
    assert [info.ready for info in await infos()] == [True]
    labeler.failure = Overloaded("too many requests queued for this model")
    assert [info.ready for info in await infos()] == [True]  # busy: as it last answered
    await asyncio.sleep(0.6)
    assert [info.ready for info in await infos()] == [False]  # silent past busy_s
    labeler.failure = None
    assert [info.ready for info in await infos()] == [True]
    labeler.failure = ModelNotReady("a model replica is restarting")
    assert [info.ready for info in await infos()] == [False]  # gone: not ready at once
    labeler.failure = Overloaded("too many requests queued for this model")
    assert [info.ready for info in await infos()] == [False]  # and busy is no proof now
