"""Pascal VOC detection: a ``.tar.gz`` of ``Annotations/<item_id>.xml`` per image and, with
images, ``JPEGImages/<item_id><ext>`` (the real extension, PNG included; upright: see
``images``).

Coordinates follow VOC's 1-based, inclusive pixel convention: a box ``[x, y, w, h]`` in
0-based pixels becomes ``xmin = round(x) + 1``, ``ymin = round(y) + 1``,
``xmax = round(x + w)``, ``ymax = round(y + h)`` (Python's ``round``, half to even), after
cutting it to the image; a box under a pixel wide still covers one pixel. A box over the
whole image is ``1, 1, width, height``; read back with ``x = xmin - 1``,
``w = xmax - xmin + 1``. A box with nothing left inside the image is dropped; one that
cutting changed has ``<truncated>1</truncated>`` (0 otherwise; ``<difficult>`` is always 0).
``<depth>`` is the image's colour channels when it is in the archive (1 grey, 3 colour or a
palette, 4 with alpha; ``images``), else 3. Every image has its file, with no ``<object>``
when it has no boxes.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from modelship.core.rows import ExportRow
from modelship.exports.archive import ArchiveWriter
from modelship.exports.base import clip_box, file_name, image_size
from modelship.exports.images import archive_image


class VocWriter(ArchiveWriter):
    def _add(self, row: ExportRow, image: bytes | None) -> None:
        width, height = image_size(row)
        shipped = archive_image(row, image) if image is not None else None
        name = file_name(row) if shipped is None else shipped.name
        root = ET.Element("annotation")
        _child(root, "folder", self.spec.name)
        _child(root, "filename", name)
        size = _child(root, "size")
        depth = 3 if shipped is None else shipped.depth
        for tag, value in (("width", width), ("height", height), ("depth", depth)):
            _child(size, tag, str(value))
        for box in row.boxes:
            clipped = clip_box(box, width, height)
            if clipped is None:
                continue
            x0, y0, x1, y1 = clipped
            obj = _child(root, "object")
            for tag, text in (("name", box.label), ("pose", "Unspecified")):
                _child(obj, tag, text)
            truncated = clipped != (box.x, box.y, box.x + box.w, box.y + box.h)
            _child(obj, "truncated", str(int(truncated)))
            _child(obj, "difficult", "0")
            bndbox = _child(obj, "bndbox")
            xmin, ymin = min(round(x0) + 1, width), min(round(y0) + 1, height)
            corners = (xmin, ymin, max(round(x1), xmin), max(round(y1), ymin))
            for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), corners, strict=True):
                _child(bndbox, tag, str(value))
        ET.indent(root)
        self._archive.text(f"Annotations/{row.item_id}.xml", ET.tostring(root, encoding="unicode"))
        if shipped is not None:
            self._archive.image(f"JPEGImages/{name}", shipped.data)


def _child(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
    element = ET.SubElement(parent, tag)
    element.text = text
    return element
