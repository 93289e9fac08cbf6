"""``modelship preflight``: everything the service needs, checked before it starts.

Settings are validated when they load; then PostgreSQL (migrations applied), Redis,
object storage (an object written, read back and deleted), free disk under the data dir,
clamd when uploads are scanned, and every configured model's files. Each check reports ok
or the reason, and how long it took.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from modelship.core.config import LabelingAppArgs
from modelship.predictors import ModelStore
from storage.scan import Clamd
from storage.services import Services

MIN_FREE_BYTES = 2 * 1024**3
_PROBE = b"modelship preflight probe\n"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    seconds: float


async def _check(name: str, probe: Callable[[], Awaitable[str]]) -> Check:
    started = time.perf_counter()
    try:
        detail, ok = await asyncio.wait_for(probe(), 60), True
    except Exception as exc:
        detail, ok = f"{type(exc).__name__}: {exc}", False
    return Check(name, ok, detail, time.perf_counter() - started)


async def run_checks(args: LabelingAppArgs) -> list[Check]:
    """Every check, in a fixed order; none stops the others."""
    settings = args.settings
    checks: list[Check] = []
    try:
        services = await asyncio.to_thread(Services.from_settings, settings)
    except Exception as exc:  # embedded services that would not start
        return [Check("services", False, f"{type(exc).__name__}: {exc}", 0.0)]

    async def database() -> str:
        async with services.db.connection() as conn:
            version = await conn.fetchval("SHOW server_version")
            applied = await conn.fetchval("SELECT count(*) FROM schema_migrations")
            most = await conn.fetchval("SHOW max_connections")
        pool = settings.db_pool_size
        return (
            f"PostgreSQL {version}, {applied} migrations applied;"
            f" max_connections {most}, at most {pool} per replica"
        )

    async def redis() -> str:
        await services.cache.ping()
        return "answers PING"

    async def objects() -> str:
        # Written, read back and deleted: a folder or bucket that is there but read-only (a
        # read-only volume, read-only credentials) passes a ping and fails every upload.
        store = services.objects
        await store.ping()
        key = store.new_key("modelship-preflight", "probe", ".txt")
        await store.put(key, _PROBE)
        try:
            if await store.get(key) != _PROBE:
                raise RuntimeError(f"{key} read back other bytes than were written")
        finally:
            await store.delete(key)
        return f"{store.url} (written, read, deleted)"

    async def disk() -> str:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(settings.data_dir).free
        if free < MIN_FREE_BYTES:
            raise RuntimeError(f"{free / 2**30:.1f} GiB free under {settings.data_dir}")
        return f"{free / 2**30:.1f} GiB free under {settings.data_dir}"

    try:
        for name, probe in (
            ("database", database),
            ("redis", redis),
            ("object_storage", objects),
            ("disk", disk),
        ):
            checks.append(await _check(name, probe))
    finally:
        await services.close()
    scanner = Clamd.from_settings(settings)
    if scanner is not None:

        async def clamd(scanner: Clamd = scanner) -> str:
            await scanner.ping()
            return f"answers PING at {scanner.url}"

        checks.append(await _check("clamd", clamd))
    store = ModelStore(settings.models_dir)
    for config in args.models:

        async def model(source: str = config.source) -> str:
            files = await asyncio.to_thread(store.resolve, source)
            return f"{files.version} at {files.path}"

        checks.append(await _check(f"model:{config.name}", model))
    return checks


def table(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"{'check':<{width}}  status  seconds  detail"]
    for c in checks:
        status = "ok" if c.ok else "FAILED"
        lines.append(f"{c.name:<{width}}  {status:<6}  {c.seconds:7.2f}  {c.detail}")
    return "\n".join(lines)
