"""The systems under test: each a server process speaking HTTP on a loopback port.

Every system serves the same predictor class on the same inputs; only the serving layer
differs. Requests carry images as base64 JSON for all of them, so parsing costs match.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.loadgen import Request
from bench.workloads import Kind
from modelship.ops.ray_env import free_port

ROOT = Path(__file__).resolve().parent.parent
BENTOML_VENV = ROOT / ".bench-venvs" / "bentoml"


def _b64(item: bytes | str) -> str:
    assert isinstance(item, bytes)
    return base64.b64encode(item).decode()


@dataclass
class Server:
    """A server process started on demand and stopped with SIGTERM."""

    name: str
    kind: Kind
    command: list[str]
    ready_path: str
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[str] | None = None
    stops_on_eof: bool = False
    # Only a server whose stdout is read here may write into a pipe: nobody drains it
    # otherwise, and a server that logs to stdout blocks once its 64 KiB are full.
    stdout_read: bool = False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 300) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "BENCH_PORT": str(self.port), **self.env}
        env["BENCH_WORKLOAD"] = self.kind
        # Read back if the server exits before it is ready; closed with the object.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        self.process = subprocess.Popen(
            [arg.replace("{port}", str(self.port)) for arg in self.command],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE if self.stdout_read else subprocess.DEVNULL,
            stderr=self._stderr,
            text=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._stderr.seek(0)
                tail = self._stderr.read()[-3000:].decode(errors="replace")
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{tail}")
            try:
                if httpx.get(self.base_url + self.ready_path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError(f"{self.name} not ready in {timeout_s}s")

    def stop(self) -> None:
        if self.process is None:
            return
        assert self.process.stdin is not None
        self.process.stdin.close()  # serve_modelship shuts Ray down cleanly on end of input
        first = (None,) if self.stops_on_eof else ()
        for sig in (*first, signal.SIGTERM, signal.SIGKILL):
            if sig is not None:
                self.process.send_signal(sig)
            try:
                self.process.wait(timeout=60 if sig is None else 20)
                break
            except subprocess.TimeoutExpired:
                continue
        self.process = None

    def request(self, items: list[bytes | str]) -> Request:
        if self.kind == "text":
            return "/classify_text", {"texts": items}, len(items)
        return "/classify_image", {"images": [_b64(i) for i in items]}, len(items)

    def batch_counts(self) -> tuple[int, int] | None:
        """(batches, items) the model has run so far, where the system can tell."""
        return None


class ModelShip(Server):
    """The full Serve graph (Ingress → ModelReplica, images through the Preprocessor when
    prepared there) over HTTP; ``options`` go to ``bench.serve_modelship``."""

    def __init__(
        self,
        kind: Kind,
        max_batch: int,
        wait_s: float,
        env: dict[str, str],
        name: str,
        options: tuple[str, ...] = (),
    ) -> None:
        super().__init__(
            name=name,
            kind=kind,
            command=[
                *(sys.executable, "-m", "bench.serve_modelship", "--workload", kind),
                *("--port", "{port}", "--max-batch", str(max_batch), "--wait", str(wait_s)),
                *options,
            ],
            ready_path="/health/ready",
            env=env,
            stops_on_eof=True,
            stdout_read=True,
        )

    def request(self, items: list[bytes | str]) -> Request:
        if self.kind == "text":
            return "/api/v1/classify/text", {"texts": items, "top_k": 3}, len(items)
        if len(items) == 1:
            return "/api/v1/classify/image", {"image_base64": _b64(items[0])}, 1
        body = {"images_base64": [_b64(i) for i in items]}
        return "/api/v1/classify/images", body, len(items)

    def batch_counts(self) -> tuple[int, int] | None:
        assert self.process is not None and self.process.stdin and self.process.stdout
        self.process.stdin.write("stats\n")
        self.process.stdin.flush()
        while not (line := self.process.stdout.readline()).startswith("{"):
            if not line:
                return None
        stats = json.loads(line)
        return int(stats["batches"]), int(stats["items"])


def plain(kind: Kind) -> Server:
    """FastAPI + uvicorn calling the predictor once per request: no batching."""
    return Server(
        "per-request", kind, [sys.executable, "-m", "bench.peers.plain_server"], "/healthz"
    )


def bentoml(kind: Kind) -> Server:
    """The same predictor behind BentoML's adaptive batching (its own virtualenv)."""
    service = "bench.peers.bentoml_service:ClassifierService"
    command = [str(BENTOML_VENV / "bin" / "bentoml"), "serve", service]
    command += ["--port", "{port}", "--host", "127.0.0.1"]
    # BentoML's own default deadline; at 1 s it sheds load with 503s on these CPUs.
    return Server("bentoml", kind, command, "/readyz", env={"BENCH_MAX_LATENCY_MS": "60000"})
