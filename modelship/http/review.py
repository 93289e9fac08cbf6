"""HTTP routes for review: the queue, decisions, item history and project statistics."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Query

from modelship.core.config import LabelName
from modelship.core.errors import ServiceUnavailable
from modelship.core.records import (
    BulkApproveRequest,
    BulkApproveResponse,
    ItemDetail,
    ProjectStats,
    ReviewQueue,
    ReviewRequest,
)
from modelship.http.auth import Actor, Tenant
from modelship.service.workflow import Workflow

Strategy = Literal["uncertainty", "random", "label"]


def review_routes(workflow: Workflow | None) -> APIRouter:
    """The ``/api/v1/projects/{id}/review...``, item detail and stats routes."""
    router = APIRouter(prefix="/api/v1/projects/{project_id}", tags=["review"])

    def flow() -> Workflow:
        if workflow is None:
            raise ServiceUnavailable("review needs storage, which is not configured")
        return workflow

    @router.get("/review-queue", response_model=ReviewQueue)
    async def review_queue(
        tenant: Tenant,
        project_id: UUID,
        strategy: Strategy = "uncertainty",
        label: Annotated[LabelName | None, Query(description="strategy=label: this label")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        seed: Annotated[str | None, Query(max_length=64)] = None,
    ) -> ReviewQueue:
        """Pending items for a person: the model's least certain first (active learning),
        a reproducible random sample (``seed``), or the uncertain ones of one label."""
        entries = await flow().review_queue(
            tenant,
            project_id,
            strategy,
            label if strategy == "label" else None,
            limit,
            seed or uuid.uuid4().hex,
        )
        return ReviewQueue(strategy=strategy, entries=entries)

    @router.get("/items/{item_id}", response_model=ItemDetail)
    async def item_detail(tenant: Tenant, project_id: UUID, item_id: UUID) -> ItemDetail:
        return await flow().item_detail(tenant, project_id, item_id)

    @router.post("/items/{item_id}/review", response_model=ItemDetail)
    async def review_item(
        tenant: Tenant, actor: Actor, project_id: UUID, item_id: UUID, request: ReviewRequest
    ) -> ItemDetail:
        """Record a decision; the reviewer is the API key that makes it."""
        return await flow().review(tenant, project_id, item_id, request, actor)

    @router.post("/review/approve", response_model=BulkApproveResponse)
    async def bulk_approve(
        tenant: Tenant, actor: Actor, project_id: UUID, request: BulkApproveRequest
    ) -> BulkApproveResponse:
        approved, more = await flow().bulk_approve(tenant, project_id, request, actor)
        return BulkApproveResponse(approved=approved, more=more)

    @router.get("/stats", response_model=ProjectStats)
    async def stats(tenant: Tenant, project_id: UUID) -> ProjectStats:
        return await flow().stats(tenant, project_id)

    return router
