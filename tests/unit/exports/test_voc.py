"""Pascal VOC zips: an XML file per image, 1-based inclusive pixel corners."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image

from modelship.exports import Box, ExportFormat, ExportTask
from tests.unit.exports.samples import ArchiveReader, detection_rows, image_row, png, write


def annotations(path: Path) -> dict[str, ET.Element]:
    with ArchiveReader(path) as archive:
        return {
            name.removeprefix("Annotations/").removesuffix(".xml"): ET.fromstring(
                archive.read(name)
            )
            for name in archive.namelist()
            if name.startswith("Annotations/")
        }


def test_xml_per_image_with_documented_corners(tmp_path: Path) -> None:
    rows = detection_rows()
    path, writer = write(tmp_path, ExportFormat.voc, ExportTask.object_detection, rows)
    assert (writer.extension, writer.rows) == (".tar.gz", 6)
    documents = annotations(path)
    assert sorted(documents) == sorted(row.item_id for row in rows)
    for row in rows:
        root = documents[row.item_id]
        assert root.tag == "annotation"
        ext = ".jpg" if row.media_type == "image/jpeg" else ".png"
        assert root.findtext("filename") == row.item_id + ext
        assert root.findtext("folder") == "pets"
        size = root.find("size")
        assert size is not None
        assert (size.findtext("width"), size.findtext("height"), size.findtext("depth")) == (
            str(row.width),
            str(row.height),
            "3",
        )
        objects = root.findall("object")
        assert len(objects) == len(row.boxes)
        for obj, box in zip(objects, row.boxes, strict=True):
            assert obj.findtext("name") == box.label
            assert obj.findtext("pose") == "Unspecified"
            assert obj.findtext("truncated") == obj.findtext("difficult") == "0"
            corners = [
                int(obj.findtext(f"bndbox/{tag}") or "") for tag in ("xmin", "ymin", "xmax", "ymax")
            ]
            assert corners == [
                round(box.x) + 1,
                round(box.y) + 1,
                round(box.x + box.w),
                round(box.y + box.h),
            ]
    whole = documents[rows[2].item_id].find("object/bndbox")
    assert whole is not None
    assert [e.text for e in whole] == ["1", "1", "37", "91"]  # the whole 37x91 image
    assert documents[rows[1].item_id].findall("object") == []


def test_boxes_are_cut_to_the_image_and_keep_a_pixel(tmp_path: Path) -> None:
    row = image_row(
        8,
        (100, 50),
        boxes=[
            Box("cat", 0.9, -10.0, 40.0, 30.0, 20.0),
            Box("dog", 0.9, 10.6, 5.0, 0.3, 0.3),
            Box("bird", 0.9, 101.0, 0.0, 5.0, 5.0),
        ],
    )
    path, _ = write(tmp_path, ExportFormat.voc, ExportTask.object_detection, [row])
    objects = annotations(path)[row.item_id].findall("object")
    assert [[int(e.text or "") for e in obj.findall("bndbox/*")] for obj in objects] == [
        [1, 41, 20, 50],
        [12, 6, 12, 6],
    ]
    # the cat box was cut on two sides; the dog box, under a pixel, was not cut at all
    assert [obj.findtext("truncated") for obj in objects] == ["1", "0"]


def test_images_go_in_jpegimages(tmp_path: Path) -> None:
    rows = detection_rows()
    path, _ = write(
        tmp_path, ExportFormat.voc, ExportTask.object_detection, rows, include_images=True
    )
    with ArchiveReader(path) as archive:
        assert archive.read(f"JPEGImages/{rows[2].item_id}.png") == png((37, 91))


def image_file(mode: str, format: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (12, 8)).save(out, format=format)
    return out.getvalue()


@pytest.mark.parametrize(
    ("mode", "format", "depth"),
    [("L", "PNG", "1"), ("RGB", "JPEG", "3"), ("RGBA", "PNG", "4"), ("P", "GIF", "3")],
)
def test_depth_is_the_images_channels(tmp_path: Path, mode: str, format: str, depth: str) -> None:
    media_type = f"image/{format.lower()}"
    row = image_row(9, (12, 8), media_type=media_type, boxes=[Box("cat", 0.9, 1, 1, 4, 4)])
    data = image_file(mode, format)
    path, _ = write(
        tmp_path,
        ExportFormat.voc,
        ExportTask.object_detection,
        [row],
        include_images=True,
        images=[data],
    )
    root = annotations(path)[row.item_id]
    assert root.findtext("size/depth") == depth
    with ArchiveReader(path) as archive:
        shipped = archive.read(f"JPEGImages/{root.findtext('filename')}")
    assert shipped == data
    assert Image.open(io.BytesIO(shipped)).mode == mode
