"""The graph's one labeling call, made alike by the Ingress and the JobRunner."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from modelship.core import ray_compat

if TYPE_CHECKING:
    from ray.serve.handle import DeploymentHandle, DeploymentResponse

    from modelship.core.messages import ItemOptions


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
