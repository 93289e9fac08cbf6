"""Predictors: one plain-Python class per task, chosen from a model's configuration."""

from __future__ import annotations

from typing import Any

from modelship.core.config import BatchingConfig, ModelConfig, Task
from modelship.core.errors import ConfigurationError
from modelship.core.messages import ModelInfo
from modelship.predictors.base import Predictor
from modelship.predictors.store import ModelFiles, ModelStore

__all__ = ["ModelFiles", "ModelStore", "Predictor", "build_predictor", "describe"]

AnyPredictor = Predictor[Any, Any]


def build_predictor(config: ModelConfig, files: ModelFiles, device: str = "cpu") -> AnyPredictor:
    """The predictor class for a model's task and file layout (not loaded yet)."""
    from modelship.predictors import (
        detection,
        image_classification,
        text_classification,
        token_classification,
        zero_shot,
    )

    single_file = files.path.is_file()
    suffix = files.path.suffix
    cls: type[AnyPredictor]
    match config.task:
        case Task.image_classification if single_file and suffix in {".pth", ".pt"}:
            cls = image_classification.EfficientNetLite0
        case Task.image_classification:
            cls = image_classification.HFImageClassifier
        case Task.object_detection if single_file and suffix == ".onnx":
            cls = detection.YoloOnnxDetector
        case Task.object_detection:
            cls = detection.HFObjectDetector
        case Task.zero_shot_text_classification:
            cls = zero_shot.EmbeddingZeroShotClassifier
        case Task.text_classification:
            cls = text_classification.HFTextClassifier
        case Task.token_classification:
            cls = token_classification.HFTokenClassifier
    if single_file and not issubclass(
        cls, (image_classification.EfficientNetLite0, detection.YoloOnnxDetector)
    ):
        raise ConfigurationError(f"{config.task} models need a model directory, not a file")
    return cls(config, files, device)


def describe(
    config: ModelConfig, predictor: AnyPredictor | None, batching: BatchingConfig | None = None
) -> ModelInfo:
    """What ``/api/v1/models`` says of a model: from its loaded predictor, or from its
    configuration alone (not ready) when no replica answered."""
    if predictor is None:
        labels = [label.name for label in config.labels] if config.labels else None
        return ModelInfo(
            name=config.name,
            task=config.task,
            version=None,
            labels=labels,
            batching=batching or config.batching,
            device=None,
            ready=False,
        )
    return ModelInfo(
        name=config.name,
        task=config.task,
        version=predictor.version,
        labels=predictor.labels(),
        batching=batching or config.batching,
        device=predictor.device,
        ready=True,
    )
