"""Error tracking: a 500 reaches a Sentry endpoint with its request id and nothing of the
request; a 4xx never does. The live cluster's replicas report too
(tests/composition/test_model_reconfigure.py)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import sentry_sdk
from pydantic import SecretStr, ValidationError

from modelship.core.errors import ModelShipError
from modelship.core.errortracking import sentry_options, start_error_tracking
from modelship.core.messages import ItemOptions, ItemResult
from modelship.core.settings import Settings
from modelship.http.app import create_api
from modelship.service.labeling import LocalLabeler
from tests.conftest import PACKAGED_MODELS
from tests.sentry_receiver import SentryReceiver, message
from tests.unit.flow import assert_error

pytestmark = pytest.mark.asyncio(loop_scope="module")


class BrokenLabeler(LocalLabeler):
    """Our model code with a bug in it: every call raises."""

    async def label(
        self, model: str, payloads: list[bytes | str], options: ItemOptions
    ) -> list[ItemResult | ModelShipError]:
        raise KeyError("a bug in the labeling code")


@pytest.fixture(scope="module")
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_api(BrokenLabeler(PACKAGED_MODELS, settings), PACKAGED_MODELS, settings)
    # Starlette sends the 500, then raises the exception on for the server to log
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


@contextmanager
def reporting(receiver: SentryReceiver, component: str) -> Iterator[sentry_sdk.Client]:
    """What ``start_error_tracking`` sets up in a replica, on a scope of this test's own:
    the rest of the session's process reports nowhere."""
    client = sentry_sdk.Client(**sentry_options(Settings(sentry_dsn=SecretStr(receiver.dsn))))
    with sentry_sdk.isolation_scope() as scope:
        scope.set_client(client)
        scope.set_tag("component", component)
        try:
            yield client
        finally:
            client.flush(timeout=5)
            client.close()


async def test_a_500_is_reported_with_its_request_id_and_a_4xx_is_not(
    client: httpx.AsyncClient, sentry_receiver: SentryReceiver
) -> None:
    secret_text = f"the patient's private note {uuid.uuid4().hex}"
    refused_id, failed_id = f"refused-{uuid.uuid4().hex}", f"failed-{uuid.uuid4().hex}"
    with reporting(sentry_receiver, "Ingress"):
        refused = await client.post(
            "/api/v1/classify/text", json={"texts": []}, headers={"x-request-id": refused_id}
        )
        assert_error(refused, 422, "invalid_request")
        failed = await client.post(
            "/api/v1/classify/text",
            json={"texts": [secret_text]},
            headers={"x-request-id": failed_id, "authorization": "Bearer sk-not-for-sentry"},
        )
        assert_error(failed, 500, "internal_error")
        assert failed.json()["error"]["message"] == "internal error"
        # answered inside the middleware, like any other error: its headers are there
        assert failed.headers["x-request-id"] == failed_id
        assert failed.headers["cache-control"] == "no-store"
        assert "content-security-policy" in failed.headers

    event = sentry_receiver.wait_for(lambda e: e.get("tags", {}).get("request_id") == failed_id)
    assert event["level"] == "error"
    assert event["tags"]["component"] == "Ingress"
    assert event["environment"] == "dev"
    assert event["release"].startswith("modelship@")
    assert failed_id in message(event)
    [exception] = event["exception"]["values"]
    assert exception["type"] == "KeyError" and "a bug in the labeling code" in exception["value"]
    # the traceback without its frames' variables; nothing of the request itself
    frames = exception["stacktrace"]["frames"]
    assert frames and not any("vars" in frame for frame in frames)
    sent = json.dumps(event)
    assert secret_text not in sent and "sk-not-for-sentry" not in sent
    assert "request" not in event
    # sent before the 500 by the same client (one queue, in order): never reported
    assert not sentry_receiver.matching(lambda e: refused_id in json.dumps(e))


def test_reporting_is_off_without_a_dsn_and_refuses_a_dsn_that_is_no_url() -> None:
    assert start_error_tracking(Settings(), "Ingress") is False
    assert not sentry_sdk.is_initialized()
    assert Settings(sentry_dsn=SecretStr("")).sentry_dsn is None  # compose's empty default
    with pytest.raises(ValidationError) as raised:
        Settings(sentry_dsn=SecretStr("public@sentry.example/1"))
    assert "expected a http:// or https:// URL" in str(raised.value)
    assert "public@sentry" not in str(raised.value)


def test_the_dsn_never_travels_with_pickled_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Like the other credentials: a replica reads its own from its environment."""
    import pickle

    dsn = "https://key@sentry.example/7"
    settings = Settings(data_dir=tmp_path, sentry_dsn=SecretStr(dsn))
    monkeypatch.setenv("MODELSHIP_SENTRY_DSN", "https://other@sentry.example/8")
    data = pickle.dumps(settings)
    assert dsn.encode() not in data
    restored = pickle.loads(data)
    assert restored.sentry_dsn.get_secret_value() == "https://other@sentry.example/8"
