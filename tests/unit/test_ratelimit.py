"""Rate limits in this machine's Redis: per client and route, shared by every replica."""

from __future__ import annotations

import uuid

import httpx
import pytest

from modelship.core.settings import Settings
from modelship.http.app import create_api
from modelship.service.labeling import LocalLabeler
from storage.ratelimit import RateLimiter
from tests.conftest import REDIS_URL

pytestmark = pytest.mark.asyncio(loop_scope="module")


def _app(limiter: RateLimiter) -> httpx.AsyncClient:
    app = create_api(LocalLabeler([], Settings()), [], Settings(), limiter=limiter)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


@pytest.fixture
def prefix() -> str:
    return f"modelship-test-{uuid.uuid4().hex[:8]}"


async def test_a_burst_then_429_with_retry_after(prefix: str) -> None:
    limiter = RateLimiter(REDIS_URL, per_minute=6, burst=3, fail_open=True, prefix=prefix)
    async with _app(limiter) as http:
        codes = [(await http.get("/api/v1/models")).status_code for _ in range(3)]
        assert codes == [200, 200, 200]
        limited = await http.get("/api/v1/models")
        assert limited.status_code == 429
        error = limited.json()["error"]
        assert error["code"] == "rate_limited"
        assert error["request_id"] == limited.headers["x-request-id"]
        assert 1 <= int(limited.headers["retry-after"]) <= 10  # one token per 10 s
        # another route has its own bucket; health probes are never limited
        assert (await http.get("/api/v1/projects")).status_code != 429
        assert {(await http.get("/health/live")).status_code for _ in range(10)} == {200}
    await limiter.close()


async def test_replicas_share_the_bucket(prefix: str) -> None:
    limiters = [
        RateLimiter(REDIS_URL, per_minute=6, burst=3, fail_open=True, prefix=prefix)
        for _ in range(2)
    ]
    async with _app(limiters[0]) as first, _app(limiters[1]) as second:
        assert (await first.get("/api/v1/models")).status_code == 200
        assert (await second.get("/api/v1/models")).status_code == 200
        assert (await first.get("/api/v1/models")).status_code == 200
        assert (await second.get("/api/v1/models")).status_code == 429
    for limiter in limiters:
        await limiter.close()


@pytest.mark.parametrize(("fail_open", "status"), [(True, 200), (False, 503)])
async def test_when_redis_is_down_the_policy_decides(fail_open: bool, status: int) -> None:
    limiter = RateLimiter("redis://127.0.0.1:1/0", per_minute=6, burst=1, fail_open=fail_open)
    async with _app(limiter) as http:
        responses = [await http.get("/api/v1/models") for _ in range(3)]
    assert {r.status_code for r in responses} == {status}
    if not fail_open:
        assert responses[0].json()["error"]["code"] == "rate_limiter_unavailable"
        assert responses[0].headers["retry-after"]
    await limiter.close()
