"""Labeling now: images and texts labeled in one request, nothing stored."""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modelship.client._base import API, Base, Labels, R, label_specs
from modelship.client._protocol import FilePart, Operation, Request, send
from modelship.core.labeling import (
    ClassifyImageResponse,
    ClassifyImagesResponse,
    ClassifyTextResponse,
    DetectResponse,
    EntitiesResponse,
    ModelsResponse,
)
from modelship.core.messages import ModelInfo

Image = bytes | str | os.PathLike[str]
"""An image's bytes, or the path of its file."""


def file_part(source: Image | Path, index: int) -> FilePart:
    """A multipart ``file`` field; the server sniffs the type from the bytes."""
    if isinstance(source, bytes):
        return ("file", (f"image-{index}", source, "application/octet-stream"))
    path = Path(source)
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return ("file", (path.name, path.read_bytes(), media_type))


def _texts(text: str | Sequence[str], **options: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"text": text} if isinstance(text, str) else {"texts": list(text)}
    return body | {name: value for name, value in options.items() if value is not None}


class Labeling(Base):
    def models(self) -> Operation[list[ModelInfo]]:
        """The configured models: task, labels, version (weights hash), readiness."""
        answer = yield from self._get(f"{API}/models", ModelsResponse)
        return answer.models

    def _images(
        self, route: str, images: Sequence[Image], answer: type[R], **options: object
    ) -> Operation[R]:
        files = [file_part(image, index) for index, image in enumerate(images)]
        form = {name: str(value) for name, value in options.items() if value is not None}
        reply = yield from send(
            Request("POST", f"{API}/{route}", data=form, files=files), self.retry
        )
        return reply.parse(answer)

    def classify_image(
        self,
        image: Image,
        *,
        model: str | None = None,
        top_k: int | None = None,
        score_threshold: float | None = None,
    ) -> Operation[ClassifyImageResponse]:
        """Top labels of one image (bytes or a file path)."""
        options = {"model": model, "top_k": top_k, "score_threshold": score_threshold}
        return (
            yield from self._images("classify/image", [image], ClassifyImageResponse, **options)
        )

    def classify_images(
        self,
        images: Sequence[Image],
        *,
        model: str | None = None,
        top_k: int | None = None,
        score_threshold: float | None = None,
    ) -> Operation[ClassifyImagesResponse]:
        """Top labels of several images in one request (the server takes up to 32)."""
        options = {"model": model, "top_k": top_k, "score_threshold": score_threshold}
        return (
            yield from self._images("classify/images", images, ClassifyImagesResponse, **options)
        )

    def detect(
        self,
        image: Image,
        *,
        model: str | None = None,
        top_k: int | None = None,
        score_threshold: float | None = None,
    ) -> Operation[DetectResponse]:
        """Boxes ``[x, y, w, h]`` in pixels of the original image, with label and score."""
        options = {"model": model, "top_k": top_k, "score_threshold": score_threshold}
        return (yield from self._images("detect", [image], DetectResponse, **options))

    def classify_text(
        self,
        text: str | Sequence[str],
        *,
        model: str | None = None,
        labels: Labels | None = None,
        top_k: int | None = None,
    ) -> Operation[ClassifyTextResponse]:
        """Labels of one text or several; ``labels``: candidates of a zero-shot model."""
        specs = label_specs(labels)
        candidates = [s.model_dump(exclude_defaults=True) for s in specs] if specs else None
        body = _texts(text, model=model, labels=candidates, top_k=top_k)
        return (yield from self._post(f"{API}/classify/text", ClassifyTextResponse, body))

    def entities(
        self, text: str | Sequence[str], *, model: str | None = None, top_k: int | None = None
    ) -> Operation[EntitiesResponse]:
        """Named entities of one text or several, with character offsets."""
        body = _texts(text, model=model, top_k=top_k)
        return (yield from self._post(f"{API}/entities", EntitiesResponse, body))
