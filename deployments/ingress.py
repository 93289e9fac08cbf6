"""The Ingress deployment: the only HTTP surface, delegating to the graph's handles."""

from __future__ import annotations

import asyncio
import logging
from uuid import UUID

from ray import serve
from ray.serve.config import BackpressureConfig
from ray.serve.handle import DeploymentHandle
from starlette.types import ASGIApp

from modelship.core import ray_compat, tracing
from modelship.core.config import ModelConfig
from modelship.core.context import request_scope
from modelship.core.errors import ModelShipError
from modelship.core.errortracking import start_error_tracking
from modelship.core.logs import to_serve_logs
from modelship.core.messages import ItemOptions, ItemResult, ModelInfo
from modelship.core.metrics import ServeMetrics
from modelship.core.settings import Settings
from modelship.http.app import create_api
from modelship.service.serving import ServeLabeler, cluster_handle
from modelship.service.workflow import Workflow
from storage.ratelimit import RateLimiter
from storage.services import Services

logger = logging.getLogger("modelship.ingress")

# Requests arriving together share downstream calls: at most this many per call, and this
# many shared calls at once (more requests wait for one to finish, and join the next).
# (docs/benchmark.md: +21% items/s for 16 clients sending one text each.)
_COALESCE_MAX_REQUESTS = 16
_COALESCE_IN_FLIGHT = 8


# Serve's default of 5 ongoing requests would cap the whole graph at 5 requests in flight.
# Past MODELSHIP_MAX_LABELING_ITEMS (512) the app sheds labeling requests itself (503, our
# error body); past 256 ongoing and 128 queued requests, Serve sheds (503, Retry-After: 1)
# rather than queue them to a client's timeout.
@serve.deployment(
    name="Ingress",
    ray_actor_options={"num_cpus": 0.25},
    max_ongoing_requests=256,
    max_queued_requests=128,
    backpressure_config=BackpressureConfig(retry_after_s=1),
)
@serve.ingress()
class Ingress:
    """The graph's HTTP surface: the FastAPI app (``create_api``) over this replica as its
    ``Labeler``, which shares one labeling call between requests arriving together.
    Project, upload, job, review and export routes go to storage; the JobRunner labels
    jobs and the Exporter writes exports.

    Args:
        preprocessor: handle to the Preprocessor deployment.
        models: one ModelReplica handle per configured model, by model name.
        configs: the configured models, in configuration order.
        settings: limits, timeouts and storage.
        runner: the JobRunner (bound here so it is part of the application).
        exporter: the Exporter, which writes exports in the background.
    """

    def __init__(
        self,
        preprocessor: DeploymentHandle,
        models: dict[str, DeploymentHandle],
        configs: list[ModelConfig],
        settings: Settings,
        runner: DeploymentHandle | None = None,
        exporter: DeploymentHandle | None = None,
    ) -> None:
        to_serve_logs()
        start_error_tracking(settings, "Ingress")
        self._configs = configs
        self._labeler = ServeLabeler(preprocessor, models, configs, settings.model_call_timeout_s)
        self._settings = settings
        self._runner = runner
        self._exporter = cluster_handle(exporter) if exporter else None
        self._background: set[asyncio.Task[None]] = set()
        services = Services.from_settings(settings)
        self._workflow = Workflow(services, configs, settings, launch_export=self._export)
        self._limiter = (
            RateLimiter(
                services.urls.redis,
                settings.rate_limit_per_minute,
                settings.rate_limit_burst,
                settings.rate_limit_fail_open,
                settings.redis_prefix,
            )
            if settings.rate_limit_per_minute
            else None
        )

    def __serve_build_asgi_app__(self) -> ASGIApp:
        return create_api(
            self,
            self._configs,
            self._settings,
            behind_serve_proxy=True,
            workflow=self._workflow,
            metrics=ServeMetrics(),
            limiter=self._limiter,
        )

    def _export(self, export_id: UUID) -> None:
        """Hand an export to the Exporter and let it run; its status is in PostgreSQL."""
        assert self._exporter is not None
        task = asyncio.create_task(self._await_export(export_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _await_export(self, export_id: UUID) -> None:
        assert self._exporter is not None
        try:
            await self._exporter.run.remote(export_id)
        except Exception:  # the Exporter resumes unfinished exports when it restarts
            logger.exception("export %s was interrupted", export_id)

    async def label(
        self, model: str, payloads: list[bytes | str], options: ItemOptions
    ) -> list[ItemResult | ModelShipError]:
        """Label through a call shared with the requests arriving at the same moment."""
        outcome = await self._coalesced((model, options, payloads))
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def info(self, model: str) -> ModelInfo:
        return await self._labeler.info(model)

    @serve.batch(
        max_batch_size=_COALESCE_MAX_REQUESTS,
        batch_wait_timeout_s=0.0,
        max_concurrent_batches=_COALESCE_IN_FLIGHT,
    )
    async def _coalesced(
        self, calls: list[tuple[str, ItemOptions, list[bytes | str]]]
    ) -> list[list[ItemResult | ModelShipError] | BaseException]:
        """Requests waiting here at the same moment share one labeling call (``label_call``)
        per (model, options): a Serve call costs milliseconds of CPU on each side, and the
        model gets bigger batches. Nothing waits for company (no window), so a lone request
        goes straight through. Items fail one by one (a bad image fails its own request
        only); a failed call fails them all.

        A shared call carries the request id of its first request, and runs in the trace
        of the batch's first request (as a model batch does); its span lists every
        request id it serves.
        """
        groups: list[tuple[str, ItemOptions, list[int]]] = []  # options hold lists: no dict
        for index, (model, options, _) in enumerate(calls):
            group = next((g for g in groups if g[0] == model and g[1] == options), None)
            if group is None:
                groups.append((model, options, [index]))
            else:
                group[2].append(index)
        outcomes: list[list[ItemResult | ModelShipError] | BaseException] = [[] for _ in calls]
        ids = ray_compat.batch_request_ids()

        async def one_group(model: str, options: ItemOptions, members: list[int]) -> None:
            payloads = [payload for i in members for payload in calls[i][2]]
            try:
                with (
                    request_scope(ids[members[0]] if ids else None),
                    tracing.span("coalesce", requests=len(members), request_ids=ids),
                ):
                    results = await self._labeler.label(model, payloads, options)
            except Exception as exc:
                for i in members:
                    outcomes[i] = exc
                return
            start = 0
            for i in members:
                outcomes[i] = results[start : start + len(calls[i][2])]
                start += len(calls[i][2])

        await asyncio.gather(*(one_group(*group) for group in groups))
        return outcomes
