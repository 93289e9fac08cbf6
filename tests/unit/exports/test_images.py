"""Archived images agree with their recorded sizes and boxes when opened as torchvision's
CocoDetection and VOCDetection open them: ``PIL.Image.open``, no EXIF orientation applied."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from PIL import Image, ImageChops, ImageOps, ImageStat
from pycocotools.coco import COCO

from modelship.exports import Box, ExportFormat, ExportTask
from tests.conftest import payload
from tests.unit.exports.samples import ArchiveReader, image_row, png, write

ORIENTATION = 0x0112
FOLDERS = {ExportFormat.coco: "images", ExportFormat.yolo: "images", ExportFormat.voc: "JPEGImages"}


def sideways_png() -> bytes:
    """A 30x20 PNG that EXIF orientation 8 turns upright to 20x30."""
    image = Image.new("RGB", (30, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 10, 20))  # red down the left edge of the stored pixels
    exif = Image.Exif()
    exif[ORIENTATION] = 8
    out = io.BytesIO()
    image.save(out, format="PNG", exif=exif)
    return out.getvalue()


def difference(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference of two images' pixels, 0..255."""
    diff = ImageChops.difference(a.convert("RGB"), b.convert("RGB"))
    return sum(ImageStat.Stat(diff).mean) / 3


@pytest.mark.parametrize("format", list(FOLDERS))
def test_an_exif_rotated_photo_ships_upright(tmp_path: Path, format: ExportFormat) -> None:
    rotated = payload("cat_exif_rotated.jpg")  # stored 300x451, orientation 6: 451x300 upright
    rows = [
        image_row(1, (451, 300), media_type="image/jpeg", boxes=[Box("cat", None, 0, 0, 225, 300)]),
        image_row(2, (20, 30), boxes=[Box("dog", None, 0, 20, 20, 10)]),
        image_row(3, (37, 91)),
    ]
    images = [rotated, sideways_png(), png((37, 91))]
    path, _ = write(
        tmp_path, format, ExportTask.object_detection, rows, include_images=True, images=images
    )
    out = tmp_path / "out"
    with ArchiveReader(path) as archive:
        archive.extractall(out)
    folder = out / FOLDERS[format]
    files = [folder / f"{rows[0].item_id}.jpg", folder / f"{rows[1].item_id}.png"]
    for file, row in zip(files, rows, strict=False):
        with Image.open(file) as shipped:
            assert shipped.format == ("JPEG" if row.media_type == "image/jpeg" else "PNG")
            assert shipped.size == (row.width, row.height)
            assert ORIENTATION not in shipped.getexif()
    with Image.open(files[0]) as shipped, Image.open(io.BytesIO(payload("cat.jpg"))) as upright:
        assert upright.size == (451, 300)
        assert difference(shipped, upright) < 3  # the same cat, the right way up
    with Image.open(files[1]) as shipped:
        assert shipped.convert("RGB").getpixel((10, 25)) == (255, 0, 0)  # the red is at the bottom
        assert shipped.convert("RGB").getpixel((10, 5)) == (0, 0, 255)
    # an image without a turning tag ships as it came
    assert (folder / f"{rows[2].item_id}.png").read_bytes() == images[2]

    if format is ExportFormat.coco:
        coco = COCO(str(out / "annotations.json"))
        for image in coco.loadImgs(coco.getImgIds()):
            with Image.open(folder / image["file_name"]) as shipped:
                assert shipped.size == (image["width"], image["height"])
    elif format is ExportFormat.voc:
        for row in rows:
            root = ET.parse(out / "Annotations" / f"{row.item_id}.xml").getroot()
            with Image.open(folder / (root.findtext("filename") or "")) as shipped:
                size = (
                    int(root.findtext("size/width") or 0),
                    int(root.findtext("size/height") or 0),
                )
                assert shipped.size == size
    else:  # Ultralytics finds an image's labels by its stem
        assert yaml.safe_load((out / "data.yaml").read_text())["names"][:2] == ["cat", "dog"]
        for file in folder.iterdir():
            assert (out / "labels" / f"{file.stem}.txt").exists()


def test_the_rest_of_the_exif_is_kept(tmp_path: Path) -> None:
    image = Image.new("RGB", (40, 20))
    exif = Image.Exif()
    exif[ORIENTATION], exif[0x010F] = 6, "Canon"  # Make
    data = io.BytesIO()
    image.save(data, format="JPEG", exif=exif)
    row = image_row(1, (20, 40), media_type="image/jpeg")
    path, _ = write(
        tmp_path,
        ExportFormat.coco,
        ExportTask.object_detection,
        [row],
        include_images=True,
        images=[data.getvalue()],
    )
    with ArchiveReader(path) as archive:
        shipped = Image.open(io.BytesIO(archive.read(f"images/{row.item_id}.jpg")))
        assert json.loads(archive.read("annotations.json"))["images"][0]["width"] == 20
    assert shipped.size == (20, 40)
    assert dict(shipped.getexif()) == {0x010F: "Canon"}
    assert ImageOps.exif_transpose(shipped).size == (20, 40)
