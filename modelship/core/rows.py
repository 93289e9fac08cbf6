"""What an export writer is given: one labeled item per row, as storage pages them out."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

_ITEM_ID = re.compile(r"[A-Za-z0-9_-]+")


class ExportTask(StrEnum):
    """What kind of annotation the rows carry."""

    image_classification = "image-classification"
    text_classification = "text-classification"
    object_detection = "object-detection"
    token_classification = "token-classification"

    @property
    def on_images(self) -> bool:
        return self in (ExportTask.image_classification, ExportTask.object_detection)


@dataclass(frozen=True, slots=True)
class Label:
    name: str
    score: float | None  # None when a person set it


@dataclass(frozen=True, slots=True)
class Box:
    """A box in pixels of the upright image, top-left origin: ``[x, y, w, h]``."""

    label: str
    score: float | None
    x: float
    y: float
    w: float
    h: float


@dataclass(frozen=True, slots=True)
class Span:
    """An entity by character offsets into the item's text, ``end`` exclusive."""

    label: str
    start: int
    end: int
    text: str
    score: float | None


@dataclass(frozen=True, slots=True)
class ExportRow:
    """One item with its final annotations.

    ``item_id`` names the item inside archives; ``filename`` is the client's original name,
    kept as metadata and never used as a path. ``width``/``height`` are the upright image size
    in pixels (None for texts).
    """

    item_id: str
    filename: str | None
    media_type: str
    width: int | None
    height: int | None
    text: str | None
    status: str
    labels: list[Label] = field(default_factory=list)  # best first
    boxes: list[Box] = field(default_factory=list)
    entities: list[Span] = field(default_factory=list)
    model: str | None = None
    model_version: str | None = None

    def __post_init__(self) -> None:
        # item_id names files inside archives: nothing that could climb out of a folder.
        if not _ITEM_ID.fullmatch(self.item_id):
            raise ValueError(f"item_id must be letters, digits, '-' or '_': {self.item_id!r}")
