"""YOLO zips: per-image normalisation, empty label files, data.yaml in category order."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml
from PIL import Image

from modelship.exports import Box, ExportFormat, ExportTask
from tests.unit.exports.samples import (
    CATEGORIES,
    ArchiveReader,
    detection_rows,
    image_row,
    png,
    write,
)


def label_lines(archive: ArchiveReader, item_id: str) -> list[list[float]]:
    text = archive.read(f"labels/{item_id}.txt").decode()
    return [[float(v) for v in line.split()] for line in text.splitlines()]


def test_boxes_denormalise_to_the_rows_pixels(tmp_path: Path) -> None:
    rows = detection_rows()
    path, writer = write(tmp_path, ExportFormat.yolo, ExportTask.object_detection, rows)
    assert (writer.extension, writer.media_type, writer.rows) == (".tar.gz", "application/gzip", 6)
    with ArchiveReader(path) as archive:
        assert sorted(n for n in archive.namelist() if n.startswith("labels/")) == sorted(
            f"labels/{row.item_id}.txt" for row in rows
        )
        assert not [n for n in archive.namelist() if n.startswith("images/")]
        for row in rows:
            lines = label_lines(archive, row.item_id)
            assert len(lines) == len(row.boxes)
            w_px, h_px = row.width or 0, row.height or 0
            for (cls, cx, cy, w, h), box in zip(lines, row.boxes, strict=True):
                assert CATEGORIES[int(cls)] == box.label
                assert (cx - w / 2) * w_px == pytest.approx(box.x, abs=0.01)
                assert (cy - h / 2) * h_px == pytest.approx(box.y, abs=0.01)
                assert w * w_px == pytest.approx(box.w, abs=0.01)
                assert h * h_px == pytest.approx(box.h, abs=0.01)
        assert archive.read(f"labels/{rows[1].item_id}.txt") == b""
        data = yaml.safe_load(archive.read("data.yaml"))
    assert data["names"] == CATEGORIES
    assert data["nc"] == len(CATEGORIES)
    assert data["train"] == data["val"] == "images"


def test_boxes_are_cut_to_the_image(tmp_path: Path) -> None:
    row = image_row(
        7,
        (100, 50),
        boxes=[Box("cat", 0.9, -10.0, 40.0, 30.0, 20.0), Box("dog", 0.9, 120.0, 0.0, 5.0, 5.0)],
    )
    path, _ = write(tmp_path, ExportFormat.yolo, ExportTask.object_detection, [row])
    with ArchiveReader(path) as archive:
        # x 0..20, y 40..50; the dog box lies outside the image and is dropped
        assert label_lines(archive, row.item_id) == [[0, 0.1, 0.9, 0.2, 0.2]]


def test_images_are_included_under_their_item_id(tmp_path: Path) -> None:
    rows = detection_rows()
    path, _ = write(
        tmp_path, ExportFormat.yolo, ExportTask.object_detection, rows, include_images=True
    )
    with ArchiveReader(path) as archive:
        assert archive.read(f"images/{rows[0].item_id}.jpg") == png((640, 480))
        assert archive.read(f"images/{rows[2].item_id}.png") == png((37, 91))


def test_a_gif_ships_as_a_png_of_its_first_frame(tmp_path: Path) -> None:
    """Ultralytics lists gif among its video formats: a .gif in images/ was not an image."""
    frames = [Image.new("P", (50, 40), 1), Image.new("P", (50, 40), 2)]
    for frame in frames:
        frame.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0])
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    rows = [
        image_row(1, (50, 40), media_type="image/gif", boxes=[Box("cat", 0.9, 5, 5, 20, 20)]),
        image_row(2, (37, 91)),
    ]
    path, _ = write(
        tmp_path,
        ExportFormat.yolo,
        ExportTask.object_detection,
        rows,
        include_images=True,
        images=[gif.getvalue(), png((37, 91))],
    )
    with ArchiveReader(path) as archive:
        images = sorted(n for n in archive.namelist() if n.startswith("images/"))
        assert images == sorted(f"images/{row.item_id}.png" for row in rows)
        shipped = Image.open(io.BytesIO(archive.read(f"images/{rows[0].item_id}.png")))
        assert (shipped.format, shipped.size) == ("PNG", (50, 40))
        assert shipped.convert("RGB").getpixel((0, 0)) == (255, 0, 0)  # the first frame
        assert label_lines(archive, rows[0].item_id) == [[0, 0.3, 0.375, 0.4, 0.5]]
        assert archive.read(f"images/{rows[1].item_id}.png") == png((37, 91))
