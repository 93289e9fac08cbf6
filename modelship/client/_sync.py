"""``Client``: runs the operations with a blocking ``httpx.Client``."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from types import TracebackType
from typing import Concatenate, ParamSpec, TypeVar

import httpx

from modelship.client._operations import Api
from modelship.client._protocol import (
    Download,
    Operation,
    Reply,
    Request,
    RetryPolicy,
    Sleep,
    defaults,
    succeeded,
)
from modelship.client._signature import returning

P = ParamSpec("P")
T = TypeVar("T")


def _blocking(
    op: Callable[Concatenate[Api, P], Operation[T]],
) -> Callable[Concatenate[Client, P], T]:
    @functools.wraps(op)
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._run(op(self._api, *args, **kwargs))

    return returning(method, op)


class Client:
    """The ModelShip API from blocking code (scripts, notebooks).

    Args:
        base_url: the server; default ``MODELSHIP_URL`` or http://127.0.0.1:8000.
        api_key: sent as ``Authorization: Bearer``; default ``MODELSHIP_API_KEY``.
        timeout: seconds (or an ``httpx.Timeout``) for each request.
        retry: when 429 and 503 answers are retried (honouring ``Retry-After``).
        poll_s: how often waits ask for a job's or an export's status.
        upload_batch_files: most files in one upload request (the server's default: 1000).
        upload_batch_bytes: most bytes in one upload request (the server's default: 256 MiB).
            A batch the server finds too large is halved and sent again.
        transport: an httpx transport instead of the network (e.g. ``httpx.MockTransport``).

    Every method raises the errors of ``modelship.client.errors`` for error answers
    (``NotFound``, ``InvalidInput``... each with the ``request_id``), and httpx's errors
    when the server cannot be reached.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = 60.0,
        retry: RetryPolicy | None = None,
        poll_s: float = 1.0,
        upload_batch_files: int = 500,
        upload_batch_bytes: int = 64 * 1024 * 1024,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        url, headers = defaults(base_url, api_key)
        self._api = Api(retry or RetryPolicy(), poll_s, upload_batch_files, upload_batch_bytes)
        self._http = httpx.Client(
            base_url=url,
            headers=headers,
            timeout=timeout,
            transport=transport or httpx.HTTPTransport(retries=2),
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self, operation: Operation[T]) -> T:
        try:
            step = next(operation)
            while True:
                if isinstance(step, Sleep):
                    time.sleep(step.seconds)
                    step = operation.send(None)
                else:
                    step = operation.send(self._send(step))
        except StopIteration as finished:
            return finished.value  # type: ignore[no-any-return]
        finally:
            operation.close()

    def _send(self, request: Request) -> Reply:
        try:
            return self._exchange(request)
        except httpx.TransportError as exc:  # nothing came back: the retry policy decides
            return Reply(0, {}, error=exc)

    def _exchange(self, request: Request) -> Reply:
        if request.save_to is None:
            response = self._http.request(**request.httpx_args(self._http.timeout))
            return Reply(response.status_code, response.headers, response.content)
        with self._http.stream(**request.httpx_args(self._http.timeout)) as response:
            if not succeeded(response.status_code):
                return Reply(response.status_code, response.headers, response.read())
            with Download(request.save_to, response.headers, request.save_to_folder) as download:
                for chunk in response.iter_bytes():
                    download.write(chunk)
            return Reply(response.status_code, response.headers, saved=download.path)

    models = _blocking(Api.models)
    classify_image = _blocking(Api.classify_image)
    classify_images = _blocking(Api.classify_images)
    detect = _blocking(Api.detect)
    classify_text = _blocking(Api.classify_text)
    entities = _blocking(Api.entities)
    create_project = _blocking(Api.create_project)
    get_project = _blocking(Api.get_project)
    list_projects = _blocking(Api.list_projects)
    update_project = _blocking(Api.update_project)
    archive_project = _blocking(Api.archive_project)
    list_items = _blocking(Api.list_items)
    upload_files = _blocking(Api.upload_files)
    upload_folder = _blocking(Api.upload_folder)
    upload_texts = _blocking(Api.upload_texts)
    create_job = _blocking(Api.create_job)
    get_job = _blocking(Api.get_job)
    cancel_job = _blocking(Api.cancel_job)
    wait_job = _blocking(Api.wait_job)
    job_results = _blocking(Api.job_results)
    review_queue = _blocking(Api.review_queue)
    get_item = _blocking(Api.get_item)
    approve = _blocking(Api.approve)
    correct = _blocking(Api.correct)
    reject = _blocking(Api.reject)
    bulk_approve = _blocking(Api.bulk_approve)
    stats = _blocking(Api.stats)
    create_export = _blocking(Api.create_export)
    get_export = _blocking(Api.get_export)
    wait_export = _blocking(Api.wait_export)
    download_export = _blocking(Api.download_export)
    export = _blocking(Api.export)
