"""``modelship serve`` as an operator runs it: started, stopped with SIGTERM (systemd,
``docker stop``), started again. Stopping must leave nothing behind — no HAProxy on the
ports, no Ray processes — or the next start fails."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from modelship.ops.ray_env import free_port, private_haproxy
from storage.embedded import stop_embedded
from tests.integration.conftest import text_only_config

ROOT = Path(__file__).resolve().parents[2]


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _processes_of(marker: str) -> list[psutil.Process]:
    """Every live process whose command line names ``marker`` (a folder of its own)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if marker in " ".join(process.info["cmdline"] or []):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str], int, str]]:
    """A text-only config, and the environment of its own Ray, HAProxy and data."""
    port = free_port()
    config = tmp_path / "serve_config.yaml"
    config.write_text(yaml.safe_dump(text_only_config(port, {"data_dir": str(tmp_path / "d")})))
    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    haproxy = Path(tempfile.mkdtemp(prefix="h", dir="/tmp"))  # HAProxy's files, its marker
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env |= {**private_haproxy(haproxy), "RAY_TMPDIR": ray_tmp}
    try:
        yield config, env, port, str(haproxy)
    finally:
        for process in _processes_of(ray_tmp) + _processes_of(str(haproxy)):
            process.kill()  # only after a failure: a clean stop leaves none
        stop_embedded(tmp_path / "d" / "services")


def _start(config: Path, env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    cli = Path(sys.executable).with_name("modelship")
    with log.open("ab") as out:
        process = subprocess.Popen(
            [str(cli), "serve", "--config", str(config)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 300
    while True:
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "modelship serve did not become ready"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=5).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(1)


def test_sigterm_leaves_nothing_behind_and_the_next_start_succeeds(
    instance: tuple[Path, dict[str, str], int, str], tmp_path: Path
) -> None:
    config, env, port, haproxy = instance
    stats_port = int(env["RAY_SERVE_HAPROXY_STATS_PORT"])
    log = tmp_path / "serve.log"
    for attempt in (1, 2):
        process = _start(config, env, port, log)
        assert _processes_of(haproxy), "HAProxy serves"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0, log.read_text()[-3000:]
        assert not _processes_of(haproxy), attempt
        assert not _processes_of(env["RAY_TMPDIR"]), attempt
        assert _port_is_free(port) and _port_is_free(stats_port), attempt
