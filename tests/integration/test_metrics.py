"""Our Prometheus metrics, scraped from Ray's metrics agent and parsed as Prometheus does;
and the smoke command run against the live graph."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import payload


def _scrape(url: str) -> dict[str, list[Any]]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def _until(url: str, check: Callable[[dict[str, list[Any]]], None], timeout_s: float = 30) -> None:
    """Scrape until ``check`` passes (it asserts), up to ``timeout_s``. Each process (the
    ingress, each model replica, the runner, the exporter) reports its metrics to the
    agent on its own tick: one process's numbers there say nothing of another's."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            check(_scrape(url))
            return
        except (AssertionError, KeyError):
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def _total(samples: list[Any], name: str, **labels: str) -> float:
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_requests_items_and_batches_are_exported(http: httpx.Client, metrics_url: str) -> None:
    for _ in range(3):
        response = http.post("/api/v1/classify/image", files={"file": payload("cat.jpg")})
        assert response.status_code == 200
    assert http.get("/api/v1/jobs/00000000-0000-0000-0000-000000000000").status_code == 404

    _until(metrics_url, _requests_items_and_batches)


def _requests_items_and_batches(families: dict[str, list[Any]]) -> None:
    requests = families["ray_modelship_http_requests"]
    route = "/api/v1/classify/image"
    assert _total(requests, "ray_modelship_http_requests_total", route=route, status="200") >= 3
    # route templates, never raw paths with ids
    assert _total(requests, "ray_modelship_http_requests_total", route="/api/v1/jobs/{job_id}") >= 1
    # latency by route and method: an upload (POST .../items) apart from listing items (GET)
    latency = families["ray_modelship_http_request_seconds"]
    count = "ray_modelship_http_request_seconds_count"
    assert _total(latency, count, route=route, method="POST") >= 3
    assert _total(latency, count, route=route, method="GET") == 0
    assert {s.labels["deployment"] for s in requests} == {"Ingress"}
    items = families["ray_modelship_items_labeled"]
    assert (
        _total(
            items,
            "ray_modelship_items_labeled_total",
            model="efficientnet-lite0",
            task="image-classification",
        )
        >= 3
    )
    sizes = families["ray_modelship_inference_batch_size"]
    assert (
        _total(sizes, "ray_modelship_inference_batch_size_count", model="efficientnet-lite0") >= 1
    )
    loads = families["ray_modelship_model_load_seconds"]
    assert _total(loads, "ray_modelship_model_load_seconds_count", model="efficientnet-lite0") >= 1
    assert _total(loads, "ray_modelship_model_load_seconds_sum", model="efficientnet-lite0") > 0
    assert "ray_serve_num_http_requests" in families or any(
        name.startswith("ray_serve_") for name in families
    )


def test_job_decisions_queue_depth_and_exports_are_exported(
    http: httpx.Client, metrics_url: str
) -> None:
    body = {"name": f"metrics-{time.monotonic_ns()}", "task": "zero-shot-text-classification"}
    project = http.post("/api/v1/projects", json={**body, "model": "minilm-zero-shot"}).json()
    texts = ["I love it, works great", "it broke after a day", "the parcel came on Tuesday"]
    http.post(f"/api/v1/projects/{project['id']}/items", json={"texts": texts})
    job = http.post(f"/api/v1/projects/{project['id']}/jobs").json()
    export: dict[str, Any] = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if http.get(f"/api/v1/jobs/{job['id']}").json()["status"] == "succeeded":
            if not export:
                url = f"/api/v1/projects/{project['id']}/exports"
                export = http.post(url, json={"format": "csv", "selection": "all"}).json()
            elif http.get(f"/api/v1/exports/{export['id']}").json()["status"] == "succeeded":
                break
        time.sleep(0.2)
    else:
        raise AssertionError("the job or the export did not finish")

    _until(metrics_url, _decisions_queue_depth_and_exports)


def _decisions_queue_depth_and_exports(families: dict[str, list[Any]]) -> None:
    decisions = families["ray_modelship_predictions"]
    task = "zero-shot-text-classification"
    decided = sum(
        _total(decisions, "ray_modelship_predictions_total", task=task, decision=d)
        for d in ("auto_approved", "pending")
    )
    assert decided >= 3
    assert {s.labels["deployment"] for s in decisions} == {"JobRunner"}
    assert "ray_modelship_job_queue_items" in families
    exports = families["ray_modelship_exports"]
    assert _total(exports, "ray_modelship_exports_total", format="csv", status="succeeded") >= 1
    # rare events' series are there before their first event (at 0), so that rate() and
    # increase() count it: a series' first sample is no increment to them
    failed = families["ray_modelship_job_items_failed"]
    assert {s.labels["cause"] for s in failed} == {"item", "lease_expired"}
    assert any(s.labels["format"] == "coco" and s.labels["status"] == "failed" for s in exports)


def test_the_smoke_command_passes_against_the_live_graph(base_url: str) -> None:
    root = Path(__file__).resolve().parents[2]
    command = [sys.executable, "-m", "modelship.ops.cli", "smoke", "--url", base_url, "--json"]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=180)
    results = {r["name"]: r for r in json.loads(done.stdout)}
    assert done.returncode == 0, results
    assert {"health", "security_headers", "label_text", "label_image", "latency"} <= set(results)
