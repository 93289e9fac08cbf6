"""API keys while PostgreSQL is down: labeling needs no database, so keys that this
Ingress replica saw lately keep working; nothing else is taken on trust."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from modelship.core.errors import ServiceUnavailable
from storage.embedded import EmbeddedPostgres
from storage.keys import KeyStore
from storage.postgres import Database


async def test_keys_seen_lately_still_authenticate_while_the_database_is_down(
    server_dir: Path,
) -> None:
    server = EmbeddedPostgres(server_dir / "postgres")
    db = Database(server.start(), acquire_timeout_s=2)
    try:
        keys = KeyStore(db, "pepper", outage_grace_s=60)
        brief = KeyStore(db, "pepper", outage_grace_s=0.2)
        seen, principal = await keys.create("tenant-a", ["label"], "seen")
        unseen, _ = await keys.create("tenant-a", ["label"], "not seen")
        revoked, revoked_principal = await keys.create("tenant-a", ["label"], "revoked")
        assert await keys.authenticate(seen) == principal
        assert await brief.authenticate(seen) == principal
        assert await keys.authenticate(revoked) == revoked_principal
        await keys.revoke(revoked_principal.key_id)
        assert await keys.authenticate(revoked) is None  # seen refused: forgotten
        await asyncio.sleep(0.3)  # past the brief store's grace

        with server.outage():
            assert await keys.authenticate(seen) == principal
            for store, key in ((keys, unseen), (keys, revoked), (brief, seen)):
                with pytest.raises(ServiceUnavailable):
                    await store.authenticate(key)
        assert await keys.authenticate(unseen) is not None  # back: asked again
    finally:
        await db.close()
        server.stop()


async def test_a_busy_pool_is_no_outage(postgres_dsn: str) -> None:
    """Every connection of the replica's pool held (a flood of requests can do that): the
    database is there, so a key is not taken from memory; the caller gets the busy 503."""
    db = Database(postgres_dsn, max_size=1, acquire_timeout_s=0.2)
    try:
        keys = KeyStore(db, "pepper", outage_grace_s=60)
        key, principal = await keys.create("tenant-a", ["label"], "seen")
        assert await keys.authenticate(key) == principal
        async with db.connection():  # the pool's only connection
            with pytest.raises(ServiceUnavailable) as busy:
                await keys.authenticate(key)
        assert busy.value.code == "database_busy"
    finally:
        await db.close()
