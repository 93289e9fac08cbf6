"""Projects, uploads and jobs: the product's workflow over storage, without HTTP.

The routes in ``modelship.http.projects`` parse requests and call this; it checks what
the database cannot (models, tasks, file contents) and keeps object storage and
PostgreSQL consistent: files are written first, rows last, and files whose rows did not
commit are deleted.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import mimetypes
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from uuid import UUID

from modelship.core.config import IMAGE_TASKS, ModelConfig, Task
from modelship.core.errors import Conflict, InvalidInput, ModelShipError
from modelship.core.inputs import read_image_header
from modelship.core.records import (
    Duplicate,
    Export,
    ExportCreate,
    Item,
    Job,
    JobCreate,
    Project,
    ProjectCreate,
    ProjectUpdate,
)
from modelship.core.settings import Settings
from modelship.exports import check
from modelship.service.exporter import run_export
from modelship.service.runner import job_options
from storage.catalog import Catalog, NewItem
from storage.exports import EXPORT_TASKS, ExportStore
from storage.jobs import JobStore
from storage.reviews import ReviewStore
from storage.services import Services

logger = logging.getLogger("modelship.workflow")

_PUT_CONCURRENCY = 16


@dataclass(frozen=True)
class Upload:
    """One uploaded image (bytes) or text (str), with the name the client gave it."""

    data: bytes | str
    filename: str | None = None


def content_hash(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return hashlib.sha256(raw).hexdigest()


def _new_text(upload: Upload) -> NewItem:
    assert isinstance(upload.data, str)
    return NewItem(
        content_hash=content_hash(upload.data),
        media_type="text/plain",
        byte_size=len(upload.data.encode()),
        text=upload.data,
        filename=upload.filename,
    )


class Workflow:
    """What the project, upload and job routes do.

    Args:
        services: PostgreSQL, Redis and object storage.
        configs: the configured models (a project must name one doing its task).
        settings: limits.
        launch_export: starts writing an export in the background (under Serve: a call to
            the Exporter); by default, a task in this process.
    """

    def __init__(
        self,
        services: Services,
        configs: Sequence[ModelConfig],
        settings: Settings,
        launch_export: Callable[[UUID], None] | None = None,
    ) -> None:
        self.catalog = Catalog(services.db)
        self.exports = ExportStore(services.db)
        self._launch_export = launch_export or self._export_here
        self.jobs = JobStore(services.db)
        self.reviews = ReviewStore(services.db)
        self._background: set[asyncio.Task[None]] = set()
        self.services = services
        self._configs = {config.name: config for config in configs}
        self._settings = settings

    def _model(self, name: str, task: Task) -> ModelConfig:
        config = self._configs.get(name)
        if config is None:
            raise InvalidInput(f"no model named {name!r} is configured", "unknown_model")
        if config.task != task:
            raise InvalidInput(f"model {name!r} does {config.task}, not {task}", "wrong_task")
        return config

    async def create_project(self, tenant: str, spec: ProjectCreate, actor: str) -> Project:
        config = self._model(spec.model, spec.task)
        if spec.task == Task.zero_shot_text_classification and not (spec.labels or config.labels):
            raise InvalidInput("zero-shot projects need labels", "labels_required")
        return await self.catalog.create_project(tenant, spec, actor)

    async def update_project(
        self, tenant: str, project_id: UUID, change: ProjectUpdate, actor: str
    ) -> Project:
        return await self.catalog.update_project(tenant, project_id, change, actor)

    async def upload(
        self, tenant: str, project_id: UUID, uploads: list[Upload], actor: str
    ) -> tuple[list[Item], list[Duplicate]]:
        """Store new items; report those whose content the project already holds."""
        project = await self.catalog.project(tenant, project_id)
        if project.archived:
            raise Conflict(f"project {project_id} is archived", "project_archived")
        images = project.task in IMAGE_TASKS
        for index, upload in enumerate(uploads):
            if isinstance(upload.data, str) == images:
                kind = "images" if images else "texts"
                raise InvalidInput(f"upload {index}: this project takes {kind}", "wrong_kind")
        hashes = [content_hash(upload.data) for upload in uploads]
        known = await self.catalog.existing_hashes(project_id, hashes)
        first: dict[str, int] = {}
        for index, digest in enumerate(hashes):
            if digest not in known:
                first.setdefault(digest, index)
        new = [
            self._new_item(tenant, project_id, i, uploads[i]) if images else _new_text(uploads[i])
            for i in first.values()
        ]
        written = [item.object_key for item in new if item.object_key]
        try:
            await self._put_objects(new, [uploads[i] for i in first.values()])
            created, raced = await self.catalog.add_items(tenant, project_id, new, actor)
        except BaseException:
            await self._delete_objects(written)
            raise
        ids = {item.content_hash: item.id for item in created} | known | raced
        lost = [item.object_key for item in new if item.content_hash in raced and item.object_key]
        await self._delete_objects(lost)
        duplicates = [
            Duplicate(index=i, filename=uploads[i].filename, content_hash=d, item_id=ids[d])
            for i, d in enumerate(hashes)
            if first.get(d) != i
        ]
        return created, duplicates

    def _new_item(self, tenant: str, project_id: UUID, index: int, upload: Upload) -> NewItem:
        assert isinstance(upload.data, bytes)
        try:
            header = read_image_header(upload.data, self._settings)
        except ModelShipError as exc:
            name = f" ({upload.filename})" if upload.filename else ""
            raise type(exc)(f"file {index}{name}: {exc.message}", exc.code) from None
        extension = mimetypes.guess_extension(header.media_type) or ".bin"
        return NewItem(
            content_hash=content_hash(upload.data),
            media_type=header.media_type,
            byte_size=len(upload.data),
            width=header.width,
            height=header.height,
            object_key=self.services.objects.new_key(tenant, str(project_id), extension),
            filename=upload.filename,
        )

    async def _put_objects(self, items: list[NewItem], uploads: list[Upload]) -> None:
        limit = asyncio.Semaphore(_PUT_CONCURRENCY)

        async def put(key: str, data: bytes) -> None:
            async with limit:
                await self.services.objects.put(key, data)

        await asyncio.gather(
            *(
                put(item.object_key, upload.data)
                for item, upload in zip(items, uploads, strict=True)
                if item.object_key and isinstance(upload.data, bytes)
            )
        )

    async def _delete_objects(self, keys: list[str]) -> None:
        for key in keys:
            try:
                await self.services.objects.delete(key)
            except Exception as exc:
                logger.warning("could not delete orphan object %s: %r", key, exc)

    async def submit_job(
        self,
        tenant: str,
        project_id: UUID,
        body: JobCreate,
        idempotency_key: str | None,
        actor: str,
    ) -> tuple[Job, bool]:
        project = await self.catalog.project(tenant, project_id)
        if project.archived:
            raise Conflict(f"project {project_id} is archived", "project_archived")
        config = self._model(project.model, project.task)
        options = job_options(
            config.top_k, project.confidence_threshold, project.labels or config.labels
        )
        request_hash = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
        job, created = await self.jobs.submit(
            tenant, project, body.item_ids, options, idempotency_key, request_hash, actor
        )
        if created:
            await self.services.cache.notify_jobs()
        return job, created

    async def create_export(
        self, tenant: str, project_id: UUID, request: ExportCreate, actor: str
    ) -> Export:
        """Record the export (``202``) and start writing it in the background."""
        project = await self.catalog.project(tenant, project_id)
        check(request.format, EXPORT_TASKS[project.task], request.include_images)
        export = await self.exports.create(tenant, project, request, actor)
        self._launch_export(export.id)
        return export

    def _export_here(self, export_id: UUID) -> None:
        task = asyncio.create_task(run_export(self.services, export_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
