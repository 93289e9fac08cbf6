"""Which formats take which tasks, and what a writer refuses."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from modelship.core.errors import InvalidInput
from modelship.exports import (
    ExportFormat,
    ExportRow,
    ExportSpec,
    ExportTask,
    UnsupportedExport,
    open_writer,
)
from tests.unit.exports.samples import CATEGORIES, detection_rows

F, T = ExportFormat, ExportTask
UNSUPPORTED = [
    (F.coco, T.text_classification),
    (F.coco, T.token_classification),
    (F.yolo, T.image_classification),
    (F.yolo, T.text_classification),
    (F.yolo, T.token_classification),
    (F.voc, T.image_classification),
    (F.voc, T.text_classification),
    (F.voc, T.token_classification),
]
SUPPORTED = [(f, t) for f in F for t in T if (f, t) not in UNSUPPORTED]


@pytest.mark.parametrize(("format", "task"), UNSUPPORTED)
def test_format_that_does_not_fit_the_task(tmp_path: Path, format: F, task: T) -> None:
    with pytest.raises(UnsupportedExport, match=f"{format} export cannot hold {task}"):
        open_writer(ExportSpec(format, task, CATEGORIES), tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("format", "task"),
    [(F.csv, T.object_detection), (F.jsonl, T.image_classification), (F.hf, T.text_classification)],
)
def test_images_where_they_cannot_go(tmp_path: Path, format: F, task: T) -> None:
    spec = ExportSpec(format, task, CATEGORIES, include_images=True)
    with pytest.raises(UnsupportedExport, match="cannot include images"):
        open_writer(spec, tmp_path / "x")


@pytest.mark.parametrize(("format", "task"), SUPPORTED)
def test_every_other_pair_opens_and_closes_twice(tmp_path: Path, format: F, task: T) -> None:
    writer = open_writer(ExportSpec(format, task, CATEGORIES), tmp_path / "x")
    writer.close()
    writer.close()
    assert (tmp_path / "x").stat().st_size > 0 or format is F.jsonl
    assert writer.rows == 0
    with pytest.raises(ValueError, match="closed"):
        writer.add(detection_rows()[0])


def test_error_is_a_422_value_error_that_pickles() -> None:
    error = UnsupportedExport("no")
    assert isinstance(error, ValueError)
    assert isinstance(error, InvalidInput)
    assert (error.status, error.code) == (422, "unsupported_export")
    assert str(pickle.loads(pickle.dumps(error))) == str(error)


def test_repeated_categories_are_refused() -> None:
    with pytest.raises(UnsupportedExport, match="repeat"):
        ExportSpec(F.csv, T.text_classification, ["a", "b", "a"])


@pytest.mark.parametrize("item_id", ["../x", "a/b", "", "a b", "x.txt"])
def test_item_id_cannot_climb_out_of_a_folder(item_id: str) -> None:
    with pytest.raises(ValueError, match="item_id"):
        ExportRow(item_id, None, "text/plain", None, None, "t", "pending")


def test_images_must_come_when_included(tmp_path: Path) -> None:
    spec = ExportSpec(F.yolo, T.object_detection, CATEGORIES, include_images=True)
    writer = open_writer(spec, tmp_path / "x")
    with pytest.raises(ValueError, match="no bytes came"):
        writer.add(detection_rows()[0])
    writer.close()
