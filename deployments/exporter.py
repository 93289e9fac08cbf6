"""The Exporter deployment: writes exports to object storage, away from the ingress."""

from __future__ import annotations

import asyncio
import logging
from uuid import UUID

from ray import serve

from modelship.core.errortracking import start_error_tracking
from modelship.core.logs import to_serve_logs
from modelship.core.metrics import ServeMetrics
from modelship.core.settings import Settings
from modelship.service.exporter import LEASE_S, delete_expired, run_export
from storage.exports import ExportStore
from storage.services import Services

logger = logging.getLogger("modelship.exports")
SWEEP_S = 600.0


@serve.deployment(name="Exporter", ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=4)
class Exporter:
    """Streams a project's rows from PostgreSQL through a format writer to object storage.

    Exports left unfinished (a replica died writing them) are written again once their
    lease lapses; a replica starting looks at once, then every ``LEASE_S``.

    Args:
        settings: storage URLs.
    """

    async def __init__(self, settings: Settings) -> None:  # type: ignore[misc]  # Serve awaits it
        to_serve_logs()
        start_error_tracking(settings, "Exporter")
        self._services = Services.from_settings(settings)
        self._retention = settings.export_retention
        self._metrics = ServeMetrics()
        self._resuming = asyncio.create_task(self._resume())
        self._sweeping = asyncio.create_task(self._sweep())

    async def run(self, export_id: UUID) -> None:
        await run_export(self._services, export_id, self._retention, metrics=self._metrics)

    async def _resume(self) -> None:
        """Write the exports no process is writing (their writer died, or the Ingress's call
        never came), now and each time a lease could have lapsed."""
        while True:
            try:
                for export_id in await ExportStore(self._services.db).unfinished():
                    logger.info("writing unfinished export %s", export_id)
                    await self.run(export_id)
            except Exception:
                logger.exception("could not resume unfinished exports")
            await asyncio.sleep(LEASE_S)

    async def _sweep(self) -> None:
        """Delete the files of expired exports, now and then (every replica: each claims
        its own rows)."""
        while True:
            try:
                while await delete_expired(self._services) > 0:
                    pass
            except Exception:
                logger.exception("could not delete expired exports")
            await asyncio.sleep(SWEEP_S)

    async def __del__(self) -> None:
        if hasattr(self, "_services"):
            await self._services.close()
