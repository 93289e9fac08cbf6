"""Our loggers inside Serve replicas: written where Ray Serve writes, in its format.

Ray Serve configures only its own ``ray.serve`` logger (JSON with ``logging_config:
encoding: JSON``, with the request id, route, deployment and replica). ``to_serve_logs``
hands the ``modelship`` loggers the same handlers, so our records land in the replica's
log file with those fields too.
"""

from __future__ import annotations

import logging

from modelship.core import ray_compat


def to_serve_logs() -> None:
    """Route ``modelship.*`` records through Serve's replica log handlers (idempotent)."""
    ours = logging.getLogger("modelship")
    serve_logger = logging.getLogger(ray_compat.serve_logger_name())
    for handler in serve_logger.handlers:
        if handler not in ours.handlers:
            ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False
