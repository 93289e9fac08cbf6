"""The inputs every system is measured on: the same bytes, generated from a fixed seed."""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

Kind = Literal["text", "image"]
LABELS = ("positive", "negative", "neutral")

_CORPUS = (
    "the service was quick and friendly but the food arrived cold so we asked for a "
    "refund delivery took three weeks and the package was damaged when it finally reached "
    "our door great value for money would definitely recommend this product to friends "
    "and family battery life is shorter than advertised although the screen is bright and "
    "sharp customer support answered within minutes and solved the billing problem "
    "politely the meeting was moved to thursday afternoon because the quarterly report is "
    "not ready prices rose again this month while wages stayed flat for most workers in "
    "the region"
)
_WORDS = _CORPUS.split()


@dataclass(frozen=True)
class Workload:
    kind: Kind
    items: tuple[bytes | str, ...]

    def pick(self, rng: random.Random, count: int) -> list[bytes | str]:
        return [self.items[rng.randrange(len(self.items))] for _ in range(count)]


def texts(count: int = 2000, seed: int = 7) -> Workload:
    """Review-like texts whose lengths spread like real ones: most short, a long tail.

    Word counts are log-normal (median about 18 words, 1% above 150), so padding matters
    exactly as it does in production traffic.
    """
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(mean=np.log(18), sigma=0.9, size=count), 3, 250)
    items = tuple(
        " ".join(rng.choice(_WORDS, size=int(n))).capitalize() + "." for n in lengths.astype(int)
    )
    return Workload("text", items)


def images(count: int = 64, seed: int = 7) -> Workload:
    """JPEGs of real photos at mixed sizes (about 120 to 1600 pixels a side)."""
    from skimage import data

    photos = [
        data.chelsea(),
        data.coffee(),
        data.astronaut(),
        data.rocket(),
        data.immunohistochemistry(),
    ]
    rng = random.Random(seed)
    items = []
    for index in range(count):
        photo = Image.fromarray(photos[index % len(photos)])
        scale = rng.uniform(0.3, 3.0)
        size = (max(32, int(photo.width * scale)), max(32, int(photo.height * scale)))
        buffer = io.BytesIO()
        photo.resize(size, Image.Resampling.BILINEAR).save(buffer, format="JPEG", quality=88)
        items.append(buffer.getvalue())
    return Workload("image", tuple(items))


def build(kind: Kind, quick: bool = False) -> Workload:
    if kind == "text":
        return texts(400 if quick else 2000)
    return images(16 if quick else 64)
