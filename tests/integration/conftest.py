"""Integration tier: the real application from config/serve_config.yaml, over real HTTP."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from modelship.core.settings import Settings
from storage.embedded import stop_embedded

CONFIG = Path(__file__).resolve().parents[2] / "config" / "serve_config.yaml"
APP = "modelship"


def text_only_config(port: int, settings: dict[str, Any]) -> dict[str, Any]:
    """The shipped config with only the zero-shot text model, on ``port``: a second local
    instance small enough to start on two cores."""
    config: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    config["http_options"]["port"] = port
    app = config["applications"][0]
    app["args"]["models"] = [m for m in app["args"]["models"] if m["name"] == "minilm-zero-shot"]
    app["args"]["settings"] = settings
    keep = {"Ingress", "Preprocessor", "Model-minilm-zero-shot"}
    app["deployments"] = [d for d in app["deployments"] if d["name"] in keep]
    return config


def serve_log_records(deployment: str) -> list[dict[str, Any]]:
    """The JSON records in this cluster's replica logs of ``deployment``."""
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    records = []
    for path in logs.glob(f"replica_{APP}_{deployment}_*.log"):
        # complete lines only: the replica may be writing the last one as it is read
        written, _, _ = path.read_text(errors="replace").rpartition("\n")
        for line in written.splitlines():
            if line.startswith("{"):
                records.append(json.loads(line))
    return records


def deploy_config(config: dict[str, Any], timeout_s: float = 300) -> None:
    """Deploy a serve config the way ``serve deploy`` and KubeRay do, and wait for it."""
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        app = serve.status().applications.get(APP)
        if app is not None and app.status == "RUNNING":
            return
        if app is not None and app.status == "DEPLOY_FAILED":
            raise RuntimeError(app.message)
        time.sleep(1)
    raise TimeoutError(f"{APP} did not start in {timeout_s}s")


@pytest.fixture(scope="session")
def live_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Embedded defaults under a fresh data dir: the app starts PostgreSQL and Redis.

    They are stopped at the end (only these: found by their data dir).
    """
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("live"),
        job_batch_size=8,
        job_lease_s=5,
        job_poll_s=0.5,
        # the limiter runs (through Redis) but the tests' polling and load stay under it
        rate_limit_per_minute=60_000,
        rate_limit_burst=1_000,
        slow_request_s=0.0,  # every request is "slow": the log test finds its own
    )
    yield settings
    stop_embedded(settings.data_dir / "services")


@pytest.fixture(scope="session")
def serve_config(live_settings: Settings) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    config.pop("http_options")  # the session cluster's proxy listens on a free port
    # every request traced, to the session's OTLP receiver (see serve_cluster)
    config["tracing_config"].update(enabled=True, sampling_ratio=1.0)
    args = config["applications"][0]["args"]
    args["settings"] = {
        **args.get("settings", {}),
        **live_settings.model_dump(
            mode="json",
            include={
                "data_dir",
                "job_batch_size",
                "job_lease_s",
                "job_poll_s",
                "rate_limit_per_minute",
                "rate_limit_burst",
                "slow_request_s",
            },
        ),
    }
    return config


@pytest.fixture(scope="session")
def base_url(live_settings: Settings, serve_cluster: int, serve_config: dict[str, Any]) -> str:
    deploy_config(copy.deepcopy(serve_config))
    return f"http://127.0.0.1:{serve_cluster}"


@pytest.fixture
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=60) as client:
        yield client
