"""Checking and decoding what users send, before any model sees it.

Images: the type is sniffed from magic bytes (never trusted from headers or names), the
size is read from the header before any pixel is decoded (decompression-bomb guard),
EXIF orientation is applied, and every decoder failure becomes a 4xx.
"""

from __future__ import annotations

import csv
import io
import json
import struct
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO, TypeVar

import filetype
import numpy as np
from PIL import Image, ImageOps
from pydantic import BaseModel, ValidationError

from modelship.core.config import LabelSpec
from modelship.core.errors import (
    InvalidInput,
    ModelShipError,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from modelship.core.settings import Settings

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

IMAGE_TYPES = frozenset(
    {"image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff"}
)


_PIL_FORMATS = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/webp": "WEBP",
    "image/gif": "GIF",
    "image/bmp": "BMP",
    "image/tiff": "TIFF",
}


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image
    media_type: str
    width: int  # the file's own upright size (``image`` may be smaller: see decode_image)
    height: int


def parse_model(model: type[M], data: str | bytes | dict[str, Any]) -> M:
    """Validate a request body or form; the first problem becomes a 422."""
    try:
        if isinstance(data, dict):
            return model.model_validate(data)
        return model.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidInput(f"{where}: {first['msg']}", "invalid_request") from None


def sniff_image_type(data: bytes) -> str:
    """The image MIME type from magic bytes; 415 for anything we do not decode."""
    kind = filetype.guess(data[:512])
    if kind is not None and kind.mime == "image/apng":
        # An animated PNG is a PNG (its first frame is the image, as a GIF's or a WebP's)
        return "image/png"
    if kind is None or kind.mime not in IMAGE_TYPES:
        found = kind.mime if kind else "unknown"
        raise UnsupportedMediaType(
            f"unsupported media type {found}; send one of {', '.join(sorted(IMAGE_TYPES))}"
        )
    return str(kind.mime)


def decode_image(data: bytes, settings: Settings, min_side: int | None = None) -> DecodedImage:
    """Decode an image upright in RGB, refusing oversize, bombs and corrupt files.

    With ``min_side`` (for a model that shrinks every image to that side anyway), a JPEG
    is decoded at the smallest of its 1/2, 1/4 and 1/8 scales that keeps both sides at
    least ``min_side`` (libjpeg's DCT scaling, PIL's ``draft``), about 3x cheaper. The size
    reported stays the file's own.
    """

    def decode(image: Image.Image) -> tuple[Image.Image, int, int]:
        _check_dimensions(image.width, image.height, settings)
        width, height = image.size
        if min_side:
            image.draft(None, (min_side, min_side))
        image.load()
        upright = ImageOps.exif_transpose(image)
        if upright.size != image.size:  # turned a quarter: the file's sides swap too
            width, height = height, width
        return _to_rgb(upright), width, height

    media_type, (rgb, width, height) = _open_guarded(data, settings, decode)
    return DecodedImage(rgb, media_type, width, height)


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB. PIL's ``convert`` clips one-channel 16-bit pixels (PNG, TIFF) at 255,
    turning a whole photo white: they are scaled to 8 bits first. 32-bit integer and float
    pixels (TIFF) have no range to scale from: refused."""
    if image.mode.startswith("I;16"):
        pixels = np.asarray(image).astype(np.uint16)  # native byte order, whatever the file's
        image = Image.fromarray((pixels >> 8).astype(np.uint8))
    elif image.mode in ("I", "F"):
        raise UnsupportedMediaType(
            f"images of 32-bit {'integer' if image.mode == 'I' else 'float'} pixels are not"
            " supported; send 8- or 16-bit images",
            "unsupported_pixel_format",
        )
    return image.convert("RGB")


@dataclass(frozen=True)
class ImageHeader:
    media_type: str
    width: int
    height: int


_ROTATED = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height


def read_image_header(data: bytes, settings: Settings) -> ImageHeader:
    """Type and upright size from the header alone (no pixels decoded), with every guard.

    Uploads use it: a file that passes here but fails to decode later fails its job item.
    """

    def size(image: Image.Image) -> tuple[int, int, bool]:
        _check_dimensions(image.width, image.height, settings)
        exif = _png_exif(image, data) if image.format == "PNG" else image.getexif()
        orientation = exif.get(0x0112)
        # A TIFF's size comes back from Pillow already upright; its stored one is in tags.
        tags = getattr(image, "tag_v2", None)
        stored = (tags.get(256), tags.get(257)) if tags is not None else image.size
        turned = orientation in _ROTATED and stored == image.size
        return image.width, image.height, turned

    media_type, (width, height, turned) = _open_guarded(data, settings, size)
    if turned:
        width, height = height, width
    return ImageHeader(media_type, width, height)


def _png_exif(image: Image.Image, data: bytes) -> Image.Exif:
    """A PNG's EXIF without decoding a pixel: Pillow's PNG ``getexif`` decodes the whole
    image to look past IDAT for an eXIf chunk. The chunk is found here, wherever it is;
    Pillow's own reading then takes it, or the EXIF or XMP orientation in text chunks."""
    position = 8  # past the signature; each chunk: length, type, data, CRC
    while "exif" not in image.info and position + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        if kind == b"eXIf":
            image.info["exif"] = data[position + 8 : position + 8 + length]
        elif kind == b"IEND":
            break
        position += 12 + length
    return Image.Image.getexif(image)


def _open_guarded(
    data: bytes, settings: Settings, read: Callable[[Image.Image], T]
) -> tuple[str, T]:
    """The sniffed type and ``read(image)``, with the size, type and bomb guards; every
    decoder failure becomes a 4xx."""
    if not data:
        raise InvalidInput("the image is empty", "empty_image")
    if len(data) > settings.max_image_bytes:
        raise PayloadTooLarge(
            f"image of {len(data)} bytes exceeds the limit of {settings.max_image_bytes}"
        )
    media_type = sniff_image_type(data)
    try:
        with warnings.catch_warnings():
            # The pixel limit is max_image_pixels (_check_dimensions, before any pixel is
            # decoded): Pillow's warning at its own 89M would refuse images a larger setting
            # allows. Past twice that Pillow refuses to open; Settings stops the setting there.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # Only the sniffed format's decoder may run: PIL would otherwise try every
            # plugin it has, parsers nobody asked for included.
            image = Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[media_type]])
            return media_type, read(image)
    except Image.DecompressionBombError:
        raise InvalidInput(
            "the image has too many pixels (decompression-bomb guard)", "decompression_bomb"
        ) from None
    except ModelShipError:
        raise
    except Exception as exc:
        # Hostile bytes reach parsers written for honest files: besides OSError, SyntaxError
        # and ValueError, PIL raises TypeError, struct.error, IndexError... on a corrupt
        # header (the decoders fuzz drill found a TIFF whose strip offset is a float).
        raise InvalidInput(f"the image could not be decoded: {exc}", "corrupt_image") from None


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


def check_texts(texts: list[str], settings: Settings, max_count: int | None = None) -> None:
    """Refuse empty, overlong and too many texts with 422 and a precise code."""
    max_count = max_count or settings.max_texts_per_request
    if len(texts) > max_count:
        raise InvalidInput(f"{len(texts)} texts exceed the limit of {max_count}", "too_many_texts")
    for index, text in enumerate(texts):
        if not text.strip():
            raise InvalidInput(f"text {index} is empty", "empty_text")
        if len(text) > settings.max_text_chars:
            raise InvalidInput(
                f"text {index} has {len(text)} characters; the limit is {settings.max_text_chars}",
                "text_too_long",
            )


def check_labels(labels: Sequence[LabelSpec] | None, settings: Settings) -> None:
    """Refuse label sets that would embed more texts than ``max_label_texts`` (422)."""
    count = sum(1 + len(label.examples) for label in labels or ())
    if count > settings.max_label_texts:
        raise InvalidInput(
            f"{count} label texts (names and examples) exceed the limit of"
            f" {settings.max_label_texts}",
            "too_many_label_texts",
        )


TEXT_FILE_TYPES = (".jsonl", ".ndjson", ".json", ".csv", ".txt")


def parse_text_file(filename: str | None, data: bytes, max_texts: int | None = None) -> list[str]:
    """Texts of an uploaded file: JSON Lines or JSON (strings, or objects with ``text``),
    CSV with a ``text`` column (or a single column), or plain text, one per line.

    The format comes from the file name; the content must be UTF-8 with no binary
    signature (a PNG renamed ``.csv`` is refused with 415). Lines are read one by one and
    reading stops past ``max_texts`` (413), so a huge file never becomes a huge list.
    """
    check_text_file(filename, data[:512])
    try:
        content = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UnsupportedMediaType(f"{filename}: the file is not UTF-8 text") from None
    return _at_most(iter_texts(filename, io.StringIO(content, newline=None)), max_texts, filename)


def check_text_file(filename: str | None, head: bytes) -> None:
    """Refuse a text file by its name (no text file type) or its first bytes (a binary
    signature: a PNG renamed ``.csv``), with 415."""
    name = (filename or "").lower()
    if not name.endswith(TEXT_FILE_TYPES):
        raise UnsupportedMediaType(
            f"{filename or 'the file'}: name text files {', '.join(TEXT_FILE_TYPES)}"
        )
    sniffed = filetype.guess(head)
    if sniffed is not None:
        raise UnsupportedMediaType(f"{filename}: expected UTF-8 text, found {sniffed.mime}")


def iter_texts(filename: str | None, content: TextIO) -> Iterator[str]:
    """The texts of a text file (``check_text_file``) read from ``content`` as they come,
    a line at a time but for JSON (one document); what does not parse, or is not UTF-8,
    raises ``InvalidInput`` where it is."""
    kind = next(ext for ext in TEXT_FILE_TYPES if (filename or "").lower().endswith(ext))
    lines = (line.rstrip("\r\n") for line in content)
    texts: Iterator[str]
    try:
        if kind in (".jsonl", ".ndjson"):
            rows = (json.loads(line) for line in lines if line.strip())
            texts = (_text_of(row, filename, i) for i, row in enumerate(rows))
        elif kind == ".json":
            whole = json.load(content)  # bounded by the text file byte limit
            if not isinstance(whole, list):
                raise InvalidInput(f"{filename}: expected a JSON list", "invalid_text_file")
            texts = (_text_of(row, filename, i) for i, row in enumerate(whole))
        elif kind == ".csv":
            texts = _csv_texts(content, filename)
        else:
            texts = (line for line in lines if line.strip())
        yield from texts
    except UnicodeDecodeError:
        raise InvalidInput(f"{filename}: the file is not UTF-8 text", "invalid_text_file") from None
    except (ValueError, csv.Error) as exc:
        raise InvalidInput(f"{filename}: {exc}", "invalid_text_file") from None
    except RecursionError:  # JSON nested deeper than the parser recurses
        raise InvalidInput(f"{filename}: JSON nested too deeply", "invalid_text_file") from None


def _at_most(texts: Iterator[str], limit: int | None, filename: str | None) -> list[str]:
    found: list[str] = []
    for text in texts:
        if limit is not None and len(found) == limit:
            raise PayloadTooLarge(f"{filename}: more than {limit} texts", "too_many_texts")
        found.append(text)
    return found


def _text_of(row: object, filename: str | None, index: int) -> str:
    if isinstance(row, dict):
        row = row.get("text")
    if not isinstance(row, str):
        raise InvalidInput(
            f"{filename}: entry {index} is neither a string nor an object with 'text'",
            "invalid_text_file",
        )
    if not row.isascii():
        try:
            row.encode()
        except UnicodeEncodeError:  # JSON's \ud800 escapes decode to lone surrogates
            raise InvalidInput(
                f"{filename}: entry {index} holds a lone surrogate (not Unicode text)",
                "invalid_text_file",
            ) from None
    return row


def _csv_texts(content: TextIO, filename: str | None) -> Iterator[str]:
    reader = csv.DictReader(content)
    fields = reader.fieldnames or []
    column = "text" if "text" in fields else fields[0] if len(fields) == 1 else None
    if column is None:
        raise InvalidInput(f"{filename}: CSV needs a 'text' column", "invalid_text_file")
    return (row[column] for row in reader if row.get(column))
