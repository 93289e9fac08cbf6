"""What the client sends and what it makes of unusual answers, against fake servers
(``httpx.MockTransport``): arguments refused before sending, error classes, redirects,
downloads, and which refusals are retried."""

from __future__ import annotations

import httpx
import pytest
from pydantic import ValidationError

from modelship.client import Client
from tests.client.fakes import PROJECT, job


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
