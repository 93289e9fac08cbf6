"""Image size limits: checked from the header, before any pixel is decoded."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image, ImageFile, PngImagePlugin
from pydantic import ValidationError

from modelship.core.errors import InvalidInput
from modelship.core.inputs import decode_image, read_image_header
from modelship.core.settings import PILLOW_MAX_PIXELS, Settings


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


def _chunks(png: bytes) -> list[bytes]:
    chunks, position = [], 8
    while position < len(png):
        (length,) = struct.unpack_from(">I", png, position)
        chunks.append(png[position : position + 12 + length])
        position += 12 + length
    return chunks


@pytest.mark.parametrize("exif", ["none", "before pixels", "after pixels", "xmp"])
def test_a_png_header_is_read_without_decoding_its_pixels(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, exif: str
) -> None:
    """Pillow's getexif() decodes a whole PNG to look past IDAT for an eXIf chunk: every
    PNG uploaded without EXIF before its pixels was decoded (up to max_image_pixels, outside
    the decode slots) to read its size. The EXIF is read from the chunk, wherever it is,
    and the size agrees with the decoded image's."""
    tags = Image.Exif()
    tags[0x0112] = 6  # stored sideways: seen turned a quarter
    buffer = io.BytesIO()
    image = Image.new("RGB", (200, 100), (10, 20, 30))
    if exif == "xmp":  # Pillow reads an XMP orientation too (ImageMagick writes it)
        xmp = PngImagePlugin.PngInfo()
        xmp.add_itxt("XML:com.adobe.xmp", '<x:xmpmeta><rdf:Description tiff:Orientation="6"/>')
        image.save(buffer, format="PNG", pnginfo=xmp)
    else:
        image.save(buffer, format="PNG", **({} if exif == "none" else {"exif": tags}))
    png = buffer.getvalue()
    if exif == "after pixels":  # allowed by the PNG spec; Pillow writes it before
        chunks = _chunks(png)
        exif_chunk = next(c for c in chunks if c[4:8] == b"eXIf")
        chunks.remove(exif_chunk)
        chunks.insert(-1, exif_chunk)  # just before IEND
        png = png[:8] + b"".join(chunks)
    decoded = decode_image(png, settings)

    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("the header decoded the pixels")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    header = read_image_header(png, settings)
    assert (header.width, header.height) == (decoded.width, decoded.height)
    assert (header.width, header.height) == ((200, 100) if exif == "none" else (100, 200))


def test_max_image_pixels_above_pillows_limit_applies() -> None:
    """Pillow's own warning at 89M pixels refused a 95M-pixel image that
    MODELSHIP_MAX_IMAGE_PIXELS=100000000 allows."""
    header = read_image_header(_png_header(10_000, 9_500), Settings(max_image_pixels=100_000_000))
    assert (header.width, header.height) == (10_000, 9_500)
    with pytest.raises(InvalidInput, match="exceeds the limit of 90000000") as refused:
        read_image_header(_png_header(10_000, 9_500), Settings(max_image_pixels=90_000_000))
    assert refused.value.code == "decompression_bomb"


def test_max_image_pixels_past_what_pillow_opens_is_refused_at_startup() -> None:
    assert PILLOW_MAX_PIXELS == 2 * Image.MAX_IMAGE_PIXELS
    with pytest.raises(ValidationError, match="max_image_pixels"):
        Settings(max_image_pixels=PILLOW_MAX_PIXELS + 1)
