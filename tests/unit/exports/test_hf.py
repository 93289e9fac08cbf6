"""Parquet files that datasets.load_dataset reads back with ClassLabel features."""

from __future__ import annotations

from pathlib import Path

import datasets
import pyarrow.parquet as pq

from modelship.exports import ExportFormat, ExportRow, ExportTask
from tests.unit.exports.samples import (
    CATEGORIES,
    classification_rows,
    detection_rows,
    entity_rows,
    text_rows,
    write,
)


def load(path: Path, tmp_path: Path) -> datasets.Dataset:
    dataset = datasets.load_dataset(
        "parquet", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache")
    )
    assert isinstance(dataset, datasets.Dataset)
    return dataset


def check_labels(dataset: datasets.Dataset, rows: list[ExportRow]) -> None:
    label = dataset.features["label"]
    assert isinstance(label, datasets.ClassLabel)
    assert label.names == CATEGORIES
    every = dataset.features["labels"].feature
    assert isinstance(every, datasets.ClassLabel)
    assert every.names == CATEGORIES
    assert dataset["item_id"] == [row.item_id for row in rows]
    for record, row in zip(dataset, rows, strict=True):
        assert isinstance(record, dict)
        if row.labels:
            assert label.int2str(record["label"]) == row.labels[0].name
            assert record["score"] == row.labels[0].score
        else:
            assert record["label"] == -1
            assert record["score"] is None
        # every label, not only the first: rows with two (a person's correction) keep both
        assert every.int2str(record["labels"]) == [a.name for a in row.labels]
        assert record["status"] == row.status


def test_image_classification_with_images(tmp_path: Path) -> None:
    rows = classification_rows()
    path, writer = write(
        tmp_path, ExportFormat.hf, ExportTask.image_classification, rows, include_images=True
    )
    assert (writer.extension, writer.media_type) == (".parquet", "application/vnd.apache.parquet")
    dataset = load(path, tmp_path)
    assert len(dataset) == len(rows)
    check_labels(dataset, rows)
    assert isinstance(dataset.features["image"], datasets.Image)
    for record, row in zip(dataset, rows, strict=True):
        assert isinstance(record, dict)
        assert (
            record["image"].size == (row.width, row.height) == (record["width"], record["height"])
        )


def test_text_classification(tmp_path: Path) -> None:
    rows = text_rows()
    path, _ = write(tmp_path, ExportFormat.hf, ExportTask.text_classification, rows)
    dataset = load(path, tmp_path)
    check_labels(dataset, rows)
    assert dataset["labels"] == [[0], [], [1, 2]]  # "dogs and birds": dog and bird
    assert dataset["text"] == [row.text for row in rows]
    assert "image" not in dataset.features


def test_detection_objects_round_trip(tmp_path: Path) -> None:
    rows = detection_rows()
    path, _ = write(tmp_path, ExportFormat.hf, ExportTask.object_detection, rows)
    dataset = load(path, tmp_path)
    assert len(dataset) == len(rows)
    objects = dataset.features["objects"]
    assert objects["category"].feature.names == CATEGORIES
    for record, row in zip(dataset, rows, strict=True):
        assert isinstance(record, dict)
        assert (record["width"], record["height"]) == (row.width, row.height)
        assert record["objects"] == {
            "bbox": [[b.x, b.y, b.w, b.h] for b in row.boxes],
            "category": [CATEGORIES.index(b.label) for b in row.boxes],
            "score": [b.score for b in row.boxes],
        }


def test_entities_round_trip(tmp_path: Path) -> None:
    rows = entity_rows()
    path, _ = write(tmp_path, ExportFormat.hf, ExportTask.token_classification, rows)
    dataset = load(path, tmp_path)
    labels = dataset.features["entities"]["label"].feature
    assert labels.names == CATEGORIES
    first = dataset[0]["entities"]
    assert first["start"] == [0, 10]
    assert first["end"] == [3, 13]
    assert labels.int2str(first["label"]) == ["cat", "dog"]
    assert first["text"] == ["Tom", "dog"]
    assert first["score"] == [0.99, None]
    assert dataset[1]["entities"]["start"] == []


def test_unknown_label_extends_the_class_label(tmp_path: Path) -> None:
    rows = classification_rows()
    path, _ = write(
        tmp_path, ExportFormat.hf, ExportTask.image_classification, rows, categories=["cat"]
    )
    label = load(path, tmp_path).features["label"]
    assert label.names == ["cat", "dog", "bird"]


def test_rows_go_in_row_groups(tmp_path: Path) -> None:
    rows = [detection_rows()[0]] * 5000
    path, writer = write(tmp_path, ExportFormat.hf, ExportTask.object_detection, rows)
    assert writer.rows == 5000
    assert pq.ParquetFile(path).num_row_groups == 3  # 2048 + 2048 + 904
    assert len(load(path, tmp_path)) == 5000


def test_no_rows_is_a_valid_file(tmp_path: Path) -> None:
    # datasets refuses an empty split, so read it with pyarrow
    path, _ = write(tmp_path, ExportFormat.hf, ExportTask.text_classification, [])
    table = pq.read_table(path)
    assert table.num_rows == 0
    assert b"huggingface" in (table.schema.metadata or {})
