"""Projects, uploads, jobs, review and exports: the product's workflow over storage,
without HTTP.

Every project, job, review and export route parses its request and calls one method
here. This checks what the database cannot (models, tasks, file contents, review
decisions) and keeps object storage and PostgreSQL consistent: files are written first,
rows last, and files whose rows did not commit are deleted.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import mimetypes
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from uuid import UUID

from modelship.core.config import IMAGE_TASKS, ModelConfig, Task
from modelship.core.errors import Conflict, Gone, InvalidInput, ModelShipError
from modelship.core.inputs import check_labels, read_image_header
from modelship.core.records import (
    BulkApproveRequest,
    Duplicate,
    Export,
    ExportCreate,
    Item,
    ItemDetail,
    Job,
    JobCreate,
    JobResult,
    Project,
    ProjectCreate,
    ProjectStats,
    ProjectUpdate,
    ReviewQueueEntry,
    ReviewRequest,
)
from modelship.core.review import decide
from modelship.core.settings import Settings
from modelship.exports import check
from modelship.service.exporter import run_export
from modelship.service.labeling import pick_model
from modelship.service.runner import job_options
from storage.catalog import Catalog, NewItem
from storage.exports import EXPORT_TASKS, ExportStore
from storage.jobs import JobStore
from storage.objects import ObjectNotFound
from storage.reviews import ReviewStore
from storage.scan import Clamd, Scanner, scan_all
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


def _scan_streams(uploads: list[Upload], indexes: list[int], cap: int) -> list[tuple[str, bytes]]:
    """What to scan, named: each image; texts one per line, a stream per file (or JSON body)
    of at most ``cap`` bytes."""
    streams: list[tuple[str, bytes]] = []
    lines: list[tuple[int, bytes]] = []  # texts of the stream being gathered, by index
    size = 0

    def close() -> None:
        first, last = lines[0][0], lines[-1][0]
        span = f"text {first}" if first == last else f"texts {first}-{last}"
        name = uploads[first].filename
        streams.append((span + (f" ({name})" if name else ""), b"\n".join(t for _, t in lines)))
        lines.clear()

    for i in indexes:
        data, name = uploads[i].data, uploads[i].filename
        if isinstance(data, bytes):
            streams.append((f"file {i}" + (f" ({name})" if name else ""), data))
            continue
        text = data.encode()
        if lines and (name != uploads[lines[0][0]].filename or size + len(text) > cap):
            close()
            size = 0
        lines.append((i, text))
        size += len(text) + 1
    if lines:
        close()
    return streams


class Workflow:
    """What the project, upload and job routes do.

    Args:
        services: PostgreSQL, Redis and object storage.
        configs: the configured models (a project must name one doing its task).
        settings: limits.
        launch_export: starts writing an export in the background (under Serve: a call to
            the Exporter); by default, a task in this process.
        scanner: what uploads are scanned with; by default clamd when settings name one.
    """

    def __init__(
        self,
        services: Services,
        configs: Sequence[ModelConfig],
        settings: Settings,
        launch_export: Callable[[UUID], None] | None = None,
        scanner: Scanner | None = None,
    ) -> None:
        self.catalog = Catalog(services.db)
        self.exports = ExportStore(services.db)
        self._launch_export = launch_export or self._export_here
        self.jobs = JobStore(services.db)
        self.reviews = ReviewStore(services.db)
        self._background: set[asyncio.Task[None]] = set()
        self.services = services
        self._configs = list(configs)
        self._settings = settings
        self._scanner = scanner if scanner is not None else Clamd.from_settings(settings)

    async def create_project(self, tenant: str, spec: ProjectCreate, actor: str) -> Project:
        check_labels(spec.labels, self._settings)
        config = pick_model(self._configs, spec.model, {spec.task})
        if spec.task == Task.zero_shot_text_classification and not (spec.labels or config.labels):
            raise InvalidInput("zero-shot projects need labels", "labels_required")
        return await self.catalog.create_project(tenant, spec, actor)

    async def projects(self, tenant: str, include_archived: bool) -> list[Project]:
        return await self.catalog.projects(tenant, include_archived)

    async def project(self, tenant: str, project_id: UUID) -> Project:
        return await self.catalog.project(tenant, project_id)

    async def archive_project(self, tenant: str, project_id: UUID, actor: str) -> Project:
        return await self.catalog.archive_project(tenant, project_id, actor)

    async def items(
        self, tenant: str, project_id: UUID, after: UUID | None, limit: int
    ) -> tuple[list[Item], UUID | None]:
        await self.catalog.project(tenant, project_id)
        return await self.catalog.items(project_id, after, limit)

    async def update_project(
        self, tenant: str, project_id: UUID, change: ProjectUpdate, actor: str
    ) -> Project:
        check_labels(change.labels, self._settings)
        return await self.catalog.update_project(tenant, project_id, change, actor)

    async def upload(
        self, tenant: str, project_id: UUID, uploads: list[Upload], actor: str
    ) -> tuple[list[Item], list[Duplicate]]:
        """Store new items; report those whose content the project already holds. New
        items are scanned for viruses first, when a scanner is configured."""
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
        if self._scanner is not None:  # before anything is stored
            cap = self._settings.max_text_file_bytes
            await scan_all(self._scanner, _scan_streams(uploads, list(first.values()), cap))
        new = [
            self._new_item(tenant, project_id, i, uploads[i]) if images else _new_text(uploads[i])
            for i in first.values()
        ]
        written = [item.object_key for item in new if item.object_key]
        try:
            await self._put_objects(new, [uploads[i] for i in first.values()])
            created, raced = await self.catalog.add_items(tenant, project_id, new, actor)
        except BaseException:
            await asyncio.shield(self._delete_orphans(written))
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

    async def _delete_orphans(self, keys: list[str]) -> None:
        """After a failed or cancelled upload, delete the files no committed row names: the
        rows may have committed before the failure. When that cannot be known, keep them (an
        orphan costs bytes; deleting a committed item's file loses data)."""
        if not keys:
            return
        try:
            kept = await self.catalog.referenced_keys(keys)
        except Exception as exc:
            logger.warning("upload failed; keeping %d files it wrote: %r", len(keys), exc)
            return
        await self._delete_objects([key for key in keys if key not in kept])

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
        config = pick_model(self._configs, project.model, {project.task})
        options = job_options(
            config.top_k, project.confidence_threshold, project.labels or config.labels
        )
        request_hash = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
        job, created = await self.jobs.submit(
            tenant,
            project,
            body.item_ids,
            options,
            idempotency_key,
            request_hash,
            actor,
            self._settings.max_open_jobs,
        )
        if created:
            await self.services.cache.notify_jobs()
        return job, created

    async def job(self, tenant: str, job_id: UUID) -> Job:
        return await self.jobs.job(tenant, job_id)

    async def job_results(
        self, tenant: str, job_id: UUID, after: UUID | None, limit: int
    ) -> tuple[list[JobResult], UUID | None]:
        return await self.jobs.results(tenant, job_id, after, limit)

    async def cancel_job(self, tenant: str, job_id: UUID, actor: str) -> Job:
        return await self.jobs.cancel(tenant, job_id, actor)

    async def review_queue(
        self, tenant: str, project_id: UUID, strategy: str, label: str | None, limit: int, seed: str
    ) -> list[ReviewQueueEntry]:
        await self.catalog.project(tenant, project_id)
        return await self.reviews.queue(project_id, strategy, label, limit, seed)

    async def item_detail(self, tenant: str, project_id: UUID, item_id: UUID) -> ItemDetail:
        await self.catalog.project(tenant, project_id)
        return await self.reviews.detail(project_id, item_id)

    async def review(
        self, tenant: str, project_id: UUID, item_id: UUID, request: ReviewRequest, actor: str
    ) -> ItemDetail:
        """Decide a person's action on the item's current label, then record it (409 if the
        label changed in between)."""
        project = await self.catalog.project(tenant, project_id)
        target = await self.reviews.target(project.id, item_id)
        status, value = decide(
            project, request, target.value, target.width, target.height, target.text
        )
        await self.reviews.record(tenant, project.id, target, request.action, status, value, actor)
        return await self.reviews.detail(project.id, item_id)

    async def bulk_approve(
        self, tenant: str, project_id: UUID, request: BulkApproveRequest, actor: str
    ) -> tuple[int, bool]:
        """How many were approved, and whether more match (the cap was reached)."""
        project = await self.catalog.project(tenant, project_id)
        limit = self._settings.max_bulk_approve
        approved = await self.reviews.bulk_approve(tenant, project, request, actor, limit)
        return approved, approved == limit

    async def stats(self, tenant: str, project_id: UUID) -> ProjectStats:
        return await self.reviews.stats(await self.catalog.project(tenant, project_id))

    async def create_export(
        self, tenant: str, project_id: UUID, request: ExportCreate, actor: str
    ) -> Export:
        """Record the export (``202``) and start writing it in the background."""
        project = await self.catalog.project(tenant, project_id)
        check(request.format, EXPORT_TASKS[project.task], request.include_images)
        export = await self.exports.create(
            tenant, project, request, actor, self._settings.max_open_exports
        )
        self._launch_export(export.id)
        return export

    def _export_here(self, export_id: UUID) -> None:
        retention = self._settings.export_retention
        task = asyncio.create_task(run_export(self.services, export_id, retention))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def export(self, tenant: str, export_id: UUID) -> Export:
        export, _ = await self.exports.get(tenant, export_id)
        return export

    async def export_file(self, tenant: str, export_id: UUID) -> tuple[Export, str]:
        """The export and the object key of its file (409 until it is written)."""
        export, key = await self.exports.get(tenant, export_id)
        if export.status == "expired":  # from expires_at on (storage/exports.py)
            raise Gone(f"export {export_id} expired; export again", "export_expired")
        if key is None:
            raise Conflict(f"export {export_id} is {export.status}", "export_not_ready")
        return export, key

    def read_chunks(self, key: str) -> AsyncIterator[bytes]:
        return self.services.objects.read_chunks(key)

    async def open_export_file(
        self, tenant: str, export_id: UUID
    ) -> tuple[Export, str, bytes, AsyncIterator[bytes]]:
        """The export, its object key, its file's first chunk and the rest (409 until it
        is written, 410 once expired). The expiry sweep (an Exporter replica) may expire
        the export and delete its file between the read and the open: that too is 410."""
        export, key = await self.export_file(tenant, export_id)
        chunks = self.read_chunks(key)
        try:
            first = await anext(chunks, b"")
        except ObjectNotFound:
            await self.export_file(tenant, export_id)  # Gone, when the sweep took it
            raise
        return export, key, first, chunks

    async def check_services(self) -> dict[str, bool]:
        """Whether PostgreSQL, Redis and object storage answer, by name."""
        return {name: up for name, (up, _) in (await self.services.check()).items()}
