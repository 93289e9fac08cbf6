"""The JobRunner deployment: drives queued job items through the model replicas, as the
Ingress labels (``modelship.service.serving.label_call``)."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from modelship.core.config import ModelConfig
from modelship.core.errortracking import start_error_tracking
from modelship.core.logs import to_serve_logs
from modelship.core.metrics import ServeMetrics
from modelship.core.settings import Settings
from modelship.service.runner import JobRunner
from modelship.service.serving import ServeLabeler
from storage.jobs import JobStore
from storage.services import Services

logger = logging.getLogger("modelship.jobs")


_DRAIN_S = 30  # a stopping replica finishes its batches this long, then gives leases back


@serve.deployment(
    name="JobRunner",
    ray_actor_options={"num_cpus": 0.1},
    max_ongoing_requests=8,
    graceful_shutdown_timeout_s=_DRAIN_S + 15,
)
class JobRunnerDeployment:
    """Claims leased batches from the PostgreSQL queue in the background.

    Every replica runs ``settings.job_concurrency`` claim loops; more replicas share the
    queue safely (``SKIP LOCKED``). On a clean shutdown (a rolling update, a scale-down) the
    replica finishes the batches it holds, then gives back any lease left, without
    spending an attempt; when killed, its leases expire and other loops take the items.

    Args:
        preprocessor: handle to the Preprocessor deployment.
        models: one ModelReplica handle per configured model, by model name.
        configs: the configured models (where each one's images are prepared).
        settings: storage URLs and job settings.
    """

    async def __init__(  # type: ignore[misc]  # Serve awaits an async constructor
        self,
        preprocessor: DeploymentHandle,
        models: dict[str, DeploymentHandle],
        configs: list[ModelConfig],
        settings: Settings,
    ) -> None:
        to_serve_logs()
        start_error_tracking(settings, "JobRunner")
        self._services = Services.from_settings(settings)
        labeler = ServeLabeler(preprocessor, models, configs, settings.model_call_timeout_s * 2)
        owner = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._jobs = JobStore(self._services.db)
        self._runner = JobRunner(
            self._jobs,
            self._services.objects,
            self._services.cache,
            labeler,
            settings,
            owner,
            ServeMetrics(),
        )
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._runner.run_forever(self._stop))
        logger.info("job runner %s started", owner)

    async def stats(self) -> dict[str, Any]:
        return {
            "owner": self._runner.owner,
            "pid": os.getpid(),
            "replica": serve.get_replica_context().replica_tag,
            "items": self._runner.items_done,
        }

    async def check_health(self) -> None:
        if self._task.done():
            raise RuntimeError(f"the job runner loop stopped: {self._task.exception()!r}")

    async def __del__(self) -> None:
        if not hasattr(self, "_task"):  # the constructor failed
            return
        self._stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), _DRAIN_S)
        except Exception:
            logger.exception("job runner %s did not stop cleanly", self._runner.owner)
        try:
            released = await self._jobs.release(self._runner.owner)
            logger.info("job runner %s stopped; %d leases given back", self._runner.owner, released)
        finally:
            await self._services.close()
