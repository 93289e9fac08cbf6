"""Coverage-guided fuzzing (atheris, libFuzzer) of what decodes user bytes.

One input picks its target with its first byte and feeds the rest to it: the image
sniffer, header reader and decoder (``modelship/core/inputs.py``), the text file parser,
and the multipart reading of an upload (``modelship/http/projects.py``), driven in-process
through a Starlette ``Request``. The only allowed outcomes are a result or an exception
that the one error mapper (``modelship/http/errors.py``) answers with a 4xx; anything else
is a crash, and libFuzzer also counts an input over ``-timeout`` seconds or ``-rss_limit_mb``
as one. Run it long with the seeds of ``tests/data``::

    .venv/bin/python -m tests.fuzz.decoders -max_total_time=600

Arguments are libFuzzer's (see ``main``). A crashing input is written as ``crash-<sha1>``
(``-artifact_prefix=``) and replays with ``python -m tests.fuzz.decoders crash-<sha1>``;
once fixed it belongs in ``tests/fuzz/regressions/``, which the tests replay and which
seeds every run.
"""

from __future__ import annotations

import asyncio
import io
import logging
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["modelship", "PIL", "filetype", "starlette", "multipart"]):
    from PIL import Image
    from starlette.requests import Request

    from modelship.core.inputs import (
        TEXT_FILE_TYPES,
        decode_image,
        parse_text_file,
        read_image_header,
        sniff_image_type,
    )
    from modelship.core.settings import Settings
    from modelship.http.errors import translate
    from modelship.http.projects import _read_uploads

DATA = Path(__file__).resolve().parents[1] / "data"
REGRESSIONS = Path(__file__).resolve().parent / "regressions"  # inputs that crashed, now fixed
# The service's own limits, but images of at most 16 MP, so one input decodes in well under
# a second; the guards that refuse bigger ones are the same code.
SETTINGS = Settings(max_image_pixels=16_000_000, max_image_side=8192, max_upload_texts=1000)
BOUNDARY = b"fuzzboundary"
logging.disable(logging.WARNING)  # python-multipart warns of every broken header
warnings.filterwarnings("ignore", category=UserWarning)  # and PIL of every broken tag
_loop = asyncio.new_event_loop()


def _multipart(images: bool) -> Callable[[bytes], object]:
    """``_read_uploads`` on ``data`` as the body of a multipart upload."""

    def read(data: bytes) -> object:
        sent = False

        async def receive() -> dict[str, object]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": data, "more_body": False}

        content_type = b"multipart/form-data; boundary=" + BOUNDARY
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/api/v1/projects/p/items",
            "headers": [(b"content-type", content_type)],
            "query_string": b"",
            "app": None,  # as under an app: a broken body raises HTTPException(400)
        }
        request = Request(scope, receive)
        return _loop.run_until_complete(_read_uploads(request, SETTINGS, images))

    return read


def _text_file(extension: str) -> Callable[[bytes], object]:
    return lambda data: parse_text_file(f"upload{extension}", data, max_texts=1000)


TARGETS: list[tuple[str, Callable[[bytes], object]]] = [
    ("sniff_image_type", sniff_image_type),
    ("read_image_header", lambda data: read_image_header(data, SETTINGS)),
    ("decode_image", lambda data: decode_image(data, SETTINGS)),
    ("decode_image(min_side=224)", lambda data: decode_image(data, SETTINGS, 224)),
    *[(f"parse_text_file({ext})", _text_file(ext)) for ext in TEXT_FILE_TYPES],
    ("_read_uploads(images)", _multipart(images=True)),
    ("_read_uploads(texts)", _multipart(images=False)),
]
_IMAGE_TARGETS = range(4)
_TEXT_TARGETS = range(4, 4 + len(TEXT_FILE_TYPES))


def one_input(data: bytes) -> None:
    """Fuzz one input: ``data[0]`` picks the target, the rest is its bytes."""
    if not data:
        return
    name, target = TARGETS[data[0] % len(TARGETS)]
    try:
        target(data[1:])
    except Exception as exc:
        if translate(exc).status >= 500:
            raise AssertionError(f"{name} raised {exc!r}, which answers a 5xx") from exc


def seed_corpus(directory: Path) -> None:
    """Every file of ``tests/data`` for every image target, text files for the text targets,
    and both as parts of a multipart body."""
    images = [p.read_bytes() for p in sorted(DATA.iterdir()) if p.suffix in {".jpg", ".png"}]
    images += [_tiny(fmt) for fmt in ("GIF", "BMP", "TIFF", "WEBP")]
    texts = [
        (DATA / "reviews.jsonl").read_bytes(),
        b'["one", {"text": "two"}]',
        b'id,text\n1,hello\n2,"a, b"\n',
        b"\xef\xbb\xbfplain line\nanother\r\n",
    ]
    seeds: list[bytes] = []
    for index in _IMAGE_TARGETS:
        seeds += [bytes([index]) + image for image in images]
    for index in _TEXT_TARGETS:
        seeds += [bytes([index]) + text for text in texts]
    seeds += [bytes([len(TARGETS) - 2]) + _form(image, "a.png") for image in images[:3]]
    seeds += [bytes([len(TARGETS) - 1]) + _form(text, "t.jsonl") for text in texts]
    seeds += [p.read_bytes() for p in sorted(REGRESSIONS.iterdir())]
    for number, seed in enumerate(seeds):
        (directory / f"seed-{number:03d}").write_bytes(seed)


def _tiny(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (6, 4), (200, 40, 90)).save(buffer, format=fmt)
    return buffer.getvalue()


def _form(content: bytes, filename: str) -> bytes:
    head = (
        b"--"
        + BOUNDARY
        + b'\r\nContent-Disposition: form-data; name="file"; filename="'
        + filename.encode()
        + b'"\r\nContent-Type: application/octet-stream\r\n\r\n'
    )
    return head + content + b"\r\n--" + BOUNDARY + b"--\r\n"


def main(argv: list[str]) -> None:
    """libFuzzer's command line; the first directory given (else one under the system's
    temporary folder, kept between runs) is the corpus, seeded first. Files instead of a
    directory are replayed once each."""
    args = list(argv)
    inputs = [Path(a) for a in args[1:] if not a.startswith("-")]
    if not inputs:
        inputs = [Path(tempfile.gettempdir()) / "modelship-fuzz-decoders"]
        args.append(str(inputs[0]))
    if inputs[0].is_dir() or not inputs[0].exists():
        inputs[0].mkdir(parents=True, exist_ok=True)
        seed_corpus(inputs[0])
    atheris.Setup(args, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
