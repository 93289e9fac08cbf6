"""The cache and the rate limiter on a real Redis of their own (embedded), stopped and started
again under them: a Redis that comes back is used at once."""

from __future__ import annotations

import asyncio
import itertools
import time
import types

import pytest
import uvloop

from modelship.core.errors import RateLimited
from storage.embedded import EmbeddedRedis
from storage.ratelimit import RateLimiter
from storage.redis import Cache


async def test_the_cache_uses_a_restarted_redis_at_once(redis_server: EmbeddedRedis) -> None:
    cache = Cache(redis_server.start(), prefix="test")
    before, after = (cache.prediction_key("v1", "p", h) for h in ("before", "after"))
    await cache.put_many({before: ["cat"]})
    assert await cache.get_many([before]) == {before: ["cat"]}

    redis_server.stop()  # every pooled connection dies
    redis_server.start()
    await cache.put_many({after: ["dog"]})  # the first call after the restart is not lost
    assert await cache.get_many([before, after]) == {before: ["cat"], after: ["dog"]}
    await cache.close()


async def test_a_limiter_failing_closed_serves_again_once_redis_is_back(
    redis_server: EmbeddedRedis,
) -> None:
    url = redis_server.start()
    limiter = RateLimiter(url, per_minute=600, burst=100, fail_open=False, prefix="test")
    # a few connections in the pool, all of which the restart kills
    await asyncio.gather(*(limiter.check("key:a", f"GET /r{i}") for i in range(4)))

    redis_server.stop()
    redis_server.start()
    for i in range(8):
        await limiter.check("key:a", f"GET /r{i % 4}")  # no 503: Redis is up
    await limiter.close()


async def test_replicas_with_skewed_clocks_share_one_budget(
    redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two ingress replicas whose clocks differ by 30 s take turns with one client: the
    bucket is refilled by Redis's clock, not by whichever replica's clock runs ahead."""
    skews = itertools.cycle([0.0, 30.0])
    real = time.time
    skewed = types.SimpleNamespace(time=lambda: real() + next(skews))
    monkeypatch.setattr("storage.ratelimit.time", skewed, raising=False)
    limiter = RateLimiter(redis_server.start(), per_minute=6, burst=3, fail_open=False)
    allowed = 0
    for _ in range(12):
        try:
            await limiter.check("key:a", "GET /r")
            allowed += 1
        except RateLimited:
            pass
    assert allowed == 3  # the burst; one token per 10 s
    await limiter.close()


def test_pooled_connections_whose_socket_closed_are_replaced_under_uvloop(
    redis_server: EmbeddedRedis,
) -> None:
    """Serve's replicas run uvloop, which raises RuntimeError on a write to a closed socket
    (asyncio's loop drops the write and lets the read fail, which redis-py retries). With
    redis 8.1 a pooled connection whose socket had closed was handed out anyway, and its
    command raised that RuntimeError: in the multi-node CI run, a job already committed
    answered 500. Here the socket of every idle connection is closed, as the kernel closes
    one the network reset; the next calls take new connections."""

    async def scenario() -> None:
        cache = Cache(redis_server.start(), prefix="test")
        key = cache.prediction_key("v1", "p", "h")
        await asyncio.gather(*(cache.put_many({key: ["cat"]}) for _ in range(3)))
        idle = cache._client.connection_pool._available_connections
        assert idle
        for connection in idle:
            connection._writer.transport.abort()
        await asyncio.sleep(0.1)
        assert await cache.get_many([key]) == {key: ["cat"]}  # not a miss: no Redis error
        await cache.notify_jobs()
        await cache.close()

    uvloop.run(scenario())
