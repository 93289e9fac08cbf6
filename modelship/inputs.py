"""Checking and decoding what users send, before any model sees it.

Images: the type is sniffed from magic bytes (never trusted from headers or names), the
size is read from the header before any pixel is decoded (decompression-bomb guard),
EXIF orientation is applied, and every decoder failure becomes a 4xx.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import filetype
from PIL import Image, ImageOps, UnidentifiedImageError

from modelship.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from modelship.settings import Settings

IMAGE_TYPES = frozenset(
    {"image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff"}
)


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image
    media_type: str


def sniff_image_type(data: bytes) -> str:
    """The image MIME type from magic bytes; 415 for anything we do not decode."""
    kind = filetype.guess(data[:512])
    if kind is None or kind.mime not in IMAGE_TYPES:
        found = kind.mime if kind else "unknown"
        raise UnsupportedMediaType(
            f"unsupported media type {found}; send one of {', '.join(sorted(IMAGE_TYPES))}"
        )
    return str(kind.mime)


def decode_image(data: bytes, settings: Settings) -> DecodedImage:
    """Decode an image upright in RGB, refusing oversize, bombs and corrupt files."""
    if not data:
        raise InvalidInput("the image is empty", "empty_image")
    if len(data) > settings.max_image_bytes:
        raise PayloadTooLarge(
            f"image of {len(data)} bytes exceeds the limit of {settings.max_image_bytes}"
        )
    media_type = sniff_image_type(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            _check_dimensions(image.width, image.height, settings)
            image.load()
            upright = ImageOps.exif_transpose(image)
            rgb = upright.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidInput(
            "the image has too many pixels (decompression-bomb guard)", "decompression_bomb"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidInput(f"the image could not be decoded: {exc}", "corrupt_image") from None
    return DecodedImage(rgb, media_type)


def _check_dimensions(width: int, height: int, settings: Settings) -> None:
    if width <= 0 or height <= 0:
        raise InvalidInput(f"the image is {width}x{height} pixels", "empty_image")
    if width > settings.max_image_side or height > settings.max_image_side:
        raise InvalidInput(
            f"{width}x{height} exceeds the largest side of {settings.max_image_side} px",
            "image_too_large",
        )
    if width * height > settings.max_image_pixels:
        raise InvalidInput(
            f"{width}x{height} pixels exceeds the limit of {settings.max_image_pixels}",
            "decompression_bomb",
        )


def check_texts(texts: list[str], settings: Settings) -> None:
    """Refuse empty, overlong and too many texts with 422 and a precise code."""
    if len(texts) > settings.max_texts_per_request:
        raise InvalidInput(
            f"{len(texts)} texts exceed the limit of {settings.max_texts_per_request}",
            "too_many_texts",
        )
    for index, text in enumerate(texts):
        if not text.strip():
            raise InvalidInput(f"text {index} is empty", "empty_text")
        if len(text) > settings.max_text_chars:
            raise InvalidInput(
                f"text {index} has {len(text)} characters; the limit is {settings.max_text_chars}",
                "text_too_long",
            )
