"""A batch labeling run, without Ray: the project, the model and its options, the job,
what a chunk of the dataset adds and what a labeled batch records.

``jobs.label_dataset`` drives a ``BatchRun`` over Ray Data; its actors run
``label_items`` (``modelship/predictors/prepare.py``) on each batch, with the predictor
classes the model replicas use, so an item gets the labels the online routes give for the
same bytes.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from modelship.core.config import IMAGE_TASKS, ModelConfig
from modelship.core.errors import Conflict, InvalidInput, ModelShipError, NotFound
from modelship.core.messages import ItemOptions
from modelship.core.records import (
    Export,
    ExportCreate,
    ExportFormat,
    ExportSelection,
    Job,
    Project,
    ProjectCreate,
)
from modelship.core.review import model_annotation
from modelship.core.settings import Settings
from modelship.exports import check
from modelship.predictors import ModelStore
from modelship.service.datasets import (
    Entry,
    check_source,
    list_entries,
    read_entry,
)
from modelship.service.exporter import run_export
from modelship.service.labeling import pick_model
from modelship.service.runner import item_options, job_options, params_hash
from modelship.service.workflow import Workflow
from storage.batch import BatchItem, BatchStore, Pending
from storage.exports import EXPORT_TASKS, ExportStore
from storage.jobs import Failure, JobStore, Success
from storage.services import Services

logger = logging.getLogger("modelship.batch")

LEASE_S = 300.0  # renewed while the run lives; a dead run's items fail this long after
LIST_CHUNK = 65_536  # entries listed, read and added at a time (about 16 MB)


@dataclass(frozen=True)
class BatchRequest:
    """What to label with what, and where the results go."""

    project: str  # a project id, or a name: created for ``model`` when the tenant has none
    source: str  # an fsspec URI (see ``modelship.service.datasets``)
    model: str | None = None  # default: the project's model
    tenant: str = "default"
    actor: str = "batch"  # who the audit log names
    export: ExportFormat | None = None
    export_all: bool = False  # export every item, not only approved ones


@dataclass(frozen=True)
class Labeled:
    """One item's outcome as a label actor returns it: the output as JSON, or an error."""

    item_id: str
    output: str
    version: str
    error: str


class BatchRun:
    """One run of a batch job over PostgreSQL and object storage; open it with ``start``."""

    def __init__(
        self,
        services: Services,
        settings: Settings,
        request: BatchRequest,
        project: Project,
        config: ModelConfig,
        version: str,
        listing: Iterator[list[Entry]],
    ) -> None:
        self.services = services
        self.settings = settings
        self.request = request
        self.project = project
        self.config = config
        self.version = version
        self.listing = listing  # the dataset's entries, a chunk at a time
        self.options = job_options(
            config.top_k, project.confidence_threshold, project.labels or config.labels
        )
        self.params = params_hash(self.options)
        self.images = project.task in IMAGE_TASKS
        self.job_id = UUID(int=0)
        self._store = BatchStore(services.db)

    @classmethod
    async def start(
        cls,
        services: Services,
        configs: Sequence[ModelConfig],
        settings: Settings,
        request: BatchRequest,
    ) -> BatchRun:
        """Check the source and the model, list the dataset's first chunk (the rest is
        listed as ``listing`` is read), then commit the project (if new) and a running
        job. Nothing is written when a check fails."""
        check_source(request.source, settings)
        workflow = Workflow(services, configs, settings)
        project = await _find_project(workflow, request.tenant, request.project)
        if project is not None and project.archived:
            raise Conflict(f"project {project.id} is archived", "project_archived")
        if project is None and request.model is None:
            raise InvalidInput(f"no project {request.project!r}: name a model to create it")
        model = request.model or (project.model if project else None)
        tasks = {project.task} if project else {c.task for c in configs}
        config = pick_model(configs, model, tasks)
        task = project.task if project else config.task
        if request.export is not None:  # refused now, not once every item is labeled
            check(request.export, EXPORT_TASKS[task], False)
        images = task in IMAGE_TASKS
        entries = list_entries(request.source, images, settings)
        first = await asyncio.to_thread(_chunk, entries)  # refusals come with the first
        listing = itertools.chain([first], iter(functools.partial(_chunk, entries), []))
        store = ModelStore(settings.models_dir)
        version = (await asyncio.to_thread(store.resolve, config.source)).version
        if project is None:
            project = await _create_project(workflow, request, config)
        run = cls(services, settings, request, project, config, version, listing)
        if closed := await run._store.close_dead(project.id):
            logger.info("closed %d batch jobs of project %s whose run died", closed, project.id)
        run.job_id = await run._store.start(
            request.tenant,
            project,
            config.name,
            run.options,
            request.actor,
            settings.max_open_jobs,
            LEASE_S,
        )
        return run

    @property
    def owner(self) -> str:
        """The lease owner of this run's job items."""
        return f"batch:{self.job_id}"

    @property
    def item_options(self) -> ItemOptions:
        return item_options(self.options)

    def read(self, entry: Entry) -> list[BatchItem]:
        """The items of an entry that holds no file (a text): no bytes to store."""
        return [
            item
            for item, _ in read_entry(
                entry, self.images, self.settings, self.request.tenant, self.project.id
            )
        ]

    async def add(self, rows: list[BatchItem]) -> list[Pending]:
        """Add a chunk of the dataset to the project and the job; returns what to label."""
        added = await self._store.add(
            self.project.id, self.job_id, self.owner, rows, self.version, self.params, LEASE_S
        )
        for key in added.unused_keys:
            await self.services.objects.delete(key)
        return added.pending

    async def record(self, labeled: Sequence[Labeled]) -> int:
        """Write a labeled batch's predictions and annotations, or its items' failures."""
        successes, failures = [], []
        for row in labeled:
            item_id = UUID(row.item_id)
            if row.error:
                failures.append(Failure(item_id, row.error))
                continue
            if row.version != self.version:
                raise ModelShipError(f"a label actor loaded {row.version}, not {self.version}")
            output: list[dict[str, Any]] = json.loads(row.output)
            status, assessment = model_annotation(
                self.project.task, output, self.project.auto_approve_threshold
            )
            successes.append(Success(item_id, row.version, self.params, output, status, assessment))
        return await self._store.record(
            self.project.id, self.job_id, self.owner, self.config.name, successes, failures
        )

    async def leased(self) -> list[Pending]:
        """The items still to label: leased to this run, no outcome recorded yet."""
        return await self._store.leased(self.job_id, self.owner)

    async def renew(self) -> None:
        await self._store.renew(self.job_id, self.owner, LEASE_S)

    async def finish(self) -> Job:
        """Close the job (items left unlabeled fail) and return it as the API shows it."""
        await self._store.finish(self.job_id, self.owner)
        return await self.job()

    async def job(self) -> Job:
        return await JobStore(self.services.db).job(self.request.tenant, self.job_id)

    async def export(self) -> Export | None:
        """Write the export the request asks for, here; None when it asks for none."""
        if self.request.export is None:
            return None
        check(self.request.export, EXPORT_TASKS[self.project.task], False)
        exports = ExportStore(self.services.db)
        selection = ExportSelection.all if self.request.export_all else ExportSelection.approved
        spec = ExportCreate(format=self.request.export, selection=selection)
        export = await exports.create(self.request.tenant, self.project, spec, self.request.actor)
        await run_export(self.services, export.id, self.settings.export_retention)
        return (await exports.get(self.request.tenant, export.id))[0]


async def _create_project(
    workflow: Workflow, request: BatchRequest, config: ModelConfig
) -> Project:
    """The project the request names, created for ``config``'s task; or the one another
    run (started at once with the same name) created meanwhile, if it has that task."""
    spec = ProjectCreate(name=request.project, task=config.task, model=config.name)
    try:
        return await workflow.create_project(request.tenant, spec, request.actor)
    except Conflict as exc:
        if exc.code != "duplicate_name":
            raise
        found = await _find_project(workflow, request.tenant, request.project)
        if found is None or found.task != config.task:
            raise
        return found


async def _find_project(workflow: Workflow, tenant: str, ref: str) -> Project | None:
    """The project ``ref`` names (its id, or its name among the tenant's), or None."""
    try:
        project_id = UUID(ref)
    except ValueError:
        projects = await workflow.projects(tenant, include_archived=False)
        return next((p for p in projects if p.name == ref), None)
    try:
        return await workflow.project(tenant, project_id)
    except NotFound:
        raise NotFound(f"no project {ref}", "unknown_project") from None


def _chunk(entries: Iterator[Entry]) -> list[Entry]:
    return list(itertools.islice(entries, LIST_CHUNK))
