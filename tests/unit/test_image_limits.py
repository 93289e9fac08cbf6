"""Image size limits: checked from the header, before any pixel is decoded."""

from __future__ import annotations

import struct
import zlib

import pytest

from modelship.core.errors import InvalidInput
from modelship.core.inputs import read_image_header
from modelship.core.settings import Settings


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` grey pixels (its header is all that is read)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b""))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


def test_the_header_refuses_a_png_bomb_before_decoding_it(settings: Settings) -> None:
    """Reading a PNG's EXIF decodes all its pixels, and the header read it before checking
    the size: a 249 KB PNG of 8000x8000 took 256 MB to refuse. This one has no pixel data:
    decoding it fails as corrupt, checking its size first refuses it as a bomb."""
    with pytest.raises(InvalidInput) as refused:
        read_image_header(_png_header(8_000, 8_000), settings)
    assert refused.value.code == "decompression_bomb"
