"""The second pass of a batch job: a Ray Data actor holding one loaded predictor, the
class a model replica uses, labeling batches of stored items."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from typing import Any

import numpy as np
import torch

from modelship.core.config import ModelConfig
from modelship.core.errors import ConfigurationError, ModelShipError, ServiceUnavailable
from modelship.core.settings import Settings
from modelship.predictors import ModelStore, build_predictor
from modelship.predictors.prepare import label_items
from modelship.service.runner import item_options
from storage.objects import ObjectNotFound, ObjectStore

logger = logging.getLogger("modelship.batch")


class LabelActor:
    """``map_batches`` callable class: loads the model once per actor, as a replica does
    (threads, device, version), then labels each batch.

    Args:
        config: the model.
        settings: where models are cached, decode limits, object store options.
        objects_url: the object store holding the items' files.
        version: the model version the job records; another one loaded is an error.
        options: the job's options (``runner.job_options``).
    """

    def __init__(
        self,
        config: ModelConfig,
        settings: Settings,
        objects_url: str,
        version: str,
        options: dict[str, Any],
    ) -> None:
        torch.set_num_threads(config.torch_threads or max(1, math.ceil(config.num_cpus)))
        device = "cuda" if config.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        files = ModelStore(settings.models_dir).resolve(config.source)
        if files.version != version:
            raise ConfigurationError(f"{config.name} is {files.version} here, not {version}")
        self._predictor = build_predictor(config, files, device)
        self._predictor.load()
        self._settings = settings
        self._options = item_options(options)
        self._objects = ObjectStore(objects_url, settings.object_store_options)
        self._loop = asyncio.new_event_loop()
        logger.info("label actor loaded %s (%s) on %s", config.name, version, device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Columns ``item_id``, ``object_key``, ``text`` in; ``item_id``, ``output`` (JSON),
        ``version``, ``error`` out, one row per item."""
        keys, texts = batch["object_key"], batch["text"]
        payloads = self._loop.run_until_complete(self._payloads(keys, texts))
        results = label_items(self._predictor, payloads, self._options, self._settings)
        outputs, errors = [], []
        for result in results:
            if isinstance(result, ModelShipError):
                outputs.append("")
                errors.append(f"{result.code}: {result.message}")
            else:
                outputs.append(json.dumps([o.model_dump() for o in result.output]))
                errors.append("")
        return {
            "item_id": batch["item_id"],
            "output": np.array(outputs, dtype=object),
            "version": np.array([self._predictor.version] * len(results), dtype=object),
            "error": np.array(errors, dtype=object),
        }

    async def _payloads(
        self, keys: np.ndarray, texts: np.ndarray
    ) -> list[bytes | str | ModelShipError]:
        return list(
            await asyncio.gather(
                *(self._payload(str(k), str(t)) for k, t in zip(keys, texts, strict=True))
            )
        )

    async def _payload(self, key: str, text: str) -> bytes | str | ModelShipError:
        if not key:
            return text
        try:
            return await self._objects.get(key)
        except ObjectNotFound:
            return ModelShipError("the stored file is missing", "object_missing")
        except ServiceUnavailable as exc:
            # The item's own failure, with the true reason (a rerun labels it again); raised,
            # it would fail its batch on every try, and then the item would be failed as
            # one that kills the model
            return exc
