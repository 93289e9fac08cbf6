"""Structured logs: our records in Serve's JSON replica logs, with the request's id."""

from __future__ import annotations

import json
import time
import uuid

import httpx

from tests.integration.conftest import serve_log_records


def test_a_request_is_logged_as_json_with_its_id(http: httpx.Client) -> None:
    request_id = f"logtest-{uuid.uuid4().hex}"
    response = http.get("/api/v1/models", headers={"x-request-id": request_id})
    assert response.status_code == 200
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = [r for r in serve_log_records("Ingress") if r.get("request_id") == request_id]
        if any(r.get("message") == "slow request" for r in found):
            break
        time.sleep(0.2)
    (record,) = [r for r in found if r.get("message") == "slow request"]
    assert record["route"] == "/api/v1/models" and record["status_code"] == 200
    assert record["latency_ms"] >= 0 and record["levelname"] == "WARNING"
    assert record["deployment"] == "modelship_Ingress" and record["replica"]
    assert "api_key" not in json.dumps(record).lower()
