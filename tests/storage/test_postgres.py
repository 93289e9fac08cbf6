"""The PostgreSQL pool against the machine's real server: a session stuck inside a
transaction (its process lost its network, say) does not hold its locks for long."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from pathlib import Path

import asyncpg
import pytest

from modelship.core.errors import ServiceUnavailable
from storage.embedded import EmbeddedPostgres
from storage.postgres import Database


async def test_a_session_idle_in_a_transaction_is_ended_and_its_locks_released(
    postgres_dsn: str,
) -> None:
    table = f"held_{uuid.uuid4().hex[:8]}"
    setup = await asyncpg.connect(postgres_dsn)
    await setup.execute(
        f"CREATE TABLE {table} (id int PRIMARY KEY); INSERT INTO {table} VALUES (1)"
    )
    db = Database(postgres_dsn, migrate=False, idle_transaction_timeout_s=1.0)
    waited = 0.0

    async def hold_a_lock_then_go_quiet() -> None:
        nonlocal waited
        async with db.transaction() as stuck:
            # The clock starts before the lock is asked for: the server's idle timer starts
            # when it has answered, which a client slowed by a busy machine notices late
            # (started after the answer, 0.8 s was not always waited).
            started = time.monotonic()
            await stuck.execute(f"SELECT id FROM {table} WHERE id = 1 FOR UPDATE")
            await setup.execute("SET lock_timeout = '10s'")
            await setup.execute(f"SELECT id FROM {table} WHERE id = 1 FOR UPDATE")
            waited = time.monotonic() - started
            await asyncio.sleep(0.2)
            await stuck.execute("SELECT 1")  # the server has ended this session

    try:
        with pytest.raises(ServiceUnavailable):
            await hold_a_lock_then_go_quiet()
        assert 0.8 < waited < 5, waited
        async with db.connection() as fresh:  # the pool replaces the dead connection
            assert await fresh.fetchval("SHOW idle_in_transaction_session_timeout") == "1s"
            assert await fresh.fetchval("SHOW tcp_keepalives_idle") == "30"
    finally:
        await db.close()
        await setup.execute(f"DROP TABLE {table}")
        await setup.close()


async def test_a_saturated_pool_is_busy_not_a_database_outage(postgres_dsn: str) -> None:
    """Every connection of the pool held: a caller waits its acquire timeout, then gets a
    503 saying the database is busy (PostgreSQL answers fine), and its log says the pool."""
    db = Database(postgres_dsn, min_size=1, max_size=2, migrate=False, acquire_timeout_s=0.5)
    release = asyncio.Event()
    held = asyncio.Semaphore(0)

    async def hold() -> None:
        async with db.connection() as conn:
            await conn.fetchval("SELECT 1")
            held.release()
            await release.wait()

    holders = [asyncio.create_task(hold()) for _ in range(2)]
    try:
        for _ in holders:
            await held.acquire()
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable) as raised:
            async with db.connection():
                pass
        assert raised.value.code == "database_busy"
        assert 0.4 < time.monotonic() - started < 3
    finally:
        release.set()
        await asyncio.gather(*holders)
    async with db.connection() as conn:  # free again
        assert await conn.fetchval("SELECT 1") == 1
    await db.close()
    down = Database("postgresql://postgres@127.0.0.1:1/none", migrate=False)
    with pytest.raises(ServiceUnavailable) as raised:
        async with down.connection():
            pass
    assert raised.value.code == "service_unavailable"  # an outage is still one


async def test_a_server_out_of_connection_slots_is_an_outage(server_dir: Path) -> None:
    """max_connections reached (replicas x DB_POOL_SIZE past it): a 503, not asyncpg's
    TooManyConnectionsError escaping as a 500."""
    server = EmbeddedPostgres(server_dir / "postgres")
    dsn = server.start()
    try:
        admin = await asyncpg.connect(dsn)
        await admin.execute("ALTER SYSTEM SET max_connections = 3")
        await admin.execute("ALTER SYSTEM SET superuser_reserved_connections = 0")
        await admin.close()
        server.stop()
        server.start()
        hogs = [await asyncpg.connect(dsn) for _ in range(3)]
        db = Database(dsn, migrate=False)
        try:
            with pytest.raises(ServiceUnavailable) as raised:
                await db.ping()
            assert raised.value.code == "service_unavailable"
        finally:
            for hog in hogs:
                await hog.close()
        await db.ping()  # slots free again: served
        await db.close()
    finally:
        server.stop()


async def test_callers_share_one_attempt_to_reach_an_unanswering_server() -> None:
    """PostgreSQL unreachable at start (it takes connections and never answers): every
    caller waiting for the pool gets its 503 after one connect timeout (5 s), not the
    fourth after four attempts made one after another."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        db = Database(f"postgresql://postgres@127.0.0.1:{silent.getsockname()[1]}/none")
        started = time.monotonic()

        async def ping() -> float:
            with pytest.raises(ServiceUnavailable):
                await db.ping()
            return time.monotonic() - started

        waited = await asyncio.gather(*(ping() for _ in range(4)))
        assert max(waited) < 9, waited
