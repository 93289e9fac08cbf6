"""Review: the queue of what the model was unsure of, a person's decisions, statistics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from modelship.client._base import API, Base, Ref, ref
from modelship.client._protocol import Operation
from modelship.core.records import (
    BulkApproveRequest,
    BulkApproveResponse,
    DetectionInput,
    EntityInput,
    ItemDetail,
    ProjectStats,
    ReviewAction,
    ReviewQueue,
    ReviewRequest,
)


class Review(Base):
    def review_queue(
        self,
        project: Ref,
        *,
        strategy: str = "uncertainty",
        label: str | None = None,
        limit: int = 50,
        seed: str | None = None,
    ) -> Operation[ReviewQueue]:
        """Items waiting for a person: least certain first (``uncertainty``), a
        reproducible sample (``random`` with ``seed``), or one label's (``label``)."""
        path = f"{API}/projects/{ref(project)}/review-queue"
        options = {"strategy": strategy, "label": label, "limit": limit, "seed": seed}
        return (yield from self._get(path, ReviewQueue, **options))

    def get_item(self, project: Ref, item: Ref) -> Operation[ItemDetail]:
        """An item with its current label and every review decision."""
        path = f"{API}/projects/{ref(project)}/items/{ref(item)}"
        return (yield from self._get(path, ItemDetail))

    def _decide(self, project: Ref, item: Ref, **decision: Any) -> Operation[ItemDetail]:
        request = ReviewRequest.model_validate(decision)
        path = f"{API}/projects/{ref(project)}/items/{ref(item)}/review"
        return (yield from self._post(path, ItemDetail, request.model_dump(mode="json")))

    def approve(self, project: Ref, item: Ref) -> Operation[ItemDetail]:
        """Keep the model's label."""
        return (yield from self._decide(project, item, action=ReviewAction.approve))

    def correct(
        self,
        project: Ref,
        item: Ref,
        *,
        labels: Sequence[str] | None = None,
        detections: Sequence[DetectionInput | Mapping[str, Any]] | None = None,
        entities: Sequence[EntityInput | Mapping[str, Any]] | None = None,
    ) -> Operation[ItemDetail]:
        """Replace the label: ``labels`` (classification), every box (``detections``) or
        every entity (``entities``), checked by the server against the item and schema."""
        return (
            yield from self._decide(
                project,
                item,
                action=ReviewAction.correct,
                labels=list(labels) if labels is not None else None,
                detections=list(detections) if detections is not None else None,
                entities=list(entities) if entities is not None else None,
            )
        )

    def reject(self, project: Ref, item: Ref) -> Operation[ItemDetail]:
        """The item has no right label here (it is left out of approved exports)."""
        return (yield from self._decide(project, item, action=ReviewAction.reject))

    def bulk_approve(
        self,
        project: Ref,
        *,
        min_score: float | None = None,
        label: str | None = None,
    ) -> Operation[int]:
        """Approve every pending item matching the filters; returns how many. The server
        approves a capped number per call, so this calls until none are left."""
        request = BulkApproveRequest.model_validate({"min_score": min_score, "label": label})
        path = f"{API}/projects/{ref(project)}/review/approve"
        approved, more = 0, True
        while more:
            body = request.model_dump(mode="json")
            answer = yield from self._post(path, BulkApproveResponse, body)
            approved, more = approved + answer.approved, answer.more
        return approved

    def stats(self, project: Ref) -> Operation[ProjectStats]:
        """Counts by status and label, auto-approval rate, the model's reviewed accuracy."""
        return (yield from self._get(f"{API}/projects/{ref(project)}/stats", ProjectStats))
