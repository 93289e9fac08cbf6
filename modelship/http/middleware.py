"""ASGI middleware for every request: request ids and the body-size limit."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid

from fastapi import Request
from starlette._utils import get_route_path
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelship.core.context import request_scope
from modelship.core.metrics import Metrics
from modelship.http.errors import error_response
from modelship.http.health import RequestWindow

logger = logging.getLogger("modelship.http")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")


class RequestIdMiddleware:
    """Gives every request an id (the client's, if well-formed) and returns it.

    Behind Ray Serve (``set_header`` off) Serve has already chosen the id — the client's
    as sent, or its own — passes it in the request headers and returns it. A well-formed
    one is used as it is, so the body, the header and the logs agree; a malformed client
    id is never stored or logged: the request gets a fresh id (in the body, the logs and
    the database), while Serve's response header echoes what the client sent.
    """

    def __init__(self, app: ASGIApp, set_header: bool = True) -> None:
        self.app = app
        self.set_header = set_header

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if self.set_header and message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        # Serve's log records read Serve's request context, which holds the id as sent
        with request_scope(request_id):
            await self.app(scope, receive, send_with_id)


class BodyLimitMiddleware:
    """Refuses bodies over ``max_bytes`` with 413, by Content-Length or while streaming, and
    bodies that take longer than ``timeout_s`` to arrive with 408.

    Paths matching ``upload_paths`` (bulk uploads) get ``upload_max_bytes`` and
    ``upload_timeout_s`` instead. The time bound is ours, not only Serve's
    ``request_timeout_s``: a client can lift Serve's with ``x-request-timeout-seconds: 0``.
    Raises HTTPException from ``receive`` so the error reaches our one error handler
    (FastAPI re-raises HTTPException from body parsing instead of turning it into 400).
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        upload_max_bytes: int | None = None,
        timeout_s: float = 30.0,
        upload_timeout_s: float | None = None,
        upload_paths: str = r"^/api/v1/projects/[^/]+/items$",
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.upload_max_bytes = upload_max_bytes or max_bytes
        self.timeout_s = timeout_s
        self.upload_timeout_s = upload_timeout_s or timeout_s
        self.upload_paths = re.compile(upload_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = self.upload_paths.match(get_route_path(scope))
        limit = self.upload_max_bytes if upload else self.max_bytes
        timeout_s = self.upload_timeout_s if upload else self.timeout_s
        declared = dict(scope["headers"]).get(b"content-length", b"")
        too_large = HTTPException(413, f"the request body exceeds {limit} bytes")
        received, complete = 0, False
        deadline = asyncio.get_running_loop().time() + timeout_s

        async def limited_receive() -> Message:
            nonlocal received, complete
            if declared.isdigit() and int(declared) > limit:
                raise too_large
            if complete:  # the body is in: wait for the disconnect as long as it takes
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise HTTPException(
                    408, f"the request body did not arrive within {timeout_s:g} s"
                ) from None
            received += len(message.get("body", b""))
            complete = message["type"] != "http.request" or not message.get("more_body")
            if received > limit:
                raise too_large
            return message

        await self.app(scope, limited_receive, send)


class ErrorResponseMiddleware:
    """Answers an exception that no route handled (a bug: our code or a model raised) with
    our error body, inside the middleware that adds the request id header, the security
    and CORS headers and counts the status. Starlette's own handler for ``Exception`` runs
    outside all middleware: its 500 had none of those, was logged outside the request's
    context, and the exception went on up to the server, which logged it again."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_noting_start(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_noting_start)
        except Exception as exc:
            if started:  # a response already on its way: the server ends the connection
                raise
            response = error_response(exc, request_id(Request(scope)))
            await response(scope, receive, send)


def request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", "") or uuid.uuid4().hex)


_API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
# The interactive docs page loads Swagger UI from its CDN; nothing else may run there.
_DOCS_CSP = (
    "default-src 'none'; script-src 'self' https://cdn.jsdelivr.net 'unsafe-inline';"
    " style-src https://cdn.jsdelivr.net; img-src 'self' data: https://fastapi.tiangolo.com;"
    " connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: dict[str, str] = {
    "strict-transport-security": "max-age=63072000; includeSubDomains",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "permissions-policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "x-permitted-cross-domain-policies": "none",
    "origin-agent-cluster": "?1",
}


class SecurityHeadersMiddleware:
    """Adds the security headers to every response, a strict Content-Security-Policy
    (looser only on the docs page), and ``Cache-Control: no-store`` on API responses: labels
    and uploads are private data that no shared cache should keep."""

    def __init__(self, app: ASGIApp, docs_path: str = "/api/v1/docs") -> None:
        self.app = app
        self.docs_path = docs_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = get_route_path(scope)
        extra = dict(SECURITY_HEADERS)
        extra["content-security-policy"] = _DOCS_CSP if path == self.docs_path else _API_CSP
        if path.startswith("/api/") or path.startswith("/health"):
            extra["cache-control"] = "no-store"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [
                    (name.encode(), value.encode())
                    for name, value in extra.items()
                    if name.encode() not in present
                ]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class MetricsMiddleware:
    """Counts requests by route template (``/api/v1/jobs/{job_id}``, never raw paths: they
    would make one time series per id), method and status, and times them."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        window: RequestWindow | None = None,
        slow_s: float | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.window = window
        self.slow_s = slow_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = getattr(scope.get("route"), "path", None)
            if route is None:  # refused before routing (auth, rate limit), or no route
                route = scope.get("state", {}).get("route", "unmatched")
            seconds = time.perf_counter() - started
            self.metrics.request(route, scope["method"], status, seconds)
            if self.window is not None and not route.startswith("/health"):
                self.window.add(status, seconds)
            if self.slow_s is not None and seconds >= self.slow_s:
                logger.warning(
                    "slow request",
                    extra={
                        "route": route,
                        "method": scope["method"],
                        "status_code": status,
                        "latency_ms": round(seconds * 1000, 1),
                    },
                )
