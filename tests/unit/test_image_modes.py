"""Images of every pixel format decode to the picture they hold, or to a clear 4xx."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from modelship.core.errors import UnsupportedMediaType
from modelship.core.inputs import decode_image, read_image_header
from modelship.core.settings import Settings
from tests.conftest import payload


def _saved(image: Image.Image, kind: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=kind)
    return buffer.getvalue()


def _grey() -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(payload("cat.jpg"))).convert("L"))


@pytest.mark.parametrize(("kind", "byteorder"), [("PNG", "<"), ("TIFF", "<"), ("TIFF", ">")])
def test_a_16_bit_grey_image_decodes_to_its_8_bit_picture(
    settings: Settings, kind: str, byteorder: str
) -> None:
    """PIL's convert clipped 16-bit pixels at 255: the cat came out white and was labeled a
    nematode."""
    grey = _grey()
    wide = (grey.astype(np.uint16) * 257).astype(f"{byteorder}u2")
    decoded = decode_image(_saved(Image.fromarray(wide), kind), settings)
    assert decoded.image.mode == "RGB"
    assert np.array_equal(np.asarray(decoded.image)[..., 0], grey)


@pytest.mark.parametrize("dtype", [np.float32, np.int32])
def test_32_bit_pixels_are_refused_with_415(settings: Settings, dtype: type) -> None:
    pixels: np.ndarray = (np.arange(48 * 64).reshape(48, 64) * 1000).astype(dtype)
    with pytest.raises(UnsupportedMediaType) as refused:
        decode_image(_saved(Image.fromarray(pixels), "TIFF"), settings)
    assert refused.value.code == "unsupported_pixel_format"


@pytest.mark.parametrize("kind", ["PNG", "GIF", "WEBP"])
def test_an_animated_image_is_labeled_by_its_first_frame(settings: Settings, kind: str) -> None:
    """An animated PNG (APNG) was refused with 415 'unsupported media type image/apng',
    although it is a PNG and animated GIFs and WebPs were taken."""
    frames = [Image.new("RGB", (64, 48), colour) for colour in ((200, 0, 0), (0, 200, 0))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format=kind, save_all=True, append_images=frames[1:], lossless=True)
    decoded = decode_image(buffer.getvalue(), settings)
    header = read_image_header(buffer.getvalue(), settings)
    assert decoded.media_type == header.media_type == f"image/{kind.lower()}"
    assert decoded.image.getpixel((0, 0)) == (200, 0, 0)
