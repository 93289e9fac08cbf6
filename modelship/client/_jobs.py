"""Jobs: a project's items labeled in the background, waited for, cancelled, read back."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from uuid import UUID

from modelship.client._base import API, Base, Ref, ref
from modelship.client._protocol import Operation
from modelship.client.progress import Progress, ProgressCallback
from modelship.core.records import ItemState, Job, JobCreate, JobResult, JobResultsPage, JobStatus

TERMINAL = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled})
_SETTLED = frozenset({ItemState.succeeded, ItemState.failed, ItemState.cancelled})


def settled(job: Job) -> int:
    """Items in a terminal state."""
    return sum(count for state, count in job.counts.items() if state in _SETTLED)


class Jobs(Base):
    def create_job(
        self,
        project: Ref,
        *,
        item_ids: Sequence[Ref] | None = None,
        idempotency_key: str | None = None,
    ) -> Operation[Job]:
        """Label every item of the project (``item_ids=None``), or only ``item_ids``. Sent
        with an ``Idempotency-Key`` (a new one unless given), so a retried request cannot
        start a second job.

        Raises:
            pydantic.ValidationError: (a ``ValueError``) ``item_ids`` is empty, before
                anything is sent: no items is not "every item".
        """
        body = None if item_ids is None else JobCreate(item_ids=[UUID(ref(i)) for i in item_ids])
        headers = {"idempotency-key": idempotency_key or uuid.uuid4().hex}
        path = f"{API}/projects/{ref(project)}/jobs"
        json = None if body is None else body.model_dump(mode="json")
        return (yield from self._post(path, Job, json, headers=headers))

    def get_job(self, job: Ref) -> Operation[Job]:
        return (yield from self._get(f"{API}/jobs/{ref(job)}", Job))

    def cancel_job(self, job: Ref) -> Operation[Job]:
        """Cancel the items not yet labeled; those labeled keep their results."""
        return (yield from self._post(f"{API}/jobs/{ref(job)}/cancel", Job))

    def wait_job(
        self,
        job: Ref,
        *,
        timeout_s: float | None = None,
        progress: ProgressCallback | None = None,
        bar: bool = False,
    ) -> Operation[Job]:
        """Poll until the job is succeeded, failed or cancelled; ``progress(done, total)``
        counts items in a terminal state. Raises TimeoutError after ``timeout_s``."""
        reporter = Progress(progress, bar, "labeling", "item")
        try:
            return (
                yield from self._poll(
                    f"job {ref(job)}",
                    lambda: self.get_job(job),
                    lambda current: current.status in TERMINAL,
                    timeout_s,
                    lambda current: reporter.update(settled(current), current.total_items),
                )
            )
        finally:
            reporter.close()

    def job_results(self, job: Ref, *, page_size: int = 1000) -> Operation[list[JobResult]]:
        """Every item's result (all pages): state, error, model version and output."""
        path = f"{API}/jobs/{ref(job)}/results"
        return (yield from self._pages(path, JobResultsPage, lambda page: page.results, page_size))
