"""Our spans through OpenTelemetry's real SDK, exported in memory (the process-wide tracer
provider is left alone: other tests rely on tracing being off)."""

from __future__ import annotations

import asyncpg
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from modelship.core import tracing


@pytest.fixture
def exported(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "tracer", provider.get_tracer("test"))
    return exporter


def test_a_failed_statement_s_span_names_the_error_not_its_message(
    exported: InMemorySpanExporter,
) -> None:
    # asyncpg's message for an argument it cannot encode quotes the argument: user data
    error = asyncpg.exceptions.DataError(
        "invalid input for query argument $1: 'a user's private text' ('str' object cannot"
        " be interpreted as an integer)"
    )
    query = "SELECT count(*) FROM items WHERE project_id = $1"
    tracing.finished_span("postgres SELECT", 0.25, error, **{"db.query.text": query})
    (span,) = exported.get_finished_spans()
    assert "private text" not in span.to_json()
    assert span.status.status_code == StatusCode.ERROR
    assert span.status.description == "DataError"
    (event,) = span.events
    assert event.name == "exception"
    assert event.attributes == {"exception.type": "asyncpg.exceptions.DataError"}
    assert span.attributes == {"db.query.text": query}
    assert span.end_time is not None and span.start_time is not None
    assert span.end_time - span.start_time == 250_000_000


def test_a_span_leaves_out_attributes_that_are_none(exported: InMemorySpanExporter) -> None:
    with tracing.span("job batch", job_id="j1", request_id=None):
        pass
    (span,) = exported.get_finished_spans()
    assert span.attributes == {"job_id": "j1"}
