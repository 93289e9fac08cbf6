"""Answers of a fake server, for tests of what the client does with an answer the real app
gives only rarely (an expired export, a quota, a proxy's redirect) or not on demand."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx

from modelship.client._operations import Api
from modelship.client._protocol import Operation, Reply, Request, RetryPolicy, Sleep

T = TypeVar("T")

PROJECT = str(uuid.uuid4())
_NOW = datetime.now(UTC).isoformat()


def job(status: str = "running", total: int = 3) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "project_id": PROJECT,
        "status": status,
        "model": "minilm",
        "label_schema_version": 1,
        "total_items": total,
        "counts": {},
        "progress": 0.0,
        "created_at": _NOW,
        "started_at": None,
        "finished_at": None,
    }


def export(status: str = "running", error: str | None = None) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "project_id": PROJECT,
        "format": "json",
        "selection": {},
        "status": status,
        "rows": 1,
        "bytes": None,
        "media_type": None,
        "error": error,
        "created_at": _NOW,
        "finished_at": None,
        "download_url": None,
    }


def error(status: int, code: str, headers: dict[str, str] | None = None) -> httpx.Response:
    """ModelShip's error body, as ``modelship.http.errors`` writes it."""
    body = {"error": {"code": code, "message": code.replace("_", " "), "request_id": "r-1"}}
    return httpx.Response(status, json=body, headers=headers)


class FakeClock:
    """A monotonic clock that moves only when an operation sleeps: what a wait does at its
    deadline is seen exactly, however loaded the machine."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_api(clock: FakeClock, poll_s: float = 1.0) -> Api:
    """The operations, with the clients' defaults but ``poll_s``, on ``clock``."""
    return Api(RetryPolicy(), poll_s, 500, 64 * 1024 * 1024, clock=clock)


def drive(operation: Operation[T], clock: FakeClock, server: Callable[[Request], Reply]) -> T:
    """Run an operation as a client does, but sleep by moving ``clock`` and answer each
    request with ``server``."""
    try:
        step = next(operation)
        while True:
            if isinstance(step, Sleep):
                clock.now += step.seconds
                step = operation.send(None)
            else:
                step = operation.send(server(step))
    except StopIteration as finished:
        return finished.value  # type: ignore[no-any-return]
    finally:
        operation.close()
