"""Rows the export tests write: images of different sizes, an image without boxes, one with
several, texts, unlabeled and pending items, labels set by a person (score None)."""

from __future__ import annotations

import io
import tarfile
import uuid
from contextlib import closing
from pathlib import Path

from PIL import Image

from modelship.exports import (
    Box,
    ExportFormat,
    ExportRow,
    ExportSpec,
    ExportTask,
    Label,
    Span,
    Writer,
    open_writer,
)

CATEGORIES = ["cat", "dog", "bird"]


def item_id(n: int) -> str:
    return str(uuid.UUID(int=n))


def image_row(
    n: int,
    size: tuple[int, int],
    *,
    media_type: str = "image/png",
    status: str = "auto_approved",
    labels: list[Label] | None = None,
    boxes: list[Box] | None = None,
) -> ExportRow:
    return ExportRow(
        item_id=item_id(n),
        filename=f"photo {n}.{media_type.split('/')[1]}",
        media_type=media_type,
        width=size[0],
        height=size[1],
        text=None,
        status=status,
        labels=labels or [],
        boxes=boxes or [],
        model="detr" if boxes else "effnet",
        model_version="v1",
    )


def detection_rows() -> list[ExportRow]:
    return [
        image_row(
            1,
            (640, 480),
            media_type="image/jpeg",
            boxes=[
                Box("cat", 0.91, 10.5, 20.25, 100.0, 50.75),
                Box("dog", None, 600.0, 400.0, 40.0, 80.0),  # touches the corner
            ],
        ),
        image_row(2, (1000, 300), status="approved"),  # no boxes: must still appear
        image_row(
            3,
            (37, 91),
            status="corrected",
            boxes=[Box("bird", 0.5, 0.0, 0.0, 37.0, 91.0), Box("cat", None, 3.3, 70.1, 10.2, 12.4)],
        ),
        image_row(
            4,
            (1000, 300),
            media_type="image/jpeg",
            boxes=[
                Box("dog", 0.8, 900.125, 10.0, 99.875, 290.0),
                Box("dog", 0.7, 1.0, 1.0, 2.0, 2.0),
                Box("bird", 0.66, 333.3, 123.4, 222.2, 111.1),
            ],
        ),
        image_row(5, (200, 100), status="unlabeled"),
        image_row(6, (64, 64), status="pending", boxes=[Box("cat", 0.3, 8.0, 8.0, 16.0, 16.0)]),
    ]


def classification_rows() -> list[ExportRow]:
    return [
        image_row(11, (640, 480), labels=[Label("dog", 0.8), Label("cat", 0.15)]),
        image_row(12, (1000, 300), status="corrected", labels=[Label("bird", None)]),
        image_row(13, (37, 91), status="unlabeled"),
        image_row(14, (50, 50), status="pending", labels=[Label("cat", 0.4)]),
    ]


def text_row(n: int, text: str, labels: list[Label], entities: list[Span]) -> ExportRow:
    return ExportRow(
        item_id=item_id(n),
        filename=None,
        media_type="text/plain",
        width=None,
        height=None,
        text=text,
        status="auto_approved" if labels or entities else "unlabeled",
        labels=labels,
        entities=entities,
        model="minilm",
        model_version="2",
    )


def text_rows() -> list[ExportRow]:
    return [
        text_row(21, "a cat sat", [Label("cat", 0.7)], []),
        text_row(22, "nothing here", [], []),
        text_row(23, "dogs and birds", [Label("dog", None), Label("bird", 0.2)], []),
    ]


def entity_rows() -> list[ExportRow]:
    return [
        text_row(
            31,
            "Tom saw a dog",
            [],
            [Span("cat", 0, 3, "Tom", 0.99), Span("dog", 10, 13, "dog", None)],
        ),
        text_row(32, "no entities", [], []),
    ]


def png(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 90)).save(out, format="PNG")
    return out.getvalue()


def write(
    tmp_path: Path,
    format: ExportFormat,
    task: ExportTask,
    rows: list[ExportRow],
    *,
    include_images: bool = False,
    categories: list[str] = CATEGORIES,
    images: list[bytes] | None = None,
) -> tuple[Path, Writer]:
    """Write ``rows`` through the writer for ``format`` and return the file and the writer.

    With ``include_images``, each row's file is ``images[i]``, else a PNG of the row's size.
    """
    spec = ExportSpec(format, task, categories, include_images=include_images, name="pets")
    path = tmp_path / f"export-{format}"
    with closing(open_writer(spec, path)) as writer:
        for i, row in enumerate(rows):
            sized = include_images and row.width and row.height
            image = png((row.width or 0, row.height or 0)) if sized else None
            writer.add(row, images[i] if images is not None else image)
    return path, writer


class ArchiveReader:
    """Reads an export's ``.tar.gz`` (from a path or bytes) through a small zip-like API."""

    def __init__(self, source: Path | bytes) -> None:
        self._stream = io.BytesIO(source) if isinstance(source, bytes) else source.open("rb")
        self._tar = tarfile.open(fileobj=self._stream, mode="r:gz")  # noqa: SIM115  # closed in __exit__

    def namelist(self) -> list[str]:
        return self._tar.getnames()

    def read(self, name: str) -> bytes:
        member = self._tar.extractfile(name)
        assert member is not None, name
        return member.read()

    def extractall(self, path: Path) -> None:
        self._tar.extractall(path, filter="data")

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._tar.close()
        self._stream.close()
