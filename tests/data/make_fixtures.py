"""Regenerates the payload fixtures in this folder (committed; run only to change them)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

from PIL import Image
from skimage import data

HERE = Path(__file__).parent


def _png_with_size(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width`` x ``height``; the pixel data is tiny zeros."""
    raw = zlib.compress(b"\x00" * (1 + (width + 7) // 8), 9)  # one 1-bit row

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def main() -> None:
    Image.fromarray(data.chelsea()).save(HERE / "cat.jpg", quality=90)
    Image.fromarray(data.coffee()).save(HERE / "coffee.jpg", quality=90)
    Image.fromarray(data.chelsea()).resize((150, 100)).save(HERE / "cat_small.png")
    Image.fromarray(data.astronaut()).save(HERE / "astronaut.jpg", quality=90)
    # The cat stored sideways with EXIF orientation 6 (rotate 90° clockwise to view).
    sideways = Image.fromarray(data.chelsea()).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways.save(HERE / "cat_exif_rotated.jpg", quality=90, exif=exif)
    cat = (HERE / "cat.jpg").read_bytes()
    (HERE / "truncated.jpg").write_bytes(cat[: len(cat) // 3])
    (HERE / "bomb.png").write_bytes(_png_with_size(10_000, 10_000))
    (HERE / "zero_width.png").write_bytes(_png_with_size(0, 10))
    (HERE / "huge_side.png").write_bytes(_png_with_size(100_000, 1))
    (HERE / "not_an_image.pdf").write_bytes(
        b"%PDF-1.4\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n"
    )
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buffer, format="PNG")
    (HERE / "garbage_after_magic.png").write_bytes(buffer.getvalue()[:16] + b"\x00garbage" * 8)


if __name__ == "__main__":
    main()
