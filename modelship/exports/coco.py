"""COCO: one ``.json`` document, or a ``.tar.gz`` of ``annotations.json`` and ``images/``.

``images`` lists every image, with or without annotations: ``id`` 1..n in the order added,
``file_name`` ``<item_id><ext>`` (see ``rows.file_name``), the real ``width``/``height``, and
``modelship_item_id``/``original_filename``. ``categories`` have ids 1..n in spec order
(names outside the spec follow), supercategory ``"none"``.

Detection: an annotation per box, ``bbox`` ``[x, y, w, h]`` in pixels as given, ``area``
``w * h``, ``iscrowd`` 0, ``score`` unless a person set the box.

Image classification: COCO has no image-level labels, so each label of an image becomes an
annotation whose ``bbox`` covers the whole image, ``[0, 0, width, height]``, ``area``
``width * height``, ``iscrowd`` 0, with ``"image_label": true`` (and ``score`` when a model
set it). pycocotools loads it like any detection file.

With images, ``images/`` holds each item's file (upright: see ``images``).

Images and annotations are spooled to temporary files next to the output and joined into
the document at close, so memory does not grow with the number of rows.
"""

from __future__ import annotations

import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from modelship.core.rows import ExportRow, ExportTask
from modelship.exports.archive import EXTENSION, MEDIA_TYPE, Archive
from modelship.exports.base import ExportSpec, WriterBase, dumps, file_name, image_size
from modelship.exports.images import archive_image


class CocoWriter(WriterBase):
    def __init__(self, spec: ExportSpec, path: Path) -> None:
        super().__init__(spec, path)
        self._archive = Archive(path) if spec.include_images else None
        if self._archive is None:
            self.media_type, self.extension = "application/json", ".json"
        else:
            self.media_type, self.extension = MEDIA_TYPE, EXTENSION
        self._images = _spool(path)
        self._annotations = _spool(path)
        self._annotation_id = 0

    def _add(self, row: ExportRow, image: bytes | None) -> None:
        width, height = image_size(row)
        image_id = self.rows + 1
        name = file_name(row)
        entry = {
            "id": image_id,
            "file_name": name,
            "width": width,
            "height": height,
            "modelship_item_id": row.item_id,
            "original_filename": row.filename,
        }
        self._images.write(("," if self.rows else "") + dumps(entry) + "\n")
        if self.spec.task is ExportTask.object_detection:
            for box in row.boxes:
                self._annotate(image_id, box.label, box.score, [box.x, box.y, box.w, box.h])
        else:
            for label in row.labels:
                self._annotate(image_id, label.name, label.score, [0, 0, width, height], True)
        if self._archive is not None and image is not None:
            self._archive.image(f"images/{name}", archive_image(row, image).data)

    def _annotate(
        self,
        image_id: int,
        label: str,
        score: float | None,
        bbox: list[float],
        image_label: bool = False,
    ) -> None:
        self._annotation_id += 1
        entry: dict[str, Any] = {
            "id": self._annotation_id,
            "image_id": image_id,
            "category_id": self.categories.id(label) + 1,
            "bbox": bbox,
            "area": bbox[2] * bbox[3],
            "iscrowd": 0,
        }
        if image_label:
            entry["image_label"] = True
        if score is not None:
            entry["score"] = score
        self._annotations.write(("," if self._annotation_id > 1 else "") + dumps(entry) + "\n")

    def _close(self) -> None:
        if self._archive is None:
            with self.path.open("w", encoding="utf-8") as out:
                self._write_document(out)
        else:
            with self._archive.stream("annotations.json") as out:
                self._write_document(out)
            self._archive.close()

    def _write_document(self, out: IO[str]) -> None:
        info = {
            "description": self.spec.name,
            "contributor": "ModelShip",
            "date_created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        categories = [
            {"id": i + 1, "name": name, "supercategory": "none"}
            for i, name in enumerate(self.categories.names)
        ]
        out.write(f'{{"info":{dumps(info)},"licenses":[],"images":[\n')
        _drain(self._images, out)
        out.write('],"annotations":[\n')
        _drain(self._annotations, out)
        out.write(f'],"categories":{dumps(categories)}}}\n')


def _spool(path: Path) -> IO[str]:
    """A temporary file on the output's disk, removed when closed."""
    return tempfile.TemporaryFile("w+", encoding="utf-8", dir=path.parent)


def _drain(spool: IO[str], out: IO[str]) -> None:
    spool.seek(0)
    shutil.copyfileobj(spool, out)
    spool.close()
