"""Our loggers inside Serve replicas: written where Ray Serve writes, in its format.

Ray Serve configures only its own ``ray.serve`` logger (JSON with ``logging_config:
encoding: JSON``, with the request id, route, deployment and replica). ``to_serve_logs``
hands the ``modelship`` loggers' records to that logger's handlers, so our records land in
the replica's log file with those fields too.
"""

from __future__ import annotations

import logging

from modelship.core import ray_compat


class _ToServe(logging.Handler):
    """Hands each record to the handlers Serve's logger has at that moment, if its level
    lets the record through.

    Serve replaces its handlers when a deployment's ``logging_config`` changes in place
    (a replica's ``reconfigure``); copies of the old ones would keep writing the old
    encoding to the same file, beside the new handler and its rotation."""

    def __init__(self, serve_logger: logging.Logger) -> None:
        super().__init__()
        self._serve = serve_logger

    def emit(self, record: logging.LogRecord) -> None:
        if self._serve.isEnabledFor(record.levelno):
            self._serve.handle(record)


def to_serve_logs() -> None:
    """Route ``modelship.*`` records through Serve's replica log handlers (idempotent)."""
    ours = logging.getLogger("modelship")
    if not any(isinstance(handler, _ToServe) for handler in ours.handlers):
        ours.addHandler(_ToServe(logging.getLogger(ray_compat.serve_logger_name())))
    ours.setLevel(logging.INFO)
    ours.propagate = False
