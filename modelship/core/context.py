"""Per-request context that code far below the routes may read (audit records, logs)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from modelship.core import ray_compat

# Set by the request-id middleware for every HTTP request; None outside one.
current_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


@contextmanager
def request_scope(request_id: str | None) -> Iterator[None]:
    """Run a block on behalf of the request ``request_id`` (a job's submission, say).

    Audit rows read our context variable; Ray Serve's log records and every deployment
    call made inside the block read Serve's request context, which has no public setter,
    so its context variable is set here too (both only for the current task).
    """
    ours = current_request_id.set(request_id)
    try:
        with ray_compat.serve_request_id(request_id or ""):
            yield
    finally:
        current_request_id.reset(ours)
