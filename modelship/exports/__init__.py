"""Streaming writers for labeled-data exports.

The caller pages rows out of the database and pushes them into one writer, which writes one
local file in flat memory::

    with contextlib.closing(open_writer(spec, path)) as writer:
        for row in rows:
            writer.add(row, image=bytes_or_none)

The file is complete only once ``close()`` has returned. Formats and the tasks they take:
csv, json, jsonl and hf take every task; coco takes image classification and detection;
yolo and voc take detection only. A label name missing from ``spec.categories`` is appended
after the known ones (their ids do not move) instead of failing the export.
"""

from __future__ import annotations

from pathlib import Path

from modelship.core.rows import Box, ExportRow, ExportTask, Label, Span
from modelship.exports.base import ExportFormat, ExportSpec, UnsupportedExport, Writer, WriterBase
from modelship.exports.coco import CocoWriter
from modelship.exports.hf import HfWriter
from modelship.exports.tabular import CsvWriter, JsonlWriter, JsonWriter
from modelship.exports.voc import VocWriter
from modelship.exports.yolo import YoloWriter

__all__ = [
    "Box",
    "ExportFormat",
    "ExportRow",
    "ExportSpec",
    "ExportTask",
    "Label",
    "Span",
    "UnsupportedExport",
    "Writer",
    "check",
    "open_writer",
]

_WRITERS: dict[ExportFormat, type[WriterBase]] = {
    ExportFormat.csv: CsvWriter,
    ExportFormat.json: JsonWriter,
    ExportFormat.jsonl: JsonlWriter,
    ExportFormat.coco: CocoWriter,
    ExportFormat.yolo: YoloWriter,
    ExportFormat.voc: VocWriter,
    ExportFormat.hf: HfWriter,
}
# Formats that take only some tasks; the others take all.
_TASKS: dict[ExportFormat, frozenset[ExportTask]] = {
    ExportFormat.coco: frozenset(task for task in ExportTask if task.on_images),
    ExportFormat.yolo: frozenset({ExportTask.object_detection}),
    ExportFormat.voc: frozenset({ExportTask.object_detection}),
}
_EMBED_IMAGES = frozenset({ExportFormat.coco, ExportFormat.yolo, ExportFormat.voc, ExportFormat.hf})


def open_writer(spec: ExportSpec, path: Path) -> Writer:
    """Start writing ``spec.format`` to ``path``; see ``writer.extension`` and
    ``writer.media_type`` for what it produces.

    Raises:
        UnsupportedExport: see ``check``.
    """
    check(spec.format, spec.task, spec.include_images)
    return _WRITERS[spec.format](spec, path)


def check(format: ExportFormat, task: ExportTask, include_images: bool) -> None:
    """Refuse, before any work, an export that cannot be made.

    Raises:
        UnsupportedExport: the format does not fit the task, or images were asked for where
            they cannot go (csv/json/jsonl, or a text task).
    """
    tasks = _TASKS.get(format)
    if tasks is not None and task not in tasks:
        allowed = ", ".join(sorted(tasks))
        raise UnsupportedExport(
            f"a {format} export cannot hold {task} annotations; it takes {allowed}"
        )
    if include_images and (format not in _EMBED_IMAGES or not task.on_images):
        raise UnsupportedExport(
            f"a {format} export of {task} items cannot include images; "
            "coco, yolo, voc and hf exports of image tasks can"
        )
