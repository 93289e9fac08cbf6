"""Live batching changes (``user_config``) on a running ModelReplica: applied without a
restart or a dropped request, and a bad one refused without taking the replica down."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ray import serve
from ray.serve import Application
from ray.serve.context import _get_global_client
from ray.serve.handle import DeploymentHandle
from ray.serve.schema import ServeDeploySchema

from deployments.model import ModelReplica
from modelship.core.config import BatchingConfig
from modelship.core.messages import ItemOptions, ItemResult, PreparedText
from modelship.core.settings import Settings
from modelship.predictors import ModelStore, build_predictor
from tests.conftest import MINILM
from tests.sentry_receiver import SentryReceiver, message

pytestmark = pytest.mark.asyncio(loop_scope="module")
APP = "reconfigure-under-test"


def replica_app(args: dict[str, Any]) -> Application:
    """The replica under test as a config names it (``import_path``), so that a config's
    deployment override changes its ``user_config`` in place, as ``serve deploy`` does
    (``serve.run`` of a bound app restarts every replica)."""
    return ModelReplica.options(
        user_config=MINILM.batching.model_dump(),
        max_ongoing_requests=64,
        ray_actor_options={"num_cpus": 0.5},
    ).bind(MINILM, Settings(data_dir=Path(args["data_dir"])))


def _deploy(settings: Settings, user_config: Any = None, timeout_s: float = 180) -> None:
    override = {} if user_config is None else {"user_config": user_config}
    app = {
        "name": APP,
        "route_prefix": None,
        "import_path": "tests.composition.test_model_reconfigure:replica_app",
        "args": {"data_dir": str(settings.data_dir)},
        "deployments": [{"name": "ModelReplica", **override}],
    }
    client = _get_global_client()
    assert client is not None
    client.deploy_apps(ServeDeploySchema.model_validate({"applications": [app]}))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = serve.status().applications.get(APP)
        if status is not None and status.status == "RUNNING":
            deployment = status.deployments["ModelReplica"]
            if deployment.status == "HEALTHY":
                return
        if status is not None and status.status == "DEPLOY_FAILED":
            raise RuntimeError(status.message)
        time.sleep(0.5)
    raise TimeoutError(f"{APP} did not run in {timeout_s}s")


def _items(settings: Settings, count: int) -> list[PreparedText]:
    predictor = build_predictor(MINILM, ModelStore(settings.models_dir).resolve(MINILM.source))
    predictor.load_processor()
    options = ItemOptions(top_k=1, labels=tuple(MINILM.labels or ()))
    return [predictor.preprocess(f"text number {i}", options) for i in range(count)]


@pytest.fixture
def replica(serve_cluster: int, settings: Settings) -> Iterator[DeploymentHandle]:
    _deploy(settings)
    yield serve.get_deployment_handle("ModelReplica", app_name=APP)
    serve.delete(APP)


async def test_a_bad_user_config_is_refused_and_the_replica_keeps_serving(
    replica: DeploymentHandle, settings: Settings, sentry_receiver: SentryReceiver
) -> None:
    """reconfigure raised on {max_batch_size: 0}; Serve then stopped the running replica,
    its replacements failed the same way, and the deploy ended DEPLOY_FAILED with the
    model down. The refusal reaches error tracking from the replica's own process."""
    pid = (await replica.stats.remote())["pid"]
    await asyncio.to_thread(_deploy, settings, {"max_batch_size": 0})
    assert (await replica.stats.remote())["pid"] == pid
    assert (await replica.info.remote()).batching == MINILM.batching
    [result] = await replica.predict.remote(_items(settings, 1))
    assert isinstance(result, ItemResult)

    event = await asyncio.to_thread(
        sentry_receiver.wait_for,
        lambda e: (
            "user_config {'max_batch_size': 0} refused" in message(e)
            and e["tags"].get("component") == MINILM.deployment_name
        ),
    )
    assert event["level"] == "error" and event["logger"] == "modelship.model"
    assert event["environment"] == "dev" and event["release"].startswith("modelship@")


async def test_a_live_batching_change_drops_no_request(
    replica: DeploymentHandle, settings: Settings
) -> None:
    pid = (await replica.stats.remote())["pid"]
    items = _items(settings, 8)
    done = asyncio.Event()
    results: list[Any] = []

    async def keep_asking() -> None:
        while not done.is_set():
            results.extend(
                await asyncio.gather(
                    *(replica.predict.remote([item]) for item in items), return_exceptions=True
                )
            )

    asking = asyncio.create_task(keep_asking())
    await asyncio.sleep(0.5)
    new = {"max_batch_size": 2, "batch_wait_timeout_s": 0.01}
    await asyncio.to_thread(_deploy, settings, new)
    await asyncio.sleep(0.5)
    done.set()
    await asking
    assert (await replica.info.remote()).batching == BatchingConfig(**new)
    assert (await replica.stats.remote())["pid"] == pid
    assert len(results) >= 3 * len(items)
    failed = [r for r in results if not (isinstance(r, list) and isinstance(r[0], ItemResult))]
    assert not failed, failed[:3]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def test_user_config_fields_left_out_keep_the_configured_batching(
    settings: Settings,
) -> None:
    """{max_batch_size: 4} alone set the wait to BatchingConfig's default (0.005 s), not
    the model's configured 0.05 s. A bad one is refused, named in the log."""
    replica = ModelReplica.func_or_class(MINILM, settings)  # type: ignore[attr-defined]
    replica.reconfigure({"max_batch_size": 4})
    assert replica.info().batching == BatchingConfig(
        max_batch_size=4, batch_wait_timeout_s=MINILM.batching.batch_wait_timeout_s
    )
    records = _Records()
    logging.getLogger("modelship.model").addHandler(records)  # ours do not propagate
    try:
        replica.reconfigure({"max_batch_size": 4, "batch_wait": 1})
        replica.reconfigure([8])
    finally:
        logging.getLogger("modelship.model").removeHandler(records)
    assert replica.info().batching.max_batch_size == 4
    assert len(records.messages) == 2 and "batch_wait" in records.messages[0]
