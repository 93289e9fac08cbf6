"""What the labeling routes answer: one declaration for the API and the Python client."""

from __future__ import annotations

from pydantic import BaseModel, Field

from modelship.core.messages import Detection, Entity, ImageInfo, LabelScore, ModelInfo


class ModelRef(BaseModel):
    name: str
    version: str = Field(description="Content hash of the model's weights.")


class ClassifyImageResponse(BaseModel):
    request_id: str
    model: ModelRef
    image: ImageInfo
    labels: list[LabelScore]


class ImageLabels(BaseModel):
    index: int
    image: ImageInfo
    labels: list[LabelScore]


class ClassifyImagesResponse(BaseModel):
    request_id: str
    model: ModelRef
    results: list[ImageLabels]


class TextLabels(BaseModel):
    index: int
    labels: list[LabelScore]


class ClassifyTextResponse(BaseModel):
    request_id: str
    model: ModelRef
    results: list[TextLabels]


class DetectResponse(BaseModel):
    request_id: str
    model: ModelRef
    image: ImageInfo
    detections: list[Detection]


class TextEntities(BaseModel):
    index: int
    entities: list[Entity]


class EntitiesResponse(BaseModel):
    request_id: str
    model: ModelRef
    results: list[TextEntities]


class ModelsResponse(BaseModel):
    models: list[ModelInfo]
