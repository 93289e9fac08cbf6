"""Labeling over the Serve graph's deployment handles: the one labeling call the Ingress
and the JobRunner make, and what its failures mean."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, cast

from ray import exceptions as ray_exceptions
from ray.serve.exceptions import BackPressureError

from modelship.core import ray_compat
from modelship.core.errors import ModelNotReady, ModelShipError, Overloaded

if TYPE_CHECKING:
    from ray.serve.handle import DeploymentHandle, DeploymentResponse

    from modelship.core.messages import ItemOptions, ItemResult, ModelInfo


def cluster_handle(handle: DeploymentHandle) -> DeploymentHandle:
    """``handle`` remade in this replica, so it calls as this cluster's Serve is set up
    (gRPC in throughput mode), whichever process bound the graph: a handle bound in a
    driver that imported Serve earlier would send Ray actor calls instead."""
    return ray_compat.deployment_handle(handle.deployment_name, handle.app_name)


def label_call(
    preprocessor: DeploymentHandle,
    model: DeploymentHandle,
    name: str,
    payloads: list[bytes | str],
    options: ItemOptions,
) -> DeploymentResponse:
    """One call labeling ``payloads`` with model ``name``. Images are decoded in the
    Preprocessor, whose response goes into the model call unawaited; texts go straight to
    the model replica, which tokenises them (cheaper than a Preprocessor hop)."""
    if all(isinstance(payload, str) for payload in payloads):
        response = model.label_texts.remote(payloads, options)
    else:
        response = model.predict.remote(preprocessor.prepare_each.remote(name, payloads, options))
    return cast("DeploymentResponse[Any]", response)  # a generator only with stream=True


def call_error(exc: BaseException) -> ModelShipError:
    """Our error for an exception raised by a call between deployments."""
    if isinstance(exc, ray_exceptions.RayTaskError) and isinstance(exc.cause, ModelShipError):
        return exc.cause
    if isinstance(exc, ModelShipError):
        return exc
    if isinstance(exc, BackPressureError):
        return Overloaded("too many requests queued for this model; retry later")
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return Overloaded("the model did not answer in time; retry later", "timeout")
    if isinstance(exc, (ray_exceptions.ActorDiedError, ray_exceptions.ActorUnavailableError)):
        return ModelNotReady("a model replica is restarting; retry later")
    return ModelShipError()


class ServeLabeler:
    """A ``Labeler`` over the Preprocessor and ModelReplica handles.

    Args:
        preprocessor: handle to the Preprocessor deployment.
        models: one ModelReplica handle per configured model, by model name.
        timeout_s: how long a labeling call may take.
        info_timeout_s: how long a model's description may take.
    """

    def __init__(
        self,
        preprocessor: DeploymentHandle,
        models: dict[str, DeploymentHandle],
        timeout_s: float,
        info_timeout_s: float | None = None,
    ) -> None:
        self._preprocessor = cluster_handle(preprocessor)
        self._models = {name: cluster_handle(handle) for name, handle in models.items()}
        self._timeout_s = timeout_s
        self._info_timeout_s = info_timeout_s or timeout_s

    async def label(
        self, model: str, payloads: list[bytes | str], options: ItemOptions
    ) -> list[ItemResult | ModelShipError]:
        call = label_call(self._preprocessor, self._models[model], model, payloads, options)
        try:
            results: list[ItemResult | ModelShipError] = await asyncio.wait_for(
                call, self._timeout_s
            )
        except Exception as exc:
            raise call_error(exc) from exc
        return results

    async def info(self, model: str) -> ModelInfo:
        info: ModelInfo = await asyncio.wait_for(
            self._models[model].info.remote(), self._info_timeout_s
        )
        return info
