"""Error answers of the API as our error types, with the request id that names them.

Each class here subclasses the server's own error of the same name
(``modelship.core.errors``), so ``except NotFound`` catches it whichever module it was
imported from; ``ApiError`` (a ``ModelShipError``) is the base of them all and what an
answer with no matching class becomes. Quote ``request_id`` when asking an operator:
the server's logs and traces carry it.
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from collections.abc import Mapping
from typing import Any

from modelship.core import errors


class ApiError(errors.ModelShipError):
    """An error answer: its HTTP status, machine-readable code, message and request id."""

    def __init__(
        self,
        message: str = "internal error",
        code: str | None = None,
        request_id: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message, code)
        self.args = (message, code, request_id, status)
        self.request_id = request_id
        if status is not None:
            self.status = status

    def __str__(self) -> str:
        return f"{self.code}: {self.message} (request_id={self.request_id})"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, code={self.code!r},"
            f" status={self.status}, request_id={self.request_id!r})"
        )


class InvalidInput(ApiError, errors.InvalidInput):
    """422: the request, an image or a text is not acceptable."""


class UnsupportedMediaType(ApiError, errors.UnsupportedMediaType):
    """415: not an image (sniffed by its bytes), or not a body type the route takes."""


class PayloadTooLarge(ApiError, errors.PayloadTooLarge):
    """413: the body, a file or the number of files is over the server's limit."""


class NotFound(ApiError, errors.NotFound):
    """404: no such project, job, item, export or model (or not this key's)."""


class Unauthorized(ApiError, errors.Unauthorized):
    """401: no API key, or an unknown or revoked one."""


class Forbidden(ApiError, errors.Forbidden):
    """403: the key lacks the scope this route needs."""


class Conflict(ApiError, errors.Conflict):
    """409: e.g. an archived project, an export not ready, an idempotency key reused."""


class Gone(ApiError, errors.Gone):
    """410: e.g. ``export_expired``, an export's file deleted after its retention."""


class ServiceUnavailable(ApiError, errors.ServiceUnavailable):
    """503: PostgreSQL, Redis or object storage cannot be reached."""


class ModelNotReady(ApiError, errors.ModelNotReady):
    """503: a model replica is loading or restarting."""


class Overloaded(ApiError, errors.Overloaded):
    """503: the service sheds load, or a model did not answer in time."""


class RateLimited(ApiError, errors.RateLimited):
    """429: too many requests from this key on this route."""


class QuotaExceeded(ApiError, errors.QuotaExceeded):
    """429: the project has as many unfinished jobs (or exports) as it may; one must end
    first. Not retried: ``retry_after_s`` is the server's guess, not when a place frees."""


_BY_CODE: dict[str, type[ApiError]] = {
    cls.code: cls
    for cls in (
        InvalidInput,
        UnsupportedMediaType,
        PayloadTooLarge,
        NotFound,
        Unauthorized,
        Forbidden,
        Conflict,
        Gone,
        ServiceUnavailable,
        ModelNotReady,
        Overloaded,
        RateLimited,
        QuotaExceeded,
    )
}
_BY_CODE["timeout"] = Overloaded  # the server's Overloaded for a model that did not answer
_BY_STATUS: dict[int, type[ApiError]] = {
    422: InvalidInput,
    415: UnsupportedMediaType,
    413: PayloadTooLarge,
    404: NotFound,
    401: Unauthorized,
    403: Forbidden,
    409: Conflict,
    410: Gone,
    429: RateLimited,
    503: ServiceUnavailable,
}


def retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds: delay-seconds or an HTTP date (RFC 9110)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_body(body: bytes) -> dict[str, Any]:
    """The ``error`` object of ModelShip's error body; empty for any other body."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return {}
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        return parsed["error"]  # type: ignore[no-any-return]
    return {}


def error_code(body: bytes) -> str | None:
    """The code of ModelShip's error body; None when the body is not ours (a proxy's)."""
    code = _error_body(body).get("code")
    return str(code) if code else None


def error_from_reply(status: int, headers: Mapping[str, str], body: bytes) -> ApiError:
    """Our error for an error answer: by its code, else by its status, else ``ApiError``.

    A body that is not ours (a proxy's page) still gives the status and the
    ``X-Request-ID`` header. A redirect is an ``ApiError`` (``redirected``) naming its
    ``Location``: following it would resend a write, or save the page as a download.
    """
    error = _error_body(body)
    request_id = error.get("request_id") or headers.get("x-request-id")
    if 300 <= status < 400:  # a proxy's http -> https, or a moved server: not followed
        where = headers.get("location")
        message = f"redirected to {where}: use that base URL" if where else "redirected, to nowhere"
        return ApiError(message, "redirected", str(request_id) if request_id else None, status)
    code = str(error.get("code") or "http_error")
    message = str(error.get("message") or f"HTTP {status}")
    cls = _BY_CODE.get(code)
    if cls is None or cls.status != status:  # a code of its own, e.g. unknown_project
        cls = _BY_STATUS.get(status, ApiError)
    exc = cls(message, code, str(request_id) if request_id else None, status)
    if isinstance(exc, errors.RetryLater):
        asked = retry_after(headers.get("retry-after"))
        exc.retry_after_s = math.ceil(asked) if asked is not None else exc.retry_after_s
    return exc
