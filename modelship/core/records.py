"""Projects, items, jobs, reviews and exports: what the database holds and the API
returns or accepts about them."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, Self
from uuid import UUID

from pydantic import BaseModel, Field, StringConstraints, field_validator, model_validator

from modelship.core.config import (
    PRINTABLE,
    Inbound,
    LabelName,
    LabelSpec,
    Name,
    Task,
    unique_labels,
)

# --- projects, items and jobs ---------------------------------------------------------

ProjectName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=PRINTABLE)
]
Threshold = Annotated[float, Field(ge=0, le=1)]


class ProjectCreate(Inbound):
    """A labeling project: what to label, with which model, into which labels."""

    name: ProjectName
    task: Task
    model: Name = Field(description="A configured model doing this task.")
    labels: list[LabelSpec] | None = Field(
        None,
        min_length=1,
        max_length=1000,
        description="The label schema; required for zero-shot text classification.",
    )
    confidence_threshold: Threshold = Field(0.5, description="Scores below are not kept.")
    auto_approve_threshold: Threshold = Field(
        0.9, description="Predictions scoring at least this are approved without review."
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        unique_labels(self.labels)
        return self


class ProjectUpdate(Inbound):
    """Fields to change; a new label list becomes a new label schema version."""

    name: ProjectName | None = None
    labels: list[LabelSpec] | None = Field(None, min_length=1, max_length=1000)
    confidence_threshold: Threshold | None = None
    auto_approve_threshold: Threshold | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not self.model_fields_set:
            raise ValueError("send at least one field to change")
        if nulls := sorted(f for f in self.model_fields_set if getattr(self, f) is None):
            raise ValueError(f"{', '.join(nulls)}: null is no value to change to")
        unique_labels(self.labels)
        return self


class Project(BaseModel):
    id: UUID
    name: str
    task: Task
    model: str
    labels: list[LabelSpec] | None
    label_schema_version: int
    confidence_threshold: float
    auto_approve_threshold: float
    archived: bool
    created_at: datetime
    updated_at: datetime


class ProjectsResponse(BaseModel):
    projects: list[Project]


class Item(BaseModel):
    id: UUID
    project_id: UUID
    content_hash: str = Field(description="sha256 of the bytes (of the UTF-8 text for texts).")
    media_type: str
    byte_size: int
    width: int | None = None
    height: int | None = None
    filename: str | None = Field(None, description="As uploaded; metadata only.")
    created_at: datetime


class Duplicate(BaseModel):
    index: int = Field(description="Position of the duplicate in this upload.")
    filename: str | None
    content_hash: str
    item_id: UUID = Field(description="The item already holding these bytes.")


class UploadResponse(BaseModel):
    request_id: str
    items: list[Item]
    duplicates: list[Duplicate]


class ItemsPage(BaseModel):
    items: list[Item]
    next_cursor: str | None


class JobCreate(Inbound):
    """Label every item of the project, or only ``item_ids``."""

    item_ids: list[UUID] | None = Field(None, min_length=1, max_length=100_000)

    @field_validator("item_ids")
    @classmethod
    def _as_a_set(cls, ids: list[UUID] | None) -> list[UUID] | None:
        """A set of items, in one order: a retry that lists them in another order (or one
        twice) is the same request to ``Idempotency-Key``."""
        return sorted(set(ids)) if ids is not None else None


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class ItemState(StrEnum):
    queued = "queued"
    leased = "leased"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class ErrorCount(BaseModel):
    error: str
    count: int


class Job(BaseModel):
    id: UUID
    project_id: UUID
    status: JobStatus
    model: str
    label_schema_version: int
    total_items: int
    counts: dict[ItemState, int] = Field(description="Items per state.")
    progress: float = Field(description="Share of items in a terminal state, 0..1.")
    items_per_s: float | None = Field(None, description="Since the job started.")
    eta_s: float | None = None
    errors: list[ErrorCount] = Field(default_factory=list, description="Most common first.")
    request_id: str | None = Field(
        None, description="X-Request-ID of the submission; the runner's and models' logs carry it."
    )
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobResult(BaseModel):
    item_id: UUID
    state: ItemState
    attempts: int
    error: str | None
    model: str | None
    model_version: str | None
    output: list[dict[str, Any]] | None = Field(
        None, description="Labels, detections or entities, as the synchronous routes give."
    )


class JobResultsPage(BaseModel):
    results: list[JobResult]
    next_cursor: str | None


# --- review and statistics ----------------------------------------------------------

AnnotationStatus = Literal["pending", "auto_approved", "approved", "corrected", "rejected"]


class ReviewAction(StrEnum):
    approve = "approve"
    correct = "correct"
    reject = "reject"


class DetectionInput(Inbound):
    label: LabelName
    box: tuple[float, float, float, float] = Field(
        description="[x, y, width, height] in pixels of the upright image."
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.box[2] <= 0 or self.box[3] <= 0:
            raise ValueError("a box needs a positive width and height")
        return self


class EntityInput(Inbound):
    label: LabelName
    start: int = Field(ge=0)
    end: int = Field(gt=0)


class ReviewRequest(Inbound):
    """Approve the current label, correct it, or reject it."""

    action: ReviewAction
    labels: list[LabelName] | None = Field(
        None, min_length=1, max_length=100, description="Classification: the right label(s)."
    )
    detections: list[DetectionInput] | None = Field(
        None, max_length=1000, description="Detection: every box the image should have."
    )
    entities: list[EntityInput] | None = Field(
        None, max_length=1000, description="NER: every entity the text should have."
    )


class BulkApproveRequest(Inbound):
    """Approve every pending item that matches (all of them when no filter is given)."""

    min_score: Threshold | None = None
    label: LabelName | None = None


class BulkApproveResponse(BaseModel):
    approved: int
    more: bool = Field(
        False, description="The per-call cap was reached: call again to approve the rest."
    )


class Annotation(BaseModel):
    item_id: UUID
    status: AnnotationStatus
    value: list[dict[str, Any]] = Field(description="The final label(s), boxes or entities.")
    top_label: str | None
    score: float | None
    uncertainty: float
    model: str
    model_version: str
    prediction: list[dict[str, Any]] = Field(description="What the model said.")
    updated_by: str
    updated_at: datetime


class ReviewRecord(BaseModel):
    id: int
    action: ReviewAction
    reviewer: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    created_at: datetime


class ReviewQueueEntry(BaseModel):
    item: Item
    text: str | None
    annotation: Annotation


class ReviewQueue(BaseModel):
    strategy: str
    entries: list[ReviewQueueEntry]


class ItemDetail(BaseModel):
    item: Item
    text: str | None
    annotation: Annotation | None
    reviews: list[ReviewRecord]


class LabelStats(BaseModel):
    label: str
    items: int = Field(description="Items whose final label (or a box/entity) is this.")
    reviewed: int = Field(description="Items a person reviewed where the model said this.")
    model_correct: int
    accuracy: float | None


class ProjectStats(BaseModel):
    items: int
    labeled: int
    by_status: dict[str, int]
    auto_approval_rate: float | None = Field(description="auto_approved / labeled.")
    reviewed: int
    model_accuracy: float | None = Field(
        description="Share of reviewed items where the person kept the model's label."
    )
    labels: list[LabelStats]


# --- exports ---------------------------------------------------------------------------


class ExportFormat(StrEnum):
    csv = "csv"
    json = "json"
    jsonl = "jsonl"
    coco = "coco"
    yolo = "yolo"
    voc = "voc"
    hf = "hf"


class ExportSelection(StrEnum):
    approved = "approved"  # auto-approved, approved or corrected
    all = "all"  # every item, unlabeled and rejected ones included
    min_score = "min_score"  # approved by a person, or scored at least min_score


class ExportCreate(Inbound):
    format: ExportFormat
    selection: ExportSelection = ExportSelection.approved
    min_score: Threshold | None = Field(None, description="With selection=min_score.")
    include_images: bool = Field(False, description="coco, yolo, voc, hf of image projects.")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if (self.selection is ExportSelection.min_score) != (self.min_score is not None):
            raise ValueError("min_score goes with selection=min_score, and only with it")
        return self


class Export(BaseModel):
    id: UUID
    project_id: UUID
    format: ExportFormat
    selection: dict[str, Any]
    status: Literal["queued", "running", "succeeded", "failed", "expired"]
    rows: int | None = Field(None, description="Items written.")
    bytes: int | None
    media_type: str | None
    error: str | None
    created_at: datetime
    finished_at: datetime | None
    expires_at: datetime | None = Field(
        None, description="When the file is deleted (the export then ends expired)."
    )
    download_url: str | None
