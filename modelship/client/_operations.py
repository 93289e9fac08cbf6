"""Every API call as a sans-I/O operation (see ``_protocol``); ``Client`` and
``AsyncClient`` expose each one under the same name, with the same arguments."""

from __future__ import annotations

import mimetypes
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar
from uuid import UUID

from pydantic import BaseModel

from modelship.client._protocol import (
    FilePart,
    Operation,
    Request,
    RetryPolicy,
    Sleep,
    monotonic_deadline,
    send,
)
from modelship.client.errors import Conflict, PayloadTooLarge
from modelship.client.progress import Progress, ProgressCallback
from modelship.client.responses import (
    ClassifyImageResponse,
    ClassifyImagesResponse,
    ClassifyTextResponse,
    DetectResponse,
    EntitiesResponse,
    ModelsResponse,
)
from modelship.core.config import LabelSpec, Task
from modelship.core.messages import ModelInfo
from modelship.core.records import (
    BulkApproveRequest,
    BulkApproveResponse,
    DetectionInput,
    Duplicate,
    EntityInput,
    Export,
    ExportCreate,
    ExportFormat,
    ExportSelection,
    Item,
    ItemDetail,
    ItemsPage,
    ItemState,
    Job,
    JobCreate,
    JobResult,
    JobResultsPage,
    JobStatus,
    Project,
    ProjectCreate,
    ProjectsResponse,
    ProjectStats,
    ProjectUpdate,
    ReviewAction,
    ReviewQueue,
    ReviewRequest,
    UploadResponse,
)

R = TypeVar("R", bound=BaseModel)
API = "/api/v1"
TERMINAL_JOB = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled})
TERMINAL_ITEM = frozenset({ItemState.succeeded, ItemState.failed, ItemState.cancelled})
TERMINAL_EXPORT = frozenset({"succeeded", "failed"})
_TOO_MANY = frozenset({"too_many_files", "too_many_texts"})  # the server's codes for counts
_PART_OVERHEAD = 512  # multipart headers and boundary of one file part, generously


class _HasId(Protocol):
    @property
    def id(self) -> UUID: ...


Ref = UUID | str | _HasId
"""A project, job, item or export: its id, or the record itself."""
Image = bytes | str | os.PathLike[str]
"""An image's bytes, or the path of its file."""
Labels = Sequence[str | LabelSpec | Mapping[str, Any]]
"""Label names, or ``LabelSpec``s (with a description and few-shot examples)."""


class UploadResult(BaseModel):
    """What a batched upload stored: every new item, every duplicate (``index`` counts
    from the start of the whole upload) and the request id of each request sent."""

    items: list[Item]
    duplicates: list[Duplicate]
    request_ids: list[str]


def _id(ref: Ref) -> str:
    return str(ref) if isinstance(ref, UUID | str) else str(ref.id)


def _labels(labels: Labels | None) -> list[LabelSpec] | None:
    if labels is None:
        return None
    return [
        label
        if isinstance(label, LabelSpec)
        else LabelSpec(name=label)
        if isinstance(label, str)
        else LabelSpec.model_validate(label)
        for label in labels
    ]


def _image_part(image: Image, index: int) -> FilePart:
    if isinstance(image, bytes):
        return ("file", (f"image-{index}", image, "application/octet-stream"))
    path = Path(image)
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return ("file", (path.name, path.read_bytes(), media_type))


def _settled(job: Job) -> int:
    return sum(count for state, count in job.counts.items() if state in TERMINAL_ITEM)


def _form(**fields: object) -> dict[str, str]:
    return {name: str(value) for name, value in fields.items() if value is not None}


def _body(model: BaseModel) -> Any:
    return model.model_dump(mode="json", exclude_unset=True)


class Api:
    """The operations, configured once per client.

    Args:
        retry: when a request is sent again.
        poll_s: how often ``wait_job`` and ``wait_export`` ask.
        batch_files: most files in one upload request (the server's default allows 1000).
        batch_bytes: most bytes in one upload request (the server's default allows 256 MiB).
            An upload the server finds too large is split in half and sent again.
    """

    def __init__(
        self, retry: RetryPolicy, poll_s: float, batch_files: int, batch_bytes: int
    ) -> None:
        self.retry = retry
        self.poll_s = poll_s
        self.batch_files = batch_files
        self.batch_bytes = batch_bytes

    def _get(self, path: str, model: type[R], **params: object) -> Operation[R]:
        query = {k: str(v) for k, v in params.items() if v is not None}
        reply = yield from send(Request("GET", path, params=query or None), self.retry)
        return reply.parse(model)

    def _post(self, path: str, model: type[R], body: Any = None, **kw: Any) -> Operation[R]:
        reply = yield from send(Request("POST", path, json=body, **kw), self.retry)
        return reply.parse(model)

    # --- labeling -------------------------------------------------------------------

    def models(self) -> Operation[list[ModelInfo]]:
        """The configured models: task, labels, version (weights hash), readiness."""
        answer = yield from self._get(f"{API}/models", ModelsResponse)
        return answer.models

    def _label_images(
        self, route: str, images: Sequence[Image], answer: type[R], **options: object
    ) -> Operation[R]:
        files = [_image_part(image, index) for index, image in enumerate(images)]
        request = Request("POST", f"{API}/{route}", files=files, data=_form(**options))
        reply = yield from send(request, self.retry)
        return reply.parse(answer)

    def classify_image(
        self,
        image: Image,
        *,
        model: str | None = None,
        top_k: int | None = None,
        score_threshold: float | None = None,
    ) -> Operation[ClassifyImageResponse]:
        """Top labels of one image (bytes or a file path)."""
        return (
            yield from self._label_images(
                "classify/image",
                [image],
                ClassifyImageResponse,
                model=model,
                top_k=top_k,
                score_threshold=score_threshold,
            )
        )

    def classify_images(
        self,
        images: Sequence[Image],
        *,
        model: str | None = None,
        top_k: int | None = None,
        score_threshold: float | None = None,
    ) -> Operation[ClassifyImagesResponse]:
        """Top labels of several images in one request (the server takes up to 32)."""
        return (
            yield from self._label_images(
                "classify/images",
                images,
                ClassifyImagesResponse,
                model=model,
                top_k=top_k,
                score_threshold=score_threshold,
            )
        )

    def detect(
        self,
        image: Image,
        *,
        model: str | None = None,
        top_k: int | None = None,
        score_threshold: float | None = None,
    ) -> Operation[DetectResponse]:
        """Boxes ``[x, y, w, h]`` in pixels of the original image, with label and score."""
        return (
            yield from self._label_images(
                "detect",
                [image],
                DetectResponse,
                model=model,
                top_k=top_k,
                score_threshold=score_threshold,
            )
        )

    def _texts_body(
        self, text: str | Sequence[str], model: str | None, top_k: int | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"text": text} if isinstance(text, str) else {"texts": list(text)}
        return body | _form(model=model) | ({"top_k": top_k} if top_k is not None else {})

    def classify_text(
        self,
        text: str | Sequence[str],
        *,
        model: str | None = None,
        labels: Labels | None = None,
        top_k: int | None = None,
    ) -> Operation[ClassifyTextResponse]:
        """Labels of one text or several; ``labels``: candidates of a zero-shot model."""
        body = self._texts_body(text, model, top_k)
        specs = _labels(labels)
        if specs is not None:
            body["labels"] = [spec.model_dump(exclude_defaults=True) for spec in specs]
        return (yield from self._post(f"{API}/classify/text", ClassifyTextResponse, body))

    def entities(
        self, text: str | Sequence[str], *, model: str | None = None, top_k: int | None = None
    ) -> Operation[EntitiesResponse]:
        """Named entities of one text or several, with character offsets."""
        body = self._texts_body(text, model, top_k)
        return (yield from self._post(f"{API}/entities", EntitiesResponse, body))

    # --- projects -------------------------------------------------------------------

    def create_project(
        self,
        name: str,
        task: Task | str,
        model: str,
        *,
        labels: Labels | None = None,
        confidence_threshold: float = 0.5,
        auto_approve_threshold: float = 0.9,
    ) -> Operation[Project]:
        """A project labeling with ``model`` (a configured model doing ``task``)."""
        spec = ProjectCreate.model_validate(
            {
                "name": name,
                "task": task,
                "model": model,
                "labels": _labels(labels),
                "confidence_threshold": confidence_threshold,
                "auto_approve_threshold": auto_approve_threshold,
            }
        )
        return (yield from self._post(f"{API}/projects", Project, spec.model_dump(mode="json")))

    def get_project(self, project: Ref) -> Operation[Project]:
        return (yield from self._get(f"{API}/projects/{_id(project)}", Project))

    def list_projects(self, *, include_archived: bool = False) -> Operation[list[Project]]:
        page = yield from self._get(
            f"{API}/projects", ProjectsResponse, include_archived=str(include_archived).lower()
        )
        return page.projects

    def update_project(
        self,
        project: Ref,
        *,
        name: str | None = None,
        labels: Labels | None = None,
        confidence_threshold: float | None = None,
        auto_approve_threshold: float | None = None,
    ) -> Operation[Project]:
        """Change the given fields; new labels make a new label schema version."""
        given = {
            "name": name,
            "labels": _labels(labels),
            "confidence_threshold": confidence_threshold,
            "auto_approve_threshold": auto_approve_threshold,
        }
        change = ProjectUpdate(**{k: v for k, v in given.items() if v is not None})
        reply = yield from send(
            Request("PATCH", f"{API}/projects/{_id(project)}", json=_body(change)), self.retry
        )
        return reply.parse(Project)

    def archive_project(self, project: Ref) -> Operation[Project]:
        """What the API has for deleting: the project is archived (kept, read-only)."""
        return (yield from self._post(f"{API}/projects/{_id(project)}/archive", Project))

    def list_items(self, project: Ref, *, page_size: int = 1000) -> Operation[list[Item]]:
        """Every item of the project (all pages)."""
        items: list[Item] = []
        cursor: str | None = None
        while True:
            page = yield from self._get(
                f"{API}/projects/{_id(project)}/items", ItemsPage, cursor=cursor, limit=page_size
            )
            items += page.items
            if (cursor := page.next_cursor) is None:
                return items

    # --- uploads --------------------------------------------------------------------

    def upload_files(
        self,
        project: Ref,
        paths: Sequence[str | os.PathLike[str]],
        *,
        progress: ProgressCallback | None = None,
        bar: bool = False,
    ) -> Operation[UploadResult]:
        """Upload files (images, or .jsonl/.json/.csv/.txt texts) in as few requests as
        the limits allow; ``progress(done, total)`` counts files."""
        files = [Path(path) for path in paths]
        sizes = [path.stat().st_size + _PART_OVERHEAD for path in files]

        def request(start: int, stop: int) -> Request:
            parts = [_image_part(path, i) for i, path in enumerate(files[start:stop])]
            return Request("POST", f"{API}/projects/{_id(project)}/items", files=parts)

        return (yield from self._upload(sizes, request, Progress(progress, bar, "upload", "file")))

    def upload_folder(
        self,
        project: Ref,
        folder: str | os.PathLike[str],
        pattern: str = "*",
        *,
        recursive: bool = False,
        progress: ProgressCallback | None = None,
        bar: bool = False,
    ) -> Operation[UploadResult]:
        """Upload the folder's files matching ``pattern`` (hidden ones skipped), in name
        order, as ``upload_files`` does."""
        root = Path(folder)
        if not root.is_dir():
            raise NotADirectoryError(f"{root} is not a folder")
        found = root.rglob(pattern) if recursive else root.glob(pattern)
        paths = sorted(
            path
            for path in found
            if path.is_file() and not any(p.startswith(".") for p in path.relative_to(root).parts)
        )
        if not paths:
            raise FileNotFoundError(f"no file in {root} matches {pattern!r}")
        return (yield from self.upload_files(project, paths, progress=progress, bar=bar))

    def upload_texts(
        self,
        project: Ref,
        texts: Sequence[str],
        *,
        progress: ProgressCallback | None = None,
        bar: bool = False,
    ) -> Operation[UploadResult]:
        """Upload texts as JSON, batched like files; ``progress`` counts texts."""
        sizes = [len(text.encode()) + 8 for text in texts]

        def request(start: int, stop: int) -> Request:
            body = {"texts": list(texts[start:stop])}
            return Request("POST", f"{API}/projects/{_id(project)}/items", json=body)

        return (yield from self._upload(sizes, request, Progress(progress, bar, "upload", "text")))

    def _upload(
        self, sizes: list[int], request: Callable[[int, int], Request], progress: Progress
    ) -> Operation[UploadResult]:
        """Send batches within the limits; a batch the server finds too large is halved
        (and so is the limit it broke, files or bytes, for the batches after it)."""
        result = UploadResult(items=[], duplicates=[], request_ids=[])
        max_count, max_bytes = self.batch_files, self.batch_bytes
        start = 0
        try:
            while start < len(sizes):
                stop, used = start + 1, sizes[start]
                while stop < len(sizes) and stop - start < max_count:
                    if used + sizes[stop] > max_bytes:
                        break
                    used += sizes[stop]
                    stop += 1
                try:
                    reply = yield from send(request(start, stop), self.retry)
                except PayloadTooLarge as exc:
                    if stop - start == 1 or exc.code == "file_too_large":
                        raise
                    if exc.code in _TOO_MANY:
                        max_count = (stop - start) // 2
                    else:  # the body was over the server's byte limit
                        max_bytes = used // 2
                    continue
                page = reply.parse(UploadResponse)
                offset = len(result.items) + len(result.duplicates)
                result.items += page.items
                result.duplicates += [
                    d.model_copy(update={"index": offset + d.index}) for d in page.duplicates
                ]
                result.request_ids.append(page.request_id)
                start = stop
                progress.update(start, len(sizes))
            return result
        finally:
            progress.close()

    # --- jobs -----------------------------------------------------------------------

    def create_job(
        self,
        project: Ref,
        *,
        item_ids: Sequence[Ref] | None = None,
        idempotency_key: str | None = None,
    ) -> Operation[Job]:
        """Label every item of the project (or ``item_ids``). Sent with an
        ``Idempotency-Key`` (a new one unless given), so a retried request cannot start a
        second job."""
        body = JobCreate(item_ids=[UUID(_id(i)) for i in item_ids]) if item_ids else None
        headers = {"idempotency-key": idempotency_key or uuid.uuid4().hex}
        return (
            yield from self._post(
                f"{API}/projects/{_id(project)}/jobs",
                Job,
                _body(body) if body else None,
                headers=headers,
            )
        )

    def get_job(self, job: Ref) -> Operation[Job]:
        return (yield from self._get(f"{API}/jobs/{_id(job)}", Job))

    def cancel_job(self, job: Ref) -> Operation[Job]:
        """Cancel the items not yet labeled; those labeled keep their results."""
        return (yield from self._post(f"{API}/jobs/{_id(job)}/cancel", Job))

    def wait_job(
        self,
        job: Ref,
        *,
        timeout_s: float | None = None,
        progress: ProgressCallback | None = None,
        bar: bool = False,
    ) -> Operation[Job]:
        """Poll until the job is succeeded, failed or cancelled; ``progress(done, total)``
        counts items in a terminal state. Raises TimeoutError after ``timeout_s``."""
        reporter = Progress(progress, bar, "labeling", "item")
        try:
            return (
                yield from self._poll(
                    f"job {_id(job)}",
                    lambda: self.get_job(job),
                    lambda j: j.status in TERMINAL_JOB,
                    timeout_s,
                    lambda j: reporter.update(_settled(j), j.total_items),
                )
            )
        finally:
            reporter.close()

    def _poll(
        self,
        what: str,
        fetch: Callable[[], Operation[R]],
        done: Callable[[R], bool],
        timeout_s: float | None,
        seen: Callable[[R], None] = lambda _: None,
    ) -> Operation[R]:
        deadline = monotonic_deadline(timeout_s)
        while True:
            current = yield from fetch()
            seen(current)
            if done(current):
                return current
            if time.monotonic() + self.poll_s > deadline:
                raise TimeoutError(f"{what} did not finish within {timeout_s}s")
            yield Sleep(self.poll_s)

    def job_results(self, job: Ref, *, page_size: int = 1000) -> Operation[list[JobResult]]:
        """Every item's result (all pages): state, error, model version and output."""
        results: list[JobResult] = []
        cursor: str | None = None
        while True:
            page = yield from self._get(
                f"{API}/jobs/{_id(job)}/results", JobResultsPage, cursor=cursor, limit=page_size
            )
            results += page.results
            if (cursor := page.next_cursor) is None:
                return results

    # --- review ---------------------------------------------------------------------

    def review_queue(
        self,
        project: Ref,
        *,
        strategy: str = "uncertainty",
        label: str | None = None,
        limit: int = 50,
        seed: str | None = None,
    ) -> Operation[ReviewQueue]:
        """Items waiting for a person: least certain first (``uncertainty``), a
        reproducible sample (``random`` with ``seed``), or one label's (``label``)."""
        return (
            yield from self._get(
                f"{API}/projects/{_id(project)}/review-queue",
                ReviewQueue,
                strategy=strategy,
                label=label,
                limit=limit,
                seed=seed,
            )
        )

    def get_item(self, project: Ref, item: Ref) -> Operation[ItemDetail]:
        """An item with its current label and every review decision."""
        return (
            yield from self._get(f"{API}/projects/{_id(project)}/items/{_id(item)}", ItemDetail)
        )

    def _review(self, project: Ref, item: Ref, request: ReviewRequest) -> Operation[ItemDetail]:
        path = f"{API}/projects/{_id(project)}/items/{_id(item)}/review"
        return (yield from self._post(path, ItemDetail, request.model_dump(mode="json")))

    def approve(
        self, project: Ref, item: Ref, *, reviewer: str = "anonymous"
    ) -> Operation[ItemDetail]:
        """Keep the model's label."""
        request = ReviewRequest(action=ReviewAction.approve, reviewer=reviewer)
        return (yield from self._review(project, item, request))

    def correct(
        self,
        project: Ref,
        item: Ref,
        *,
        labels: Sequence[str] | None = None,
        detections: Sequence[DetectionInput | Mapping[str, Any]] | None = None,
        entities: Sequence[EntityInput | Mapping[str, Any]] | None = None,
        reviewer: str = "anonymous",
    ) -> Operation[ItemDetail]:
        """Replace the label: ``labels`` (classification), every box (``detections``) or
        every entity (``entities``), checked by the server against the item and schema."""
        request = ReviewRequest.model_validate(
            {
                "action": ReviewAction.correct,
                "labels": list(labels) if labels is not None else None,
                "detections": list(detections) if detections is not None else None,
                "entities": list(entities) if entities is not None else None,
                "reviewer": reviewer,
            }
        )
        return (yield from self._review(project, item, request))

    def reject(
        self, project: Ref, item: Ref, *, reviewer: str = "anonymous"
    ) -> Operation[ItemDetail]:
        """The item has no right label here (it is left out of approved exports)."""
        request = ReviewRequest(action=ReviewAction.reject, reviewer=reviewer)
        return (yield from self._review(project, item, request))

    def bulk_approve(
        self,
        project: Ref,
        *,
        min_score: float | None = None,
        label: str | None = None,
        reviewer: str = "anonymous",
    ) -> Operation[int]:
        """Approve every pending item matching the filters; returns how many."""
        request = BulkApproveRequest.model_validate(
            {"min_score": min_score, "label": label, "reviewer": reviewer}
        )
        answer = yield from self._post(
            f"{API}/projects/{_id(project)}/review/approve",
            BulkApproveResponse,
            request.model_dump(mode="json"),
        )
        return answer.approved

    def stats(self, project: Ref) -> Operation[ProjectStats]:
        """Counts by status and label, auto-approval rate, the model's reviewed accuracy."""
        return (yield from self._get(f"{API}/projects/{_id(project)}/stats", ProjectStats))

    # --- exports --------------------------------------------------------------------

    def create_export(
        self,
        project: Ref,
        format: ExportFormat | str,
        *,
        selection: ExportSelection | str = ExportSelection.approved,
        min_score: float | None = None,
        include_images: bool = False,
    ) -> Operation[Export]:
        """Start writing an export (csv, json, jsonl, coco, yolo, voc, hf)."""
        request = ExportCreate.model_validate(
            {
                "format": format,
                "selection": selection,
                "min_score": min_score,
                "include_images": include_images,
            }
        )
        return (
            yield from self._post(
                f"{API}/projects/{_id(project)}/exports", Export, request.model_dump(mode="json")
            )
        )

    def get_export(self, export: Ref) -> Operation[Export]:
        return (yield from self._get(f"{API}/exports/{_id(export)}", Export))

    def wait_export(self, export: Ref, *, timeout_s: float | None = None) -> Operation[Export]:
        """Poll until the export succeeded or failed (its ``error`` says why)."""
        return (
            yield from self._poll(
                f"export {_id(export)}",
                lambda: self.get_export(export),
                lambda e: e.status in TERMINAL_EXPORT,
                timeout_s,
            )
        )

    def download_export(self, export: Ref, path: str | os.PathLike[str]) -> Operation[Path]:
        """Stream a finished export into ``path`` (a file, or a folder to name it in)."""
        request = Request("GET", f"{API}/exports/{_id(export)}/download", save_to=Path(path))
        reply = yield from send(request, self.retry)
        assert reply.saved is not None
        return reply.saved

    def export(
        self,
        project: Ref,
        format: ExportFormat | str,
        path: str | os.PathLike[str],
        *,
        selection: ExportSelection | str = ExportSelection.approved,
        min_score: float | None = None,
        include_images: bool = False,
        timeout_s: float | None = None,
    ) -> Operation[Path]:
        """Create an export, wait for it and download it: the file's path."""
        created = yield from self.create_export(
            project,
            format,
            selection=selection,
            min_score=min_score,
            include_images=include_images,
        )
        done = yield from self.wait_export(created, timeout_s=timeout_s)
        try:
            return (yield from self.download_export(done, path))
        except Conflict as exc:
            exc.add_note(f"export {done.id} {done.status}: {done.error}")
            raise
