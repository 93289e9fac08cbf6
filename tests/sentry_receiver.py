"""A small Sentry ingest endpoint: what a Sentry (or GlitchTip) server receives, for tests.

sentry-sdk posts envelopes (``POST /api/<project>/envelope/``, gzip or brotli): a header
line, then items, each a header line and a payload of ``length`` bytes (or up to the next
newline). The events among them are kept as JSON.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

Event = dict[str, Any]


def _decode(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "br":
        import brotli  # type: ignore[import-not-found, unused-ignore]

        return bytes(brotli.decompress(body))
    return body


def parse_envelope(data: bytes) -> list[tuple[dict[str, Any], bytes]]:
    """Each item of an envelope: its header and its payload."""
    _, _, rest = data.partition(b"\n")
    items = []
    while rest.strip():
        line, _, rest = rest.partition(b"\n")
        header = json.loads(line)
        if "length" in header:
            payload, rest = rest[: header["length"]], rest[header["length"] :]
            rest = rest.removeprefix(b"\n")
        else:
            payload, _, rest = rest.partition(b"\n")
        items.append((header, payload))
    return items


class SentryReceiver:
    """Accepts envelopes on a free loopback port; ``dsn`` points sentry-sdk at it."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                data = _decode(body, self.headers.get("content-encoding", ""))
                events = [
                    json.loads(payload)
                    for header, payload in parse_envelope(data)
                    if header.get("type") == "event"
                ]
                with receiver._lock:
                    receiver.events.extend(events)
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.dsn = f"http://public@127.0.0.1:{self._server.server_port}/1"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def matching(self, matches: Callable[[Event], bool]) -> list[Event]:
        with self._lock:
            return [event for event in self.events if matches(event)]

    def wait_for(self, matches: Callable[[Event], bool], timeout_s: float = 30) -> Event:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if found := self.matching(matches):
                return found[0]
            time.sleep(0.1)
        raise AssertionError(f"no such event among {len(self.events)} received")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def message(event: Event) -> str:
    """An event's message: a log record's formatted text, or its exception's value."""
    entry = event.get("logentry") or {}
    return str(entry.get("formatted") or entry.get("message") or event.get("message") or "")


@pytest.fixture(scope="session")
def sentry_receiver() -> Iterator[SentryReceiver]:
    receiver = SentryReceiver()
    yield receiver
    receiver.close()
