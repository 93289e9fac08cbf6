"""Retries after 429 and 503 as ``Retry-After`` says, uploads split to the server's limits,
API keys, and what the client leaves out (the server's modules)."""

from __future__ import annotations

import email.utils
import io
import math
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from modelship.client import (
    NO_RETRIES,
    ApiError,
    AsyncClient,
    Client,
    Forbidden,
    ModelNotReady,
    PayloadTooLarge,
    QuotaExceeded,
    RateLimited,
    RetryPolicy,
    Unauthorized,
)
from modelship.client._operations import Api
from modelship.client._protocol import Reply
from modelship.client._protocol import Request as ClientRequest
from modelship.core import errors
from modelship.core.settings import Settings
from modelship.http.app import create_api
from modelship.ops.ray_env import free_port
from modelship.service.labeling import LocalLabeler
from modelship.service.workflow import Workflow
from storage.keys import KeyStore
from storage.ratelimit import RateLimiter
from storage.services import Services
from tests.client.fakes import FakeClock, drive, error, fake_api
from tests.client.servers import RecordingASGI
from tests.conftest import PACKAGED_MODELS, REDIS_URL
from tests.unit.flow import OwnQueue, png

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module")
async def limiter() -> AsyncIterator[RateLimiter]:
    """The real limiter: one request at once, then one a second (``Retry-After: 1``)."""
    prefix = f"modelship-test-{uuid.uuid4().hex[:8]}"
    limiter = RateLimiter(REDIS_URL, per_minute=60, burst=1, fail_open=False, prefix=prefix)
    yield limiter
    await limiter.close()


def _limited(local: LocalLabeler, limiter: RateLimiter) -> RecordingASGI:
    return RecordingASGI(create_api(local, local.configs, Settings(), limiter=limiter))


async def test_429_is_retried_after_retry_after(local: LocalLabeler, limiter: RateLimiter) -> None:
    transport = _limited(local, limiter)
    async with AsyncClient("http://test", transport=transport) as ms:
        await ms.models()
        started = time.monotonic()
        assert await ms.models()
        waited = time.monotonic() - started
    assert [r.status_code for r in transport.responses] == [200, 429, 200]
    assert transport.responses[1].headers["retry-after"] == "1"
    assert waited >= 0.95  # how long exactly: below, on a fake clock


def _answering(
    clock: FakeClock, *responses: httpx.Response
) -> tuple[Callable[[ClientRequest], Reply], list[float]]:
    """A server for ``drive``: ``responses`` in turn; and the times it was asked, on
    ``clock``."""
    asked: list[float] = []
    answers = iter(responses)

    def server(request: ClientRequest) -> Reply:
        asked.append(clock.now)
        response = next(answers)
        return Reply(response.status_code, response.headers, response.content)

    return server, asked


def test_a_retry_waits_what_retry_after_says() -> None:
    clock = FakeClock()
    limited = error(429, "rate_limited", {"retry-after": "1"})
    server, asked = _answering(clock, limited, httpx.Response(200, json={"models": []}))
    assert drive(fake_api(clock).models(), clock, server) == []
    assert asked == [0.0, 1.0]


@pytest.mark.parametrize(
    "policy",
    [NO_RETRIES, RetryPolicy(max_wait_s=0.5)],  # Retry-After: 1 is longer: not waited for
    ids=["no-retries", "impatient"],
)
async def test_429_raises_when_not_retried(
    local: LocalLabeler, limiter: RateLimiter, policy: RetryPolicy
) -> None:
    transport = _limited(local, limiter)
    async with AsyncClient("http://test", transport=transport, retry=policy) as ms:
        await ms.models()
        with pytest.raises(RateLimited) as limited:
            await ms.models()
    assert [r.status_code for r in transport.responses] == [200, 429]  # not sent again
    assert isinstance(limited.value, errors.RateLimited)
    assert (limited.value.status, limited.value.retry_after_s) == (429, 1)
    assert limited.value.request_id == transport.responses[-1].headers["x-request-id"]
    # and raised at once, without a wait
    clock = FakeClock()
    server, asked = _answering(clock, error(429, "rate_limited", {"retry-after": "1"}))
    api = Api(policy, 1.0, 500, 64 * 1024 * 1024, clock=clock)
    with pytest.raises(RateLimited):
        drive(api.models(), clock, server)
    assert asked == [0.0] and clock.now == 0.0


async def test_a_quota_is_not_retried(
    local: LocalLabeler, own_queue: OwnQueue, job_settings: Settings
) -> None:
    """A second open job over ``max_open_jobs``: 429 with ``Retry-After: 30``, raised at
    once (a job must end first; retrying 5 x 30 s would block for minutes), not as
    ``RateLimited``. On a database of the test's own, which no runner serves (this module's
    runs once ``ms`` is used), so the first job stays queued, and is dropped with it."""
    settings = job_settings.model_copy(update={"max_open_jobs": 1})
    workflow = Workflow(own_queue.services, PACKAGED_MODELS, settings)
    transport = RecordingASGI(create_api(local, local.configs, settings, workflow=workflow))
    async with AsyncClient("http://test", transport=transport) as ms:
        project = await ms.create_project(
            f"quota-{uuid.uuid4().hex[:6]}", "zero-shot-text-classification", "minilm"
        )
        await ms.upload_texts(project, ["one text"])
        await ms.create_job(project)
        with pytest.raises(QuotaExceeded) as full:
            await ms.create_job(project)
    assert [r.status_code for r in transport.responses[-2:]] == [202, 429]  # sent once
    assert isinstance(full.value, errors.QuotaExceeded)
    assert not isinstance(full.value, RateLimited)
    assert (full.value.code, full.value.retry_after_s) == ("quota_exceeded", 30)
    # and raised at once, without a wait
    clock = FakeClock()
    server, asked = _answering(clock, error(429, "quota_exceeded", {"retry-after": "30"}))
    with pytest.raises(QuotaExceeded):
        drive(fake_api(clock).create_job(uuid.uuid4()), clock, server)
    assert asked == [0.0] and clock.now == 0.0


def _flaky_app(failures: int) -> Starlette:
    """A server that answers 503 (model loading, no Retry-After) ``failures`` times, then
    200; and a proxy's 502 page that is not our error body."""
    calls = {"n": 0}

    async def models(request: Request) -> Response:
        calls["n"] += 1
        if calls["n"] <= failures:
            body = {"error": {"code": "model_not_ready", "message": "loading", "request_id": "r1"}}
            return JSONResponse(body, status_code=503)
        return JSONResponse({"models": []})

    async def gateway(request: Request) -> Response:
        return PlainTextResponse("<h1>bad gateway</h1>", 502, headers={"x-request-id": "r2"})

    return Starlette(routes=[Route("/api/v1/models", models), Route("/api/v1/projects", gateway)])


async def test_503_backs_off_then_gives_up_with_the_right_class() -> None:
    quick = RetryPolicy(retries=2, backoff_s=0.01)
    transport = httpx.ASGITransport(app=_flaky_app(failures=2))
    async with AsyncClient("http://test", transport=transport, retry=quick) as ms:
        assert await ms.models() == []
    transport = httpx.ASGITransport(app=_flaky_app(failures=3))
    async with AsyncClient("http://test", transport=transport, retry=quick) as ms:
        with pytest.raises(ModelNotReady) as loading:
            await ms.models()
        assert (loading.value.status, loading.value.request_id) == (503, "r1")
        with pytest.raises(ApiError) as proxy:
            await ms.list_projects()
    assert type(proxy.value) is ApiError
    assert (proxy.value.status, proxy.value.code, proxy.value.request_id) == (
        502,
        "http_error",
        "r2",
    )


def _restarting_app(failures: int) -> tuple[Starlette, dict[str, int]]:
    """A service behind Serve's HAProxy while its Ingress restarts: a plain 500 page (not
    our error body) ``failures`` times, then answers."""
    calls = {"GET": 0, "POST": 0}

    async def projects(request: Request) -> Response:
        calls[request.method] += 1
        if request.method == "POST" or calls["GET"] <= failures:
            return PlainTextResponse("Internal Server Error", 500)
        return JSONResponse({"projects": []})

    return Starlette(routes=[Route("/api/v1/projects", projects, methods=["GET", "POST"])]), calls


async def test_a_read_is_retried_through_a_proxys_failure_and_a_write_is_not() -> None:
    quick = RetryPolicy(retries=3, backoff_s=0.01)
    app, calls = _restarting_app(failures=2)
    async with AsyncClient(
        "http://test", transport=httpx.ASGITransport(app=app), retry=quick
    ) as ms:
        assert await ms.list_projects() == []
        with pytest.raises(ApiError) as refused:
            await ms.create_project("p", "zero-shot-text-classification", "minilm")
    assert calls == {"GET": 3, "POST": 1}  # a write might have happened: never sent twice
    assert refused.value.status == 500


def test_a_read_waits_for_a_server_that_is_coming_back() -> None:
    """Nothing listens at first (connection refused), then the server starts."""
    port = free_port()
    app = Starlette(routes=[Route("/api/v1/models", lambda _: JSONResponse({"models": []}))])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    starts = threading.Timer(0.8, server.run)
    starts.start()
    try:
        patient = RetryPolicy(retries=6, backoff_s=0.1)
        with Client(f"http://127.0.0.1:{port}", retry=patient) as ms:
            assert ms.models() == []
    finally:
        server.should_exit = True
        starts.join()
    with (
        Client(f"http://127.0.0.1:{free_port()}", retry=patient) as ms,
        pytest.raises(httpx.ConnectError),
    ):
        ms.create_project("p", "zero-shot-text-classification", "minilm")


def test_retry_after_is_seconds_or_a_date() -> None:
    policy = RetryPolicy(retries=2, backoff_s=0.25, max_wait_s=60)
    shed = b'{"error": {"code": "overloaded", "message": "m", "request_id": "r"}}'

    def wait(attempt: int, status: int, retry_after: str | None = None) -> float | None:
        headers = httpx.Headers({"retry-after": retry_after} if retry_after else {})
        return policy.delay(attempt, Reply(status, headers, shed))

    before = time.time()
    in_30_s = email.utils.formatdate(before + 30, usegmt=True)  # whole seconds
    waited = wait(0, 503, in_30_s)
    after = time.time()
    assert waited is not None
    assert math.floor(before + 30) - after <= waited <= math.floor(before + 30) - before
    assert wait(0, 429, "7") == 7
    assert wait(0, 503, "Wed, 21 Oct 2015 07:28:00 GMT") == 0  # already past
    assert (wait(0, 503), wait(1, 503), wait(2, 503)) == (0.25, 0.5, None)  # then give up
    assert wait(0, 429, "61") is None  # longer than max_wait_s: raised to the caller
    assert wait(0, 500) is None and wait(0, 404) is None
    # a read through a proxy's page (no ModelShip error body) is retried; our 404 is not
    ours = b'{"error": {"code": "unknown_job", "message": "no job", "request_id": "r"}}'
    assert policy.delay(0, Reply(404, {}, b"Not Found"), idempotent=True) == 0.25
    assert policy.delay(0, Reply(404, {}, ours), idempotent=True) is None


async def test_uploads_are_split_to_the_servers_limits(ms: AsyncClient, tmp_path: Path) -> None:
    """The server takes 8 files an upload here; the client sends up to 500 at first."""
    project = await ms.create_project(
        f"many-{uuid.uuid4().hex[:6]}", "image-classification", "efficientnet-lite0"
    )
    _write(tmp_path / "many", [png(seed) for seed in range(20)] + [png(3)])  # 20 repeats 3
    seen: list[int] = []
    upload = await ms.upload_folder(
        project, tmp_path / "many", progress=lambda done, _: seen.append(done)
    )
    assert len(upload.items) == 20
    assert [(d.index, d.filename) for d in upload.duplicates] == [(20, "f20.png")]
    assert len(upload.request_ids) == 5 and seen == [5, 10, 15, 20, 21]  # 21 -> 10 -> 5

    _write(tmp_path / "big", [_noise(400)])  # over this server's 400 kB an image
    with pytest.raises(PayloadTooLarge) as large:
        await ms.upload_folder(project, tmp_path / "big")
    assert large.value.code == "file_too_large"


def _write(folder: Path, files: list[bytes]) -> None:
    folder.mkdir()
    for index, data in enumerate(files):
        (folder / f"f{index:02d}.png").write_bytes(data)


def _noise(side: int) -> bytes:
    """A PNG that does not compress: random pixels."""
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buffer, "PNG")
    return buffer.getvalue()


async def test_api_keys(local: LocalLabeler, services: Services, job_settings: Settings) -> None:
    settings = job_settings.model_copy(update={"auth_required": True})
    app = create_api(
        local, local.configs, settings, workflow=Workflow(services, PACKAGED_MODELS, settings)
    )
    keys = KeyStore(services.db, settings.secret_key.get_secret_value())
    admin, _ = await keys.create("tenant-client", ["admin"], "notebook")
    reader, _ = await keys.create("tenant-client", ["read"], "viewer")
    transport = httpx.ASGITransport(app=app)

    async with AsyncClient("http://test", transport=transport) as anonymous:
        with pytest.raises(Unauthorized) as no_key:
            await anonymous.list_projects()
        assert no_key.value.request_id
    async with AsyncClient("http://test", admin, transport=transport) as ms:
        project = await ms.create_project("keyed", "image-classification", "efficientnet-lite0")
    async with AsyncClient("http://test", reader, transport=transport) as ms:
        assert [p.id for p in await ms.list_projects()] == [project.id]
        with pytest.raises(Forbidden) as scope:
            await ms.archive_project(project)
        assert scope.value.code == "insufficient_scope"


def test_the_client_imports_nothing_of_the_server() -> None:
    code = (
        "import sys, modelship.client\n"
        "server = ('modelship.http', 'modelship.service', 'modelship.ops', 'modelship.predictors',"
        " 'storage', 'ray', 'fastapi', 'starlette', 'asyncpg', 'redis', 'torch', 'pandas')\n"
        "print(sorted(m for m in sys.modules if m.startswith(server)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
