"""YOLO (Ultralytics) detection: a ``.tar.gz`` of ``data.yaml``, ``labels/<item_id>.txt`` and,
with images, ``images/<item_id><ext>`` (upright, and a GIF as ``<item_id>.png``: see
``images``).

Each label file has a line ``class cx cy w h`` per box: class ids 0..n-1 in category order,
coordinates normalised by that image's own width and height, 6 decimals. Boxes are first cut
to the image (Ultralytics skips a whole label file with a coordinate outside 0..1), and a box
with nothing left inside the image is dropped. An image without boxes gets an empty file, so
it stays in the dataset as a background image.

``data.yaml`` has no ``path``: Ultralytics then takes the folder of ``data.yaml`` as the root.
``train`` and ``val`` both point at ``images`` (Ultralytics requires both keys; split the
dataset yourself).
"""

from __future__ import annotations

import yaml

from modelship.core.rows import ExportRow
from modelship.exports.archive import ArchiveWriter
from modelship.exports.base import clip_box, image_size
from modelship.exports.images import archive_image


class YoloWriter(ArchiveWriter):
    def _add(self, row: ExportRow, image: bytes | None) -> None:
        width, height = image_size(row)
        lines = []
        for box in row.boxes:
            clipped = clip_box(box, width, height)
            if clipped is None:
                continue
            x0, y0, x1, y1 = clipped
            cx, cy = (x0 + x1) / 2 / width, (y0 + y1) / 2 / height
            w, h = (x1 - x0) / width, (y1 - y0) / height
            lines.append(f"{self.categories.id(box.label)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n")
        self._archive.text(f"labels/{row.item_id}.txt", "".join(lines))
        if image is not None:
            shipped = archive_image(row, image, png_for_gif=True)
            self._archive.image(f"images/{shipped.name}", shipped.data)

    def _close(self) -> None:
        names = self.categories.names
        data = {"train": "images", "val": "images", "nc": len(names), "names": names}
        name = " ".join(self.spec.name.split())  # one line: it goes in a comment
        header = f"# {name}: YOLO detection dataset exported by ModelShip\n"
        self._archive.text("data.yaml", header + yaml.safe_dump(data, sort_keys=False))
        super()._close()
