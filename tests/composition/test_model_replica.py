"""ModelReplica on a real local cluster, called through deployment handles."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.model import ModelReplica
from modelship.core.errors import InvalidInput
from modelship.core.messages import ItemOptions, ItemResult, PreparedText
from modelship.core.settings import Settings
from modelship.predictors import ModelStore, build_predictor
from tests.conftest import MINILM

pytestmark = pytest.mark.asyncio(loop_scope="module")
MINILM_LABELS = tuple(MINILM.labels or ())


@pytest.fixture(scope="module")
def replica(serve_cluster: int, settings: Settings) -> Iterator[DeploymentHandle]:
    app = ModelReplica.options(
        user_config=MINILM.batching.model_dump(),
        max_ongoing_requests=64,
        ray_actor_options={"num_cpus": 0.5},
    ).bind(MINILM, settings)
    yield serve.run(app, name="replica-under-test", route_prefix=None)
    serve.delete("replica-under-test")


def _items(settings: Settings, count: int) -> list[PreparedText]:
    predictor = build_predictor(MINILM, ModelStore(settings.models_dir).resolve(MINILM.source))
    predictor.load_processor()
    options = ItemOptions(top_k=1, labels=MINILM_LABELS)
    return [predictor.preprocess(f"text number {i} " * (1 + i % 5), options) for i in range(count)]


async def _batch_sizes(replica: DeploymentHandle) -> list[int]:
    stats = await replica.stats.remote()
    return list(stats["batch_sizes"])


async def test_concurrent_requests_are_batched(
    replica: DeploymentHandle, settings: Settings
) -> None:
    before = len(await _batch_sizes(replica))
    items = _items(settings, 24)
    results: list[list[ItemResult]] = await asyncio.gather(
        *(replica.predict.remote([item]) for item in items)
    )
    sizes = (await _batch_sizes(replica))[before:]
    assert sum(sizes) == 24
    assert max(sizes) > 1
    assert max(sizes) <= MINILM.batching.max_batch_size
    version = (await replica.info.remote()).version
    assert all(result[0].version == version for result in results)


async def test_one_request_with_many_items_joins_the_batch_queue(
    replica: DeploymentHandle, settings: Settings
) -> None:
    before = len(await _batch_sizes(replica))
    results = await replica.predict.remote(_items(settings, 10))
    assert len(results) == 10
    assert max((await _batch_sizes(replica))[before:]) > 1


async def test_queued_items_reordered_for_batching_come_back_in_input_order(
    replica: DeploymentHandle, settings: Settings
) -> None:
    predictor = build_predictor(MINILM, ModelStore(settings.models_dir).resolve(MINILM.source))
    predictor.load_processor()
    options = ItemOptions(top_k=2, labels=MINILM_LABELS)
    phrases = ["I love it, it works great. ", "It broke after a day, terrible. "]
    texts = [phrases[i % 2] * (1 + (i * 7) % 11) for i in range(40)]  # lengths interleaved
    items = [predictor.preprocess(text, options) for text in texts]
    before = len(await _batch_sizes(replica))
    queued = await replica.predict.remote(items)  # more than a batch: through the queue
    assert len(await _batch_sizes(replica)) > before + 1
    for item, result in zip(items, queued, strict=True):
        alone = (await replica.predict.remote([item]))[0]  # a batch of its own
        assert [s.label for s in result.output] == [s.label for s in alone.output]
        assert result.output[0].score == pytest.approx(alone.output[0].score, abs=1e-4)


async def test_items_that_failed_before_come_back_as_their_errors_in_place(
    replica: DeploymentHandle, settings: Settings
) -> None:
    first, second = _items(settings, 2)
    failed = InvalidInput("the image could not be decoded", "corrupt_image")
    results = await replica.predict.remote([failed, first, failed, second])
    assert [type(r).__name__ for r in results] == [
        "InvalidInput",
        "ItemResult",
        "InvalidInput",
        "ItemResult",
    ]
    assert results[0].code == "corrupt_image"
    before = len(await _batch_sizes(replica))
    (only,) = await replica.predict.remote([failed])
    assert isinstance(only, InvalidInput)
    assert len(await _batch_sizes(replica)) == before  # nothing left to run


async def test_texts_are_tokenised_in_the_replica_and_a_bad_one_fails_alone(
    replica: DeploymentHandle, settings: Settings
) -> None:
    texts = [f"text number {i} " * (1 + i % 5) for i in range(6)]
    labeled = await replica.label.remote(texts, ItemOptions(top_k=1, labels=MINILM_LABELS))
    prepared = await replica.predict.remote(_items(settings, 6))
    for raw, ready in zip(labeled, prepared, strict=True):
        assert raw.version == ready.version
        assert [s.label for s in raw.output] == [s.label for s in ready.output]
        assert raw.output[0].score == pytest.approx(ready.output[0].score, abs=1e-4)
    # Without candidate labels a zero-shot text cannot be prepared: its error, in place.
    unlabeled = await replica.label.remote(texts[:1], ItemOptions(top_k=1))
    assert [type(r).__name__ for r in unlabeled] == ["InvalidInput"]
    assert unlabeled[0].code == "labels_required"


async def test_a_lone_request_does_not_wait_out_the_batch_window(
    replica: DeploymentHandle, settings: Settings
) -> None:
    await replica.reconfigure.remote({"max_batch_size": 8, "batch_wait_timeout_s": 1.0})
    try:
        before = await replica.stats.remote()
        assert len(await replica.predict.remote(_items(settings, 1))) == 1
        after = await replica.stats.remote()
        assert after["direct_requests"] == before["direct_requests"] + 1
        assert after["batch_sizes"][len(before["batch_sizes"]) :] == [1]
    finally:
        await replica.reconfigure.remote(MINILM.batching.model_dump())


async def test_batches_run_concurrently_up_to_the_configured_number(
    replica: DeploymentHandle, settings: Settings
) -> None:
    assert (await replica.stats.remote())["concurrent_batches_peak"] == 1  # the default
    config = MINILM.model_copy(update={"concurrent_batches": 2, "torch_threads": 1})
    app = ModelReplica.options(
        name="TwoAtOnce",
        user_config={"max_batch_size": 2, "batch_wait_timeout_s": 0.0},
        max_ongoing_requests=64,
        ray_actor_options={"num_cpus": 0.5},
    ).bind(config, settings)
    two = serve.run(app, name="two-batches-at-once", route_prefix=None)
    try:
        items = _items(settings, 24)
        results = await asyncio.gather(*(two.predict.remote([item]) for item in items))
        assert len(results) == 24
        stats = await two.stats.remote()
        assert stats["concurrent_batches_peak"] == 2
        assert max(stats["batch_sizes"]) <= 2
    finally:
        serve.delete("two-batches-at-once")


async def test_reconfigure_changes_the_batch_size_live(
    replica: DeploymentHandle, settings: Settings
) -> None:
    await replica.reconfigure.remote({"max_batch_size": 3, "batch_wait_timeout_s": 0.05})
    try:
        before = len(await _batch_sizes(replica))
        await asyncio.gather(*(replica.predict.remote([i]) for i in _items(settings, 12)))
        assert max((await _batch_sizes(replica))[before:]) == 3
        assert (await replica.info.remote()).batching.max_batch_size == 3
    finally:
        await replica.reconfigure.remote(MINILM.batching.model_dump())


async def test_health_check_probes_the_model(replica: DeploymentHandle) -> None:
    await replica.check_health.remote()


async def test_health_check_fails_when_the_model_breaks(settings: Settings) -> None:
    replica = ModelReplica.func_or_class(MINILM, settings)  # the plain class, in this process
    await replica.check_health()

    def broken(batch: object) -> object:
        raise RuntimeError("CUDA error: device-side assert triggered")

    replica._predictor.predict = broken  # type: ignore[method-assign]
    replica._last_success = 0.0  # idle long enough that the check probes the model
    with pytest.raises(RuntimeError, match="device-side"):
        await replica.check_health()


async def test_an_item_the_model_raises_on_fails_alone(settings: Settings) -> None:
    replica = ModelReplica.func_or_class(MINILM, settings)  # the plain class, in this process
    items = _items(settings, 3)
    real = replica._predictor.predict

    def choking(batch: list[PreparedText]) -> object:
        if any(item is items[1] for item in batch):
            raise IndexError("index out of range in self")
        return real(batch)

    replica._predictor.predict = choking  # type: ignore[method-assign]
    results = await replica.predict(items)
    assert [type(r).__name__ for r in results] == ["ItemResult", "InvalidInput", "ItemResult"]
    assert results[1].code == "unprocessable_item"
    await replica.check_health()  # the model runs: the replica stays
