"""``wait_job`` and ``wait_export`` against fake servers (``httpx.MockTransport``): which
statuses end a wait, ``timeout_s`` as a deadline, and ``poll_s`` checked alike by both
clients."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest

from modelship.client import AsyncClient, Client, Gone
from tests.client.fakes import error, export


def test_an_expired_export_ends_the_wait(tmp_path: Path) -> None:
    """``expired`` is terminal, as ``failed`` is: the wait returns it; ``export`` then
    raises ``Gone`` from the download, noting the export's status."""
    polls: list[str] = []

    def server(request: httpx.Request) -> httpx.Response:
        polls.append(request.method)
        if request.url.path.endswith("/download"):
            return error(410, "export_expired")
        if request.method == "POST":
            return httpx.Response(202, json=export("queued"))
        return httpx.Response(200, json=export("expired"))

    with Client("http://test", transport=httpx.MockTransport(server), poll_s=0.01) as ms:
        assert ms.wait_export(uuid.uuid4(), timeout_s=5).status == "expired"
        assert polls == ["GET"]
        with pytest.raises(Gone) as expired:
            ms.export(uuid.uuid4(), "json", tmp_path)
    assert any("expired" in note for note in expired.value.__notes__)
    assert list(tmp_path.iterdir()) == []


async def test_an_expired_export_ends_the_async_wait() -> None:
    server = httpx.MockTransport(lambda _: httpx.Response(200, json=export("expired")))
    async with AsyncClient("http://test", transport=server, poll_s=0.01) as ms:
        done = await asyncio.wait_for(ms.wait_export(uuid.uuid4()), 5)
    assert done.status == "expired"
