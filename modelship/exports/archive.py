"""The zip that the archive formats (COCO with images, YOLO, VOC) write entry by entry."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import TextIO


class Archive:
    """A zip written as it goes: small text entries deflated, images stored as they are
    (they are compressed already)."""

    def __init__(self, path: Path) -> None:
        self._zip = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED)

    def text(self, name: str, text: str) -> None:
        self._zip.writestr(name, text)

    def image(self, name: str, data: bytes) -> None:
        self._zip.writestr(name, data, compress_type=zipfile.ZIP_STORED)

    def stream(self, name: str) -> TextIO:
        """A text entry of unknown size, written through the returned file; close it before
        writing anything else."""
        return io.TextIOWrapper(self._zip.open(name, "w", force_zip64=True), encoding="utf-8")

    def close(self) -> None:
        self._zip.close()
