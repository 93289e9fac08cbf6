"""COCO files load in pycocotools with every image at its real size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pycocotools.coco import COCO

from modelship.exports import ExportFormat, ExportRow, ExportTask
from tests.unit.exports.samples import (
    CATEGORIES,
    ArchiveReader,
    classification_rows,
    detection_rows,
    png,
    write,
)


def load(path: Path) -> COCO:
    return COCO(str(path))


def check_images(coco: COCO, rows: list[ExportRow]) -> None:
    assert sorted(coco.getImgIds()) == list(range(1, len(rows) + 1))
    for image_id, row in enumerate(rows, start=1):
        image = coco.loadImgs(image_id)[0]
        assert (image["width"], image["height"]) == (row.width, row.height)
        assert image["modelship_item_id"] == row.item_id
        assert image["original_filename"] == row.filename
        ext = ".jpg" if row.media_type == "image/jpeg" else ".png"
        assert image["file_name"] == row.item_id + ext
    categories = coco.loadCats(coco.getCatIds())
    assert [(c["id"], c["name"], c["supercategory"]) for c in categories] == [
        (i + 1, name, "none") for i, name in enumerate(CATEGORIES)
    ]


def test_detection_round_trips_through_pycocotools(tmp_path: Path) -> None:
    rows = detection_rows()
    path, writer = write(tmp_path, ExportFormat.coco, ExportTask.object_detection, rows)
    assert (writer.extension, writer.media_type, writer.rows) == (".json", "application/json", 6)
    coco = load(path)
    check_images(coco, rows)
    for image_id, row in enumerate(rows, start=1):
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        assert [
            (CATEGORIES[a["category_id"] - 1], a.get("score"), a["bbox"]) for a in annotations
        ] == [(b.label, b.score, [b.x, b.y, b.w, b.h]) for b in row.boxes]
        for annotation in annotations:
            assert annotation["area"] == pytest.approx(
                annotation["bbox"][2] * annotation["bbox"][3]
            )
            assert annotation["iscrowd"] == 0
    assert coco.getAnnIds(imgIds=[2]) == []  # the image without boxes is still listed
    assert len(coco.getAnnIds()) == sum(len(row.boxes) for row in rows)


def test_classification_labels_cover_the_whole_image(tmp_path: Path) -> None:
    rows = classification_rows()
    path, _ = write(tmp_path, ExportFormat.coco, ExportTask.image_classification, rows)
    coco = load(path)
    check_images(coco, rows)
    for image_id, row in enumerate(rows, start=1):
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        assert [(CATEGORIES[a["category_id"] - 1], a.get("score")) for a in annotations] == [
            (label.name, label.score) for label in row.labels
        ]
        for annotation in annotations:
            assert annotation["bbox"] == [0, 0, row.width, row.height]
            assert annotation["area"] == row.width * row.height
            assert annotation["image_label"] is True


def test_zip_with_images(tmp_path: Path) -> None:
    rows = detection_rows()
    path, writer = write(
        tmp_path, ExportFormat.coco, ExportTask.object_detection, rows, include_images=True
    )
    assert (writer.extension, writer.media_type) == (".tar.gz", "application/gzip")
    with ArchiveReader(path) as archive:
        archive.extractall(tmp_path / "out")
        document = json.loads(archive.read("annotations.json"))
    coco = load(tmp_path / "out" / "annotations.json")
    check_images(coco, rows)
    for image, row in zip(document["images"], rows, strict=True):
        assert (tmp_path / "out" / "images" / image["file_name"]).read_bytes() == png(
            (row.width or 0, row.height or 0)
        )


def test_unknown_label_is_appended_after_the_known_ones(tmp_path: Path) -> None:
    path, _ = write(
        tmp_path,
        ExportFormat.coco,
        ExportTask.object_detection,
        detection_rows(),
        categories=["dog", "bird"],
    )
    coco = load(path)
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["dog", "bird", "cat"]
    first = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert [a["category_id"] for a in first] == [3, 1]


def test_image_without_size_is_refused(tmp_path: Path) -> None:
    row = detection_rows()[0]
    sizeless = ExportRow(row.item_id, None, "image/png", None, None, None, "pending")
    with pytest.raises(ValueError, match="no image size"):
        write(tmp_path, ExportFormat.coco, ExportTask.object_detection, [sizeless])
