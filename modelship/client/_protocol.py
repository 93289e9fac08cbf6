"""The sans-I/O core: what a request is, what came back, and when to retry.

An operation is a generator. It yields a ``Request`` when it needs the network and a
``Sleep`` when it must wait; the sync and async clients run it, sending each ``Reply``
back in. All request building, response parsing, retrying and polling lives in the
generators, so the two clients only move bytes and sleep.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

import httpx
from pydantic import BaseModel

from modelship.client.errors import ApiError, error_code, error_from_reply, retry_after
from modelship.core.errors import ModelShipError

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

DEFAULT_URL = "http://127.0.0.1:8000"
_LABELING = re.compile(r"^/api/v1/(classify/|detect$|entities$)")

# A multipart file part: (field name, (file name, bytes, media type)).
FilePart = tuple[str, tuple[str, bytes, str]]


@dataclass(frozen=True)
class Request:
    """One HTTP request, as httpx's ``Client.request`` takes it; ``save_to``: stream a
    successful body into this file (or a file named by the server in this folder, made
    if need be, when ``save_to_folder``); ``deadline``: a ``time.monotonic()`` its
    timeouts are cut to (a wait's)."""

    method: str
    path: str
    params: Mapping[str, Any] | None = None
    json: Any = None
    data: Mapping[str, str] | None = None
    files: Sequence[FilePart] | None = None
    headers: Mapping[str, str] | None = None
    save_to: Path | None = None
    save_to_folder: bool = False
    deadline: float | None = None

    @property
    def idempotent(self) -> bool:
        """Whether sending it twice does what sending it once does: reads, labeling (it
        stores nothing) and anything carrying an ``Idempotency-Key``."""
        return (
            self.method in ("GET", "HEAD")
            or _LABELING.match(self.path) is not None
            or "idempotency-key" in {name.lower() for name in self.headers or {}}
        )

    def httpx_args(self, timeout: httpx.Timeout) -> dict[str, Any]:
        """The arguments; ``timeout``, the client's, cut to the time left before the
        deadline."""
        args: dict[str, Any] = {"method": self.method, "url": self.path}
        for name in ("params", "json", "data", "files", "headers"):
            value = getattr(self, name)
            if value is not None:
                args[name] = list(value) if name == "files" else value
        if self.deadline is not None and self.deadline < math.inf:
            left = max(self.deadline - time.monotonic(), 0.001)
            cut = {k: left if v is None else min(v, left) for k, v in timeout.as_dict().items()}
            args["timeout"] = httpx.Timeout(**cut)
        return args


@dataclass(frozen=True)
class Reply:
    """What came back: the status, headers and body (empty when the body went to a file);
    status 0 with the ``error`` when nothing came back (the connection failed)."""

    status: int
    headers: Mapping[str, str]
    body: bytes = b""
    saved: Path | None = None
    error: Exception | None = None

    @property
    def from_the_way(self) -> bool:
        """Nothing came back, or a proxy answered rather than ModelShip: a 502 or 504, or a
        404 or 500 without our error body (Serve's HAProxy answers 500 while no Ingress
        replica is up, and 404 while it has no routes, after a restart)."""
        return (
            self.status == 0
            or self.status in (502, 504)
            or (self.status in (404, 500) and b'"request_id"' not in self.body)
        )

    def parse(self, model: type[M]) -> M:
        return model.model_validate_json(self.body)


@dataclass(frozen=True)
class Sleep:
    """Wait this long before the operation goes on."""

    seconds: float

    def __post_init__(self) -> None:
        # asyncio.sleep takes a negative wait as none: a loop sleeping so would spin.
        if not self.seconds >= 0:
            raise ValueError(f"a wait must be >= 0 seconds, not {self.seconds}")


Step = Request | Sleep
Operation = Generator[Step, Reply | None, T]


NOT_RETRIED = frozenset({"quota_exceeded"})
"""Codes of retryable statuses that a retry within seconds does not clear."""

BEFORE_ANY_WRITE = frozenset(
    {
        "rate_limited",  # the auth middleware, before the route runs
        "rate_limiter_unavailable",  # the same, with Redis down and the limiter failing closed
        "scanner_unavailable",  # uploads are scanned before anything is stored
        "overloaded",  # labeling sheds load (labeling stores nothing)
        "model_not_ready",  # labeling, as above
    }
)
"""Codes of 429 and 503 answers the server gives before it writes anything. Others, e.g.
``service_unavailable``, may come after a write: PostgreSQL lost during COMMIT is a 503
too, and the commit may have happened."""


def refused_unseen(reply: Reply) -> bool:
    """Whether a 429 or 503 says the request was not acted on: one of our codes raised
    before any write, or, from a proxy (not our error body), a ``Retry-After``, which a
    proxy shedding load sends (Serve's backpressure) and one whose upstream failed
    mid-request (Envoy's 503 after a reset) does not."""
    code = error_code(reply.body)
    if code is not None:
        return code in BEFORE_ANY_WRITE
    return "retry-after" in reply.headers


@dataclass(frozen=True)
class RetryPolicy:
    """When to send a request again.

    Attributes:
        retries: how many times one request is retried.
        statuses: the answers worth retrying (429: rate limited; 503: overloaded, a model
            loading, a service restarting). Idempotent requests are retried on any of these
            but ``NOT_RETRIED`` codes (``quota_exceeded``: a job or export of the project
            must end first, which takes longer than a retry); other writes only when the
            server did nothing (``refused_unseen``), since sending one twice may do it twice.
            Idempotent requests are also retried when nothing or a proxy's failure came
            back (``Reply.from_the_way``): a replica or the proxy restarting.
        backoff_s: the first wait when the answer has no ``Retry-After``; doubles each time.
        max_wait_s: a ``Retry-After`` longer than this is not waited for: the error is raised.
    """

    retries: int = 5
    statuses: frozenset[int] = field(default=frozenset({429, 503}))
    backoff_s: float = 0.5
    max_wait_s: float = 60.0

    def delay(self, attempt: int, reply: Reply, idempotent: bool = False) -> float | None:
        """Seconds to wait before retry ``attempt`` (0-based), or None to give up."""
        if attempt >= self.retries:
            return None
        if idempotent and reply.from_the_way:
            return min(self.backoff_s * 2**attempt, self.max_wait_s)
        if reply.status not in self.statuses or error_code(reply.body) in NOT_RETRIED:
            return None
        if not idempotent and not refused_unseen(reply):
            return None
        asked = retry_after(reply.headers.get("retry-after"))
        if asked is None:
            return min(self.backoff_s * 2**attempt, self.max_wait_s)
        return asked if asked <= self.max_wait_s else None

    def transient(self, error: BaseException) -> bool:
        """Whether a read that raised ``error`` once its retries ran out met a server
        restarting or busy (what the retries were for), not a refusal of the request: a
        wait with a deadline asks again."""
        if isinstance(error, httpx.TransportError):  # nothing came back
            return True
        if not isinstance(error, ApiError):
            return False
        proxy = error.request_id is None and error.status in (404, 500)  # not our body
        return (
            proxy
            or error.status in (502, 504)
            or (error.status in self.statuses and error.code not in NOT_RETRIED)
        )


NO_RETRIES = RetryPolicy(retries=0)


def succeeded(status: int) -> bool:
    """A 2xx: anything else (a redirect included) is an error, and its body not saved."""
    return 200 <= status < 300


def send(request: Request, policy: RetryPolicy) -> Operation[Reply]:
    """Send ``request``, retrying as ``policy`` says; an error answer raises our error."""
    attempt = 0
    while True:
        reply = yield request
        assert reply is not None, "a client answers every Request with a Reply"
        if succeeded(reply.status):
            return reply
        wait = policy.delay(attempt, reply, request.idempotent)
        if wait is None:
            if reply.error is not None:
                raise reply.error
            raise error_from_reply(reply.status, reply.headers, reply.body)
        attempt += 1
        yield Sleep(wait)


def within(
    operation: Operation[T],
    deadline: float,
    what: str,
    clock: Callable[[], float] = time.monotonic,
) -> Operation[T]:
    """``operation`` until ``deadline`` on ``clock``: a retry whose wait would end past it
    is not waited for, TimeoutError (``what``, and the last error) is raised."""
    last: Reply | None = None
    try:
        step = next(operation)
        while True:
            if isinstance(step, Sleep) and clock() + step.seconds > deadline:
                raise _timed_out(what, last)
            if isinstance(step, Request):
                step = replace(step, deadline=deadline)
            reply = yield step
            last = reply if isinstance(step, Request) else last
            step = operation.send(reply)
    except StopIteration as finished:
        return finished.value  # type: ignore[no-any-return]
    finally:
        operation.close()


def _timed_out(what: str, last: Reply | None) -> TimeoutError:
    error: Exception | None = None
    if last is not None:
        error = last.error or error_from_reply(last.status, last.headers, last.body)
    timeout = TimeoutError(f"{what}; the last request failed: {error!r}")
    timeout.__cause__ = error
    return timeout


def defaults(base_url: str | None, api_key: str | None) -> tuple[str, dict[str, str]]:
    """The base URL and headers of a client: arguments first, then ``MODELSHIP_URL`` and
    ``MODELSHIP_API_KEY`` (the key the CLI reads too)."""
    url = base_url or os.environ.get("MODELSHIP_URL") or DEFAULT_URL
    key = api_key if api_key is not None else os.environ.get("MODELSHIP_API_KEY")
    headers = {"user-agent": "modelship-client/0.1.0", "accept": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    return url, headers


_FILENAME = re.compile(r'filename="?([^";]+)"?')


class Download:
    """A download's file: written beside its destination as ``.part`` and renamed once
    complete, so an interrupted download never looks finished.

    Args:
        target: the file, or a folder to put the file the server names in.
        headers: the response's headers (``Content-Disposition``, ``Content-Length``).
        folder: ``target`` is a folder even if it does not exist yet: it is made.
    """

    def __init__(self, target: Path, headers: Mapping[str, str], folder: bool = False) -> None:
        if folder or target.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            named = _FILENAME.search(headers.get("content-disposition", ""))
            target = target / Path(named.group(1) if named else "download").name
        self.path = target
        length = headers.get("content-length")
        self._expected = int(length) if length and length.isdigit() else None
        self._part = target.with_name(target.name + ".part")
        self._file: IO[bytes] | None = None
        self.written = 0

    def __enter__(self) -> Download:
        self._file = self._part.open("wb")
        return self

    def write(self, chunk: bytes) -> None:
        assert self._file is not None
        self._file.write(chunk)
        self.written += len(chunk)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._file is not None
        self._file.close()
        if exc_type is None and self._expected not in (None, self.written):
            self._part.unlink(missing_ok=True)
            raise ModelShipError(
                f"the download ended after {self.written} of {self._expected} bytes",
                "download_incomplete",
            )
        if exc_type is None:
            self._part.replace(self.path)
        else:
            self._part.unlink(missing_ok=True)
