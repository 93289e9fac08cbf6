"""The client against the real app: in-process over ASGI (``AsyncClient``) or served by
uvicorn on a free port in a thread (``Client``), on this machine's PostgreSQL and Redis,
with a job runner labeling with the real packaged models. No Ray."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import ray

from modelship.client import AsyncClient
from modelship.core.settings import Settings
from modelship.http.app import create_api
from modelship.service.labeling import LocalLabeler
from modelship.service.runner import JobRunner
from modelship.service.workflow import Workflow
from storage.services import Services
from tests.client.servers import AppServer, BackgroundRunner
from tests.conftest import PACKAGED_MODELS


@pytest.fixture(autouse=True)
def _forbid_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("client tests run without Ray")

    monkeypatch.setattr(ray, "init", refuse)


@pytest.fixture(scope="module")
async def labeling(runner: JobRunner) -> AsyncIterator[BackgroundRunner]:
    background = BackgroundRunner(runner)
    background.start()
    yield background
    await background.stop()


@pytest.fixture(scope="module")
async def ms(
    local: LocalLabeler,
    services: Services,
    job_settings: Settings,
    labeling: BackgroundRunner,
) -> AsyncIterator[AsyncClient]:
    """An ``AsyncClient`` on the app in this event loop, the runner labeling meanwhile."""
    app = create_api(
        local,
        local.configs,
        job_settings,
        workflow=Workflow(services, PACKAGED_MODELS, job_settings),
    )
    transport = httpx.ASGITransport(app=app)
    async with AsyncClient("http://test", poll_s=0.05, transport=transport) as ms:
        yield ms


@pytest.fixture(scope="module")
def server(local: LocalLabeler, job_settings: Settings) -> Iterator[AppServer]:
    with AppServer(local, job_settings) as server:
        yield server
