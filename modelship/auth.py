"""Who may call which route: API keys (``Authorization: Bearer <key>``) and their scopes.

Every route under ``/api/v1`` is listed in ``SCOPES`` with the scope it needs (a test keeps
the table complete); ``admin`` allows everything. The key's tenant is the tenant of every
read and write the request makes, so another tenant's projects, jobs, items and exports
answer 404. Health probes, the OpenAPI document and the docs need no key.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from modelship.errors import Forbidden, ServiceUnavailable, Unauthorized
from modelship.settings import Settings
from storage.keys import KeyStore, Principal

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
}


def route_of(request: Request) -> str:
    return str(getattr(request.scope.get("route"), "path", request.url.path))


class Authenticator:
    """Resolves the request's principal; ``None`` keys means auth is off (dev profile)."""

    def __init__(self, keys: KeyStore | None, settings: Settings) -> None:
        self._keys = keys
        self._settings = settings

    async def __call__(self, request: Request) -> Principal | None:
        route = route_of(request)
        if not self._settings.auth_enabled or not route.startswith("/api/"):
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
        return principal


def tenant_of(request: Request) -> str:
    """The tenant a request acts for: its key's, or the configured one when auth is off."""
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is not None:
        return principal.tenant
    settings: Settings = request.app.state.settings
    return settings.tenant


Tenant = Annotated[str, Depends(tenant_of)]
