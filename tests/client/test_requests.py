"""What the client sends and what it makes of unusual answers, against fake servers
(``httpx.MockTransport``): arguments refused before sending, error classes, redirects,
downloads, and which refusals are retried."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from modelship.client import ApiError, AsyncClient, Client, Gone, RetryPolicy
from modelship.core import errors
from tests.client.fakes import PROJECT, error, job


def test_an_empty_item_list_is_refused_before_sending() -> None:
    """``item_ids=[]`` would otherwise go without a body: every item of the project."""
    sent: list[httpx.Request] = []

    def server(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(202, json=job("queued"))

    with Client("http://test", transport=httpx.MockTransport(server)) as ms:
        with pytest.raises(ValidationError, match="item_ids") as refused:
            ms.create_job(PROJECT, item_ids=[])
        assert isinstance(refused.value, ValueError)
        assert sent == []
        ms.create_job(PROJECT)  # None: every item, no body
    assert sent[0].content == b""


def test_an_expired_export_raises_gone() -> None:
    """The server's 410 ``export_expired`` (class ``Gone``) has a class of its own."""
    server = httpx.MockTransport(lambda _: error(410, "export_expired"))
    with Client("http://test", transport=server) as ms, pytest.raises(Gone) as expired:
        ms.download_export(uuid.uuid4(), "export.json")
    assert isinstance(expired.value, errors.Gone)
    assert (expired.value.status, expired.value.code) == (410, "export_expired")


def _redirecting(sent: list[httpx.Request]) -> httpx.MockTransport:
    """An ingress that sends plain HTTP to HTTPS with a 308 and an HTML page."""

    def server(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        where = f"https://test{request.url.path}"
        return httpx.Response(308, headers={"location": where}, html="<h1>308</h1>")

    return httpx.MockTransport(server)


def test_a_redirect_is_an_error_naming_where(tmp_path: Path) -> None:
    sent: list[httpx.Request] = []
    with Client("http://test", transport=_redirecting(sent)) as ms:
        with pytest.raises(ApiError) as moved:
            ms.create_project("p", "zero-shot-text-classification", "minilm")
        assert (moved.value.status, moved.value.code) == (308, "redirected")
        assert "https://test/api/v1/projects" in str(moved.value)
        with pytest.raises(ApiError, match="redirected to https://test/api/v1/exports/"):
            ms.download_export(uuid.uuid4(), tmp_path / "export.json")
    assert [r.method for r in sent] == ["POST", "GET"]  # neither followed nor sent again
    assert list(tmp_path.iterdir()) == []  # the redirect page is not saved as the export


def test_an_async_download_is_not_saved_from_a_redirect(tmp_path: Path) -> None:
    async def download() -> None:
        async with AsyncClient("http://test", transport=_redirecting([])) as ms:
            await ms.download_export(uuid.uuid4(), tmp_path / "export.json")

    with pytest.raises(ApiError, match="redirected"):
        asyncio.run(download())
    assert list(tmp_path.iterdir()) == []


def _export_file(request: httpx.Request) -> httpx.Response:
    disposition = 'attachment; filename="export-1.json"'
    return httpx.Response(200, content=b"[]", headers={"content-disposition": disposition})


def test_a_path_ending_in_a_separator_is_a_folder_made_for_the_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``exports/`` that does not exist yet was written as a FILE named exports."""
    monkeypatch.chdir(tmp_path)
    with Client("http://test", transport=httpx.MockTransport(_export_file)) as ms:
        saved = ms.download_export(uuid.uuid4(), f"exports{os.sep}")
        assert saved == Path("exports", "export-1.json") and saved.read_bytes() == b"[]"
        nested = ms.download_export(uuid.uuid4(), str(tmp_path / "a" / "b") + "/")
        assert nested == tmp_path / "a" / "b" / "export-1.json"
        again = ms.download_export(uuid.uuid4(), tmp_path / "exports")  # an existing folder
        assert again == tmp_path / "exports" / "export-1.json"

    async def download() -> Path:
        async with AsyncClient("http://test", transport=httpx.MockTransport(_export_file)) as ms:
            return await ms.download_export(uuid.uuid4(), "async/")

    assert asyncio.run(download()) == Path("async", "export-1.json")


@pytest.mark.parametrize(
    ("answer", "retried"),
    [
        (error(503, "service_unavailable", {"retry-after": "0"}), False),  # lost at COMMIT?
        (error(503, "object_store_unavailable", {"retry-after": "0"}), False),
        (error(503, "overloaded", {"retry-after": "0"}), True),  # shed before anything
        (error(503, "rate_limiter_unavailable", {"retry-after": "0"}), True),
        (error(429, "rate_limited", {"retry-after": "0"}), True),
        (httpx.Response(503, text="dropped", headers={"retry-after": "0"}), True),  # Serve
        (httpx.Response(503, text="upstream reset before headers"), False),  # Envoy
    ],
    ids=["database", "objects", "overloaded", "limiter", "rate-limited", "shed", "reset"],
)
def test_a_write_without_a_key_is_retried_only_when_nothing_was_done(
    answer: httpx.Response, retried: bool
) -> None:
    """``cancel_job`` has no ``Idempotency-Key``: a 503 that may follow a write (the
    database lost during COMMIT answers 503 too) is raised, not sent again; ``create_job``
    has a key, so the server replays it and any 503 is retried."""
    sent: list[str] = []

    def server(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path.rsplit("/", 1)[-1])
        return answer if len(sent) % 2 else httpx.Response(202, json=job("cancelled"))

    quick = RetryPolicy(retries=1, backoff_s=0.01)
    with Client("http://test", transport=httpx.MockTransport(server), retry=quick) as ms:
        if retried:
            ms.cancel_job(uuid.uuid4())
        else:
            with pytest.raises(ApiError) as refused:
                ms.cancel_job(uuid.uuid4())
            assert refused.value.status == answer.status_code
        sent.clear()
        ms.create_job(PROJECT)
    assert len(sent) == 2  # create_job: the 503 or 429, then 202
