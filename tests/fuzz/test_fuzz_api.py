"""Schemathesis over ``/api/v1/openapi.json``: every operation, fuzzed in-process.

The app is the real one (``create_api`` with the packaged models in a ``LocalLabeler``,
this machine's PostgreSQL and Redis, API keys on), loaded from its own OpenAPI document
over ASGI. Each case is sent with an admin key; about half of them aim at resources that
exist (a text project with labeled items and a finished job, an image project), the rest
at the ids schemathesis made up. Whatever is sent, the answer is a 2xx or a 4xx with our
error body, and it conforms to the document. The figures are in docs/drills.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.schemas import OpenApiSchema

from modelship.core.records import JobCreate, ProjectCreate
from modelship.core.settings import Settings
from modelship.http.app import create_api
from modelship.http.auth import SCOPES
from modelship.service.labeling import LocalLabeler
from modelship.service.runner import JobRunner
from modelship.service.workflow import Upload, Workflow
from storage.jobs import JobStore
from storage.keys import KeyStore
from storage.services import Services
from tests.conftest import PACKAGED_MODELS
from tests.unit.flow import LABELS, drain, png

# Examples per operation: enough to reach every branch of a body schema, small enough
# that the whole module runs in well under two minutes on two cores.
EXAMPLES = 50
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
MULTIPART_CHECKS = [check for check in CHECKS if check is not negative_data_rejection]
TENANT = "fuzz"
SENT: Counter[str] = Counter()  # cases sent per operation, for the figures
STATUSES: Counter[tuple[str, int]] = Counter()


@pytest.fixture(scope="module")
def fuzz_settings(job_settings: Settings) -> Settings:
    return job_settings.model_copy(update={"auth_required": True})


@pytest.fixture(scope="module")
def known(local: LocalLabeler, fuzz_settings: Settings) -> dict[str, Any]:
    """An admin key and resources that exist, made on a loop of their own."""
    return asyncio.run(_seed(local, fuzz_settings))


async def _seed(local: LocalLabeler, settings: Settings) -> dict[str, Any]:
    services = Services.from_settings(settings)
    try:
        workflow = Workflow(services, PACKAGED_MODELS, settings)
        key, _ = await KeyStore(services.db, settings.secret_key.get_secret_value()).create(
            TENANT, ["admin"], "fuzz"
        )
        text = await workflow.create_project(
            TENANT,
            ProjectCreate.model_validate(
                {
                    "name": "fuzz-text",
                    "task": "zero-shot-text-classification",
                    "model": "minilm",
                    "labels": LABELS,
                }
            ),
            "fuzz",
        )
        image = await workflow.create_project(
            TENANT,
            ProjectCreate.model_validate(
                {
                    "name": "fuzz-image",
                    "task": "image-classification",
                    "model": "efficientnet-lite0",
                }
            ),
            "fuzz",
        )
        texts = ["the team won the match", "stir the sauce slowly", "a goal in the final"]
        items, _ = await workflow.upload(TENANT, text.id, [Upload(t) for t in texts], "fuzz")
        await workflow.upload(TENANT, image.id, [Upload(png(1), "a.png")], "fuzz")
        job, _ = await workflow.submit_job(TENANT, text.id, JobCreate(), None, "fuzz")
        runner = JobRunner(
            JobStore(services.db), services.objects, services.cache, local, settings, "fuzz"
        )
        await drain(runner)
        paths = [
            {"project_id": str(text.id), "item_id": str(items[0].id), "job_id": str(job.id)},
            {"project_id": str(image.id)},
        ]
        return {"key": key, "paths": paths}
    finally:
        await services.close()


@pytest.fixture(scope="module")
def api(local: LocalLabeler, fuzz_settings: Settings, known: dict[str, Any]) -> FastAPI:
    """The app. Its clients connect on first use, on the event loop schemathesis sends
    requests from, and close as the app's lifespan ends (schemathesis ends it after each
    test; the next request starts it again)."""
    services = Services.from_settings(fuzz_settings)
    workflow = Workflow(services, PACKAGED_MODELS, fuzz_settings)
    app = create_api(local, local.configs, fuzz_settings, workflow=workflow)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await services.close()

    app.router.lifespan_context = lifespan
    return app


@pytest.fixture(scope="module")
def api_schema(api: FastAPI) -> OpenApiSchema:
    return schemathesis.openapi.from_asgi("/api/v1/openapi.json", api)


OPERATIONS = sorted({*SCOPES, ("GET", "/health/live"), ("GET", "/health/ready")})


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_no_server_errors(
    api_schema: OpenApiSchema, known: dict[str, Any], method: str, path: str
) -> None:
    operation = api_schema[path][method]
    strategies = [operation.as_strategy(mode) for mode in GenerationMode]
    names = set(re.findall(r"{(\w+)}", path))
    if names and not path.endswith("/archive"):  # archived, a project would only answer 409
        strategies += [
            operation.as_strategy(path_parameters=ids)
            for ids in known["paths"]
            if names <= set(ids)
        ]
    auth = {"authorization": f"Bearer {known['key']}"}

    @given(case=st.one_of(strategies))
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def run(case: Case) -> None:
        response = case.call(headers=auth)
        SENT[operation.label] += 1
        STATUSES[(operation.label, response.status_code)] += 1
        # In a multipart body an array is one part per element, so an empty array is no
        # part at all: the same request as the field left out, which is valid.
        multipart = case.media_type == "multipart/form-data"
        checks = MULTIPART_CHECKS if multipart else CHECKS
        case.validate_response(response, checks=checks, headers=auth)
        if response.status_code >= 400:
            error = response.json()["error"]
            assert error["code"], error
            assert [error["request_id"]] == response.headers["x-request-id"]

    run()


@pytest.fixture(scope="module", autouse=True)
def _figures() -> Iterator[None]:
    yield
    print(f"\n{sum(SENT.values())} cases over {len(SENT)} operations")
    for (label, status), count in sorted(STATUSES.items()):
        print(f"{label:70} {status} x{count}")
