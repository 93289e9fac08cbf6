"""The three services ModelShip keeps state in, opened from settings.

Unset URLs mean embedded services for a laptop: a real PostgreSQL and a real Redis
started under ``data_dir/services`` (once: every later process finds them running) and
a local folder for objects. The production profile refuses that (see ``Settings``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from modelship.core.settings import Settings
from storage.embedded import EmbeddedPostgres, EmbeddedRedis
from storage.objects import ObjectStore
from storage.postgres import Database
from storage.redis import Cache


@dataclass(frozen=True)
class ServiceUrls:
    database: str
    redis: str
    objects: str


def resolve_urls(settings: Settings) -> ServiceUrls:
    """The configured URLs, starting embedded services for those left unset."""
    database = settings.database_url.get_secret_value() if settings.database_url else None
    redis = settings.redis_url.get_secret_value() if settings.redis_url else None
    if database is None or redis is None:
        root = settings.data_dir / "services"
        if database is None:
            database = EmbeddedPostgres(root / "postgres").start()
        if redis is None:
            redis = EmbeddedRedis(root / "redis").start()
    objects = settings.object_store_url or str(settings.data_dir / "objects")
    return ServiceUrls(database, redis, objects)


@dataclass
class Services:
    """Clients of PostgreSQL, Redis and object storage; each connects on first use."""

    db: Database
    cache: Cache
    objects: ObjectStore
    urls: ServiceUrls

    @classmethod
    def from_settings(cls, settings: Settings) -> Services:
        urls = resolve_urls(settings)
        return cls(
            db=Database(
                urls.database,
                max_size=settings.db_pool_size,
                idle_transaction_timeout_s=settings.db_idle_transaction_timeout_s,
            ),
            cache=Cache(urls.redis, settings.redis_prefix),
            objects=ObjectStore(urls.objects, settings.object_store_options),
            urls=urls,
        )

    async def check(self, timeout_s: float = 2.0) -> dict[str, tuple[bool, float]]:
        """Each service: (reachable, seconds the check took)."""
        probes: dict[str, Callable[[], Awaitable[None]]] = {
            "database": self.db.ping,
            "redis": self.cache.ping,
            "object_storage": self.objects.ping,
        }
        results = await asyncio.gather(*(_timed(p, timeout_s) for p in probes.values()))
        return dict(zip(probes, results, strict=True))

    async def close(self) -> None:
        await self.db.close()
        await self.cache.close()


async def _timed(probe: Callable[[], Awaitable[None]], timeout_s: float) -> tuple[bool, float]:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(probe(), timeout_s)
        ok = True
    except Exception:
        ok = False
    return ok, time.perf_counter() - started
