"""The Preprocessor deployment: CPU work between the ingress and the model replicas."""

from __future__ import annotations

from typing import Any

from ray import serve

from modelship.core import tracing
from modelship.core.config import IMAGE_TASKS, ModelConfig
from modelship.core.errors import ModelShipError
from modelship.core.errortracking import start_error_tracking
from modelship.core.logs import to_serve_logs
from modelship.core.messages import ItemOptions, Prepared
from modelship.core.settings import Settings
from modelship.predictors import ModelStore, Predictor, build_predictor
from modelship.predictors.prepare import prepare_payload


@serve.deployment(
    name="Preprocessor", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64
)
class Preprocessor:
    """Sniffs, decodes, guards and transforms images for the image models prepared in this
    deployment (``ModelConfig.preprocessed_in``: by default, models with a GPU).

    Holds each such model's transform, never its weights, so decoding scales on CPUs apart
    from the model replicas. Models prepared ``inline`` (by default, CPU models) decode in
    their own replica, and texts are tokenised there: neither comes here
    (``modelship.service.serving.label_call``). It is bound even when it holds no model, so
    the graph and its config stay the same whatever each model chooses; idle, it costs one
    small process. Methods are sync: Serve runs them on a thread pool, and PIL releases the
    GIL.

    Args:
        models: the configured models.
        settings: limits for decoding.
    """

    def __init__(self, models: list[ModelConfig], settings: Settings) -> None:
        to_serve_logs()
        start_error_tracking(settings, "Preprocessor")
        self._settings = settings
        store = ModelStore(settings.models_dir)
        self._predictors: dict[str, Predictor[Any, Any]] = {}
        for config in models:
            if config.task in IMAGE_TASKS and config.preprocessed_in == "deployment":
                predictor = build_predictor(config, store.resolve(config.source))
                predictor.load_processor()
                self._predictors[config.name] = predictor

    def prepare_each(
        self, model: str, payloads: list[bytes | str], options: ItemOptions
    ) -> list[Prepared | ModelShipError]:
        """Images prepared one by one; a bad one gets its error."""
        predictor = self._predictors[model]
        with tracing.span("preprocess", model=model, items=len(payloads)):
            return [prepare_payload(predictor, p, options, self._settings) for p in payloads]
