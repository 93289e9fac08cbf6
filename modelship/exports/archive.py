"""The archive that the archive formats (COCO with images, YOLO, VOC) write entry by entry.

A gzipped tar, not a zip: a zip's central directory is written last, so its writer keeps
one entry per file in memory until then; a tar is a plain sequence of entries, so
memory stays flat however many images there are.
"""

from __future__ import annotations

import gzip
import io
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TextIO

from modelship.exports.base import ExportSpec, WriterBase

MEDIA_TYPE = "application/gzip"
EXTENSION = ".tar.gz"


class Archive:
    """A ``.tar.gz`` written as it goes: each entry is a header block, the data, and
    padding to 512 bytes (``tarfile.TarInfo.tobuf`` makes the header), all through gzip."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._out = gzip.open(path, "wb")  # noqa: SIM115  # open until close()

    def text(self, name: str, text: str) -> None:
        self._add(name, io.BytesIO(text.encode()))

    def image(self, name: str, data: bytes) -> None:
        self._add(name, io.BytesIO(data))

    @contextmanager
    def stream(self, name: str) -> Iterator[TextIO]:
        """A text entry of unknown size: spooled to a file beside the archive (a tar entry
        states its size first), then added."""
        with tempfile.TemporaryFile("w+b", dir=self._path.parent) as spool:
            text = io.TextIOWrapper(spool, encoding="utf-8")
            yield text
            text.flush()
            text.detach()
            self._add(name, spool)

    def close(self) -> None:
        if not self._out.closed:
            self._out.write(b"\0" * 2 * tarfile.BLOCKSIZE)  # the end-of-archive marker
            self._out.close()

    def _add(self, name: str, data: IO[bytes]) -> None:
        size = data.seek(0, io.SEEK_END)
        data.seek(0)
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o644, int(time.time())
        self._out.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        shutil.copyfileobj(data, self._out)
        self._out.write(b"\0" * (-size % tarfile.BLOCKSIZE))


class ArchiveWriter(WriterBase):
    """A writer whose file is a streamed ``.tar.gz`` (YOLO, VOC)."""

    media_type = MEDIA_TYPE
    extension = EXTENSION

    def __init__(self, spec: ExportSpec, path: Path) -> None:
        super().__init__(spec, path)
        self._archive = Archive(path)

    def _close(self) -> None:
        self._archive.close()
