"""API keys: created once and shown once, stored as an HMAC of the key, looked up by it."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID, uuid4

from modelship.core.errors import NotFound, ServiceUnavailable
from storage.catalog import audit
from storage.postgres import Database

SCOPES = ("read", "label", "review", "export", "admin")

logger = logging.getLogger("modelship.keys")


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: a key's tenant, scopes and (optionally) projects."""

    key_id: UUID
    name: str
    tenant: str
    scopes: frozenset[str]
    project_ids: frozenset[UUID] | None  # None: every project of the tenant

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    def sees(self, project_id: UUID) -> bool:
        return self.project_ids is None or project_id in self.project_ids


@dataclass(frozen=True)
class KeyInfo:
    """What an operator sees of a key: never the key or its hash. ``prefix`` is the part
    after ``ms_`` a leaked key shows (``ms_<prefix>_...``)."""

    key_id: UUID
    tenant: str
    name: str
    prefix: str
    scopes: list[str]
    project_ids: list[UUID] | None
    created_at: datetime
    revoked_at: datetime | None


class KeyStore:
    """Args:
    db: PostgreSQL.
    pepper: the service's secret key; a stolen table of hashes is useless without it.
    previous_pepper: the secret key before a rotation: a key stored under it still
        authenticates, and is stored under ``pepper`` from then on.
    outage_grace_s: while the database is unreachable, a key this store authenticated
        within this many seconds still authenticates (from memory); 0: none.
    """

    def __init__(
        self,
        db: Database,
        pepper: str,
        previous_pepper: str | None = None,
        outage_grace_s: float = 0.0,
    ) -> None:
        self._db = db
        self._peppers = [pepper.encode()]
        if previous_pepper:
            self._peppers.append(previous_pepper.encode())
        self._outage_grace_s = outage_grace_s
        # hash -> (principal, when last confirmed): only keys that exist and authenticated,
        # so an unknown key sent many times adds nothing
        self._confirmed: dict[str, tuple[Principal, float]] = {}

    def _hash(self, key: str, pepper: bytes | None = None) -> str:
        return hmac.new(pepper or self._peppers[0], key.encode(), hashlib.sha256).hexdigest()

    async def create(
        self,
        tenant: str,
        scopes: list[str],
        name: str = "",
        project_ids: list[UUID] | None = None,
        actor: str = "cli",
    ) -> tuple[str, Principal]:
        """A new key: returns it in clear (shown once) and what it may do."""
        unknown = set(scopes) - set(SCOPES)
        if unknown or not scopes:
            raise ValueError(f"scopes must be among {', '.join(SCOPES)}; got {scopes}")
        prefix = secrets.token_hex(4)
        key = f"ms_{prefix}_{secrets.token_urlsafe(32)}"
        key_id = uuid4()
        async with self._db.transaction() as conn:
            await conn.execute(
                "INSERT INTO api_keys (id, tenant, key_hash, scopes, project_ids, name, prefix)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7)",
                key_id,
                tenant,
                self._hash(key),
                sorted(set(scopes)),
                project_ids,
                name,
                prefix,
            )
            await audit(conn, tenant, actor, "key.create", f"key:{key_id}", {"scopes": scopes})
        ids = frozenset(project_ids) if project_ids is not None else None
        return key, Principal(key_id, name, tenant, frozenset(scopes), ids)

    async def authenticate(self, key: str) -> Principal | None:
        """The key's principal, or None for an unknown or revoked key.

        Raises:
            ServiceUnavailable: the database is unreachable, and this store did not
                authenticate the key within ``outage_grace_s``.
        """
        hashes = [self._hash(key, pepper) for pepper in self._peppers]
        try:
            principal = await self._lookup(hashes)
        except ServiceUnavailable as exc:
            # an outage only: a pool kept busy (``database_busy``) is this process's load,
            # which a flood of requests could make, not the database being away
            principal, confirmed = self._confirmed.get(hashes[0], (None, 0.0))
            recent = principal is not None and time.monotonic() - confirmed <= self._outage_grace_s
            if exc.code != "service_unavailable" or not recent:
                raise
            # a revocation needs the database: only one made between the key's last use
            # and the outage goes unseen
            return principal
        if principal is None:
            self._confirmed.pop(hashes[0], None)
        elif self._outage_grace_s:
            self._confirmed[hashes[0]] = (principal, time.monotonic())
        return principal

    async def _lookup(self, hashes: list[str]) -> Principal | None:
        async with self._db.connection() as conn:
            row = await conn.fetchrow(
                "SELECT id, name, tenant, scopes, project_ids, key_hash FROM api_keys"
                " WHERE key_hash = ANY($1::text[]) AND revoked_at IS NULL",
                hashes,
            )
            if row is not None and row["key_hash"] != hashes[0]:
                # stored under the previous secret key: from now on under the current one
                await conn.execute(
                    "UPDATE api_keys SET key_hash = $2 WHERE id = $1 AND key_hash = $3",
                    row["id"],
                    hashes[0],
                    row["key_hash"],
                )
                logger.info("API key %s is now stored under the current secret key", row["id"])
        if row is None:
            return None
        ids = frozenset(row["project_ids"]) if row["project_ids"] is not None else None
        return Principal(row["id"], row["name"], row["tenant"], frozenset(row["scopes"]), ids)

    async def list_keys(self, tenant: str | None = None, revoked: bool = False) -> list[KeyInfo]:
        """The keys, oldest first: of ``tenant`` or of all tenants, the revoked ones too
        with ``revoked``."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                "SELECT id, tenant, name, prefix, scopes, project_ids, created_at, revoked_at"
                " FROM api_keys WHERE ($1::text IS NULL OR tenant = $1)"
                " AND ($2 OR revoked_at IS NULL) ORDER BY created_at, id",
                tenant,
                revoked,
            )
        return [
            KeyInfo(
                r["id"],
                r["tenant"],
                r["name"],
                r["prefix"],
                sorted(r["scopes"]),
                r["project_ids"],
                r["created_at"],
                r["revoked_at"],
            )
            for r in rows
        ]

    async def revoke(self, key_id: UUID) -> None:
        async with self._db.connection() as conn:
            status = await conn.execute(
                "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
                key_id,
            )
        if status.endswith(" 0"):
            raise NotFound(f"no active key {key_id}", "unknown_key")
