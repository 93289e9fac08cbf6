"""Fixtures shared by every tier: payload files and settings."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelship.schemas import LabelSpec, ModelConfig, Task
from modelship.settings import Settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytest_plugins = ["tests.tiny_models"]

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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def serve_cluster() -> Iterator[int]:
    """A real local Ray cluster with Serve's HTTP proxy on a free loopback port.

    Started once per session for the composition and integration tiers; only what this
    fixture started is stopped.
    """
    import ray
    from ray import serve

    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    ray.init(
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=512 * 1024**2,
        _temp_dir=temp_dir,
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}},
    )
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield port
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
