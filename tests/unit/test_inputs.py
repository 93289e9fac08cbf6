from __future__ import annotations

import io

import pytest
from PIL import Image

from modelship.core.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from modelship.core.inputs import check_texts, decode_image, read_image_header, sniff_image_type
from modelship.core.settings import Settings
from tests.conftest import payload


@pytest.mark.parametrize(
    ("name", "mime"),
    [("cat.jpg", "image/jpeg"), ("cat_small.png", "image/png"), ("bomb.png", "image/png")],
)
def test_sniffs_type_from_magic_bytes(name: str, mime: str) -> None:
    assert sniff_image_type(payload(name)) == mime


@pytest.mark.parametrize("data", [payload("not_an_image.pdf"), b"hello world", b"\x00" * 64])
def test_refuses_what_is_not_an_image(data: bytes) -> None:
    with pytest.raises(UnsupportedMediaType):
        sniff_image_type(data)


def test_decodes_upright_rgb(settings: Settings) -> None:
    decoded = decode_image(payload("cat.jpg"), settings)
    assert (decoded.image.width, decoded.image.height, decoded.image.mode) == (451, 300, "RGB")
    assert decoded.media_type == "image/jpeg"


def test_applies_exif_orientation(settings: Settings) -> None:
    stored_sideways = decode_image(payload("cat_exif_rotated.jpg"), settings).image
    assert stored_sideways.size == (451, 300)


@pytest.mark.parametrize("kind", ["JPEG", "PNG", "TIFF"])
def test_the_header_and_the_decoded_image_agree_on_a_turned_image(
    settings: Settings, kind: str
) -> None:
    """Uploads record the header's size, labels use the decoded one. Pillow turns a TIFF's
    size upright itself, and the header turned it back: a 200x100 TIFF meant to be seen
    as 100x200 was recorded as 200x100."""
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: seen turned a quarter
    buffer = io.BytesIO()
    Image.new("RGB", (200, 100), (10, 20, 30)).save(buffer, format=kind, exif=exif)
    header = read_image_header(buffer.getvalue(), settings)
    decoded = decode_image(buffer.getvalue(), settings)
    assert (header.width, header.height) == (decoded.width, decoded.height) == (100, 200)
    assert decoded.image.size == (100, 200)


def test_a_jpeg_decodes_smaller_for_a_model_that_shrinks_it_anyway(settings: Settings) -> None:
    decoded = decode_image(payload("cat.jpg"), settings, min_side=100)
    assert decoded.image.size == (226, 150)  # half scale: both sides still at least 100
    assert (decoded.width, decoded.height) == (451, 300)  # the file's own size


def test_decoding_smaller_keeps_the_exif_orientation(settings: Settings) -> None:
    decoded = decode_image(payload("cat_exif_rotated.jpg"), settings, min_side=100)
    assert decoded.image.size == (226, 150)
    assert (decoded.width, decoded.height) == (451, 300)


def test_only_jpegs_decode_smaller(settings: Settings) -> None:
    decoded = decode_image(payload("cat_small.png"), settings, min_side=10)
    assert decoded.image.size == (decoded.width, decoded.height) == (150, 100)


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("truncated.jpg", "corrupt_image"),
        ("garbage_after_magic.png", "corrupt_image"),
        ("bomb.png", "decompression_bomb"),
        ("huge_side.png", "image_too_large"),
        ("zero_width.png", "corrupt_image"),
    ],
)
def test_bad_images_are_422_with_a_code(name: str, code: str, settings: Settings) -> None:
    with pytest.raises(InvalidInput) as caught:
        decode_image(payload(name), settings)
    assert caught.value.code == code
    assert caught.value.status == 422


def test_bomb_guard_uses_the_configured_limit(tmp_path: object) -> None:
    strict = Settings(max_image_pixels=100 * 100)
    with pytest.raises(InvalidInput) as caught:
        decode_image(payload("cat.jpg"), strict)
    assert caught.value.code == "decompression_bomb"


def test_image_over_the_byte_limit_is_413() -> None:
    with pytest.raises(PayloadTooLarge):
        decode_image(payload("cat.jpg"), Settings(max_image_bytes=1000))


def test_empty_image_is_422(settings: Settings) -> None:
    with pytest.raises(InvalidInput) as caught:
        decode_image(b"", settings)
    assert caught.value.code == "empty_image"


@pytest.mark.parametrize(
    ("texts", "code"),
    [
        (["fine", "  "], "empty_text"),
        (["x" * 10_001], "text_too_long"),
        (["a"] * 65, "too_many_texts"),
    ],
)
def test_text_limits(texts: list[str], code: str, settings: Settings) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_texts(texts, settings)
    assert caught.value.code == code


def test_texts_within_limits_pass(settings: Settings) -> None:
    check_texts(["a sentence", "another"], settings)


def test_only_the_sniffed_formats_decoder_runs() -> None:
    """Every accepted type names its one PIL decoder; a file sniffed as one type is never
    handed to another plugin."""
    from modelship.core import inputs

    assert set(inputs._PIL_FORMATS) == inputs.IMAGE_TYPES
    assert set(inputs._PIL_FORMATS.values()) <= set(Image.registered_extensions().values())
