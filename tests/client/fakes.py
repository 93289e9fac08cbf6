"""Answers of a fake server, for tests of what the client does with an answer the real app
gives only rarely (an expired export, a quota, a proxy's redirect) or not on demand."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import httpx

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
