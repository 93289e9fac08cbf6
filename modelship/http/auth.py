"""Who may call which route: API keys (``Authorization: Bearer <key>``) and their scopes.

Every route under ``/api/v1`` is listed in ``SCOPES`` with the scope it needs (a test keeps
the table complete), and so are the health routes beyond the live and ready probes;
``admin`` allows everything. The key's tenant is the tenant of every
read and write the request makes, so another tenant's projects, jobs, items and exports
answer 404; a key bound to some projects (``keys create --project``) sees only those. The
live and ready probes, the OpenAPI document and the docs need no key.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import Depends, Request
from starlette._utils import get_route_path
from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from modelship.core.errors import (
    Forbidden,
    ModelShipError,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
)
from modelship.core.settings import Settings
from modelship.http.errors import error_response
from modelship.http.middleware import request_id
from storage.catalog import Catalog
from storage.keys import KeyStore, Principal
from storage.ratelimit import RateLimiter

SCOPES: dict[tuple[str, str], str] = {
    ("GET", "/api/v1/models"): "read",
    ("POST", "/api/v1/classify/image"): "label",
    ("POST", "/api/v1/classify/images"): "label",
    ("POST", "/api/v1/classify/text"): "label",
    ("POST", "/api/v1/detect"): "label",
    ("POST", "/api/v1/entities"): "label",
    ("POST", "/api/v1/projects"): "admin",
    ("GET", "/api/v1/projects"): "read",
    ("GET", "/api/v1/projects/{project_id}"): "read",
    ("PATCH", "/api/v1/projects/{project_id}"): "admin",
    ("POST", "/api/v1/projects/{project_id}/archive"): "admin",
    ("POST", "/api/v1/projects/{project_id}/items"): "label",
    ("GET", "/api/v1/projects/{project_id}/items"): "read",
    ("POST", "/api/v1/projects/{project_id}/jobs"): "label",
    ("GET", "/api/v1/jobs/{job_id}"): "read",
    ("GET", "/api/v1/jobs/{job_id}/results"): "read",
    ("POST", "/api/v1/jobs/{job_id}/cancel"): "label",
    ("GET", "/api/v1/projects/{project_id}/review-queue"): "review",
    ("GET", "/api/v1/projects/{project_id}/items/{item_id}"): "read",
    ("POST", "/api/v1/projects/{project_id}/items/{item_id}/review"): "review",
    ("POST", "/api/v1/projects/{project_id}/review/approve"): "review",
    ("GET", "/api/v1/projects/{project_id}/stats"): "read",
    ("POST", "/api/v1/projects/{project_id}/exports"): "export",
    ("GET", "/api/v1/exports/{export_id}"): "read",
    ("GET", "/api/v1/exports/{export_id}/download"): "export",
    # Beyond live/ready, health shows hosts, versions and traffic: operators only.
    ("GET", "/health"): "admin",
    ("GET", "/health/detailed"): "admin",
    ("GET", "/health/metrics"): "admin",
    ("GET", "/health/history"): "admin",
}


class Authenticator:
    """Resolves the request's principal; ``None`` keys means auth is off (dev profile)."""

    def __init__(
        self, keys: KeyStore | None, settings: Settings, catalog: Catalog | None = None
    ) -> None:
        self._keys = keys
        self._settings = settings
        self._catalog = catalog

    async def __call__(self, request: Request, route: str) -> Principal | None:
        if not self._settings.auth_enabled:
            return None
        if self._keys is None:
            raise ServiceUnavailable("API keys need storage, which is not configured")
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key:
            raise Unauthorized("send an API key: 'Authorization: Bearer <key>'")
        principal = await self._keys.authenticate(key.strip())
        if principal is None:
            raise Unauthorized("unknown or revoked API key")
        needed = SCOPES.get((request.method, route), "admin")
        if not principal.allows(needed):
            raise Forbidden(f"this key lacks the '{needed}' scope", "insufficient_scope")
        request.state.principal = principal
        if principal.project_ids is not None:
            await self._check_project(request, principal, route)
        return principal

    async def _check_project(self, request: Request, principal: Principal, route: str) -> None:
        """A key bound to some projects: anything of another project does not exist for it
        (404, as for another tenant's), and it cannot create projects."""
        if (request.method, route) == ("POST", "/api/v1/projects"):
            raise Forbidden("this key is bound to projects; it cannot create one", "project_bound")
        for kind in ("project", "job", "export"):  # item routes name their project
            raw = request.path_params.get(f"{kind}_id")
            found = _uuid(raw) if raw is not None else None
            if found is None:
                continue  # not this kind, or malformed (FastAPI answers 422)
            if kind != "project" and self._catalog is not None:
                found = await self._catalog.owning_project(principal.tenant, kind, found)
            if found is None or not principal.sees(found):
                raise NotFound(f"no {kind} {raw}", f"unknown_{kind}")
            return


ADDRESS_SCALE = 10  # an address's budget across routes, in per-route budgets


class AuthMiddleware:
    """Authenticates every API route before its body is read, so a request with a bad key
    costs a header's worth of work, not its body's.

    The route is found in ``SCOPES`` (every API route is listed there) by the path the
    app routes on: under a ``root_path`` (Serve's ``route_prefix``, a proxy's prefix)
    that is the path without it. With a ``limiter``, a request with a valid key is
    limited per key and route; any other (a failed authentication, or every request with
    auth off) first by its client address across routes, at ``ADDRESS_SCALE`` times the
    per-route rate. So a flood of guessed keys never spends a valid key's budget, even
    where every client reaches us from one proxy address (HAProxy, Caddy).
    """

    def __init__(
        self, app: ASGIApp, authenticate: Authenticator, limiter: RateLimiter | None = None
    ) -> None:
        self.app = app
        self.authenticate = authenticate
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = _api_route(scope) if scope["type"] == "http" else None
        if found is None:  # not an API route (probes, OpenAPI, docs, 404s, 405s)
            await self.app(scope, receive, send)
            return
        route, params = found
        # shared with the route's request (the principal too), and with MetricsMiddleware,
        # which counts a request refused here by its route
        scope.setdefault("state", {})["route"] = route
        request = Request({**scope, "path_params": params})
        try:
            address = f"ip:{request.client.host if request.client else 'unknown'}"
            try:
                principal = await self.authenticate(request, route)
            except Unauthorized:
                await self._limit(address, "*", ADDRESS_SCALE)
                raise
            if principal is None:  # auth off: the address is all we know of the caller
                await self._limit(address, "*", ADDRESS_SCALE)
            who = f"key:{principal.key_id}" if principal else address
            await self._limit(who, f"{request.method} {route}")
        except ModelShipError as exc:
            await error_response(exc, request_id(request))(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _limit(self, who: str, route: str, scale: float = 1.0) -> None:
        if self.limiter is not None:
            await self.limiter.check(who, route, scale)


_ROUTES = [(method, path, compile_path(path)[0]) for method, path in SCOPES]


def _api_route(scope: Scope) -> tuple[str, dict[str, str]] | None:
    """The API route template ``scope`` asks for, and its path parameters."""
    for method, path, pattern in _ROUTES:
        match = pattern.match(get_route_path(scope))
        if match and method == scope["method"]:
            return path, match.groupdict()
    return None


def _uuid(value: str) -> UUID | None:
    try:
        return UUID(value)
    except ValueError:
        return None  # FastAPI answers 422 for the malformed id


def visible_to(request: Request, project_ids: list[UUID]) -> list[UUID]:
    """The projects among ``project_ids`` the request's key may see."""
    principal: Principal | None = getattr(request.state, "principal", None)
    return [p for p in project_ids if principal is None or principal.sees(p)]


def tenant_of(request: Request) -> str:
    """The tenant a request acts for: its key's, or the configured one when auth is off."""
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is not None:
        return principal.tenant
    settings: Settings = request.app.state.settings
    return settings.tenant


Tenant = Annotated[str, Depends(tenant_of)]


def actor_of(request: Request) -> str:
    """Who acts, for audit records: the API key's name, or ``anonymous`` when auth is off."""
    principal: Principal | None = getattr(request.state, "principal", None)
    return f"key:{principal.name}" if principal is not None else "anonymous"


Actor = Annotated[str, Depends(actor_of)]
