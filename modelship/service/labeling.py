"""Labeling, however the models run: the one ``Labeler`` protocol, which model a request
means, and the in-process labeler (no Ray) that tests and the CLI use."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

from modelship.core.config import ModelConfig, Task
from modelship.core.errors import (
    InvalidInput,
    ModelNotReady,
    ModelShipError,
    NotFound,
    Overloaded,
)
from modelship.core.messages import ItemOptions, ItemResult, ModelInfo
from modelship.core.settings import Settings
from modelship.predictors import ModelStore, Predictor, build_predictor, describe
from modelship.predictors.prepare import label_items

logger = logging.getLogger("modelship.labeling")


class Admission:
    """Load shedding for one process: at most ``max_items`` items being labeled at once,
    none for longer than ``deadline_s``; past either, ``Overloaded`` (503 with
    ``Retry-After``). A request queued behind more work than the models can drain in time
    only ends in a client's timeout: it is better told at once to come back.
    ``docs/drills.md``, "Overload", has the figures."""

    def __init__(self, max_items: int, deadline_s: float) -> None:
        self.max_items = max_items
        self.deadline_s = deadline_s
        self.items = 0

    @asynccontextmanager
    async def admit(self, items: int) -> AsyncIterator[None]:
        if self.items and self.items + items > self.max_items:
            raise Overloaded("the models are at capacity; retry later")
        self.items += items
        try:
            async with asyncio.timeout(self.deadline_s):
                yield
        except TimeoutError:
            raise Overloaded("the models did not answer in time; retry later", "timeout") from None
        finally:
            self.items -= items


class Labeler(Protocol):
    """Labels payloads with a configured model: the Ingress (sharing calls between
    requests), the JobRunner (over deployment handles) and ``LocalLabeler`` (in-process)."""

    async def label(
        self, model: str, payloads: list[bytes | str], options: ItemOptions
    ) -> list[ItemResult | ModelShipError]:
        """A result per payload, or the error that item alone caused (undecodable, too
        large...). Anything that is not the item's fault (a replica restarting, a timeout)
        raises."""
        ...

    async def info(self, model: str) -> ModelInfo:
        """The loaded model's description; raises when no replica answers."""
        ...


def pick_model(configs: Sequence[ModelConfig], name: str | None, tasks: set[Task]) -> ModelConfig:
    """The named model (404 if unknown, 422 if it does another task), or the first fit."""
    if name is None:
        for config in configs:
            if config.task in tasks:
                return config
        raise NotFound(f"no model is configured for {', '.join(sorted(tasks))}", "no_model")
    for config in configs:
        if config.name == name:
            if config.task not in tasks:
                raise InvalidInput(
                    f"model {name!r} does {config.task}, not {', '.join(sorted(tasks))}",
                    "wrong_task",
                )
            return config
    raise NotFound(f"unknown model {name!r}", "unknown_model")


class ModelInfos:
    """Every configured model's description, as its replicas give it.

    A replica that does not answer in ``timeout_s`` because it is busy (its queue full of
    labeling work: a timeout or back-pressure) is described as it last answered, for up to
    ``busy_s``: a loaded model under load is still ready. One that fails otherwise, or has
    been silent for longer, is described from its configuration, as not ready.
    """

    def __init__(
        self,
        labeler: Labeler,
        configs: Sequence[ModelConfig],
        timeout_s: float,
        busy_s: float = 60.0,
    ) -> None:
        self._labeler = labeler
        self._configs = list(configs)
        self._timeout_s = timeout_s
        self._busy_s = busy_s
        self._last: dict[str, tuple[float, ModelInfo]] = {}

    async def __call__(self) -> list[ModelInfo]:
        return list(await asyncio.gather(*(self._one(config) for config in self._configs)))

    async def _one(self, config: ModelConfig) -> ModelInfo:
        try:
            info = await asyncio.wait_for(self._labeler.info(config.name), self._timeout_s)
        except (TimeoutError, Overloaded) as exc:
            answered, last = self._last.get(config.name, (-math.inf, None))
            if last is not None and time.monotonic() - answered < self._busy_s:
                return last
            logger.info("model %s did not describe itself: %r", config.name, exc)
            return describe(config, None)
        except Exception as exc:
            logger.info("model %s did not describe itself: %r", config.name, exc)
            self._last.pop(config.name, None)  # restarting or gone: what it said is past
            return describe(config, None)
        self._last[config.name] = (time.monotonic(), info)
        return info


async def model_version(labeler: Labeler, model: str) -> str:
    """The loaded model's version (what a prediction is recorded with)."""
    version = (await labeler.info(model)).version
    if version is None:
        raise ModelNotReady(f"model {model} has not loaded")
    return version


class LocalLabeler:
    """A ``Labeler`` running every model in this process, on a worker thread.

    Args:
        configs: the models to load.
        settings: decode limits and where models are cached.
        predictors: already loaded predictors by model name, to share them.
    """

    def __init__(
        self,
        configs: Sequence[ModelConfig],
        settings: Settings,
        predictors: Mapping[str, Predictor[Any, Any]] | None = None,
    ) -> None:
        self.configs = list(configs)
        self._settings = settings
        if predictors is None:
            store = ModelStore(settings.models_dir)
            loaded: dict[str, Predictor[Any, Any]] = {}
            for config in configs:
                loaded[config.name] = build_predictor(config, store.resolve(config.source))
                loaded[config.name].load()
            predictors = loaded
        self.predictors = dict(predictors)

    async def label(
        self, model: str, payloads: list[bytes | str], options: ItemOptions
    ) -> list[ItemResult | ModelShipError]:
        predictor = self.predictors[model]
        return await asyncio.to_thread(label_items, predictor, payloads, options, self._settings)

    async def info(self, model: str) -> ModelInfo:
        config = next(config for config in self.configs if config.name == model)
        return describe(config, self.predictors[model])
