"""Turning one payload into what a predictor takes, with every input guard, wherever that
runs (the Preprocessor, a model replica, in-process)."""

from __future__ import annotations

import logging
import threading
from functools import cache
from typing import Any

from modelship.core.errors import InvalidInput, ModelShipError
from modelship.core.inputs import decode_image
from modelship.core.messages import ImageInfo, ItemOptions, Prepared, PreparedImage
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
