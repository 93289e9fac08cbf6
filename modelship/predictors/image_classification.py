"""Image classification: any Hugging Face image classifier, and packaged EfficientNet-Lite0."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from importlib import resources

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from modelship.core.config import Task
from modelship.core.messages import ItemOptions, LabelScore, PreparedImage
from modelship.predictors.base import ImagePredictor, top_k


class _ImageClassifier(ImagePredictor):
    task = Task.image_classification
    _names: list[str]

    @abstractmethod
    def _logits(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def pixels(self, batch: Sequence[PreparedImage]) -> torch.Tensor:
        """The batch as the model's input tensor, on its device."""
        return self._stacked(batch).to(self.dtype)

    def _stacked(self, batch: Sequence[PreparedImage]) -> torch.Tensor:
        return torch.from_numpy(np.stack([item.pixel_values for item in batch])).to(self.device)

    def predict(self, batch: Sequence[PreparedImage]) -> list[list[LabelScore]]:  # type: ignore[override]
        with torch.inference_mode():
            logits = self._logits(self.pixels(batch))
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
    text = resources.files("modelship.predictors.data").joinpath("imagenet_labels.txt").read_text()
    return [line.split("\t", 1)[1] for line in text.splitlines()]


# (convolution, batch norm after it) attribute pairs in efficientnet_lite_pytorch's modules.
_CONV_BN = (
    ("_conv_stem", "_bn0"),
    ("_expand_conv", "_bn0"),
    ("_depthwise_conv", "_bn1"),
    ("_project_conv", "_bn2"),
    ("_conv_head", "_bn1"),
)


def fold_for_inference(model: nn.Module) -> nn.Module:
    """The same function in fewer ops (an eval-mode EfficientNet-Lite): each batch norm
    folded into the convolution before it, static "same" padding into the convolution's
    own, and the ReLU6s in place (each clamps a fresh convolution output).

    The stride-2 convolutions pad one more pixel after than before (right, bottom). Such a
    convolution equals one whose kernel is a row and a column wider, zero first, padded
    the larger amount on both sides: no padded copy of the activations is made, and the
    outputs are bit for bit the same. Outputs stay within 1e-5 of the original; the
    speed-up is in docs/benchmark.md.
    """
    for module in list(model.modules()):
        for conv_name, bn_name in _CONV_BN:
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(module, bn_name, nn.Identity())
    for module in model.modules():
        if isinstance(module, nn.Hardtanh):  # nn.ReLU6 is one
            module.inplace = True
        pad = getattr(module, "static_padding", None)
        if not (isinstance(module, nn.Conv2d) and isinstance(pad, nn.ZeroPad2d)):
            continue
        left, right, top, bottom = pad.padding
        if (right - left, bottom - top) == (1, 1):
            weight = nn.functional.pad(module.weight.detach(), (1, 0, 1, 0))
            module.weight = nn.Parameter(weight, requires_grad=False)
            module.kernel_size = tuple(weight.shape[-2:])
            left, top = right, bottom
        if left == right and top == bottom:
            module.padding = (top, left)
            module.static_padding = nn.Identity()
    return model


class EfficientNetLite0(_ImageClassifier):
    """The packaged ImageNet EfficientNet-Lite0 (224 px, inputs scaled to [-1, 1]).

    Prepared images stay 8-bit RGB, height x width x channels, and are scaled on the
    model's device: a quarter of the bytes between the Preprocessor and the replica. The
    batch reaches the model channels-last, as the weights are (both measured in
    docs/benchmark.md).
    """

    size = input_side = 224

    def load_processor(self) -> None:
        self._names = imagenet_labels()

    def load(self) -> None:
        from efficientnet_lite_pytorch import EfficientNet

        self.load_processor()
        model = EfficientNet.from_name("efficientnet-lite0")
        state = torch.load(self.files.path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        model = fold_for_inference(model.eval()).to(self.device, self.dtype)
        self._model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def preprocess(self, raw: Image.Image, options: ItemOptions) -> PreparedImage:
        resized = raw.convert("RGB").resize((self.size, self.size), Image.Resampling.BICUBIC)
        return PreparedImage(np.asarray(resized), raw.width, raw.height, "", options)

    def pixels(self, batch: Sequence[PreparedImage]) -> torch.Tensor:
        """8-bit images (N, H, W, C) to [-1, 1] floats, (N, C, H, W) in channels-last."""
        scaled = self._stacked(batch).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return scaled.to(self.dtype).contiguous(memory_format=torch.channels_last)

    def _logits(self, pixels: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self._model(pixels)
        return logits
