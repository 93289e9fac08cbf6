"""cluster/monitoring checked offline: promtool on the rules, their unit tests and the
Prometheus config; the PrometheusRule against rules.yaml; every dashboard expression
through promtool's PromQL parser; the PodMonitor and the Grafana provisioning files.

That the expressions return data from the live application is
tests/integration/test_prometheus.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

MONITORING = Path(__file__).resolve().parents[2] / "cluster" / "monitoring"


def _yaml(name: str) -> Any:
    return yaml.safe_load((MONITORING / name).read_text())


def _promtool(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: apt-get install prometheus"
    return subprocess.run(
        [binary, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def _alerts() -> dict[str, dict[str, Any]]:
    return {
        rule["alert"]: rule for group in _yaml("rules.yaml")["groups"] for rule in group["rules"]
    }


def _dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return dashboard


def test_rules_pass_promtool_check() -> None:
    done = _promtool("check", "rules", "rules.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in done.stdout


def test_rule_unit_tests_pass() -> None:
    done = _promtool("test", "rules", "tests.yaml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_brief_s_alerts_are_there() -> None:
    assert {
        "ModelShipHighErrorRate",
        "ModelShipHighLatencyP95",
        "ModelShipReplicaUnhealthy",
        "ModelShipJobQueueGrowing",
        "ModelShipJobItemsFailing",
        "ModelShipGPUMemoryHigh",
    } <= set(_alerts())
    for name, rule in _alerts().items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    """Each alert fires in some case, and in some case stays quiet: no alert expected at
    all, or an input series that none of the expected alerts carries."""
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in _yaml("tests.yaml")["tests"]:
        series = [s["series"] for s in test["input_series"]]
        for case in test.get("alert_rule_test", []):
            expected = [a["exp_labels"] for a in case["exp_alerts"]]
            if expected:
                firing.add(case["alertname"])
            if not expected or any(not any(_carries(s, e) for e in expected) for s in series):
                quiet.add(case["alertname"])
    assert firing == set(_alerts()), set(_alerts()) - firing
    assert quiet == set(_alerts()), set(_alerts()) - quiet


def _carries(series: str, labels: dict[str, str]) -> bool:
    return all(f'{k}="{v}"' in series for k, v in labels.items() if k != "severity")


def test_gpu_alerts_and_panels_name_the_labels_ray_gives_gpu_metrics() -> None:
    """Ray 2.60 tags its GPU metrics (``ray_node_gram_used``...) with GPU_TAG_KEYS
    (ray/dashboard/consts.py: ``ip``, ``GpuIndex``...); a label it does not set renders
    as an empty string in an alert or a legend."""
    from ray.dashboard.consts import GPU_TAG_KEYS

    gpu_metric = re.compile(r"\bray_node_(gram|gpus)_\w+")
    named: list[str] = []
    for rule in _alerts().values():
        if gpu_metric.search(rule["expr"]):
            for text in rule["annotations"].values():
                named += re.findall(r"\$labels\.(\w+)", text)
    for panel in _dashboard()["panels"]:
        for target in panel.get("targets", []):
            if gpu_metric.search(target["expr"]):
                named += re.findall(r"{{\s*(\w+)\s*}}", target.get("legendFormat", ""))
    assert "GpuIndex" in named and "ip" in named
    assert set(named) <= set(GPU_TAG_KEYS), set(named) - set(GPU_TAG_KEYS)


def test_prometheus_rule_carries_the_same_groups_as_rules_yaml() -> None:
    rule = _yaml("prometheus-rule.yaml")
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["spec"]["groups"] == _yaml("rules.yaml")["groups"]


def test_prometheus_config_is_valid() -> None:
    done = _promtool("check", "config", "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    config = _yaml("prometheus.yml")
    assert config["rule_files"] == ["rules.yaml"]
    (job,) = config["scrape_configs"]
    assert job["file_sd_configs"][0]["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]


def test_dashboard_expressions_parse(tmp_path: Path) -> None:
    """promtool parses each target as a recording rule: a typo fails here, offline."""
    targets = [t for p in _dashboard()["panels"] for t in p.get("targets", [])]
    rules = [
        {"record": f"dashboard:target_{n}", "expr": t["expr"].replace("$__rate_interval", "5m")}
        for n, t in enumerate(targets)
    ]
    (tmp_path / "dashboard.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    done = _promtool("check", "rules", "dashboard.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(rules) >= 15


def test_dashboard_shows_what_the_brief_asks_for() -> None:
    dashboard = _dashboard()
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    text = " ".join(t["expr"] for p in panels for t in p["targets"])
    for metric in (
        "ray_modelship_http_requests_total",  # request rate and errors
        "ray_modelship_http_request_seconds_bucket",  # p50 / p95
        "ray_serve_deployment_replica_healthy",  # replicas per deployment
        "ray_modelship_inference_batch_size",  # batch size
        "ray_modelship_job_queue_items",  # queue depth
        "ray_modelship_predictions_total",  # job throughput
        "ray_modelship_job_items_failed_total",
        "ray_node_gram_used",  # GPU memory
    ):
        assert metric in text, metric
    assert "histogram_quantile(0.5," in text and "histogram_quantile(0.95," in text
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    (variable,) = dashboard["templating"]["list"]
    assert (variable["type"], variable["query"]) == ("datasource", "prometheus")
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]


def test_dashboard_panels_do_not_overlap() -> None:
    cells: set[tuple[int, int]] = set()
    for panel in _dashboard()["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, panel["title"]
        cells |= mine


def test_grafana_provisioning_finds_prometheus_and_the_dashboard() -> None:
    """Provisioning is mounted at /etc/grafana/provisioning and this folder at
    /etc/modelship/monitoring (cluster/compose.yaml)."""
    sources = {s["type"]: s for s in _yaml("grafana/datasources/modelship.yaml")["datasources"]}
    prometheus = sources["prometheus"]
    assert prometheus["isDefault"] and prometheus["url"] == "http://prometheus:9090"
    scrape = _yaml("prometheus.yml")["global"]["scrape_interval"]
    assert prometheus["jsonData"]["timeInterval"] == scrape
    (provider,) = _yaml("grafana/dashboards/modelship.yaml")["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/etc/modelship/monitoring"
    # the provider loads every .json file under its folder: only the dashboard is one
    assert [p.name for p in MONITORING.rglob("*.json")] == ["grafana-dashboard.json"]


def test_podmonitor_scrapes_every_ray_pod_s_metrics_port() -> None:
    monitor = _yaml("podmonitor.yaml")
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    selector = monitor["spec"]["selector"]
    assert selector["matchLabels"] == {"ray.io/is-ray-node": "yes"}
    (node_type,) = selector["matchExpressions"]
    assert node_type == {"key": "ray.io/node-type", "operator": "In", "values": ["head", "worker"]}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")


@pytest.mark.parametrize("name", ["podmonitor.yaml", "prometheus-rule.yaml"])
def test_operator_objects_have_no_namespace(name: str) -> None:
    """They go in the RayService's namespace, whatever it is (kubectl apply -n)."""
    assert "namespace" not in _yaml(name)["metadata"]
