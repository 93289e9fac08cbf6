"""What every writer shares: the spec of the file to produce, the writer protocol and base
class, and helpers for names, boxes and JSON."""

from __future__ import annotations

import json
import mimetypes
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from modelship.core.errors import InvalidInput
from modelship.core.records import ExportFormat
from modelship.core.rows import Box, ExportRow, ExportTask


class UnsupportedExport(InvalidInput, ValueError):
    """The export cannot be produced as asked: a format that does not fit the task, images
    requested where there are none, or a category list with duplicates (HTTP 422)."""

    code = "unsupported_export"


@dataclass(frozen=True)
class ExportSpec:
    """The file to produce.

    ``categories`` are the project's category names in order (``ExportStore.categories``: a
    project's order only grows, so ids keep their meaning across exports); category ids
    derive from that order (0-based in YOLO and HF, 1-based in COCO).
    """

    format: ExportFormat
    task: ExportTask
    categories: list[str]
    include_images: bool = False  # coco/yolo/voc/hf embed the image bytes passed to add()
    name: str = "modelship"  # dataset name (COCO info, data.yaml comment, VOC folder...)

    def __post_init__(self) -> None:
        if len(set(self.categories)) != len(self.categories):
            raise UnsupportedExport("categories must not repeat a name")


class Writer(Protocol):
    """Writes one local file from rows pushed one at a time, in flat memory."""

    media_type: str
    extension: str
    rows: int
    categories: Categories  # the spec's, then any name met while writing

    def add(self, row: ExportRow, image: bytes | None = None) -> None: ...

    def close(self) -> None: ...


class Categories:
    """Category names to 0-based ids in spec order.

    A name the spec does not list is appended at the end rather than refused: the known
    names keep their ids, and writers emit the category list once the file is complete.
    """

    def __init__(self, names: list[str]) -> None:
        self.names = list(names)
        self._ids = {name: i for i, name in enumerate(self.names)}

    def id(self, name: str) -> int:
        found = self._ids.get(name)
        if found is None:
            found = self._ids[name] = len(self.names)
            self.names.append(name)
        return found


_EXTENSIONS = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "image/bmp": ".bmp",
    "image/tiff": ".tiff",
    "text/plain": ".txt",
}


def file_name(row: ExportRow) -> str:
    """The item's name inside an export: ``<item_id><ext>``, the extension from its media
    type (``.jpg`` for JPEG), never from the client's file name."""
    ext = _EXTENSIONS.get(row.media_type) or mimetypes.guess_extension(row.media_type) or ""
    return f"{row.item_id}{ext}"


def label_names(row: ExportRow) -> list[str]:
    """Every category name the row uses."""
    return (
        [a.name for a in row.labels]
        + [b.label for b in row.boxes]
        + [e.label for e in row.entities]
    )


_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def dumps(value: object) -> str:
    """Compact JSON; NaN is refused rather than written as invalid JSON."""
    return _JSON.encode(value)


def image_size(row: ExportRow) -> tuple[int, int]:
    """``(width, height)`` of an image row; a row without a size cannot go in an image format."""
    if row.width is None or row.height is None or row.width <= 0 or row.height <= 0:
        raise ValueError(f"item {row.item_id} has no image size; image formats need one")
    return row.width, row.height


def clip_box(box: Box, width: int, height: int) -> tuple[float, float, float, float] | None:
    """The box cut to the image as ``(x0, y0, x1, y1)``, or None when nothing is left."""
    x0, y0 = max(box.x, 0.0), max(box.y, 0.0)
    x1, y1 = min(box.x + box.w, float(width)), min(box.y + box.h, float(height))
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def image_bytes(include_images: bool, row: ExportRow, image: bytes | None) -> bytes | None:
    """The bytes to embed for ``row``: required when the spec includes images, else None."""
    if not include_images:
        return None
    if image is None:
        raise ValueError(f"include_images is set but no bytes came for item {row.item_id}")
    return image


class WriterBase(ABC):
    """Row count, categories and closed state, shared by the writers."""

    media_type: str
    extension: str

    def __init__(self, spec: ExportSpec, path: Path) -> None:
        self.spec = spec
        self.path = path
        self.rows = 0
        self.categories = Categories(spec.categories)
        self._closed = False

    def add(self, row: ExportRow, image: bytes | None = None) -> None:
        """Write one item; ``image`` is its file's bytes, used only when the spec includes
        images (and required then)."""
        if self._closed:
            raise ValueError("the export writer is closed")
        self._add(row, image_bytes(self.spec.include_images, row, image))
        self.rows += 1

    def close(self) -> None:
        """Finish the file. Idempotent; the file is incomplete until this returns."""
        if not self._closed:
            self._closed = True
            self._close()

    @abstractmethod
    def _add(self, row: ExportRow, image: bytes | None) -> None: ...

    @abstractmethod
    def _close(self) -> None: ...
