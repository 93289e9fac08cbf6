"""A project changed by one replica while another acts on it, on the real PostgreSQL: an
archive landing between a submission's (an upload's, a change's) check and its write, and
two tries of one idempotent submission under the open-jobs quota. Each case was found
wrong by forcing its interleaving."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

import pytest

import storage.jobs
from modelship.core.errors import Conflict
from modelship.core.records import JobCreate, Project, ProjectCreate, ProjectUpdate
from modelship.core.settings import Settings
from modelship.service.workflow import Upload, Workflow
from storage.batch import BatchStore
from storage.services import Services
from tests.conftest import PACKAGED_MODELS
from tests.unit.flow import LABELS

pytestmark = pytest.mark.asyncio(loop_scope="module")


def _workflow(services: Services, settings: Settings) -> Workflow:
    return Workflow(services, PACKAGED_MODELS, settings, launch_export=lambda _: None)


async def _project(workflow: Workflow, tenant: str) -> Project:
    spec = ProjectCreate.model_validate(
        {
            "name": f"race-{uuid.uuid4().hex[:8]}",
            "task": "zero-shot-text-classification",
            "model": "minilm",
            "labels": LABELS,
        }
    )
    project = await workflow.create_project(tenant, spec, "test")
    texts = [Upload(f"a text {uuid.uuid4().hex}", None)]
    await workflow.upload(tenant, project.id, texts, "test")
    return project


def _archived_after_read(
    workflow: Workflow, other: Workflow, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``workflow``'s first read of a project returns it active, then ``other`` (another
    replica) archives it before ``workflow`` goes on."""
    read = workflow.catalog.project
    archived: set[UUID] = set()

    async def read_then_archived(tenant_: str, project_id: UUID) -> Project:
        project = await read(tenant_, project_id)
        if project_id not in archived:
            archived.add(project_id)
            await other.archive_project(tenant, project_id, "other-replica")
        return project

    monkeypatch.setattr(workflow.catalog, "project", read_then_archived)


async def _refused_as_archived(call: Awaitable[Any]) -> None:
    with pytest.raises(Conflict) as refused:
        await call
    assert refused.value.code == "project_archived"


async def test_a_project_archived_while_a_job_is_submitted_gets_no_job(
    services: Services, job_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The submission checked the project was active, then committed its job: a project
    archived in between held a queued job, labeled and counted against it after the 200
    of the archive."""
    tenant = job_settings.tenant
    workflow, other = _workflow(services, job_settings), _workflow(services, job_settings)
    project = await _project(workflow, tenant)
    _archived_after_read(workflow, other, tenant, monkeypatch)
    await _refused_as_archived(workflow.submit_job(tenant, project.id, JobCreate(), None, "test"))
    async with services.db.connection() as conn:
        jobs = await conn.fetchval("SELECT count(*) FROM jobs WHERE project_id = $1", project.id)
    assert jobs == 0


async def test_a_project_archived_during_an_upload_gets_no_item(
    services: Services, job_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = job_settings.tenant
    workflow, other = _workflow(services, job_settings), _workflow(services, job_settings)
    project = await _project(workflow, tenant)
    _archived_after_read(workflow, other, tenant, monkeypatch)
    late = [Upload(f"a late text {uuid.uuid4().hex}", None)]
    await _refused_as_archived(workflow.upload(tenant, project.id, late, "test"))
    async with services.db.connection() as conn:
        items = await conn.fetchval("SELECT count(*) FROM items WHERE project_id = $1", project.id)
    assert items == 1  # the one uploaded before the archive


async def test_a_project_archived_while_it_is_changed_keeps_its_labels(
    services: Services, job_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = job_settings.tenant
    workflow, other = _workflow(services, job_settings), _workflow(services, job_settings)
    project = await _project(workflow, tenant)
    _archived_after_read(workflow, other, tenant, monkeypatch)
    change = ProjectUpdate.model_validate({"labels": [*LABELS, {"name": "travel"}]})
    await _refused_as_archived(workflow.update_project(tenant, project.id, change, "test"))
    after = await other.project(tenant, project.id)
    assert after.archived and after.label_schema_version == project.label_schema_version


async def test_two_tries_of_one_idempotent_submission_under_the_quota_get_one_job(
    services: Services, job_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client's retry (its first try timed out) racing the first try, on a project with
    room for one more job: both looked the key up before either committed, the first
    created the job, and the retry counted it against the quota and got 429, for a job
    that exists and that the key was meant to return."""
    tenant = job_settings.tenant
    quota = job_settings.model_copy(update={"max_open_jobs": 1})
    workflow = _workflow(services, quota)
    project = await _project(workflow, tenant)
    real: Callable[..., Awaitable[UUID | None]] = storage.jobs._by_key

    async def slow_lookup(*args: Any) -> UUID | None:
        found = await real(*args)
        await asyncio.sleep(0.3)  # both tries have looked before either goes on
        return found

    monkeypatch.setattr(storage.jobs, "_by_key", slow_lookup)
    key = f"retry-{uuid.uuid4().hex}"
    submit = (_workflow(services, quota).submit_job for _ in range(2))
    answers = await asyncio.gather(
        *(call(tenant, project.id, JobCreate(), key, "test") for call in submit),
        return_exceptions=True,
    )
    assert not [a for a in answers if isinstance(a, BaseException)], answers
    (first, created), (second, replayed) = answers  # type: ignore[misc]
    assert first.id == second.id and {created, replayed} == {True, False}


async def test_a_batch_run_on_a_project_archived_after_it_read_it_gets_no_job(
    services: Services, job_settings: Settings
) -> None:
    """A batch run (python -m jobs.label_dataset) checks the project it read, lists its
    dataset (minutes, for a bucket), then starts its job: an archive over the API in
    between went unseen, and the run labeled a whole dataset into the archived project."""
    tenant = job_settings.tenant
    workflow = _workflow(services, job_settings)
    project = await _project(workflow, tenant)  # as the run read it: active
    await _workflow(services, job_settings).archive_project(tenant, project.id, "api")
    start = BatchStore(services.db).start(tenant, project, "minilm", {}, "batch", 10, 60)
    await _refused_as_archived(start)
    async with services.db.connection() as conn:
        jobs = await conn.fetchval("SELECT count(*) FROM jobs WHERE project_id = $1", project.id)
    assert jobs == 0
