"""OpenTelemetry tracing, off by default: Ray Serve's spans and ours, exported over OTLP.

Ray Serve traces a request from its proxy through every replica and handle call, carrying
the context in the request metadata, once the serve config's ``tracing_config`` is enabled
(``config/serve_config.yaml``). It builds each process's tracer provider and asks
``otlp_span_processors`` for the exporters; the endpoint is OpenTelemetry's own setting,
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_ENDPOINT``).

Inside those spans we add ``preprocess``, ``predict`` (one per model batch), a span per
PostgreSQL statement and per Redis round trip, and a root span per job batch. When tracing
is off, ``span`` hands out OpenTelemetry's no-op spans.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

__all__ = ["SpanKind", "enabled", "finished_span", "otlp_span_processors", "recording", "span"]

tracer = trace.get_tracer("modelship")


def otlp_span_processors() -> list[SpanProcessor]:
    """Ray Serve's ``tracing_config.exporter_import_path``: batch spans to OTLP over HTTP."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    return [BatchSpanProcessor(OTLPSpanExporter(), schedule_delay_millis=1000)]


def enabled() -> bool:
    """Whether this process exports spans (Ray Serve installed an SDK tracer provider)."""
    return isinstance(trace.get_tracer_provider(), SdkTracerProvider)


def recording() -> bool:
    """Whether the current span records: inside a traced request or job batch."""
    return trace.get_current_span().is_recording()


@contextmanager
def span(name: str, kind: SpanKind = SpanKind.INTERNAL, **attributes: Any) -> Iterator[Span]:
    """A child of the current span (``None`` attributes are left out)."""
    attrs = {k: v for k, v in attributes.items() if v is not None}
    with tracer.start_as_current_span(name, kind=kind, attributes=attrs) as current:
        yield current


def finished_span(
    name: str, elapsed_s: float, error: BaseException | None = None, **attributes: Any
) -> None:
    """Record an operation that just ended and took ``elapsed_s`` (from a callback).

    A failure is recorded by its type, not its message: a driver's message can quote the
    statement's arguments (asyncpg: ``invalid input for query argument $1: '...'``)."""
    end = time.time_ns()
    current = tracer.start_span(
        name, kind=SpanKind.CLIENT, attributes=attributes, start_time=end - int(elapsed_s * 1e9)
    )
    if error is not None:
        kind = type(error)
        current.add_event("exception", {"exception.type": f"{kind.__module__}.{kind.__qualname__}"})
        current.set_status(Status(StatusCode.ERROR, kind.__name__))
    current.end(end_time=end)
