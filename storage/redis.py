"""Redis, an accelerator only: a prediction cache and job wake-ups.

Nothing here is the truth. Every call survives Redis being down or restarting: a
lookup becomes a miss, a write or a wake-up is skipped, a wait becomes a plain sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from modelship.core import tracing
from modelship.core.tracing import SpanKind

logger = logging.getLogger("modelship.storage")
_REDIS_SPAN = {"db.system.name": "redis"}

# Redis being unreachable shows up as these (connection refused is an OSError).
REDIS_ERRORS = (RedisError, OSError, asyncio.TimeoutError)


def connect(url: str, connect_timeout_s: float, timeout_s: float, **options: Any) -> aioredis.Redis:
    """A client whose command on a dead pooled connection runs again at once on a new one.

    After Redis restarts, every connection in the pool is dead; without the retry the first
    command on each would fail (a cache miss, or a 503 from a limiter failing closed) although
    Redis is back. Only connection errors are retried: a hung Redis costs one timeout, not
    several. (The retry is redis.asyncio's: the synchronous ``redis.retry.Retry`` never
    retries a coroutine.)
    """
    return aioredis.from_url(
        url,
        socket_connect_timeout=connect_timeout_s,
        socket_timeout=timeout_s,
        retry=Retry(NoBackoff(), retries=1, supported_errors=(RedisConnectionError,)),
        **options,
    )


class Cache:
    """Prediction cache keyed by content hash, model version and parameters.

    Args:
        url: a ``redis://`` URL.
        prefix: of every key and channel, so that deployments can share a Redis.
        ttl_s: how long a cached prediction lives.
    """

    def __init__(self, url: str, prefix: str = "modelship", ttl_s: int = 7 * 24 * 3600) -> None:
        self._prefix = prefix
        self._jobs_channel = f"{prefix}:jobs"
        self._ttl_s = ttl_s
        self._client = connect(url, connect_timeout_s=1, timeout_s=2, health_check_interval=15)
        self._wake = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None

    def prediction_key(self, model_version: str, params_hash: str, content_hash: str) -> str:
        return f"{self._prefix}:pred:{model_version}:{params_hash}:{content_hash}"

    async def ping(self) -> None:
        await self._client.ping()

    async def get_many(self, keys: list[str]) -> dict[str, Any]:
        """The cached values of ``keys`` (missing and undecodable ones left out)."""
        if not keys:
            return {}
        try:
            with tracing.span("redis MGET", SpanKind.CLIENT, **_REDIS_SPAN, keys=len(keys)):
                values = await self._client.mget(keys)
        except REDIS_ERRORS as exc:
            logger.warning("Redis cache read skipped: %r", exc)
            return {}
        found = {}
        for key, value in zip(keys, values, strict=True):
            if value is not None:
                try:
                    found[key] = json.loads(value)
                except ValueError:
                    continue
        return found

    async def put_many(self, values: dict[str, Any]) -> None:
        if not values:
            return
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key, value in values.items():
                    pipe.set(key, json.dumps(value), ex=self._ttl_s)
                with tracing.span("redis SET", SpanKind.CLIENT, **_REDIS_SPAN, keys=len(values)):
                    await pipe.execute()
        except REDIS_ERRORS as exc:
            logger.warning("Redis cache write skipped: %r", exc)

    async def notify_jobs(self) -> None:
        """Wake idle job runners now instead of at their next poll. Called after a job
        commits: whatever goes wrong here costs a poll interval, never the request."""
        try:
            await self._client.publish(self._jobs_channel, "1")
        except Exception as exc:
            logger.warning("job wake-up skipped: %r", exc)

    async def wait_for_jobs(self, timeout_s: float) -> None:
        """Return on a wake-up or after ``timeout_s``, whichever comes first.

        One listener task per process reads the channel; any number of waiters share it.
        """
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout_s)
        self._wake.clear()

    async def _listen(self) -> None:
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._jobs_channel)
                async for _ in pubsub.listen():
                    self._wake.set()
            except REDIS_ERRORS as exc:
                logger.debug("job wake-ups unavailable: %r", exc)
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(*REDIS_ERRORS):
                    await pubsub.aclose()

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self._client.aclose()
