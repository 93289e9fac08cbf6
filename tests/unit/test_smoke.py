"""``modelship smoke`` over real HTTP against a server on a free port, passing and failing."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from modelship.core.settings import Settings
from modelship.http.app import create_api
from modelship.ops.ray_env import free_port
from modelship.service.labeling import LocalLabeler
from storage.ratelimit import RateLimiter
from tests.conftest import MINILM, REDIS_URL

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(settings: Settings) -> Iterator[str]:
    """The HTTP app with a real model and a real Redis rate limit (burst 30), on uvicorn."""
    limiter = RateLimiter(
        REDIS_URL,
        per_minute=60,
        burst=30,
        fail_open=False,
        prefix=f"modelship-test-{uuid.uuid4().hex[:8]}",
    )
    app = create_api(LocalLabeler([MINILM], settings), [MINILM], settings, limiter=limiter)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    serving = uvicorn.Server(config)
    thread = threading.Thread(target=serving.run, daemon=True)
    thread.start()
    while not serving.started:
        assert thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    serving.should_exit = True
    thread.join(timeout=10)


def _smoke(url: str, *args: str) -> tuple[int, dict[str, dict[str, object]]]:
    command = [sys.executable, "-m", "modelship.ops.cli", "smoke", "--url", url, "--json", *args]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.stdout, done.stderr
    return done.returncode, {r["name"]: r for r in json.loads(done.stdout)}


def test_smoke_passes_and_measures(server: str) -> None:
    code, results = _smoke(server, "--samples", "5", "--rate-limit", "30")
    assert code == 0, [r for r in results.values() if not r["ok"]]
    assert set(results) == {
        "health",
        "security_headers",
        "models",
        "label_text",
        "latency",
        "rate_limit",
    }
    assert results["latency"]["data"]["p50_ms"] > 0  # type: ignore[index]
    assert "429 after" in str(results["rate_limit"]["detail"])


def test_smoke_fails_loudly(server: str) -> None:
    code, results = _smoke(server, "--samples", "1", "--rate-limit", "100000")
    assert code == 1
    assert results["rate_limit"]["ok"] is False
    code, results = _smoke("http://127.0.0.1:1")
    assert code == 1 and results["health"]["ok"] is False


class _NotModelShip(http.server.BaseHTTPRequestHandler):
    """Any other web server at the URL given: 200 and a page for every path."""

    def do_GET(self) -> None:
        body = b"<html>welcome</html>"
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_smoke_against_something_else_fails_each_check_without_a_traceback() -> None:
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotModelShip)
    thread = threading.Thread(target=other.serve_forever, daemon=True)
    thread.start()
    try:
        code, results = _smoke(f"http://127.0.0.1:{other.server_address[1]}")
    finally:
        other.shutdown()
        other.server_close()
    assert code == 1
    assert results["models"]["ok"] is False
    assert "not a ModelShip answer" in str(results["models"]["detail"])


@pytest.mark.parametrize("args", [["--samples", "0"], ["--rate-limit", "-1"]])
def test_smoke_refuses_counts_below_one(args: list[str]) -> None:
    command = [sys.executable, "-m", "modelship.ops.cli", "smoke", "--url", "http://x", *args]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "is not a whole number above 0" in done.stderr, done.stderr
