"""What the client sends and what it makes of unusual answers, against fake servers
(``httpx.MockTransport``): arguments refused before sending, error classes, redirects,
downloads, and which refusals are retried."""

from __future__ import annotations

import uuid

import httpx
import pytest
from pydantic import ValidationError

from modelship.client import Client, Gone
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
