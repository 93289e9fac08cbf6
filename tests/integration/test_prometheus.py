"""A real Prometheus scrapes the live application with cluster/monitoring/prometheus.yml and
rules.yaml; after some traffic, every Grafana panel expression and every alert expression
(its operands, thresholds left out) returns data through Prometheus's query API."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from modelship.ops.ray_env import free_port
from tests.conftest import payload

MONITORING = Path(__file__).resolve().parents[2] / "cluster" / "monitoring"
_RATE_INTERVAL = "2m"  # Grafana's $__rate_interval: a few scrapes, all of this test's traffic
_GPU = re.compile(r"\bray_node_(gram|gpus)_")
_TOP_LEVEL_SPLIT = re.compile(r"==|!=|>=|<=|>|<|\band\b|\bor\b|\bunless\b")

pytestmark = pytest.mark.integration


def operands(expr: str) -> list[str]:
    """The parts of ``expr`` between its top-level comparisons and set operators, numbers
    left out: an alert ``a > 0.01 and b > 0`` gives ``a`` and ``b``."""
    parts, depth, quote, start, i = [], 0, "", 0, 0
    while i < len(expr):
        char = expr[i]
        if quote:
            quote = "" if char == quote and expr[i - 1] != "\\" else quote
        elif char in "\"'`":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0 and (match := _TOP_LEVEL_SPLIT.match(expr, i)):
            parts.append(expr[start:i])
            start = i = match.end()
            continue
        i += 1
    parts.append(expr[start:])
    return [p.strip() for p in parts if not _is_number(p.strip())]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _expressions() -> list[Any]:
    """(id, PromQL) for every dashboard target and every alert operand."""
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    found = [
        (f"panel {panel['title']} {target['refId']}", target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    rules = yaml.safe_load((MONITORING / "rules.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            for n, operand in enumerate(operands(rule["expr"])):
                found.append((f"alert {rule['alert']} {n}", operand))
    return [
        pytest.param(expr.replace("$__rate_interval", _RATE_INTERVAL), id=name)
        for name, expr in found
    ]


@pytest.fixture(scope="module")
def prometheus(metrics_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Debian Prometheus server on a free loopback port with the shipped config, its
    service discovery file naming this session's Ray metrics agent, scraping every second.
    Stopped by its pid."""
    binary = shutil.which("prometheus")
    assert binary, "the Prometheus server is missing: apt-get install prometheus"
    root = tmp_path_factory.mktemp("prometheus")
    targets = root / "targets.json"
    targets.write_text(json.dumps([{"targets": [metrics_url.split("/")[2]]}]))
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(MONITORING / name) for name in config["rule_files"]]
    (job,) = config["scrape_configs"]
    job["file_sd_configs"] = [{"files": [str(targets)]}]
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    server = subprocess.Popen(
        [
            binary,
            f"--config.file={root / 'prometheus.yml'}",
            f"--storage.tsdb.path={root / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(root / "prometheus.log").open("w"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _until(lambda: _up(url), 30, "Prometheus did not scrape the Ray metrics agent")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def _up(url: str) -> bool:
    try:
        return bool(_query(url, 'up{job="ray"} == 1'))
    except httpx.HTTPError:
        return False


def _query(url: str, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert body["status"] == "success", (expr, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _until(ready: Any, timeout_s: float, message: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := ready()):
        assert time.monotonic() < deadline, message
        time.sleep(0.5)
    return value


def _finished(http: httpx.Client, path: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body: dict[str, Any] = http.get(path).json()
        return body if body["status"] in ("succeeded", "failed") else None

    finished: dict[str, Any] = _until(done, 60, f"{path} did not finish")
    return finished


def _labeling_round(http: httpx.Client, export: bool) -> None:
    """Online requests (two 200s, a 404), and a job with one good image and one that
    fails on every attempt; optionally a CSV export of the job's project."""
    for _ in range(2):
        assert http.post("/api/v1/classify/image", files={"file": payload("cat.jpg")}).is_success
    text = {"texts": ["I love it"], "model": "minilm-zero-shot"}
    assert http.post("/api/v1/classify/text", json=text).is_success
    assert http.get(f"/api/v1/jobs/{uuid.uuid4()}").status_code == 404
    body = {"name": f"prometheus-{uuid.uuid4().hex[:8]}", "task": "image-classification"}
    project = http.post("/api/v1/projects", json={**body, "model": "efficientnet-lite0"}).json()
    files = [("file", (n, payload(n))) for n in ("cat.jpg", "truncated.jpg")]
    assert http.post(f"/api/v1/projects/{project['id']}/items", files=files).status_code == 201
    job = http.post(f"/api/v1/projects/{project['id']}/jobs").json()
    assert _finished(http, f"/api/v1/jobs/{job['id']}")["counts"]["failed"] == 1
    if export:
        body = {"format": "csv", "selection": "all"}
        started = http.post(f"/api/v1/projects/{project['id']}/exports", json=body).json()
        assert _finished(http, f"/api/v1/exports/{started['id']}")["status"] == "succeeded"


@pytest.fixture(scope="module")
def scraped(prometheus: str, http_module: httpx.Client) -> str:
    """Two rounds of traffic a few scrapes apart (so every counter's rate is above 0),
    then Prometheus has seen both jobs' failed items."""
    before = _failed(prometheus)
    _labeling_round(http_module, export=True)
    time.sleep(3)
    _labeling_round(http_module, export=False)
    _until(lambda: _failed(prometheus) >= before + 2, 30, "the failed items never arrived")
    return prometheus


def _failed(url: str) -> float:
    result = _query(url, 'sum(ray_modelship_job_items_failed_total{cause="item"})')
    return float(result[0]["value"][1]) if result else 0.0


@pytest.fixture(scope="module")
def http_module(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=60) as client:
        yield client


@pytest.mark.parametrize("expr", _expressions())
def test_expression_returns_data(scraped: str, expr: str) -> None:
    if _GPU.search(expr) and not _query(scraped, "ray_node_gpus_available"):
        pytest.skip("no GPU on this node: Ray exports no GPU metrics")

    def finite() -> list[dict[str, Any]]:
        result = _query(scraped, expr)
        return [s for s in result if math.isfinite(float(s["value"][1]))]

    _until(finite, 20, f"no data for {expr}: {_query(scraped, expr)}")


def test_rules_load_and_evaluate_without_errors(scraped: str) -> None:
    body = httpx.get(f"{scraped}/api/v1/rules", timeout=10).json()
    rules = [rule for group in body["data"]["groups"] for rule in group["rules"]]
    shipped = yaml.safe_load((MONITORING / "rules.yaml").read_text())
    assert {r["name"] for r in rules} == {
        rule["alert"] for group in shipped["groups"] for rule in group["rules"]
    }
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]


def test_operands_split_at_top_level_only() -> None:
    expr = 'sum(rate(x{a=~"b|c"}[5m])) / (y > 2 or z) > 0.01 and w <= 2'
    assert operands(expr) == ['sum(rate(x{a=~"b|c"}[5m])) / (y > 2 or z)', "w"]
    assert operands("a{b='>'} == 0") == ["a{b='>'}"]
