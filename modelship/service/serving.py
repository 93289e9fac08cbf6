"""Labeling over the Serve graph's deployment handles: the one labeling call the Ingress
and the JobRunner make, and what its failures mean."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, cast

import grpc
from ray import exceptions as ray_exceptions
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
    gRPCStatusError,
)

from modelship.core import ray_compat
from modelship.core.errors import ModelNotReady, ModelShipError, Overloaded

if TYPE_CHECKING:
    from ray.serve.handle import DeploymentHandle, DeploymentResponse

    from modelship.core.config import ModelConfig
    from modelship.core.messages import ItemOptions, ItemResult, ModelInfo


def cluster_handle(handle: DeploymentHandle) -> DeploymentHandle:
    """``handle`` remade in this replica, so it calls as this cluster's Serve is set up
    (gRPC in throughput mode), whichever process bound the graph: a handle bound in a
    driver that imported Serve earlier would send Ray actor calls instead."""
    return ray_compat.deployment_handle(handle.deployment_name, handle.app_name)


def label_call(
    preprocessor: DeploymentHandle,
    model: DeploymentHandle,
    config: ModelConfig,
    payloads: list[bytes | str],
    options: ItemOptions,
) -> DeploymentResponse:
    """One call labeling ``payloads`` with the model ``config`` describes. Texts, and images
    of a model prepared ``inline``, go straight to the model replica, which prepares them
    (one call: each call between deployments costs milliseconds). Images of a model prepared
    in the ``deployment`` are decoded in the Preprocessor, whose response goes into the model
    call unawaited (decoding then scales on CPUs apart from a GPU replica)."""
    texts = all(isinstance(payload, str) for payload in payloads)
    if texts or config.preprocessed_in == "inline":
        response = model.label.remote(payloads, options)
    else:
        prepared = preprocessor.prepare_each.remote(config.name, payloads, options)
        response = model.predict.remote(prepared)
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
    if isinstance(exc, _UNAVAILABLE) and not isinstance(exc, ray_exceptions.RayTaskError):
        return ModelNotReady("the model is unavailable (no replica could answer); retry later")
    return ModelShipError()  # our own code or the model raised: a 500, logged


# Ray, Serve and gRPC saying the call found no live replica or lost it on the way (a replica
# or node gone, a deployment with none running): the model, not the request, is at fault.
_UNAVAILABLE = (
    ray_exceptions.RayError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
    gRPCStatusError,
    grpc.RpcError,
)


class ServeLabeler:
    """A ``Labeler`` over the Preprocessor and ModelReplica handles.

    Args:
        preprocessor: handle to the Preprocessor deployment.
        models: one ModelReplica handle per configured model, by model name.
        configs: the configured models (where each one's images are prepared).
        timeout_s: how long a labeling call may take.
        info_timeout_s: how long a model's description may take.
    """

    def __init__(
        self,
        preprocessor: DeploymentHandle,
        models: dict[str, DeploymentHandle],
        configs: list[ModelConfig],
        timeout_s: float,
        info_timeout_s: float | None = None,
    ) -> None:
        self._preprocessor = cluster_handle(preprocessor)
        self._models = {name: cluster_handle(handle) for name, handle in models.items()}
        self._configs = {config.name: config for config in configs}
        self._timeout_s = timeout_s
        self._info_timeout_s = info_timeout_s or timeout_s

    async def label(
        self, model: str, payloads: list[bytes | str], options: ItemOptions
    ) -> list[ItemResult | ModelShipError]:
        handle, config = self._models[model], self._configs[model]
        call = label_call(self._preprocessor, handle, config, payloads, options)
        try:
            results: list[ItemResult | ModelShipError] = await asyncio.wait_for(
                call, self._timeout_s
            )
        except BaseException as exc:
            # Timed out or cancelled (the client left): the replica stops working for
            # nobody. Awaiting a response in Ray's actor mode does not cancel it.
            call.cancel()
            if isinstance(exc, Exception):
                raise call_error(exc) from exc
            raise
        return results

    async def info(self, model: str) -> ModelInfo:
        try:
            info: ModelInfo = await asyncio.wait_for(
                self._models[model].info.remote(), self._info_timeout_s
            )
        except Exception as exc:
            raise call_error(exc) from exc
        return info
