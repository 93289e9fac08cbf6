"""The projects-and-jobs workflow in one process, on this machine's PostgreSQL and Redis:
fixtures and helpers shared by the workflow test modules (a pytest plugin, see
``tests/conftest.py``). The job runner runs in-process with the real models."""

from __future__ import annotations

import io
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio
from PIL import Image
from pydantic import SecretStr

from modelship.core.errors import ModelShipError
from modelship.core.messages import ItemOptions, ItemResult
from modelship.core.settings import Settings
from modelship.http.app import create_api
from modelship.service.labeling import LocalLabeler
from modelship.service.runner import JobRunner
from modelship.service.workflow import Workflow
from storage.jobs import JobStore
from storage.services import Services
from tests.conftest import PACKAGED_MODELS, POSTGRES_ADMIN_DSN, admin_sql

LABELS = [
    {"name": "sport", "examples": ["the team won the match", "a great goal in the final"]},
    {"name": "cooking", "examples": ["bake the bread for an hour", "stir the sauce slowly"]},
]


class CountingLabeler(LocalLabeler):
    """The real in-process labeler, counting the items it is asked to label."""

    calls = 0

    async def label(
        self, model: str, payloads: list[Any], options: ItemOptions
    ) -> list[ItemResult | ModelShipError]:
        self.calls += len(payloads)
        return await super().label(model, payloads, options)


@pytest.fixture(scope="module")
def local(settings: Settings) -> LocalLabeler:
    return LocalLabeler(PACKAGED_MODELS, settings)


@pytest.fixture(scope="module")
def job_settings(storage_settings: Settings) -> Settings:
    return storage_settings.model_copy(
        update={
            "max_image_bytes": 400_000,
            "max_upload_files": 8,
            "max_upload_bytes": 1_500_000,
            "max_text_file_bytes": 200_000,
            "max_upload_texts": 100,
            "job_lease_s": 0.5,
        }
    )


@pytest.fixture(scope="module")
async def services(job_settings: Settings) -> AsyncIterator[Services]:
    services = Services.from_settings(job_settings)
    yield services
    await services.close()


@pytest.fixture(scope="module")
def labeler(local: LocalLabeler, job_settings: Settings) -> CountingLabeler:
    return CountingLabeler(PACKAGED_MODELS, job_settings, local.predictors)


@pytest.fixture(scope="module")
def runner(services: Services, labeler: CountingLabeler, job_settings: Settings) -> JobRunner:
    jobs = JobStore(services.db)
    return JobRunner(jobs, services.objects, services.cache, labeler, job_settings, "runner-a")


@asynccontextmanager
async def api_client(
    local: LocalLabeler, services: Services, settings: Settings
) -> AsyncIterator[httpx.AsyncClient]:
    """The HTTP API with storage (``services``) on ``settings``, over ASGI."""
    workflow = Workflow(services, PACKAGED_MODELS, settings)
    app = create_api(local, local.configs, settings, workflow=workflow)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


@pytest.fixture(scope="module")
async def client(
    local: LocalLabeler, services: Services, job_settings: Settings
) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(local, services, job_settings) as http:
        yield http


@dataclass(frozen=True)
class OwnQueue:
    """The workflow on a database of one test's own: its job queue holds that test's jobs
    and nothing else."""

    client: httpx.AsyncClient
    services: Services
    jobs: JobStore


@pytest_asyncio.fixture(loop_scope="module")
async def own_queue(local: LocalLabeler, job_settings: Settings) -> AsyncIterator[OwnQueue]:
    """For a test that claims from the job queue itself: a claim takes the oldest job with
    open items in the whole database, and on the session's database that is whatever an
    earlier test (of this module or another) left queued. Also for one that leaves a job
    queued on purpose. This one is empty, no runner serves it, it is migrated on first use
    and dropped after the test."""
    name = f"modelship_test_{uuid.uuid4().hex[:12]}"
    await admin_sql(f"CREATE DATABASE {name}")
    try:
        dsn = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"
        settings = job_settings.model_copy(update={"database_url": SecretStr(dsn)})
        services = Services.from_settings(settings)
        try:
            async with api_client(local, services, settings) as http:
                yield OwnQueue(http, services, JobStore(services.db))
        finally:
            await services.close()
    finally:
        await admin_sql(f"DROP DATABASE {name} WITH (FORCE)")


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    assert error["request_id"] == response.headers["x-request-id"]


async def make_project(client: httpx.AsyncClient, **spec: Any) -> dict[str, Any]:
    body = {"name": f"p-{uuid.uuid4().hex[:8]}", **spec}
    response = await client.post("/api/v1/projects", json=body)
    assert response.status_code == 201, response.text
    project: dict[str, Any] = response.json()
    return project


async def text_project(client: httpx.AsyncClient) -> dict[str, Any]:
    return await make_project(
        client, task="zero-shot-text-classification", model="minilm", labels=LABELS
    )


async def image_project(client: httpx.AsyncClient) -> dict[str, Any]:
    return await make_project(client, task="image-classification", model="efficientnet-lite0")


def assert_same_labels(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """Same labels in the same order; scores equal up to float noise of batch composition."""
    assert [g["label"] for g in got] == [e["label"] for e in expected]
    assert [g["score"] for g in got] == pytest.approx([e["score"] for e in expected], abs=1e-5)


async def drain(runner: JobRunner) -> None:
    for _ in range(200):
        if not await runner.run_once():
            return
    raise AssertionError("the runner never ran out of work")


def png(seed: int, size: tuple[int, int] = (40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (seed % 256, 40, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


async def upload_texts(
    client: httpx.AsyncClient, project: dict[str, Any], texts: list[str]
) -> list[str]:
    url = f"/api/v1/projects/{project['id']}/items"
    response = await client.post(url, json={"texts": texts})
    assert response.status_code == 201, response.text
    return [item["id"] for item in response.json()["items"]]


async def job_results(
    client: httpx.AsyncClient, job_id: str, limit: int = 100
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get(f"/api/v1/jobs/{job_id}/results", params=params)).json()
        results += page["results"]
        cursor = page["next_cursor"]
        if cursor is None:
            return results
