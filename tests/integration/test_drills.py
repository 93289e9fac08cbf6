"""A ModelShip started as an operator starts it (``modelship serve``, a text-only config)
put through ``modelship drill``: three times its capacity, then actors killed during a
job; then stopped with SIGTERM (systemd, ``docker stop``) and started again — stopping
must leave nothing behind (no HAProxy on the ports, no Ray processes) or the next start
fails. The tests run in order on one instance."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


@dataclass
class Instance:
    config: Path
    env: dict[str, str]
    port: int
    haproxy: str  # HAProxy's folder: its processes name it
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    """A text-only ModelShip served by ``modelship serve``, with its own Ray, HAProxy and
    data."""
    folder = tmp_path_factory.mktemp("drills")
    port = free_port()
    config = folder / "serve_config.yaml"
    # The rate limit off: the drill measures shedding under load, not the limiter.
    settings = {"data_dir": str(folder / "d"), "rate_limit_per_minute": 0}
    instance = text_only_config(port, settings)
    for deployment in instance["applications"][0]["deployments"]:  # no scaling mid-drill
        deployment.pop("autoscaling_config", None)
        deployment["num_replicas"] = 1
    config.write_text(yaml.safe_dump(instance))
    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    haproxy = Path(tempfile.mkdtemp(prefix="h", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env |= {**private_haproxy(haproxy), "RAY_TMPDIR": ray_tmp}
    served = Instance(config, env, port, str(haproxy), folder / "serve.log")
    served.process = _start(served)
    try:
        yield served
    finally:
        if served.process and served.process.poll() is None:
            served.process.send_signal(signal.SIGTERM)
            served.process.wait(timeout=120)
        for process in _processes_of(ray_tmp) + _processes_of(str(haproxy)):
            process.kill()  # only after a failure: a clean stop leaves none
        stop_embedded(folder / "d" / "services")


def _start(served: Instance) -> subprocess.Popen[bytes]:
    cli = Path(sys.executable).with_name("modelship")
    with served.log.open("ab") as out:
        process = subprocess.Popen(
            [str(cli), "serve", "--config", str(served.config)],
            cwd=ROOT,
            env=served.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 300
    while True:
        assert process.poll() is None, served.log.read_text()[-3000:]
        assert time.monotonic() < deadline, "modelship serve did not become ready"
        try:
            if httpx.get(f"{served.url}/health/ready", timeout=5).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(1)


def _drill(served: Instance, *args: str) -> tuple[int, dict[str, Any]]:
    cli = Path(sys.executable).with_name("modelship")
    done = subprocess.run(
        [str(cli), "drill", *args, "--url", served.url],
        cwd=ROOT,
        env=served.env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.stdout.startswith("{"), done.stdout + done.stderr[-3000:]
    return done.returncode, json.loads(done.stdout[: done.stdout.rindex("}") + 1])


def _memory_mib(root: psutil.Process) -> float:
    """Resident memory of ``root`` and every process under it (Ray's, the replicas')."""
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


def test_three_times_its_capacity_is_shed_politely_and_it_recovers(served: Instance) -> None:
    assert served.process is not None
    root = psutil.Process(served.process.pid)
    before = _memory_mib(root)
    peak, stop = before, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.wait(0.5):
            peak = max(peak, _memory_mib(root))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        code, report = _drill(served, "overload", "--seconds", "12")
    finally:
        stop.set()
        sampler.join()
    print(json.dumps(report), f"memory {before:.0f} MiB, peak {peak:.0f} MiB")
    assert report["answers"].get("503", 0) > 0, report  # it was overloaded, and said so
    assert report["failures"] == 0 and report["recovered_s"] is not None, report
    assert code == 0
    assert peak - before < 1024, (before, peak)


def _gcs_address(ray_tmp: str) -> str:
    """The instance's own Ray cluster: another runs beside it (the session's), and Ray's
    ``auto`` would join whichever it finds first. The GCS picks its port at start and
    writes it into the session folder."""
    (port_file,) = Path(ray_tmp).glob("ray/session_latest/gcs_server_port_*")
    for process in _processes_of(ray_tmp):
        node = re.search(r"--node-ip-address=([\d.]+)", " ".join(process.cmdline()))
        if node and "gcs_server" in process.cmdline()[0]:
            return f"{node[1]}:{port_file.read_text().strip()}"
    raise AssertionError(f"no GCS server under {ray_tmp}")


def test_killing_replicas_the_proxy_and_the_controller_loses_no_item(served: Instance) -> None:
    address = _gcs_address(served.env["RAY_TMPDIR"])
    code, report = _drill(
        served, "chaos", "--items", "200", "--interval", "4", "--address", address
    )
    print(json.dumps(report))
    assert report["kills"] == ["model", "ingress", "proxy", "controller"], report
    assert report["job_status"] == "succeeded" and report["lost"] == 0, report
    assert report["duplicates"] == 0 and code == 0
    assert report["requests"] > 0 and report["error_rate"] < 0.2, report


def test_sigterm_leaves_nothing_behind_and_the_next_start_succeeds(served: Instance) -> None:
    stats_port = int(served.env["RAY_SERVE_HAPROXY_STATS_PORT"])
    for attempt in (1, 2):
        if served.process is None:
            served.process = _start(served)
        assert _processes_of(served.haproxy), "HAProxy serves"
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(timeout=120) == 0, served.log.read_text()[-3000:]
        served.process = None
        assert not _processes_of(served.haproxy), attempt
        assert not _processes_of(served.env["RAY_TMPDIR"]), attempt
        assert _port_is_free(served.port) and _port_is_free(stats_port), attempt
