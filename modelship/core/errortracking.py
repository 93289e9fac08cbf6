"""Error tracking with Sentry (or a Sentry-compatible service, such as GlitchTip), off
unless ``MODELSHIP_SENTRY_DSN`` is set.

What is reported is what our logs already call an error: every record at ERROR or above
(a 500's traceback with its request id, an export that failed, a ``user_config``
refused), and exceptions nothing caught (threads, the process). The records below ERROR
of the same request or task ride along as breadcrumbs. A 4xx is the client's doing and
logged below ERROR, so it is never an event.

Nothing of a request's content leaves: no frame locals, no request bodies or headers, no
trace headers added to our outgoing HTTP calls (S3, the model store), and only the
integrations listed here (Sentry's auto-enabled ones would instrument FastAPI, Redis and
asyncpg with request data).
"""

from __future__ import annotations

import logging
from importlib import metadata
from typing import Any

from modelship.core.context import current_request_id
from modelship.core.settings import Settings

logger = logging.getLogger("modelship.errortracking")


def start_error_tracking(settings: Settings, component: str) -> bool:
    """Report this process's errors to ``settings.sentry_dsn``, tagged with ``component``
    (the deployment, ``batch``); returns whether reporting is on. Once per process: a
    later call changes nothing."""
    if settings.sentry_dsn is None:
        return False
    import sentry_sdk

    if not sentry_sdk.is_initialized():
        sentry_sdk.init(**sentry_options(settings))
        # on the global scope: every event of the process, whichever task or thread
        sentry_sdk.get_global_scope().set_tag("component", component)
        logger.info("errors are reported to Sentry (%s)", settings.profile.value)
    return True


def sentry_options(settings: Settings) -> dict[str, Any]:
    """sentry-sdk's client options for ``settings`` (which hold a DSN)."""
    from sentry_sdk.integrations.atexit import AtexitIntegration
    from sentry_sdk.integrations.dedupe import DedupeIntegration
    from sentry_sdk.integrations.excepthook import ExcepthookIntegration
    from sentry_sdk.integrations.logging import LoggingIntegration
    from sentry_sdk.integrations.threading import ThreadingIntegration

    assert settings.sentry_dsn is not None
    return {
        "dsn": settings.sentry_dsn.get_secret_value(),
        "environment": settings.profile.value,
        "release": f"modelship@{metadata.version('modelship')}",
        "send_default_pii": False,
        "include_local_variables": False,
        "max_request_body_size": "never",
        "trace_propagation_targets": [],
        "default_integrations": False,
        "auto_enabling_integrations": False,
        "integrations": [
            LoggingIntegration(level=logging.INFO, event_level=logging.ERROR),
            DedupeIntegration(),
            AtexitIntegration(),
            ExcepthookIntegration(),
            ThreadingIntegration(),
        ],
        "before_send": _with_request_id,
    }


def _with_request_id(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
    """The request id the error happened under, as a tag: the one in the error body the
    client got and in every log record of the request."""
    request_id = current_request_id.get()
    if request_id:
        event.setdefault("tags", {})["request_id"] = request_id
    return event
