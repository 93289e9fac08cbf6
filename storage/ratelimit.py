"""Rate limits kept in Redis, so they hold across every ingress replica.

A token bucket per (client, route): ``burst`` tokens, refilled at ``per_minute``; one
atomic Lua script takes a token or says how long until the next one. When Redis cannot be
reached, the configured policy decides: fail open (serve) or closed (refuse with 503).
"""

from __future__ import annotations

import logging
import math

from modelship.core import tracing
from modelship.core.errors import RateLimited, ServiceUnavailable
from modelship.core.tracing import SpanKind
from storage.redis import REDIS_ERRORS, connect

logger = logging.getLogger("modelship.ratelimit")

# KEYS[1]: the bucket. ARGV: tokens per second, burst. Returns {allowed, wait_s}.
# "now" is Redis's clock, the one clock every ingress replica shares: with each replica's
# own, one whose clock ran ahead refilled the bucket for all (a skew of a minute, a full one).
_TAKE = """
if redis.replicate_commands then redis.replicate_commands() end -- TIME, then writes (Redis < 5)
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1e6
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed, wait = 0, 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return {allowed, tostring(wait)}
"""


class RateLimiter:
    """Args:
    url: Redis URL.
    per_minute: sustained requests per minute per client and route.
    burst: requests allowed at once.
    fail_open: serve (True) or refuse (False) when Redis is unreachable.
    prefix: of the Redis keys.
    """

    def __init__(
        self, url: str, per_minute: int, burst: int, fail_open: bool, prefix: str = "modelship"
    ) -> None:
        self._client = connect(url, connect_timeout_s=0.5, timeout_s=0.5)
        self._take = self._client.register_script(_TAKE)
        self._rate = per_minute / 60.0
        self._burst = burst
        self._fail_open = fail_open
        self._prefix = prefix

    async def check(self, client: str, route: str, scale: float = 1.0) -> None:
        """Take a token for ``client`` on ``route`` (whose rate and burst are ``scale``
        times the configured ones).

        Raises:
            RateLimited: none left (429 with ``Retry-After``).
            ServiceUnavailable: Redis is unreachable and the policy is to fail closed.
        """
        key = f"{self._prefix}:rl:{client}:{route}"
        try:
            with tracing.span("redis EVALSHA", SpanKind.CLIENT, **{"db.system.name": "redis"}):
                allowed, wait = await self._take(
                    keys=[key], args=[self._rate * scale, self._burst * scale]
                )
        except REDIS_ERRORS as exc:
            if self._fail_open:
                logger.warning("rate limiter unavailable, serving anyway: %r", exc)
                return
            raise ServiceUnavailable(
                "the rate limiter is unavailable; retry later", "rate_limiter_unavailable"
            ) from exc
        if not int(allowed):
            retry = max(1, math.ceil(float(wait)))
            raise RateLimited(f"rate limit exceeded; retry in {retry}s", retry_after_s=retry)

    async def close(self) -> None:
        await self._client.aclose()
