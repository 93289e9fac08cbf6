"""HTTP request bodies of the labeling routes, health and error bodies (the labeling
answers are in ``modelship.core.labeling``, shared with the Python client)."""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, Field, model_validator

from modelship.core.config import Inbound, LabelSpec, Name, unique_labels

# --- HTTP requests --------------------------------------------------------------------


class ImageParams(Inbound):
    """Options of an image request (JSON fields, or form fields beside multipart files)."""

    model: Name | None = Field(None, description="Configured model name; default: the first.")
    top_k: int | None = Field(None, ge=1, le=100)
    score_threshold: float | None = Field(None, ge=0, le=1)


class ImageRequest(ImageParams):
    """One image sent as JSON instead of multipart."""

    image_base64: str = Field(min_length=1, description="The image file's bytes, base64.")


class ImagesRequest(ImageParams):
    """Several images sent as JSON instead of multipart."""

    images_base64: list[str] = Field(min_length=1, description="Image files' bytes, base64.")


class TextRequest(Inbound):
    """One text (``text``) or a list (``texts``), never both."""

    text: str | None = None
    texts: list[str] | None = Field(None, min_length=1)
    model: Name | None = None
    labels: list[LabelSpec] | None = Field(
        None, min_length=1, max_length=1000, description="Candidate labels (zero-shot)."
    )
    top_k: int | None = Field(None, ge=1, le=100)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if (self.text is None) == (self.texts is None):
            raise ValueError("send exactly one of 'text' or 'texts'")
        unique_labels(self.labels)
        return self

    @property
    def all_texts(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])


# --- HTTP responses -------------------------------------------------------------------


class HealthResponse(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)


class ErrorBody(BaseModel):
    code: str
    message: str
    request_id: str


class ErrorResponse(BaseModel):
    error: ErrorBody
