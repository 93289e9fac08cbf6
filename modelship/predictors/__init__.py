"""Predictors: one plain-Python class per task, chosen from a model's configuration."""

from __future__ import annotations

from typing import Any

from modelship.core.config import ModelConfig, Task
from modelship.core.errors import ConfigurationError
from modelship.predictors.base import Predictor
from modelship.predictors.store import ModelFiles, ModelStore

__all__ = ["ModelFiles", "ModelStore", "Predictor", "build_predictor"]

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
