"""Every use of Ray's private API, in one file, so a Ray upgrade breaks here alone.

Each function has a test on a real cluster (tests/composition/test_ray_compat.py, and
tests/integration/test_metrics.py for ``start_at_zero``; pinned: ``ray[serve]==2.60.0``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray.serve.handle import DeploymentHandle


def serve_logger_name() -> str:
    """The logger Ray Serve configures in replicas (``ray.serve``)."""
    from ray.serve._private.constants import SERVE_LOGGER_NAME

    return SERVE_LOGGER_NAME


def deployment_handle(deployment: str, app: str) -> DeploymentHandle:
    """A handle made in this process without asking the controller whether it exists
    (inside a replica's constructor the app is still deploying)."""
    from ray import serve

    return serve.get_deployment_handle(deployment, app, _check_exists=False)


@contextmanager
def serve_request_id(request_id: str) -> Iterator[None]:
    """Set Serve's request context's id for the current task: Serve's log records and every
    deployment call made inside read it, and it has no public setter."""
    from ray.serve import context

    current = context._get_serve_request_context()
    token = context._serve_request_context.set(
        dataclasses.replace(current, request_id=request_id)  # type: ignore[arg-type]
    )
    try:
        yield
    finally:
        context._serve_request_context.reset(token)


def batch_request_ids() -> list[str]:
    """The request ids of the calls in the ``@serve.batch`` batch now running."""
    from ray.serve import context

    return [c.request_id for c in context._get_serve_batch_request_context()]


def start_at_zero(counter: Any, tags: dict[str, str]) -> None:
    """Export ``counter``'s series for ``tags`` at 0 before its first event: Prometheus'
    ``rate()`` and ``increase()`` see no increment in a series' first sample, so the first
    failure of a replica's life never counted. ``Counter.inc`` refuses 0."""
    counter._record(0, tags=tags)
