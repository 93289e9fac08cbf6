"""The one schema module: configuration, HTTP requests and responses, and the messages
that pass between deployments. Inbound models forbid unknown fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, Self
from uuid import UUID

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from modelship.settings import Settings


class Inbound(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Task(StrEnum):
    image_classification = "image-classification"
    zero_shot_text_classification = "zero-shot-text-classification"
    text_classification = "text-classification"
    object_detection = "object-detection"
    token_classification = "token-classification"


IMAGE_TASKS = frozenset({Task.image_classification, Task.object_detection})

Name = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")]
LabelName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=500)]


# --- configuration ------------------------------------------------------------------


class LabelSpec(Inbound):
    """A candidate label for zero-/few-shot text classification."""

    name: LabelName
    description: ShortText | None = Field(None, description="Used instead of the name to embed.")
    examples: list[ShortText] = Field(
        default_factory=list, max_length=32, description="Few-shot examples of this label."
    )


def _unique_labels(labels: list[LabelSpec] | None) -> None:
    if labels is not None and len({label.name for label in labels}) != len(labels):
        raise ValueError("label names must be unique")


class BatchingConfig(Inbound):
    """Live-tunable batching: sent as the model deployment's ``user_config``."""

    max_batch_size: int = Field(8, ge=1, le=1024)
    batch_wait_timeout_s: float = Field(0.005, ge=0, le=1.0)


class ModelConfig(Inbound):
    """One configured model; each becomes its own ``ModelReplica`` deployment."""

    name: Name
    task: Task
    source: str = Field(
        description="'packaged:<name>', a local path, or an fsspec URI such as s3://b/k/"
    )
    labels: list[LabelSpec] | None = Field(
        None, max_length=1000, description="Default candidate labels (zero-shot models)."
    )
    top_k: int = Field(5, ge=1, le=100, description="Labels returned when a request says none.")
    score_threshold: float = Field(0.5, ge=0, le=1, description="Detections below are dropped.")
    max_length: int = Field(256, ge=8, le=8192, description="Tokens kept per text.")
    temperature: float = Field(0.05, gt=0, le=10, description="Zero-shot softmax temperature.")
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    num_cpus: float = Field(0.5, ge=0)
    num_gpus: float = Field(0, ge=0)
    torch_threads: int | None = Field(
        None, ge=1, le=256, description="Intra-op threads; default: the replica's CPUs, rounded up."
    )
    concurrent_batches: int = Field(
        1,
        ge=1,
        le=16,
        description=(
            "Batches a replica runs at once, each on its own thread. On shared CPUs, two"
            " single-threaded batches beat one batch on two threads (torch_threads: 1)."
        ),
    )
    max_queued_requests: int = Field(256, ge=1, description="Beyond this, requests get 503.")

    @model_validator(mode="after")
    def _check(self) -> Self:
        _unique_labels(self.labels)
        return self

    @property
    def deployment_name(self) -> str:
        return f"Model-{self.name}"


class LabelingAppArgs(Inbound):
    """Arguments of ``graphs.labeling.build_app`` (the ``args`` of serve_config.yaml)."""

    models: list[ModelConfig] = Field(min_length=1)
    settings: Settings = Field(default_factory=Settings)

    @model_validator(mode="after")
    def _check(self) -> Self:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError("model names must be unique")
        return self


# --- HTTP requests --------------------------------------------------------------------


class ImageParams(Inbound):
    """Options of an image request (JSON fields, or form fields beside multipart files)."""

    model: Name | None = Field(None, description="Configured model name; default: the first.")
    top_k: int | None = Field(None, ge=1, le=100)
    score_threshold: float | None = Field(None, ge=0, le=1)


class ImageRequest(ImageParams):
    """One image sent as JSON instead of multipart."""

    image_base64: str = Field(min_length=1, description="The image file's bytes, base64.")


class ImagesRequest(ImageParams):
    """Several images sent as JSON instead of multipart."""

    images_base64: list[str] = Field(min_length=1, description="Image files' bytes, base64.")


class TextRequest(Inbound):
    """One text (``text``) or a list (``texts``), never both."""

    text: str | None = None
    texts: list[str] | None = Field(None, min_length=1)
    model: Name | None = None
    labels: list[LabelSpec] | None = Field(
        None, min_length=1, max_length=1000, description="Candidate labels (zero-shot)."
    )
    top_k: int | None = Field(None, ge=1, le=100)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if (self.text is None) == (self.texts is None):
            raise ValueError("send exactly one of 'text' or 'texts'")
        _unique_labels(self.labels)
        return self

    @property
    def all_texts(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])


# --- HTTP responses -------------------------------------------------------------------


class ModelRef(BaseModel):
    name: str
    version: str = Field(description="Content hash of the model's weights.")


class LabelScore(BaseModel):
    label: str
    score: float


class Detection(BaseModel):
    label: str
    score: float
    box: tuple[float, float, float, float] = Field(
        description="[x, y, width, height] in pixels of the original image."
    )


class Entity(BaseModel):
    label: str
    start: int = Field(description="Character offset of the first character.")
    end: int = Field(description="Character offset one past the last character.")
    text: str
    score: float


class ImageInfo(BaseModel):
    width: int
    height: int
    media_type: str


class ClassifyImageResponse(BaseModel):
    request_id: str
    model: ModelRef
    image: ImageInfo
    labels: list[LabelScore]


class ImageLabels(BaseModel):
    index: int
    image: ImageInfo
    labels: list[LabelScore]


class ClassifyImagesResponse(BaseModel):
    request_id: str
    model: ModelRef
    results: list[ImageLabels]


class TextLabels(BaseModel):
    index: int
    labels: list[LabelScore]


class ClassifyTextResponse(BaseModel):
    request_id: str
    model: ModelRef
    results: list[TextLabels]


class DetectResponse(BaseModel):
    request_id: str
    model: ModelRef
    image: ImageInfo
    detections: list[Detection]


class TextEntities(BaseModel):
    index: int
    entities: list[Entity]


class EntitiesResponse(BaseModel):
    request_id: str
    model: ModelRef
    results: list[TextEntities]


class ModelInfo(BaseModel):
    name: str
    task: Task
    version: str | None
    labels: list[str] | None = Field(description="Output labels; None when open-ended.")
    batching: BatchingConfig
    device: str | None
    ready: bool


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class HealthResponse(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)


class ErrorBody(BaseModel):
    code: str
    message: str
    request_id: str


class ErrorResponse(BaseModel):
    error: ErrorBody


# --- projects, items and jobs ---------------------------------------------------------

ProjectName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
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
        _unique_labels(self.labels)
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
        _unique_labels(self.labels)
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


TERMINAL_ITEM_STATES = frozenset({ItemState.succeeded, ItemState.failed, ItemState.cancelled})


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
ReviewerName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)
]


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
    reviewer: ReviewerName = "anonymous"


class BulkApproveRequest(Inbound):
    """Approve every pending item that matches (all of them when no filter is given)."""

    min_score: Threshold | None = None
    label: LabelName | None = None
    reviewer: ReviewerName = "anonymous"


class BulkApproveResponse(BaseModel):
    approved: int


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
    status: Literal["queued", "running", "succeeded", "failed"]
    rows: int | None = Field(None, description="Items written.")
    bytes: int | None
    media_type: str | None
    error: str | None
    created_at: datetime
    finished_at: datetime | None
    download_url: str | None


# --- messages between deployments -----------------------------------------------------


@dataclass(frozen=True)
class ItemOptions:
    """Per-request options that travel with each prepared item."""

    top_k: int = 5
    score_threshold: float = 0.5
    labels: tuple[LabelSpec, ...] | None = None


@dataclass
class PreparedImage:
    """An image decoded and transformed for one model, plus what postprocessing needs."""

    pixel_values: np.ndarray  # as the model's preprocess leaves it: its predictor batches it
    width: int
    height: int
    media_type: str
    options: ItemOptions
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class PreparedText:
    """A text tokenised for one model (no padding: the replica pads per batch)."""

    text: str
    input_ids: list[int]
    options: ItemOptions
    offsets: list[tuple[int, int]] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


Prepared = PreparedImage | PreparedText
Output = list[LabelScore] | list[Detection] | list[Entity]


@dataclass
class ItemResult:
    """What a model replica returns for one item."""

    output: Output
    version: str
    image: ImageInfo | None = None
