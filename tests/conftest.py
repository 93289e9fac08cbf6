"""Fixtures shared by every tier: payload files and settings."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from modelship.core.config import LabelSpec, ModelConfig, Task
from modelship.core.settings import Settings
from modelship.ops.ray_env import free_port
from tests.otlp_receiver import OtlpReceiver
from tests.sentry_receiver import SentryReceiver

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytest_plugins = [
    "tests.tiny_models",
    "tests.unit.flow",
    "tests.otlp_receiver",
    "tests.sentry_receiver",
]

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


def payload(name: str) -> bytes:
    return (DATA / name).read_bytes()


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(data_dir=tmp_path_factory.mktemp("modelship"))


EFFICIENTNET = ModelConfig(
    name="efficientnet-lite0", task=Task.image_classification, source="packaged:efficientnet-lite0"
)
MINILM = ModelConfig(
    name="minilm",
    task=Task.zero_shot_text_classification,
    source="packaged:all-minilm-l6-v2",
    labels=[LabelSpec(name="positive"), LabelSpec(name="negative")],
    batching={"max_batch_size": 16, "batch_wait_timeout_s": 0.05},
)
NUDENET = ModelConfig(
    name="nudenet", task=Task.object_detection, source="packaged:nudenet-320n", score_threshold=0.3
)
PACKAGED_MODELS = [EFFICIENTNET, MINILM, NUDENET]


POSTGRES_ADMIN_DSN = os.environ.get(
    "MODELSHIP_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("MODELSHIP_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL, dropped after the session."""
    name = f"modelship_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(admin_sql(f"CREATE DATABASE {name}"))
    try:
        yield POSTGRES_ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        asyncio.run(admin_sql(f"DROP DATABASE {name} WITH (FORCE)"))


async def admin_sql(sql: str) -> None:
    """Run ``sql`` as the machine's PostgreSQL superuser (CREATE or DROP DATABASE)."""
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_ADMIN_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def storage_settings(tmp_path_factory: pytest.TempPathFactory, postgres_dsn: str) -> Settings:
    """Settings on the real PostgreSQL and Redis of this machine, objects in a temp folder."""
    root = tmp_path_factory.mktemp("storage")
    return Settings(
        data_dir=root,
        database_url=postgres_dsn,
        redis_url=REDIS_URL,
        redis_prefix=f"modelship-test-{uuid.uuid4().hex[:8]}",  # a cold cache every session
        object_store_url=str(root / "objects"),
    )


@pytest.fixture(scope="session")
def metrics_url(serve_cluster: int) -> str:
    """Where Ray's metrics agent serves Prometheus text for the session cluster."""
    import ray

    port = ray._private.worker.global_worker.node.metrics_export_port
    return f"http://127.0.0.1:{port}/metrics"


@contextmanager
def _server(command: list[str], ready_url: str) -> Iterator[None]:
    """A test server in its own process, ready once ``ready_url`` answers (30 s at most);
    stopped after."""
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(ready_url, timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_options() -> Iterator[dict[str, Any]]:
    """A real S3-compatible server (moto) in its own process, with the bucket ``labels``."""
    import s3fs

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with _server(command, f"{endpoint}/moto-api/"):
        options = {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
        s3fs.S3FileSystem(**options).mkdir("labels")
        yield options


@pytest.fixture(scope="session")
def gcs_options() -> Iterator[dict[str, Any]]:
    """A real GCS JSON API server (gcp-storage-emulator) in its own process, with the
    bucket ``labels``: the options gcsfs needs to reach it."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    command = [
        *(sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1"),
        *("--port", str(port), "--in-memory", "--default-bucket", "labels", "--quiet"),
    ]
    with _server(command, f"{endpoint}/storage/v1/b/labels"):
        yield {"endpoint_url": endpoint, "token": "anon", "project": "modelship-test"}


@pytest.fixture(scope="session")
def serve_cluster(otlp_receiver: OtlpReceiver, sentry_receiver: SentryReceiver) -> Iterator[int]:
    """A real local Ray cluster with Serve's HTTP proxy on a free loopback port.

    Started once per session for the composition and integration tiers; only what this
    fixture started is stopped. Its processes export spans to ``otlp_receiver`` when an
    application's serve config turns tracing on, and report errors to ``sentry_receiver``.
    """
    import ray
    from ray import serve

    from modelship.ops.ray_env import private_haproxy, ray_environment

    os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = otlp_receiver.endpoint

    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    # The cluster runs as `modelship serve` starts it (HAProxy, throughput mode), with
    # HAProxy's files and ports its own. Only Ray's processes get this environment: this
    # process imported Serve before, so its handles keep their own event loop (tests call
    # them from synchronous code).
    cluster_env = {
        **ray_environment(None, os.environ),
        **private_haproxy(Path(temp_dir) / "hap"),
        # An ingress replica behind HAProxy stays reachable 30 s once told to stop, for load
        # balancers to deregister it; each app a test deletes would wait that out
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
        # a secret: each replica's Settings read it from the environment
        "MODELSHIP_SENTRY_DSN": sentry_receiver.dsn,
    }
    with mock.patch.dict(os.environ, cluster_env):
        ray.init(
            num_cpus=4,
            include_dashboard=False,
            log_to_driver=False,
            object_store_memory=512 * 1024**2,
            _temp_dir=temp_dir,
            _metrics_export_port=free_port(),
            _system_config={"metrics_report_interval_ms": 1000},  # metrics visible within ~1 s
            runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}},
        )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield port
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
