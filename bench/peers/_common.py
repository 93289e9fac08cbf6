"""What both peer servers share: the workload's model, built from ModelShip's own predictors.

The peers must run the very same model code as ModelShip, so the only thing that differs
between the three systems is the serving layer. This module imports only ``modelship``'s
plain-Python parts (predictors, inputs, schemas, settings), never Ray or FastAPI, so it
also works in the BentoML virtualenv.

Environment: ``BENCH_WORKLOAD`` (``text`` or ``image``; required), ``BENCH_LABELS``
(comma-separated candidate labels, default ``positive,negative,neutral``) and
``BENCH_TORCH_THREADS`` (default 2).
"""

from __future__ import annotations

import base64
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from modelship.core.config import LabelSpec, ModelConfig, Task
from modelship.core.messages import ItemOptions, Output
from modelship.core.settings import Settings
from modelship.predictors import ModelStore, Predictor, build_predictor
from modelship.predictors.prepare import prepare_image

Workload = Literal["text", "image"]
AnyPredictor = Predictor[Any, Any]
JsonResult = list[dict[str, Any]]

TEXT_TOP_K = 3
IMAGE_TOP_K = 5


def workload() -> Workload:
    """The workload this process serves; refusing a missing or unknown value early."""
    value = os.environ.get("BENCH_WORKLOAD", "")
    if value not in ("text", "image"):
        raise SystemExit(f"set BENCH_WORKLOAD to 'text' or 'image' (got {value!r})")
    return value  # type: ignore[return-value]


def bench_labels() -> tuple[LabelSpec, ...]:
    """Candidate labels, fixed for the server's lifetime (same for every request)."""
    raw = os.environ.get("BENCH_LABELS", "positive,negative,neutral")
    return tuple(LabelSpec(name=name.strip()) for name in raw.split(",") if name.strip())


def model_config(kind: Workload) -> ModelConfig:
    """The same model configuration ModelShip serves for this workload."""
    if kind == "text":
        return ModelConfig(
            name="minilm",
            task=Task.zero_shot_text_classification,
            source="packaged:all-minilm-l6-v2",
            labels=list(bench_labels()),
        )
    return ModelConfig(
        name="efficientnet-lite0",
        task=Task.image_classification,
        source="packaged:efficientnet-lite0",
    )


def load_predictor(kind: Workload) -> AnyPredictor:
    """Build, load and warm the workload's predictor on CPU.

    The warm-up predict computes the label prototypes and touches every weight once, so
    the first timed request does not pay for them (ModelShip's replicas warm up too).
    """
    torch.set_num_threads(int(os.environ.get("BENCH_TORCH_THREADS", "2")))
    config = model_config(kind)
    # Packaged sources resolve inside site-packages; the cache directory is never written.
    store = ModelStore(Path(tempfile.gettempdir()) / "bench-peer-model-cache")
    predictor = build_predictor(config, store.resolve(config.source))
    predictor.load()
    options = text_options() if kind == "text" else image_options()
    predictor.predict([predictor.preprocess(predictor.probe(), options)])
    return predictor


def text_options() -> ItemOptions:
    return ItemOptions(top_k=TEXT_TOP_K, labels=bench_labels())


def image_options() -> ItemOptions:
    return ItemOptions(top_k=IMAGE_TOP_K)


_SETTINGS = Settings()


def prepare_texts(predictor: AnyPredictor, texts: Sequence[str]) -> list[Any]:
    options = text_options()
    return [predictor.preprocess(text, options) for text in texts]


def prepare_images(predictor: AnyPredictor, images_b64: Sequence[str]) -> list[Any]:
    """Decode and preprocess base64 image files exactly as ModelShip's Preprocessor does."""
    options = image_options()
    return [
        prepare_image(predictor, base64.b64decode(item), options, _SETTINGS) for item in images_b64
    ]


def to_json(outputs: Sequence[Output]) -> list[JsonResult]:
    return [[{"label": ls.label, "score": ls.score} for ls in output] for output in outputs]
