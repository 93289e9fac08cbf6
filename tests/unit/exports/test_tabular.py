"""CSV, JSON and JSON Lines read back with the csv and json modules."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from modelship.exports import ExportFormat, ExportRow, ExportTask, Label
from modelship.exports.tabular import CSV_COLUMNS
from tests.unit.exports.samples import (
    detection_rows,
    entity_rows,
    item_id,
    text_row,
    text_rows,
    write,
)

INJECTIONS = ['=HYPERLINK("x")', "+1", "-2+3", "@SUM(A1)", "\tfoo", "\rbar"]


def mixed_rows() -> list[ExportRow]:
    return detection_rows() + text_rows() + entity_rows()


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_csv_has_a_line_per_annotation_and_every_item(tmp_path: Path) -> None:
    rows = mixed_rows()
    path, writer = write(tmp_path, ExportFormat.csv, ExportTask.object_detection, rows)
    assert (writer.extension, writer.media_type, writer.rows) == (".csv", "text/csv", len(rows))
    lines = read_csv(path)
    assert tuple(lines[0]) == CSV_COLUMNS
    assert {line["item_id"] for line in lines} == {row.item_id for row in rows}
    expected = sum(max(1, len(r.labels) + len(r.boxes) + len(r.entities)) for r in rows)
    assert len(lines) == expected

    by_item = {row.item_id: row for row in rows}
    boxes = [line for line in lines if line["x"]]
    assert len(boxes) == sum(len(r.boxes) for r in rows)
    for line in boxes:
        row = by_item[line["item_id"]]
        assert (float(line["x"]), float(line["y"]), float(line["w"]), float(line["h"])) in {
            (b.x, b.y, b.w, b.h) for b in row.boxes
        }
        assert (int(line["width"]), int(line["height"])) == (row.width, row.height)
    empty = next(line for line in lines if line["item_id"] == rows[1].item_id)
    assert empty["label"] == empty["score"] == empty["x"] == ""
    human = next(line for line in lines if line["label"] == "dog" and line["x"] == "600.0")
    assert human["score"] == ""
    entity = next(line for line in lines if line["start"])
    assert (entity["label"], entity["start"], entity["end"]) == ("cat", "0", "3")


def test_csv_cells_cannot_become_formulas(tmp_path: Path) -> None:
    rows = [
        ExportRow(
            item_id(40 + i), value, "text/plain", None, None, value, "approved", [Label(value, 0.5)]
        )
        for i, value in enumerate(INJECTIONS)
    ] + [text_row(49, "-3", [], [])]  # no label: one line, label cells empty
    path, _ = write(tmp_path, ExportFormat.csv, ExportTask.text_classification, rows)
    lines = read_csv(path)
    assert len({line["item_id"] for line in lines}) == len(rows)
    for line, value in zip(lines, INJECTIONS, strict=False):
        assert line["filename"] == line["text"] == line["label"] == "'" + value
        assert line["score"] == "0.5"  # numbers stay numbers
    assert (lines[-1]["text"], lines[-1]["label"], lines[-1]["start"]) == ("'-3", "", "")


def test_json_document_lists_every_item(tmp_path: Path) -> None:
    rows = mixed_rows()
    path, writer = write(tmp_path, ExportFormat.json, ExportTask.object_detection, rows)
    assert (writer.extension, writer.media_type) == (".json", "application/json")
    document = json.loads(path.read_text(encoding="utf-8"))
    assert document["info"]["name"] == "pets"
    assert document["categories"] == ["cat", "dog", "bird"]
    assert [item["item_id"] for item in document["items"]] == [row.item_id for row in rows]
    first = document["items"][0]
    assert first["boxes"][0] == {"label": "cat", "score": 0.91, "bbox": [10.5, 20.25, 100.0, 50.75]}
    assert (first["width"], first["height"]) == (640, 480)
    assert document["items"][1]["boxes"] == []


def test_json_with_no_rows_is_valid(tmp_path: Path) -> None:
    path, _ = write(tmp_path, ExportFormat.json, ExportTask.text_classification, [])
    assert json.loads(path.read_text(encoding="utf-8"))["items"] == []


def test_jsonl_has_an_object_per_item(tmp_path: Path) -> None:
    rows = text_rows() + entity_rows()
    path, writer = write(tmp_path, ExportFormat.jsonl, ExportTask.token_classification, rows)
    assert (writer.extension, writer.media_type) == (".jsonl", "application/x-ndjson")
    items = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [item["item_id"] for item in items] == [row.item_id for row in rows]
    assert items[2]["labels"] == [{"name": "dog", "score": None}, {"name": "bird", "score": 0.2}]
    assert items[3]["entities"][1] == {
        "label": "dog",
        "start": 10,
        "end": 13,
        "text": "dog",
        "score": None,
    }
