"""The embedded PostgreSQL and Redis: real servers from wheels, in a temporary folder.

A first PostgreSQL start (initdb) takes ~0.8 s here, a restart ~0.1 s; Redis ~0.01 s.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
import redis.asyncio as aioredis
import yaml
from redis.exceptions import ConnectionError as RedisConnectionError

from modelship.ops.cli import main
from storage.embedded import EmbeddedPostgres, EmbeddedRedis, stop_embedded

ROOT = Path(__file__).resolve().parents[2]


START_ELSEWHERE = (
    "import sys; from pathlib import Path; from storage.embedded import EmbeddedPostgres; "
    "print(EmbeddedPostgres(Path(sys.argv[1])).start())"
)


@pytest.fixture
def postgres(server_dir: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(server_dir / "services")
    try:
        yield server
    finally:
        server.stop()


def postmaster_pid(server: EmbeddedPostgres) -> str:
    return (server.data_dir / "pgdata" / "postmaster.pid").read_text().split()[0]


async def test_postgres_keeps_data_and_dsn_across_restart(postgres: EmbeddedPostgres) -> None:
    dsn = postgres.start()
    conn = await asyncpg.connect(dsn)
    await conn.execute("CREATE TABLE notes (body text)")
    await conn.execute("INSERT INTO notes VALUES ('kept')")
    await conn.close()

    postgres.stop()
    with pytest.raises(ConnectionRefusedError):
        await asyncpg.connect(dsn)
    postgres.stop()  # stopping a stopped server is a no-op

    assert postgres.start() == dsn
    conn = await asyncpg.connect(dsn)
    assert await conn.fetchval("SELECT body FROM notes") == "kept"
    await conn.close()


def test_postgres_started_elsewhere_is_reused(postgres: EmbeddedPostgres) -> None:
    dsn = postgres.start()
    pid = postmaster_pid(postgres)
    assert postgres.start() == dsn

    other = subprocess.run(
        [sys.executable, "-c", START_ELSEWHERE, str(postgres.data_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (other.returncode, other.stdout.strip()) == (0, dsn), other.stderr
    assert postmaster_pid(postgres) == pid


async def test_postgres_refuses_a_wrong_password(postgres: EmbeddedPostgres) -> None:
    dsn = postgres.start()
    wrong = dsn.replace("postgres:", "postgres:x", 1)
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(wrong)


async def test_postgres_moves_when_its_port_was_taken(postgres: EmbeddedPostgres) -> None:
    dsn = postgres.start()
    postgres.stop()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", urlsplit(dsn).port or 0))
        squatter.listen()
        moved = postgres.start()
    assert urlsplit(moved).port != urlsplit(dsn).port
    conn = await asyncpg.connect(moved)
    assert await conn.fetchval("SELECT 1") == 1
    await conn.close()


async def test_redis_round_trip_and_restart(redis_server: EmbeddedRedis) -> None:
    url = redis_server.start()
    assert url.startswith("redis://")
    client = aioredis.from_url(url)
    await client.set("greeting", "hello")
    assert await client.get("greeting") == b"hello"
    await client.aclose()

    redis_server.stop()
    assert redis_server.start() == url
    client = aioredis.from_url(url)
    assert await client.get("greeting") == b"hello"  # saved on shutdown
    await client.aclose()


def test_an_outage_keeps_postgres_down_until_it_ends(postgres: EmbeddedPostgres) -> None:
    dsn = postgres.start()

    def reachable() -> bool:
        async def connect() -> None:
            conn = await asyncpg.connect(dsn, timeout=5)
            await conn.close()

        try:
            asyncio.run(connect())
        except ConnectionRefusedError:
            return False
        return True

    starter = [sys.executable, "-c", START_ELSEWHERE, str(postgres.data_dir)]
    with postgres.outage():
        assert not reachable()
        # another process trying to start it waits for the outage to end
        elsewhere = subprocess.Popen(starter, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        with pytest.raises(subprocess.TimeoutExpired):
            elsewhere.wait(timeout=1.5)
        assert not reachable()
    assert elsewhere.communicate(timeout=60)[0].strip() == dsn
    assert reachable()


async def test_stop_services_stops_the_servers_a_config_left_running(
    tmp_path: Path, server_dir: Path
) -> None:
    """`modelship serve` and local batch jobs leave the embedded servers running for the
    next start; `modelship stop-services` stops those under the config's data dir."""
    services = server_dir / "d" / "services"
    dsn = EmbeddedPostgres(services / "postgres").start()
    url = EmbeddedRedis(services / "redis").start()
    config = yaml.safe_load((ROOT / "config" / "serve_config.yaml").read_text())
    config["applications"][0]["args"]["settings"] = {"data_dir": str(server_dir / "d")}
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    try:
        assert await asyncio.to_thread(main, ["stop-services", "--config", str(path)]) == 0
        with pytest.raises(ConnectionRefusedError):
            await asyncpg.connect(dsn, timeout=5)
        with pytest.raises(RedisConnectionError):
            await aioredis.from_url(url).ping()
    finally:
        stop_embedded(services)
