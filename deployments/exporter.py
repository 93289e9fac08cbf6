"""The Exporter deployment: writes exports to object storage, away from the ingress."""

from __future__ import annotations

import asyncio
import logging
from uuid import UUID

from ray import serve

from modelship.core.logs import to_serve_logs
from modelship.core.metrics import ServeMetrics
from modelship.core.settings import Settings
from modelship.service.exporter import run_export
from storage.exports import ExportStore
from storage.services import Services

logger = logging.getLogger("modelship.exports")


@serve.deployment(name="Exporter", ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=4)
class Exporter:
    """Streams a project's rows from PostgreSQL through a format writer to object storage.

    Exports a previous replica left unfinished (it died) are resumed when a replica starts.

    Args:
        settings: storage URLs.
    """

    async def __init__(self, settings: Settings) -> None:  # type: ignore[misc]  # Serve awaits it
        to_serve_logs()
        self._services = Services.from_settings(settings)
        self._metrics = ServeMetrics()
        self._resuming = asyncio.create_task(self._resume())

    async def run(self, export_id: UUID) -> None:
        await run_export(self._services, export_id, metrics=self._metrics)

    async def _resume(self) -> None:
        try:
            for export_id in await ExportStore(self._services.db).unfinished():
                logger.info("resuming export %s", export_id)
                await run_export(self._services, export_id, metrics=self._metrics)
        except Exception:
            logger.exception("could not resume unfinished exports")

    async def __del__(self) -> None:
        if hasattr(self, "_services"):
            await self._services.close()
