"""What every predictor is: plain Python, no Ray. The Serve replica and batch jobs wrap it.

Lifecycle: ``load_processor()`` (cheap: tokenizer or image transform, enough for the
Preprocessor deployment), ``load()`` (the weights, for ModelReplica), then
``preprocess(raw, options)`` per item and ``predict(batch)`` per batch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence, Sized
from typing import ClassVar, Generic, TypeVar

import torch
from PIL import Image

from modelship.core.config import ModelConfig, Task
from modelship.core.messages import (
    ItemOptions,
    LabelScore,
    Output,
    Prepared,
    PreparedImage,
    PreparedText,
)
from modelship.predictors.store import ModelFiles

P = TypeVar("P", PreparedImage, PreparedText)
Raw = TypeVar("Raw", Image.Image, str)


def torch_dtype(device: str) -> torch.dtype:
    """bf16 where the GPU supports it, fp16 on other GPUs, fp32 on CPU."""
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


class Predictor(ABC, Generic[Raw, P]):
    task: ClassVar[Task]

    def __init__(self, config: ModelConfig, files: ModelFiles, device: str = "cpu") -> None:
        self.config = config
        self.files = files
        self.device = device
        self.dtype = torch_dtype(device)

    @property
    def version(self) -> str:
        return self.files.version

    @abstractmethod
    def load_processor(self) -> None:
        """Load what ``preprocess`` needs, and nothing heavier."""

    @abstractmethod
    def load(self) -> None:
        """Load the weights (and the processor) onto ``self.device``."""

    @abstractmethod
    def preprocess(self, raw: Raw, options: ItemOptions) -> P:
        """Turn one decoded input into what ``predict`` consumes."""

    @abstractmethod
    def predict(self, batch: Sequence[P]) -> list[Output]:
        """Label a batch; one output per input, in order."""

    def labels(self) -> list[str] | None:
        """The labels this model can output, when it has a fixed set."""
        return None

    @abstractmethod
    def probe(self) -> Raw:
        """A tiny valid input, used by health checks to prove the model still runs."""

    def probe_options(self) -> ItemOptions:
        """Options for the health-check probe: the model's configured defaults."""
        return ItemOptions(
            top_k=self.config.top_k,
            score_threshold=self.config.score_threshold,
            labels=tuple(self.config.labels) if self.config.labels else None,
        )


class ImagePredictor(Predictor[Image.Image, PreparedImage], ABC):
    # The side ``preprocess`` shrinks every image to whatever its size, if it does: images
    # may then be decoded smaller, down to that side (``decode_image``'s ``min_side``).
    input_side: ClassVar[int | None] = None

    def probe(self) -> Image.Image:
        return Image.new("RGB", (64, 48), (127, 127, 127))


class TextPredictor(Predictor[str, PreparedText], ABC):
    def probe(self) -> str:
        return "a short sentence to check the model"


def batching_order(items: Sequence[Prepared]) -> list[int]:
    """Indices of ``items`` with alike ones next to each other: texts by length, images by
    input shape. Batches cut in this order from a queue carry little padding (figures:
    docs/benchmark.md, "Batching order")."""

    def shape(item: Prepared) -> tuple[int, ...]:
        return (len(item),) if isinstance(item, PreparedText) else item.pixel_values.shape

    return sorted(range(len(items)), key=lambda i: shape(items[i]))


def length_sorted_chunks(
    items: Sequence[Sized], max_tokens: int = 16_384, max_growth: float = 1.3
) -> Iterator[list[int]]:
    """Indices of ``items`` grouped by similar length, so little of each group is padding.

    Items are sorted by length; a group closes when the next item is more than
    ``max_growth`` times (plus a few tokens) longer than the group's first, or when the
    padded group would exceed ``max_tokens``. Padding dominates mixed-length batches on
    CPU: one batch of 32 texts padded to its longest ran at a fifth of the sorted speed.
    """
    order = sorted(range(len(items)), key=lambda i: len(items[i]))
    chunk: list[int] = []
    for index in order:
        length = max(len(items[index]), 1)
        if chunk and (
            length > max_growth * len(items[chunk[0]]) + 8 or (len(chunk) + 1) * length > max_tokens
        ):
            yield chunk
            chunk = []
        chunk.append(index)
    if chunk:
        yield chunk


def pad(
    items: Sequence[PreparedText], pad_id: int, device: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token ids into ``input_ids`` and ``attention_mask`` tensors."""
    width = max(max(len(item) for item in items), 1)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, item in enumerate(items):
        ids[row, : len(item)] = torch.tensor(item.input_ids, dtype=torch.long)
        mask[row, : len(item)] = 1
    return ids.to(device), mask.to(device)


def top_k(scores: torch.Tensor, names: Sequence[str], k: int) -> list[LabelScore]:
    """The ``k`` best of a 1-D score vector, best first."""
    values, indices = scores.float().topk(min(k, scores.shape[-1]))
    return [
        LabelScore(label=names[i], score=v)
        for v, i in zip(values.tolist(), indices.tolist(), strict=True)
    ]
