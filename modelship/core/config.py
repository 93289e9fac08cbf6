"""What a labeling app is configured with: models, batching, labels. Inbound models
forbid unknown fields."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from modelship.core.settings import Settings


class Inbound(BaseModel):
    # NaN passes every comparison a validator makes and PostgreSQL's jsonb refuses it
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Task(StrEnum):
    image_classification = "image-classification"
    zero_shot_text_classification = "zero-shot-text-classification"
    text_classification = "text-classification"
    object_detection = "object-detection"
    token_classification = "token-classification"


IMAGE_TASKS = frozenset({Task.image_classification, Task.object_detection})

Name = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")]
# No control characters (C0, DEL, C1): names end up in XML (VOC), CSV and logs.
PRINTABLE = r"^[^\x00-\x1f\x7f-\x9f]+$"
LabelName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=PRINTABLE)
]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=500)]


# --- configuration ------------------------------------------------------------------


class LabelSpec(Inbound):
    """A candidate label for zero-/few-shot text classification."""

    name: LabelName
    description: ShortText | None = Field(None, description="Used instead of the name to embed.")
    examples: list[ShortText] = Field(
        default_factory=list, max_length=32, description="Few-shot examples of this label."
    )


def unique_labels(labels: list[LabelSpec] | None) -> None:
    if labels is not None and len({label.name for label in labels}) != len(labels):
        raise ValueError("label names must be unique")


class BatchingConfig(Inbound):
    """Live-tunable batching: sent as the model deployment's ``user_config``."""

    max_batch_size: int = Field(8, ge=1, le=1024)
    batch_wait_timeout_s: float = Field(0.005, ge=0, le=1.0)

    def overlaid(self, user_config: Any) -> BatchingConfig:
        """A deployment's ``user_config`` fields over this batching (a field left out
        keeps its value here).

        Raises:
            TypeError: ``user_config`` is not a mapping.
            ValidationError: a field is unknown or out of range.
        """
        if not isinstance(user_config, dict):
            raise TypeError(f"expected a mapping, got {type(user_config).__name__}")
        return BatchingConfig.model_validate({**self.model_dump(), **user_config})


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
    preprocess: Literal["inline", "deployment"] | None = Field(
        None,
        description=(
            "Where images are decoded and transformed: 'inline' in this model's replica (one"
            " call fewer per request), 'deployment' in the Preprocessor deployment (CPU"
            " decoding scales apart from the replica: for GPU models). Default: inline on"
            " CPU (num_gpus 0), deployment with a GPU. Texts are always tokenised in the"
            " replica."
        ),
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        unique_labels(self.labels)
        return self

    @property
    def deployment_name(self) -> str:
        return f"Model-{self.name}"

    @property
    def preprocessed_in(self) -> Literal["inline", "deployment"]:
        """Where this model's images are prepared: ``preprocess``, or by device when unset
        (a CPU replica decodes its own; a GPU replica's CPUs are few and decoding scales on
        the Preprocessor's: figures in docs/benchmark.md, "Inline preprocessing")."""
        if self.preprocess is not None:
            return self.preprocess
        return "inline" if self.num_gpus == 0 else "deployment"


class LabelingAppArgs(Inbound):
    """Arguments of ``graphs.labeling.build_app`` (the ``args`` of serve_config.yaml)."""

    # An error in ``settings`` would quote their input, secrets included (Settings hides
    # it too; the outer model decides for errors raised under it).
    model_config = ConfigDict(**Inbound.model_config, hide_input_in_errors=True)

    models: list[ModelConfig] = Field(min_length=1)
    settings: Settings = Field(default_factory=Settings)

    @model_validator(mode="after")
    def _check(self) -> Self:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError("model names must be unique")
        return self
