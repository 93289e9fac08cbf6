"""``AsyncClient``: runs the operations with an ``httpx.AsyncClient``."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

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


def _awaitable(
    op: Callable[Concatenate[Api, P], Operation[T]],
) -> Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, T]]:
    @functools.wraps(op)
    async def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._run(op(self._api, *args, **kwargs))

    return returning(method, op)


class AsyncClient:
    """The ModelShip API from asyncio code: the same methods and arguments as ``Client``,
    each awaited. ``transport`` may be ``httpx.ASGITransport(app=...)`` to call an app
    in-process."""

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
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        url, headers = defaults(base_url, api_key)
        self._api = Api(retry or RetryPolicy(), poll_s, upload_batch_files, upload_batch_bytes)
        self._http = httpx.AsyncClient(
            base_url=url,
            headers=headers,
            timeout=timeout,
            transport=transport or httpx.AsyncHTTPTransport(retries=2),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _run(self, operation: Operation[T]) -> T:
        try:
            step = next(operation)
            while True:
                if isinstance(step, Sleep):
                    await asyncio.sleep(step.seconds)
                    step = operation.send(None)
                else:
                    step = operation.send(await self._send(step))
        except StopIteration as finished:
            return finished.value  # type: ignore[no-any-return]
        finally:
            operation.close()

    async def _send(self, request: Request) -> Reply:
        try:
            return await self._exchange(request)
        except httpx.TransportError as exc:  # nothing came back: the retry policy decides
            return Reply(0, {}, error=exc)

    async def _exchange(self, request: Request) -> Reply:
        if request.save_to is None:
            response = await self._http.request(**request.httpx_args(self._http.timeout))
            return Reply(response.status_code, response.headers, response.content)
        async with self._http.stream(**request.httpx_args(self._http.timeout)) as response:
            if not succeeded(response.status_code):
                return Reply(response.status_code, response.headers, await response.aread())
            with Download(request.save_to, response.headers, request.save_to_folder) as download:
                async for chunk in response.aiter_bytes():
                    download.write(chunk)
            return Reply(response.status_code, response.headers, saved=download.path)

    models = _awaitable(Api.models)
    classify_image = _awaitable(Api.classify_image)
    classify_images = _awaitable(Api.classify_images)
    detect = _awaitable(Api.detect)
    classify_text = _awaitable(Api.classify_text)
    entities = _awaitable(Api.entities)
    create_project = _awaitable(Api.create_project)
    get_project = _awaitable(Api.get_project)
    list_projects = _awaitable(Api.list_projects)
    update_project = _awaitable(Api.update_project)
    archive_project = _awaitable(Api.archive_project)
    list_items = _awaitable(Api.list_items)
    upload_files = _awaitable(Api.upload_files)
    upload_folder = _awaitable(Api.upload_folder)
    upload_texts = _awaitable(Api.upload_texts)
    create_job = _awaitable(Api.create_job)
    get_job = _awaitable(Api.get_job)
    cancel_job = _awaitable(Api.cancel_job)
    wait_job = _awaitable(Api.wait_job)
    job_results = _awaitable(Api.job_results)
    review_queue = _awaitable(Api.review_queue)
    get_item = _awaitable(Api.get_item)
    approve = _awaitable(Api.approve)
    correct = _awaitable(Api.correct)
    reject = _awaitable(Api.reject)
    bulk_approve = _awaitable(Api.bulk_approve)
    stats = _awaitable(Api.stats)
    create_export = _awaitable(Api.create_export)
    get_export = _awaitable(Api.get_export)
    wait_export = _awaitable(Api.wait_export)
    download_export = _awaitable(Api.download_export)
    export = _awaitable(Api.export)
