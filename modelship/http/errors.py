"""The one place where exceptions become HTTP responses.

Every error body has the same shape: ``{"error": {"code", "message", "request_id"}}``.
5xx bodies are generic; their details go to the log with the request id.
"""

from __future__ import annotations

import logging

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from modelship.core.errors import (
    InvalidInput,
    ModelNotReady,
    ModelShipError,
    Overloaded,
    RetryLater,
    ServiceUnavailable,
    Unauthorized,
)
from modelship.http.schemas import ErrorBody, ErrorResponse
from modelship.service.serving import call_error

logger = logging.getLogger("modelship.http")

_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    408: "body_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def translate(exc: BaseException) -> ModelShipError:
    """Our error for any exception raised while serving a request."""
    if isinstance(exc, RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return InvalidInput(f"{where}: {first.get('msg', 'invalid request')}", "invalid_request")
    if isinstance(exc, HTTPException) and exc.status_code == 400:
        # A body the framework could not parse (not UTF-8, broken multipart): the same 422
        # as a body that parses but does not validate.
        return InvalidInput(str(exc.detail), "invalid_request")
    if isinstance(exc, HTTPException):
        error = ModelShipError(str(exc.detail), _HTTP_CODES.get(exc.status_code, "http_error"))
        error.status = exc.status_code
        return error
    return call_error(exc)


def error_response(exc: BaseException, request_id: str) -> JSONResponse:
    error = translate(exc)
    message = error.message
    retryable = (Overloaded, ModelNotReady, ServiceUnavailable)
    if error.status >= 500 and not isinstance(error, retryable):
        logger.error("request %s failed", request_id, exc_info=exc)
        message = "internal error"
    body = ErrorResponse(error=ErrorBody(code=error.code, message=message, request_id=request_id))
    headers: dict[str, str] = {}
    if isinstance(error, RetryLater):
        headers["Retry-After"] = str(error.retry_after_s)
    elif isinstance(error, (ModelNotReady, ServiceUnavailable)):
        headers["Retry-After"] = "5"
    elif isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="modelship"'
    return JSONResponse(body.model_dump(), status_code=error.status, headers=headers)
