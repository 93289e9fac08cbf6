"""The client against the real app: in-process over ASGI (``AsyncClient``) or served by
uvicorn on a free port in a thread (``Client``), on this machine's PostgreSQL and Redis,
with a job runner labeling with the real packaged models. No Ray."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import ray
import uvicorn

from modelship.client import AsyncClient
from modelship.core.settings import Settings
from modelship.http.app import create_api
from modelship.ops.ray_env import free_port
from modelship.service.labeling import LocalLabeler
from modelship.service.runner import JobRunner
from modelship.service.workflow import Workflow
from storage.jobs import JobStore
from storage.services import Services
from tests.conftest import PACKAGED_MODELS


@pytest.fixture(autouse=True)
def _forbid_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("client tests run without Ray")

    monkeypatch.setattr(ray, "init", refuse)


@contextlib.asynccontextmanager
async def running(runner: JobRunner) -> AsyncIterator[None]:
    """The runner claiming and labeling in the background until the block ends."""
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run_forever(stop))
    try:
        yield
    finally:
        stop.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture(scope="module")
async def ms(
    local: LocalLabeler, services: Services, job_settings: Settings, runner: JobRunner
) -> AsyncIterator[AsyncClient]:
    """An ``AsyncClient`` on the app in this event loop, its runner labeling meanwhile."""
    app = create_api(
        local,
        local.configs,
        job_settings,
        workflow=Workflow(services, PACKAGED_MODELS, job_settings),
    )
    transport = httpx.ASGITransport(app=app)
    async with running(runner), AsyncClient("http://test", poll_s=0.05, transport=transport) as ms:
        yield ms


class AppServer(threading.Thread):
    """The app served by uvicorn on a free port, with its own event loop, storage
    connections and job runner: what a ``Client`` talks to over real HTTP."""

    def __init__(self, local: LocalLabeler, settings: Settings) -> None:
        super().__init__(name="app-server", daemon=True)
        self.url = f"http://127.0.0.1:{free_port()}"
        self._local = local
        self._settings = settings
        self._server: uvicorn.Server | None = None
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self.failure = exc

    async def _serve(self) -> None:
        settings = self._settings
        services = Services.from_settings(settings)
        try:
            labeler = LocalLabeler(PACKAGED_MODELS, settings, self._local.predictors)
            runner = JobRunner(
                JobStore(services.db), services.objects, services.cache, labeler, settings, "sync"
            )
            workflow = Workflow(services, PACKAGED_MODELS, settings)
            app = create_api(self._local, self._local.configs, settings, workflow=workflow)
            port = int(self.url.rsplit(":", 1)[1])
            config = uvicorn.Config(
                app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"
            )
            self._server = uvicorn.Server(config)
            async with running(runner):
                await self._server.serve()
        finally:
            await services.close()

    def __enter__(self) -> AppServer:
        self.start()
        deadline = time.monotonic() + 30
        while self._server is None or not self._server.started:
            if not self.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the app server did not start") from self.failure
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.should_exit = True
        self.join(15)


@pytest.fixture(scope="module")
def server(local: LocalLabeler, job_settings: Settings) -> Iterator[AppServer]:
    with AppServer(local, job_settings) as server:
        yield server
