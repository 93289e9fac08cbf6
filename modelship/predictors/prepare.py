"""Turning one payload into what a predictor takes, with every input guard, and running a
batch so that an item fails alone, wherever that runs (the Preprocessor, a model replica,
a batch job's actors, in-process)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from functools import cache
from typing import Any

from modelship.core.errors import InvalidInput, ModelShipError
from modelship.core.inputs import decode_image
from modelship.core.messages import (
    ImageInfo,
    ItemOptions,
    ItemResult,
    Output,
    Prepared,
    PreparedImage,
)
from modelship.core.settings import Settings
from modelship.predictors.base import ImagePredictor, Predictor

logger = logging.getLogger("modelship.prepare")


@cache
def decode_slots(limit: int) -> threading.BoundedSemaphore:
    """The process's decode slots: a decoded image may take ``max_image_pixels`` x 4 bytes,
    so however many requests a replica accepts, only this many decode at once."""
    return threading.BoundedSemaphore(limit)


def prepare_image(
    predictor: Predictor[Any, Any], data: bytes, options: ItemOptions, settings: Settings
) -> PreparedImage:
    """Decode (with every guard) and transform one image for ``predictor``."""
    min_side = predictor.input_side if isinstance(predictor, ImagePredictor) else None
    with decode_slots(settings.max_concurrent_decodes):
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


def predict_items(
    predictor: Predictor[Any, Any], batch: Sequence[Prepared], model: str = ""
) -> list[Output | ModelShipError]:
    """``predictor.predict(batch)``; when that raises, each item alone, so an item the
    model cannot take fails by itself (``unprocessable_item``) instead of taking its batch
    with it every time: a job gives back a batch whose call failed without spending its
    items' attempts, so one such item kept its job from ever ending. Raises the batch's
    error when no item runs alone and neither does the health probe: then the model, not
    an item, is at fault (a replica replaced, a job's batch given back)."""
    try:
        return list(predictor.predict(list(batch)))
    except Exception as failure:
        outputs: list[Output | ModelShipError] = []
        for item in batch:
            try:
                outputs.extend(predictor.predict([item]))
            except Exception as exc:
                logger.warning("model %s failed on one item: %r", model, exc)
                outputs.append(
                    InvalidInput("the model could not label this item", "unprocessable_item")
                )
        if all(isinstance(output, ModelShipError) for output in outputs):
            probe = predictor.preprocess(predictor.probe(), predictor.probe_options())
            try:
                predictor.predict([probe])
            except Exception:
                raise failure from None
        failed = sum(isinstance(output, ModelShipError) for output in outputs)
        logger.warning(
            "model %s: a batch of %d raised %r; alone, %d of its items failed",
            model,
            len(batch),
            failure,
            failed,
        )
        return outputs


def label_items(
    predictor: Predictor[Any, Any],
    payloads: Sequence[bytes | str | ModelShipError],
    options: ItemOptions,
    settings: Settings,
) -> list[ItemResult | ModelShipError]:
    """Payloads prepared with every guard and predicted in one batch on the calling thread;
    each item that fails (or an error passed in) comes back as its error, in its place."""
    prepared = [
        p if isinstance(p, ModelShipError) else prepare_payload(predictor, p, options, settings)
        for p in payloads
    ]
    good = [p for p in prepared if not isinstance(p, ModelShipError)]
    outputs = iter(predict_items(predictor, good, predictor.config.name) if good else [])
    results: list[ItemResult | ModelShipError] = []
    for item in prepared:
        if isinstance(item, ModelShipError):
            results.append(item)
        elif isinstance(output := next(outputs), ModelShipError):
            results.append(output)
        else:
            results.append(ItemResult(output, predictor.version, image_info(item)))
    return results
