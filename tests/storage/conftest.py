"""Fixtures of the storage tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.embedded import EmbeddedRedis


@pytest.fixture
def server_dir() -> Iterator[Path]:
    """A folder for an embedded PostgreSQL, outside pytest's ``tmp_path``: every pytest
    session that starts sets ``/tmp/pytest-of-<user>`` back to 0700, which, run as root,
    locks the server's own user out of a cluster under it (initdb or pg_ctl failed with
    'Permission denied' mid-test while another session started)."""
    path = Path(tempfile.mkdtemp(prefix="modelship-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "services")
    try:
        yield server
    finally:
        server.stop()
