"""HTTP routes for projects, uploads, jobs and exports: parse, validate, call the ``Workflow``."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import PurePosixPath
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Body, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from modelship.core.config import IMAGE_TASKS, Inbound
from modelship.core.errors import (
    InvalidInput,
    PayloadTooLarge,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from modelship.core.inputs import check_texts, parse_model, parse_text_file
from modelship.core.records import (
    Export,
    ExportCreate,
    ItemsPage,
    Job,
    JobCreate,
    JobResultsPage,
    Project,
    ProjectCreate,
    ProjectsResponse,
    ProjectUpdate,
    UploadResponse,
)
from modelship.core.settings import Settings
from modelship.http.auth import Actor, Tenant, visible_to
from modelship.http.middleware import request_id
from modelship.service.workflow import Upload, Workflow

_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")


class TextUpload(Inbound):
    """Texts sent as JSON instead of a file."""

    texts: list[str]


def _cursor(value: str | None) -> UUID | None:
    if value is None:
        return None
    try:
        return UUID(value)
    except ValueError:
        raise InvalidInput("the cursor is not one this API returned", "invalid_cursor") from None


Cursor = Annotated[str | None, Query(description="next_cursor of the previous page")]
Limit = Annotated[int, Query(ge=1, le=1000)]


def project_routes(workflow: Workflow | None, settings: Settings) -> APIRouter:
    """The ``/api/v1/projects`` and ``/api/v1/jobs`` routes."""
    router = APIRouter(prefix="/api/v1")

    def flow() -> Workflow:
        if workflow is None:
            raise ServiceUnavailable("projects and jobs need storage, which is not configured")
        return workflow

    @router.post("/projects", status_code=201, response_model=Project, tags=["projects"])
    async def create_project(tenant: Tenant, actor: Actor, spec: ProjectCreate) -> Project:
        return await flow().create_project(tenant, spec, actor)

    @router.get("/projects", response_model=ProjectsResponse, tags=["projects"])
    async def list_projects(
        request: Request, tenant: Tenant, include_archived: bool = False
    ) -> ProjectsResponse:
        projects = await flow().projects(tenant, include_archived)
        visible = set(visible_to(request, [p.id for p in projects]))
        return ProjectsResponse(projects=[p for p in projects if p.id in visible])

    @router.get("/projects/{project_id}", response_model=Project, tags=["projects"])
    async def get_project(tenant: Tenant, project_id: UUID) -> Project:
        return await flow().project(tenant, project_id)

    @router.patch("/projects/{project_id}", response_model=Project, tags=["projects"])
    async def update_project(
        tenant: Tenant, actor: Actor, project_id: UUID, change: ProjectUpdate
    ) -> Project:
        return await flow().update_project(tenant, project_id, change, actor)

    @router.post("/projects/{project_id}/archive", response_model=Project, tags=["projects"])
    async def archive_project(tenant: Tenant, actor: Actor, project_id: UUID) -> Project:
        return await flow().archive_project(tenant, project_id, actor)

    @router.post(
        "/projects/{project_id}/items",
        status_code=201,
        response_model=UploadResponse,
        openapi_extra=_upload_body(),
        tags=["projects"],
    )
    async def upload_items(
        tenant: Tenant, actor: Actor, project_id: UUID, request: Request
    ) -> UploadResponse:
        project = await flow().project(tenant, project_id)
        uploads = await _read_uploads(request, settings, images=project.task in IMAGE_TASKS)
        created, duplicates = await flow().upload(tenant, project_id, uploads, actor)
        return UploadResponse(request_id=request_id(request), items=created, duplicates=duplicates)

    @router.get("/projects/{project_id}/items", response_model=ItemsPage, tags=["projects"])
    async def list_items(
        tenant: Tenant, project_id: UUID, cursor: Cursor = None, limit: Limit = 100
    ) -> ItemsPage:
        items, after = await flow().items(tenant, project_id, _cursor(cursor), limit)
        return ItemsPage(items=items, next_cursor=str(after) if after else None)

    @router.post(
        "/projects/{project_id}/jobs",
        status_code=202,
        response_model=Job,
        responses={409: {"description": "Idempotency-Key reused with another body"}},
        tags=["jobs"],
    )
    async def submit_job(
        tenant: Tenant,
        actor: Actor,
        project_id: UUID,
        response: Response,
        body: Annotated[JobCreate | None, Body()] = None,
        idempotency_key: Annotated[str | None, Header()] = None,
    ) -> Job:
        if idempotency_key is not None and not _IDEMPOTENCY_KEY.match(idempotency_key):
            raise InvalidInput(
                "Idempotency-Key must be 1-200 printable ASCII characters", "invalid_header"
            )
        job, created = await flow().submit_job(
            tenant, project_id, body or JobCreate(), idempotency_key, actor
        )
        response.headers["Location"] = f"/api/v1/jobs/{job.id}"
        if not created:
            response.headers["Idempotent-Replayed"] = "true"
        return job

    @router.get("/jobs/{job_id}", response_model=Job, tags=["jobs"])
    async def get_job(tenant: Tenant, job_id: UUID) -> Job:
        return await flow().job(tenant, job_id)

    @router.get("/jobs/{job_id}/results", response_model=JobResultsPage, tags=["jobs"])
    async def job_results(
        tenant: Tenant, job_id: UUID, cursor: Cursor = None, limit: Limit = 100
    ) -> JobResultsPage:
        results, after = await flow().job_results(tenant, job_id, _cursor(cursor), limit)
        return JobResultsPage(results=results, next_cursor=str(after) if after else None)

    @router.post("/jobs/{job_id}/cancel", response_model=Job, tags=["jobs"])
    async def cancel_job(tenant: Tenant, actor: Actor, job_id: UUID) -> Job:
        return await flow().cancel_job(tenant, job_id, actor)

    @router.post(
        "/projects/{project_id}/exports", status_code=202, response_model=Export, tags=["exports"]
    )
    async def create_export(
        tenant: Tenant, actor: Actor, project_id: UUID, request: ExportCreate, response: Response
    ) -> Export:
        export = await flow().create_export(tenant, project_id, request, actor)
        response.headers["Location"] = f"/api/v1/exports/{export.id}"
        return export

    @router.get("/exports/{export_id}", response_model=Export, tags=["exports"])
    async def get_export(tenant: Tenant, export_id: UUID) -> Export:
        return await flow().export(tenant, export_id)

    @router.get(
        "/exports/{export_id}/download",
        response_class=StreamingResponse,
        responses={200: {"content": {"application/octet-stream": {}}}},
        tags=["exports"],
    )
    async def download_export(tenant: Tenant, export_id: UUID) -> StreamingResponse:
        # a missing object fails here, before the headers
        export, key, first, chunks = await flow().open_export_file(tenant, export_id)

        async def body() -> AsyncIterator[bytes]:
            yield first
            async for chunk in chunks:
                yield chunk

        name = f"export-{export.id}{PurePosixPath(key).suffix}"
        headers = {
            "Content-Disposition": f'attachment; filename="{name}"',
            "Content-Length": str(export.bytes),
        }
        return StreamingResponse(body(), media_type=export.media_type, headers=headers)

    return router


async def _limited_body(request: Request, limit: int) -> bytes:
    """The body, refused past ``limit`` as it streams in. Texts sent as JSON are held to a
    text file's size: parsing a 256 MiB upload body of JSON held the event loop for 30 s."""
    too_large = PayloadTooLarge(f"texts sent as JSON may take {limit} bytes; send files")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


async def _read_uploads(request: Request, settings: Settings, images: bool) -> list[Upload]:
    """Files from multipart ``file`` fields (images, or text files), or JSON texts."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json" and not images:
        body = parse_model(TextUpload, await _limited_body(request, settings.max_text_file_bytes))
        texts = [Upload(text) for text in body.texts]
    elif content_type == "multipart/form-data":
        texts = []
        files = await _read_files(request, settings, images)
        if images:
            return files
        for file in files:
            assert isinstance(file.data, bytes)
            left = settings.max_upload_texts - len(texts)
            parsed = parse_text_file(file.filename, file.data, max_texts=left)
            texts += [Upload(text, file.filename) for text in parsed]
    else:
        wanted = "multipart/form-data" if images else "multipart/form-data or application/json"
        raise UnsupportedMediaType(f"send {wanted}, not {content_type or 'nothing'}")
    if not texts:
        raise InvalidInput("the upload holds no texts", "no_texts")
    if len(texts) > settings.max_upload_texts:
        raise PayloadTooLarge(
            f"{len(texts)} texts; at most {settings.max_upload_texts} per upload", "too_many_texts"
        )
    check_texts([str(t.data) for t in texts], settings, max_count=settings.max_upload_texts)
    return texts


async def _read_files(request: Request, settings: Settings, images: bool) -> list[Upload]:
    limit = settings.max_upload_files
    try:
        form = await request.form(max_files=limit + 1, max_fields=limit + 8)
    except HTTPException as exc:
        if exc.status_code != 400:  # e.g. 413 from the body limit
            raise
        if "files" in str(exc.detail).lower():
            raise PayloadTooLarge(f"at most {limit} files per upload", "too_many_files") from None
        raise InvalidInput(str(exc.detail), "invalid_multipart") from None
    try:
        uploads = [u for u in form.getlist("file") if isinstance(u, UploadFile)]
        if not uploads:
            raise InvalidInput("multipart field 'file' is missing", "no_file")
        if len(uploads) > limit:
            raise PayloadTooLarge(f"at most {limit} files per upload", "too_many_files")
        per_file = settings.max_image_bytes if images else settings.max_text_file_bytes
        files = []
        for index, upload in enumerate(uploads):
            data = await upload.read(per_file + 1)
            if len(data) > per_file:
                raise PayloadTooLarge(
                    f"file {index} ({upload.filename}) exceeds {per_file} bytes", "file_too_large"
                )
            files.append(Upload(data, upload.filename))
        return files
    finally:
        await form.close()


def _upload_body() -> dict[str, Any]:
    files = {"type": "array", "items": {"type": "string", "format": "binary"}}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {"file": files},
                    }
                },
                "application/json": {"schema": TextUpload.model_json_schema()},
            },
        }
    }
