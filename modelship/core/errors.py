"""The error hierarchy. Each error carries its HTTP status and a machine-readable code.

Errors cross Ray actor boundaries, so every constructor passes all of its arguments to
``super().__init__`` (that is what makes them survive pickling). The one place that turns
them into HTTP responses is ``modelship/http_errors.py``.
"""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


class ModelShipError(Exception):
    """Base of every error we raise on purpose. 5xx messages never reach the client."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str = "internal error", code: str | None = None) -> None:
        super().__init__(message, code)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InvalidInput(ModelShipError):
    status = 422
    code = "invalid_input"


class UnsupportedMediaType(ModelShipError):
    status = 415
    code = "unsupported_media_type"


class PayloadTooLarge(ModelShipError):
    status = 413
    code = "payload_too_large"


class NotFound(ModelShipError):
    status = 404
    code = "not_found"


class Unauthorized(ModelShipError):
    status = 401
    code = "unauthorized"


class Forbidden(ModelShipError):
    status = 403
    code = "forbidden"


class Conflict(ModelShipError):
    status = 409
    code = "conflict"


class Gone(ModelShipError):
    status = 410
    code = "gone"


class ServiceUnavailable(ModelShipError):
    """A service we depend on (PostgreSQL, Redis, object storage) cannot be reached."""

    status = 503
    code = "service_unavailable"


class ScannerUnavailable(ServiceUnavailable):
    """The virus scanner is configured but does not answer: uploads fail closed."""

    code = "scanner_unavailable"


class Infected(ModelShipError):
    """The virus scanner found a signature in an upload; nothing of it is stored."""

    status = 422
    code = "infected"


class ModelNotReady(ModelShipError):
    status = 503
    code = "model_not_ready"


class RetryLater(ModelShipError):
    """An error the client should retry after ``retry_after_s`` (sent as ``Retry-After``)."""

    def __init__(
        self, message: str = "retry later", code: str | None = None, retry_after_s: int = 1
    ) -> None:
        super().__init__(message, code)
        self.args = (message, code, retry_after_s)
        self.retry_after_s = retry_after_s


class Overloaded(RetryLater):
    """The service sheds load."""

    status = 503
    code = "overloaded"


class RateLimited(RetryLater):
    """Too many requests from this client on this route."""

    status = 429
    code = "rate_limited"


class QuotaExceeded(RetryLater):
    """A project holds as much unfinished work (jobs, exports) as it may."""

    status = 429
    code = "quota_exceeded"


class ConfigurationError(ModelShipError):
    """Settings or model configuration that cannot work; raised at start, not per request."""

    code = "configuration_error"
