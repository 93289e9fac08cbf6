"""What every group of operations shares: how things are named, requests sent and parsed,
pages followed and statuses polled."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar
from uuid import UUID

from pydantic import BaseModel

from modelship.client._protocol import (
    Operation,
    Request,
    RetryPolicy,
    Sleep,
    send,
    within,
)
from modelship.core.config import LabelSpec
from modelship.core.records import ItemsPage, JobResultsPage

R = TypeVar("R", bound=BaseModel)
P = TypeVar("P", bound=ItemsPage | JobResultsPage)  # the cursor-paged listings
X = TypeVar("X")
API = "/api/v1"


class _HasId(Protocol):
    @property
    def id(self) -> UUID: ...


Ref = UUID | str | _HasId
"""A project, job, item or export: its id, or the record itself."""
Labels = Sequence[str | LabelSpec | Mapping[str, Any]]
"""Label names, or ``LabelSpec``s (with a description and few-shot examples)."""


def ref(value: Ref) -> str:
    """The id in a URL."""
    return str(value) if isinstance(value, UUID | str) else str(value.id)


def label_specs(labels: Labels | None) -> list[LabelSpec] | None:
    if labels is None:
        return None
    return [
        label
        if isinstance(label, LabelSpec)
        else LabelSpec(name=label)
        if isinstance(label, str)
        else LabelSpec.model_validate(label)
        for label in labels
    ]


class Base:
    """The operations' configuration and shared steps.

    Args:
        retry: when a request is sent again.
        poll_s: how often ``wait_job`` and ``wait_export`` ask (> 0).
        batch_files: most files in one upload request.
        batch_bytes: most bytes in one upload request.
        clock: the monotonic clock, in seconds, that waits read their deadline on. The
            clients keep ``time.monotonic``, which they cut request timeouts by; a test
            runs operations on a fake one that moves only when they sleep.

    Raises:
        ValueError: ``poll_s`` is not > 0 (0 would ask without pause).
    """

    def __init__(
        self,
        retry: RetryPolicy,
        poll_s: float,
        batch_files: int,
        batch_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not poll_s > 0:
            raise ValueError(f"poll_s must be > 0, not {poll_s}")
        self.retry = retry
        self.poll_s = poll_s
        self.batch_files = batch_files
        self.batch_bytes = batch_bytes
        self.clock = clock

    def _get(self, path: str, model: type[R], **params: object) -> Operation[R]:
        query = {k: str(v) for k, v in params.items() if v is not None}
        reply = yield from send(Request("GET", path, params=query or None), self.retry)
        return reply.parse(model)

    def _post(self, path: str, model: type[R], body: Any = None, **kw: Any) -> Operation[R]:
        reply = yield from send(Request("POST", path, json=body, **kw), self.retry)
        return reply.parse(model)

    def _pages(
        self, path: str, page: type[P], rows: Callable[[P], list[X]], page_size: int
    ) -> Operation[list[X]]:
        """Every row of a cursor-paged listing."""
        found: list[X] = []
        cursor: str | None = None
        while True:
            answer = yield from self._get(path, page, cursor=cursor, limit=page_size)
            found += rows(answer)
            if (cursor := answer.next_cursor) is None:
                return found

    def _poll(
        self,
        what: str,
        fetch: Callable[[], Operation[R]],
        done: Callable[[R], bool],
        timeout_s: float | None,
        seen: Callable[[R], None] = lambda _: None,
    ) -> Operation[R]:
        """Fetch every ``poll_s`` until ``done``. ``timeout_s`` is a deadline: the last
        fetch is at it, and a fetch's retries stop at it; then TimeoutError (from the
        last request's error, if it failed). Until then, a fetch that failed as a server
        restarting does (``RetryPolicy.transient``, past its retries) is tried again:
        a restart in the middle of a long wait is not its end.

        Raises:
            ValueError: ``timeout_s`` is below 0.
        """
        if timeout_s is not None and not timeout_s >= 0:
            raise ValueError(f"timeout_s must be >= 0, not {timeout_s}")
        deadline = self.clock() + timeout_s if timeout_s is not None else math.inf
        late = f"{what} did not finish within {timeout_s}s"
        while True:
            try:
                current = yield from within(fetch(), deadline, late, self.clock)
            except Exception as error:
                left = deadline - self.clock()
                if deadline == math.inf or not self.retry.transient(error):
                    raise
                if left <= 0:
                    raise TimeoutError(f"{late}; the last request failed: {error!r}") from error
                yield Sleep(min(self.poll_s, left))
                continue
            seen(current)
            if done(current):
                return current
            left = deadline - self.clock()
            if left <= 0:
                raise TimeoutError(late)
            yield Sleep(min(self.poll_s, left))
