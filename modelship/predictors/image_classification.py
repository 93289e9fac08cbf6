"""Image classification: any Hugging Face image classifier, and packaged EfficientNet-Lite0."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from importlib import resources

import numpy as np
import torch
from PIL import Image

from modelship.predictors.base import ImagePredictor, top_k
from modelship.schemas import ItemOptions, LabelScore, PreparedImage, Task


class _ImageClassifier(ImagePredictor):
    task = Task.image_classification
    _names: list[str]

    @abstractmethod
    def _logits(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def predict(self, batch: Sequence[PreparedImage]) -> list[list[LabelScore]]:  # type: ignore[override]
        pixels = torch.from_numpy(np.stack([item.pixel_values for item in batch]))
        with torch.inference_mode():
            logits = self._logits(pixels.to(self.device, self.dtype))
        probs = logits.float().softmax(-1).cpu()
        return [
            top_k(p, self._names, item.options.top_k) for p, item in zip(probs, batch, strict=True)
        ]

    def labels(self) -> list[str]:
        return list(self._names)


class HFImageClassifier(_ImageClassifier):
    """Any ``AutoModelForImageClassification`` directory with its image processor."""

    def load_processor(self) -> None:
        from transformers import AutoImageProcessor

        self._processor = AutoImageProcessor.from_pretrained(self.files.path)

    def load(self) -> None:
        from transformers import AutoModelForImageClassification

        self.load_processor()
        model = AutoModelForImageClassification.from_pretrained(self.files.path, dtype=self.dtype)
        self._model = model.to(self.device).eval()
        id2label = self._model.config.id2label
        self._names = [str(id2label[i]) for i in range(len(id2label))]

    def preprocess(self, raw: Image.Image, options: ItemOptions) -> PreparedImage:
        pixels = self._processor(images=raw, return_tensors="np")["pixel_values"][0]
        return PreparedImage(pixels, raw.width, raw.height, "", options)

    def _logits(self, pixels: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self._model(pixel_values=pixels).logits
        return logits


def imagenet_labels() -> list[str]:
    """ImageNet-1k class names in class-index order (WordNet lemmas)."""
    text = resources.files("modelship.data").joinpath("imagenet_labels.txt").read_text()
    return [line.split("\t", 1)[1] for line in text.splitlines()]


class EfficientNetLite0(_ImageClassifier):
    """The packaged ImageNet EfficientNet-Lite0 (224 px, inputs scaled to [-1, 1])."""

    size = input_side = 224

    def load_processor(self) -> None:
        self._names = imagenet_labels()

    def load(self) -> None:
        from efficientnet_lite_pytorch import EfficientNet

        self.load_processor()
        model = EfficientNet.from_name("efficientnet-lite0")
        state = torch.load(self.files.path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        self._model = model.to(self.device, self.dtype).eval()

    def preprocess(self, raw: Image.Image, options: ItemOptions) -> PreparedImage:
        resized = raw.convert("RGB").resize((self.size, self.size), Image.Resampling.BICUBIC)
        pixels = np.asarray(resized, dtype=np.float32) / 127.5 - 1.0
        return PreparedImage(pixels.transpose(2, 0, 1).copy(), raw.width, raw.height, "", options)

    def _logits(self, pixels: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self._model(pixels)
        return logits
