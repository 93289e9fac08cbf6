"""The image files that archives (COCO with images, YOLO, VOC) ship: pixels that agree with
the sizes and boxes recorded for them.

Sizes and boxes are for the upright image (``rows.Box``), but a photo's file may store its
pixels sideways with an EXIF orientation tag. Tools that open files without applying the
tag (torchvision's ``CocoDetection`` and ``VOCDetection``, plain ``PIL.Image.open``) would
misplace every box, so such a file is re-encoded upright (``ImageOps.exif_transpose``) in
its own format, without the tag: JPEG and WebP at quality 95, the rest of its EXIF and its
ICC profile kept. For YOLO, a GIF becomes a PNG of its first frame (``<item_id>.png``):
Ultralytics lists gif among video formats and does not load it as an image. Every other
file ships byte for byte. One image is decoded at a time, so
memory does not grow with the export.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageOps

from modelship.core.rows import ExportRow
from modelship.exports.base import file_name

_ORIENTATION = 0x0112
_TURNED = range(2, 9)  # EXIF orientations that flip or rotate; 1 is upright
_QUALITY = {"JPEG": 95, "WEBP": 95}
_PALETTE_DEPTH = {"P": 3, "PA": 4}  # a palette holds RGB colours


@dataclass(frozen=True, slots=True)
class ArchiveImage:
    """An image as it goes in an archive."""

    name: str  # ``<item_id><ext>``
    data: bytes
    depth: int  # colour channels: 1 grey, 3 colour, 4 with alpha (or CMYK)


def archive_image(row: ExportRow, data: bytes, *, png_for_gif: bool = False) -> ArchiveImage:
    """``row``'s image file ``data``, upright (see the module); a GIF as a PNG if asked."""
    with Image.open(io.BytesIO(data)) as image:
        depth = _PALETTE_DEPTH.get(image.mode) or Image.getmodebands(image.mode)
        to_png = png_for_gif and image.format == "GIF"
        # the same test as the upload's size (inputs.read_image_header): PNG reads it all
        turned = image.getexif().get(_ORIENTATION) in _TURNED
        if not (to_png or turned):
            return ArchiveImage(file_name(row), data, depth)
        upright = ImageOps.exif_transpose(image) if turned else image  # a GIF: frame 0
        format = "PNG" if to_png else str(image.format)
        options: dict[str, Any] = {}
        if format in _QUALITY:
            options["quality"] = _QUALITY[format]
        if (exif := upright.getexif()) and not to_png:  # exif_transpose took the orientation out
            options["exif"] = exif
        if icc := image.info.get("icc_profile"):
            options["icc_profile"] = icc
        out = io.BytesIO()
        upright.save(out, format=format, **options)
    return ArchiveImage(f"{row.item_id}.png" if to_png else file_name(row), out.getvalue(), depth)
