"""OpenTelemetry: one trace per request across the deployments and storage, exported over
OTLP to a receiver; the request id reaches every deployment a request or job touches."""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from tests.conftest import payload
from tests.integration.conftest import serve_log_records
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan

MODEL = "replica_handle_request Model-minilm-zero-shot label"
PREPROCESSOR = "replica_handle_request Preprocessor"
IMAGE_MODEL = "replica_handle_request Model-efficientnet-lite0 label"


def _wait_for(
    receiver: OtlpReceiver, find: Callable[[], list[ReceivedSpan]], timeout_s: float = 30
) -> list[ReceivedSpan]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if spans := find():
            return spans
        time.sleep(0.3)
    seen = sorted({s.name for s in receiver.spans})
    raise AssertionError(f"no such spans among {len(receiver.spans)}; names: {seen}")


def _wait_for_log(matches: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if found := [r for r in serve_log_records("JobRunner") if matches(r)]:
            return found[0]
        time.sleep(0.3)
    raise AssertionError("no such JobRunner log record")


def _one(spans: list[ReceivedSpan], prefix: str) -> ReceivedSpan:
    found = [s for s in spans if s.name.startswith(prefix)]
    assert found, f"no {prefix!r} span in {sorted(s.name for s in spans)}"
    return found[0]


def _ancestors(span: ReceivedSpan, spans: list[ReceivedSpan]) -> list[str]:
    by_id = {s.span_id: s for s in spans}
    names = []
    while span.parent_id in by_id:
        span = by_id[span.parent_id]
        names.append(span.name)
    return names


def test_a_request_is_one_trace_from_ingress_to_the_model(
    http: httpx.Client, otlp_receiver: OtlpReceiver
) -> None:
    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    request_id = f"trace-{uuid.uuid4().hex}"
    response = http.post(
        "/api/v1/classify/text",
        json={"texts": [f"a tracing test about football {uuid.uuid4().hex}"]},
        headers={"traceparent": f"00-{trace_id}-{client_span}-01", "x-request-id": request_id},
    )
    assert response.status_code == 200

    def complete() -> list[ReceivedSpan]:
        # From several processes, each in its time: the route's span ends (and leaves) last.
        spans = otlp_receiver.trace(trace_id)
        names = {s.name for s in spans}
        routed = any(name.startswith("POST /api/v1/classify/text") for name in names)
        wanted = {"preprocess", "predict", "redis EVALSHA", MODEL}
        return spans if routed and wanted <= names else []

    spans = _wait_for(otlp_receiver, complete)
    # FastAPI's span for the route continues the client's trace; Serve's handle call carries
    # it to the model replica, with the request id. Texts skip the Preprocessor: the model
    # replica tokenises them.
    ingress = _one(spans, "POST /api/v1/classify/text")
    model = _one(spans, MODEL)
    assert ingress.parent_id == client_span
    assert model.attributes["request_id"] == request_id
    assert ingress.name in _ancestors(model, spans)
    assert not [s for s in spans if s.name.startswith(PREPROCESSOR)]
    for name in ("preprocess", "predict"):
        assert model.name in _ancestors(_one(spans, name), spans)
    limiter = _one(spans, "redis EVALSHA")  # the rate limit's token, taken in Redis
    assert ingress.name in _ancestors(limiter, spans)
    assert limiter.attributes["db.system.name"] == "redis"


def test_an_image_request_is_decoded_and_labeled_in_the_model_replica(
    http: httpx.Client, otlp_receiver: OtlpReceiver
) -> None:
    """The shipped CPU models prepare their images inline: one call, no Preprocessor."""
    trace_id = secrets.token_hex(16)
    response = http.post(
        "/api/v1/classify/image",
        files={"file": ("cat.jpg", payload("cat.jpg"))},
        headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"},
    )
    assert response.status_code == 200
    request_id = response.json()["request_id"]

    def complete() -> list[ReceivedSpan]:
        spans = otlp_receiver.trace(trace_id)
        names = {s.name for s in spans}
        routed = any(name.startswith("POST /api/v1/classify/image") for name in names)
        wanted = {"preprocess", "predict", IMAGE_MODEL}
        return spans if routed and wanted <= names else []

    spans = _wait_for(otlp_receiver, complete)
    ingress, model = _one(spans, "POST /api/v1/classify/image"), _one(spans, IMAGE_MODEL)
    assert model.attributes["request_id"] == request_id
    assert ingress.name in _ancestors(model, spans)
    assert not [s for s in spans if s.name.startswith(PREPROCESSOR)]
    for name in ("preprocess", "predict"):
        assert model.name in _ancestors(_one(spans, name), spans)


def test_a_job_batch_is_traced_and_carries_the_submitting_request_id(
    http: httpx.Client, otlp_receiver: OtlpReceiver
) -> None:
    body = {"name": f"trace-{uuid.uuid4().hex}", "task": "zero-shot-text-classification"}
    project = http.post("/api/v1/projects", json={**body, "model": "minilm-zero-shot"}).json()
    texts = [f"traced text {n} {uuid.uuid4().hex}" for n in range(3)]  # never cached before
    http.post(f"/api/v1/projects/{project['id']}/items", json={"texts": texts})
    request_id = f"job-{uuid.uuid4().hex}"
    submitted = http.post(
        f"/api/v1/projects/{project['id']}/jobs", headers={"x-request-id": request_id}
    )
    assert submitted.status_code == 202
    job_id = submitted.json()["id"]
    deadline = time.monotonic() + 120
    while (job := http.get(f"/api/v1/jobs/{job_id}").json())["status"] != "succeeded":
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    assert job["request_id"] == request_id
    settled = _wait_for_log(
        lambda r: r.get("message") == "job batch settled" and r.get("job") == job_id
    )
    assert settled["request_id"] == request_id and settled["deployment"].endswith("JobRunner")

    def batches() -> list[ReceivedSpan]:
        return [
            s
            for s in otlp_receiver.spans
            if s.name == "job batch" and s.attributes.get("job_id") == job_id
        ]

    assert all(b.attributes["request_id"] == request_id for b in _wait_for(otlp_receiver, batches))

    def whole_trace() -> list[ReceivedSpan]:
        # a model batch joins the trace of its first request: find the job batch it joined
        for batch in batches():
            spans = otlp_receiver.trace(batch.trace_id)
            if {"preprocess", "predict", MODEL} <= {s.name for s in spans}:
                return spans
        return []

    spans = _wait_for(otlp_receiver, whole_trace)
    model = _one(spans, MODEL)
    assert model.attributes["request_id"] == request_id
    assert "job batch" in _ancestors(model, spans)
    statements = [s for s in spans if s.name.startswith("postgres ")]
    assert {"postgres INSERT", "postgres UPDATE"} <= {s.name for s in statements}
    assert all(s.attributes["db.system.name"] == "postgresql" for s in statements)
    assert "redis MGET" in {s.name for s in spans}  # the prediction cache was asked first
