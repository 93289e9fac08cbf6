"""The labeling graph in one process: the same predictors and checks, no Ray.

Used by tests of the HTTP layer and by anything that labels without a cluster.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from modelship.core.config import ModelConfig
from modelship.core.errors import InvalidInput, ModelShipError, request_results
from modelship.core.inputs import decode_image
from modelship.core.messages import (
    ImageInfo,
    ItemOptions,
    ItemResult,
    ModelInfo,
    Prepared,
    PreparedImage,
)
from modelship.core.settings import Settings
from modelship.predictors import ModelStore, Predictor, build_predictor
from modelship.predictors.base import ImagePredictor

logger = logging.getLogger("modelship.local")


def prepare_image(
    predictor: Predictor[Any, Any], data: bytes, options: ItemOptions, settings: Settings
) -> PreparedImage:
    """Decode (with every guard) and transform one image for ``predictor``."""
    min_side = predictor.input_side if isinstance(predictor, ImagePredictor) else None
    decoded = decode_image(data, settings, min_side)
    prepared: PreparedImage = predictor.preprocess(decoded.image, options)
    prepared.media_type = decoded.media_type
    prepared.width, prepared.height = decoded.width, decoded.height
    return prepared


def prepare_payload(
    predictor: Predictor[Any, Any], payload: bytes | str, options: ItemOptions, settings: Settings
) -> Prepared | ModelShipError:
    """One item prepared, or the error it causes: a bad item must not sink the others in
    its call (a job's batch, or requests sharing a call)."""
    try:
        if isinstance(payload, str):
            prepared: Prepared = predictor.preprocess(payload, options)
            return prepared
        return prepare_image(predictor, payload, options, settings)
    except ModelShipError as exc:
        return exc
    except Exception as exc:  # a file that passed the guards but still breaks the transform
        logger.warning("could not prepare an item: %r", exc)
        return InvalidInput("the item could not be prepared for the model", "unprocessable_item")


def image_info(item: Prepared) -> ImageInfo | None:
    if isinstance(item, PreparedImage):
        return ImageInfo(width=item.width, height=item.height, media_type=item.media_type)
    return None


class LocalBackend:
    """A ``LabelingBackend`` that runs every model in this process."""

    def __init__(self, configs: Sequence[ModelConfig], settings: Settings) -> None:
        self._configs = list(configs)
        self._settings = settings
        store = ModelStore(settings.models_dir)
        self._predictors: dict[str, Predictor[Any, Any]] = {}
        for config in configs:
            predictor = build_predictor(config, store.resolve(config.source))
            predictor.load()
            self._predictors[config.name] = predictor

    @property
    def configs(self) -> list[ModelConfig]:
        return self._configs

    def predictor(self, name: str) -> Predictor[Any, Any]:
        return self._predictors[name]

    async def label_images(
        self, config: ModelConfig, images: list[bytes], options: ItemOptions
    ) -> list[ItemResult]:
        predictor = self._predictors[config.name]
        prepared = [prepare_payload(predictor, data, options, self._settings) for data in images]
        items: list[Prepared] = request_results(images, prepared)
        outputs = predictor.predict(items)
        return [
            ItemResult(output, predictor.version, image_info(item))
            for output, item in zip(outputs, items, strict=True)
        ]

    async def label_texts(
        self, config: ModelConfig, texts: list[str], options: ItemOptions
    ) -> list[ItemResult]:
        predictor = self._predictors[config.name]
        items = [predictor.preprocess(text, options) for text in texts]
        outputs = predictor.predict(items)
        return [ItemResult(output, predictor.version) for output in outputs]

    async def model_infos(self) -> list[ModelInfo]:
        return [
            ModelInfo(
                name=config.name,
                task=config.task,
                version=self._predictors[config.name].version,
                labels=self._predictors[config.name].labels(),
                batching=config.batching,
                device=self._predictors[config.name].device,
                ready=True,
            )
            for config in self._configs
        ]


class LocalLabeler:
    """A job runner ``Labeler`` over a ``LocalBackend``'s in-process predictors."""

    def __init__(self, backend: LocalBackend, settings: Settings) -> None:
        self._backend = backend
        self._settings = settings

    async def version(self, model: str) -> str:
        return self._backend.predictor(model).version

    async def label(
        self, model: str, payloads: list[Any], options: ItemOptions
    ) -> list[ItemResult | ModelShipError]:
        predictor = self._backend.predictor(model)
        prepared = [prepare_payload(predictor, p, options, self._settings) for p in payloads]
        good = [p for p in prepared if not isinstance(p, ModelShipError)]
        outputs = iter(await asyncio.to_thread(predictor.predict, good) if good else [])
        return [
            p
            if isinstance(p, ModelShipError)
            else ItemResult(next(outputs), predictor.version, image_info(p))
            for p in prepared
        ]
