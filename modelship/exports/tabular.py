"""Flat formats for any task: CSV (a line per annotation), JSON and JSON Lines (an object
per item)."""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modelship.core.rows import ExportRow
from modelship.exports.base import ExportSpec, WriterBase, dumps, label_names

CSV_COLUMNS = (
    "item_id",
    "filename",
    "media_type",
    "width",
    "height",
    "text",
    "status",
    "label",
    "score",
    "x",
    "y",
    "w",
    "h",
    "start",
    "end",
    "model",
    "model_version",
)
# What makes a spreadsheet read a cell as a formula (OWASP, "CSV Injection").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

Cell = str | int | float | None


def inert(value: Cell) -> str | int | float:
    """A cell no spreadsheet evaluates: text that starts like a formula gets a leading ``'``.

    Only text is escaped; numbers come from numeric fields and stay numbers. Done here rather
    than with defusedcsv 3.0.0, which lets a leading tab or CR through and rewrites ``|``.
    """
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


class CsvWriter(WriterBase):
    """One line per label, box or entity; an item with none gets one line with the label
    columns empty, so every item appears."""

    media_type = "text/csv"
    extension = ".csv"

    def __init__(self, spec: ExportSpec, path: Path) -> None:
        super().__init__(spec, path)
        self._file = path.open("w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file)
        self._csv.writerow(CSV_COLUMNS)

    def _add(self, row: ExportRow, image: bytes | None) -> None:
        item: tuple[Cell, ...] = (
            row.item_id,
            row.filename,
            row.media_type,
            row.width,
            row.height,
            row.text,
            row.status,
        )
        # label, score, x, y, w, h, start, end
        lines: list[tuple[Cell, ...]] = [(a.name, a.score, *[None] * 6) for a in row.labels]
        lines += [(b.label, b.score, b.x, b.y, b.w, b.h, None, None) for b in row.boxes]
        lines += [(e.label, e.score, *[None] * 4, e.start, e.end) for e in row.entities]
        for line in lines or [(None,) * 8]:
            cells = (*item, *line, row.model, row.model_version)
            self._csv.writerow([inert(cell) for cell in cells])

    def _close(self) -> None:
        self._file.close()


def item_object(row: ExportRow) -> dict[str, Any]:
    """The JSON object of one item (the same in JSON and JSON Lines)."""
    return {
        "item_id": row.item_id,
        "filename": row.filename,
        "media_type": row.media_type,
        "width": row.width,
        "height": row.height,
        "text": row.text,
        "status": row.status,
        "labels": [{"name": a.name, "score": a.score} for a in row.labels],
        "boxes": [
            {"label": b.label, "score": b.score, "bbox": [b.x, b.y, b.w, b.h]} for b in row.boxes
        ],
        "entities": [
            {"label": e.label, "start": e.start, "end": e.end, "text": e.text, "score": e.score}
            for e in row.entities
        ],
        "model": row.model,
        "model_version": row.model_version,
    }


class JsonlWriter(WriterBase):
    """One item object per line."""

    media_type = "application/x-ndjson"
    extension = ".jsonl"

    def __init__(self, spec: ExportSpec, path: Path) -> None:
        super().__init__(spec, path)
        self._file = path.open("w", encoding="utf-8")

    def _add(self, row: ExportRow, image: bytes | None) -> None:
        self._file.write(dumps(item_object(row)) + "\n")

    def _close(self) -> None:
        self._file.close()


class JsonWriter(WriterBase):
    """``{"info": {...}, "items": [...], "categories": [names]}``, streamed item by item.

    ``categories`` comes last because a label the spec did not list is appended to it.
    """

    media_type = "application/json"
    extension = ".json"

    def __init__(self, spec: ExportSpec, path: Path) -> None:
        super().__init__(spec, path)
        self._file = path.open("w", encoding="utf-8")
        info = {
            "name": spec.name,
            "task": spec.task.value,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        self._file.write(f'{{"info":{dumps(info)},"items":[\n')

    def _add(self, row: ExportRow, image: bytes | None) -> None:
        for name in label_names(row):
            self.categories.id(name)
        self._file.write(("," if self.rows else "") + dumps(item_object(row)) + "\n")

    def _close(self) -> None:
        self._file.write(f'],"categories":{dumps(self.categories.names)}}}\n')
        self._file.close()
