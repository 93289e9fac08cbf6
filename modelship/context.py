"""Per-request context that code far below the routes may read (audit records)."""

from __future__ import annotations

from contextvars import ContextVar

# Set by the request-id middleware for every HTTP request; None outside one.
current_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
