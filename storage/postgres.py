"""PostgreSQL, the source of truth: an asyncpg pool, migrations, and outage mapping.

Migrations are plain numbered SQL files in ``storage/migrations``, applied in order by
``migrate()`` when a process first connects: under an advisory lock, each in its own
transaction, recorded in ``schema_migrations``. We write SQL by hand against asyncpg
(no ORM), so a migration tool built on one (Alembic needs SQLAlchemy) would add a second
model of the schema for nothing; twenty lines below do the same job.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

import asyncpg

from modelship.core import tracing
from modelship.core.errors import ConfigurationError, InvalidInput, ServiceUnavailable

logger = logging.getLogger("modelship.storage")

_OPERATION = re.compile(r"^(?:\s|--[^\n]*\n)*([A-Za-z]+)")  # the first keyword, past comments
_MIGRATION_LOCK = 0x6D6F64656C  # pg_advisory_lock key shared by every ModelShip process

# What PostgreSQL being down, restarting or unreachable looks like to asyncpg.
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.exceptions.OperatorInterventionError,
    # Out of connection slots (max_connections: too many replicas x DB_POOL_SIZE), disk or
    # memory: the server cannot serve now, as when it is down.
    asyncpg.InsufficientResourcesError,
    # A transaction PostgreSQL aborted to resolve a conflict: the same request, retried, runs.
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
)


# Text PostgreSQL cannot hold: a NUL character, in text or in jsonb (\u0000).
UNSTORABLE_TEXT = (
    asyncpg.CharacterNotInRepertoireError,
    asyncpg.UntranslatableCharacterError,
)


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration file, in order."""
    found = []
    for entry in resources.files("storage.migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text()))
    return sorted(found)


class Database:
    """A lazily opened asyncpg pool; every use maps an outage to ``ServiceUnavailable``.

    Every session asks the server to end it when left idle inside a transaction, and to
    probe its socket with TCP keepalives: a process that loses its network mid-transaction
    (a node gone) would otherwise hold its row locks until the server's TCP gives up, hours
    later, and stall every job behind them.

    Args:
        dsn: a PostgreSQL connection string.
        min_size, max_size: pool bounds (small: many replicas share one server).
        migrate: apply pending migrations when the pool first opens.
        idle_transaction_timeout_s: ``idle_in_transaction_session_timeout``.
        acquire_timeout_s: how long a caller waits for a free connection of the pool.
    """

    def __init__(
        self,
        dsn: str,
        min_size: int = 1,
        max_size: int = 4,
        migrate: bool = True,
        idle_transaction_timeout_s: float = 60.0,
        acquire_timeout_s: float = 10.0,
    ) -> None:
        self._dsn = dsn
        self._migrate = migrate
        self._min_size = min_size
        self._max_size = max_size
        self._acquire_timeout_s = acquire_timeout_s
        self._server_settings = {
            "idle_in_transaction_session_timeout": str(int(idle_transaction_timeout_s * 1000)),
            "tcp_keepalives_idle": "30",
            "tcp_keepalives_interval": "10",
            "tcp_keepalives_count": "3",
        }
        self._pool: asyncpg.Pool | None = None
        self._opening: asyncio.Future[asyncpg.Pool] | None = None

    async def _get_pool(self) -> asyncpg.Pool:
        """The pool, opened on first use. Callers arriving while it opens share that one
        attempt and its failure: queued one after another behind a lock, each made its own
        attempt, and with PostgreSQL unreachable the tenth caller waited ten connect
        timeouts for its 503. The next call after a failure tries again."""
        if self._pool is not None:
            return self._pool
        opening = self._opening
        if (
            opening is None
            or opening.done()
            or opening.get_loop() is not asyncio.get_running_loop()
        ):
            opening = self._opening = asyncio.ensure_future(self._open())
        # shielded: a caller cancelled (a client gone) does not cancel the others' attempt
        return await asyncio.shield(opening)

    async def _open(self) -> asyncpg.Pool:
        pool = await asyncpg.create_pool(
            self._dsn,
            min_size=self._min_size,
            max_size=self._max_size,
            timeout=5,
            command_timeout=30,
            init=_setup_connection,
            server_settings=self._server_settings,
        )
        if self._migrate:
            try:
                async with pool.acquire() as conn:
                    await migrate(conn)
            except BaseException:
                await pool.close()
                raise
        self._pool = pool
        return pool

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection.

        Raises:
            ServiceUnavailable: PostgreSQL is down (``service_unavailable``), or every
                connection of the pool stayed busy for ``acquire_timeout_s``
                (``database_busy``: PostgreSQL is fine, this process is saturated).
        """
        try:
            pool = await self._get_pool()
            try:
                conn = await pool.acquire(timeout=self._acquire_timeout_s)
            except TimeoutError:
                if pool.get_idle_size() == 0 and pool.get_size() >= pool.get_max_size():
                    logger.warning(
                        "all %d PostgreSQL connections busy for %.0fs (MODELSHIP_DB_POOL_SIZE)",
                        pool.get_max_size(),
                        self._acquire_timeout_s,
                    )
                    raise ServiceUnavailable(
                        "the database is busy; retry later", "database_busy"
                    ) from None
                raise  # no connection could be opened: an outage
            try:
                yield conn
            finally:
                await pool.release(conn)
        except OUTAGE_ERRORS as exc:
            logger.warning("PostgreSQL unavailable: %r", exc)
            raise ServiceUnavailable("the database is unavailable; retry later") from exc
        except UNSTORABLE_TEXT as exc:  # found by the API fuzz: a NUL in a name or a query
            raise InvalidInput("text may not contain the NUL character", "invalid_text") from exc

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        async with self.connection() as conn, conn.transaction():
            yield conn

    async def ping(self) -> None:
        async with self.connection() as conn:
            await conn.fetchval("SELECT 1")

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


async def _setup_connection(conn: asyncpg.Connection) -> None:
    """jsonb columns in and out as Python values (no json.dumps/loads at every query), and
    a span per statement when tracing is on."""
    if tracing.enabled():
        conn.add_query_logger(_trace_query)
    await conn.set_type_codec(
        "jsonb",
        # jsonb's binary format is a version byte (1) and the JSON text; binary also serves COPY
        encoder=lambda value: b"\x01" + json.dumps(value, default=str).encode(),
        decoder=lambda data: json.loads(data[1:]),
        schema="pg_catalog",
        format="binary",
    )


def _trace_query(record: asyncpg.connection.LoggedQuery) -> None:
    # asyncpg calls loggers with call_soon, in a copy of the querying task's context, so
    # the span's parent is the span that ran the query. The statement's text has only
    # placeholders; the arguments (user data) are not recorded.
    if not tracing.recording():
        return  # a statement outside any traced request or job batch (idle polls)
    operation = _OPERATION.search(record.query)
    tracing.finished_span(
        f"postgres {operation.group(1).upper() if operation else 'QUERY'}",
        record.elapsed,
        record.exception,
        **{"db.system.name": "postgresql", "db.query.text": record.query[:2048]},
    )


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply pending migrations; safe to run from many processes at once.

    Each applied migration's checksum is kept; a migration file changed since the database
    applied it is refused (a released migration never changes: add a new one), as the
    database would otherwise lack what the change added while claiming it has it.

    Raises:
        ConfigurationError: an applied migration's file has changed.
    """
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY,"
            " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(), checksum text)"
        )
        await conn.execute("ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS checksum text")
        rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
        done = {r["version"]: r["checksum"] for r in rows}
        for version, name, sql in migrations():
            checksum = hashlib.sha256(sql.encode()).hexdigest()
            if version in done:
                if done[version] is None:  # applied before checksums were kept
                    await conn.execute(
                        "UPDATE schema_migrations SET checksum = $2 WHERE version = $1",
                        version,
                        checksum,
                    )
                elif done[version] != checksum:
                    raise ConfigurationError(
                        f"migration {name} has changed since this database applied it; a"
                        " released migration must not change (add a new one)"
                    )
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    version,
                    name,
                    checksum,
                )
            applied.append(name)
            logger.info("applied migration %s", name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied
