"""What passes between deployments: prepared items, per-item options and results, and the
labels, boxes and spans a model outputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from modelship.core.config import BatchingConfig, LabelSpec, Task


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


class ModelInfo(BaseModel):
    name: str
    task: Task
    version: str | None
    labels: list[str] | None = Field(description="Output labels; None when open-ended.")
    batching: BatchingConfig
    device: str | None
    ready: bool


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
