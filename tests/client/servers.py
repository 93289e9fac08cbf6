"""What the client tests talk to: the app served by uvicorn in a thread, a job runner in
the background, and transports that keep the responses they return."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator

import httpx
import uvicorn
from fastapi import FastAPI

from modelship.core.settings import Settings
from modelship.http.app import create_api
from modelship.ops.ray_env import free_port
from modelship.service.labeling import LocalLabeler
from modelship.service.runner import JobRunner
from modelship.service.workflow import Workflow
from storage.jobs import JobStore
from storage.services import Services
from tests.conftest import PACKAGED_MODELS


class Recording(httpx.HTTPTransport):
    """The network transport, keeping each response (status and headers) it returned."""

    def __init__(self) -> None:
        super().__init__()
        self.responses: list[httpx.Response] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.responses.append(response)
        return response


class RecordingASGI(httpx.ASGITransport):
    """The in-process transport, keeping each response it returned."""

    def __init__(self, app: FastAPI) -> None:
        super().__init__(app=app)
        self.responses: list[httpx.Response] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        self.responses.append(response)
        return response


class BackgroundRunner:
    """A job runner claiming and labeling in a task of this event loop; ``paused()``
    holds it so a test can see a job before anything happens to it."""

    def __init__(self, runner: JobRunner) -> None:
        self._runner = runner
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._runner.run_forever(self._stop))

    async def stop(self) -> None:
        assert self._task is not None
        self._stop.set()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        await self.stop()
        try:
            yield
        finally:
            self.start()


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
            background = BackgroundRunner(runner)
            background.start()
            try:
                await self._server.serve()
            finally:
                await background.stop()
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
