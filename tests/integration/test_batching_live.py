"""Dynamic batching under concurrent HTTP load, and live batch-size changes."""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from ray import serve

from tests.integration.conftest import APP, deploy_config

MODEL = "minilm-zero-shot"
DEPLOYMENT = f"Model-{MODEL}"


def _stats() -> dict[str, Any]:
    handle = serve.get_deployment_handle(DEPLOYMENT, app_name=APP)
    stats: dict[str, Any] = handle.stats.remote().result()
    return stats


def _fire(base_url: str, count: int) -> None:
    def one(i: int) -> int:
        body = {"text": f"request number {i}: the service was fine " * (1 + i % 4)}
        return httpx.post(f"{base_url}/api/v1/classify/text", json=body, timeout=60).status_code

    with ThreadPoolExecutor(max_workers=32) as pool:
        assert set(pool.map(one, range(count))) == {200}


def test_concurrent_http_requests_are_batched(base_url: str) -> None:
    before = len(_stats()["batch_sizes"])
    _fire(base_url, 64)
    sizes = _stats()["batch_sizes"][before:]
    assert sum(sizes) == 64
    assert max(sizes) > 1


def test_concurrent_requests_sharing_calls_each_get_their_own_answer(base_url: str) -> None:
    """Text requests arriving together share the Ingress's downstream calls; each still
    gets exactly its own texts' labels, from its own label set, as when sent alone."""
    label_sets = [None, ["sport", "cooking", "finance"], ["weather", "music"]]

    def body(i: int) -> dict[str, Any]:
        texts = [f"the match ended {i} to nil", f"bake the bread for {i} minutes"][: 1 + i % 2]
        labels = label_sets[i % 3]
        named = [{"name": label} for label in labels] if labels else None
        return {"texts": texts, **({"labels": named} if named else {})}

    def post(i: int) -> list[list[tuple[str, float]]]:
        response = httpx.post(f"{base_url}/api/v1/classify/text", json=body(i), timeout=60)
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        return [[(x["label"], x["score"]) for x in r["labels"]] for r in results]

    alone = [post(i) for i in range(24)]
    with ThreadPoolExecutor(max_workers=24) as pool:
        together = list(pool.map(post, range(24)))
    for i, (a, b) in enumerate(zip(alone, together, strict=True)):
        assert len(b) == len(body(i)["texts"])
        assert [[label for label, _ in r] for r in a] == [[label for label, _ in r] for r in b]
        for ra, rb in zip(a, b, strict=True):
            assert all(abs(sa - sb) < 1e-4 for (_, sa), (_, sb) in zip(ra, rb, strict=True))
        if label_sets[i % 3]:
            assert {label for r in b for label, _ in r} <= set(label_sets[i % 3])


def test_user_config_changes_batch_size_without_restarting(
    base_url: str, serve_config: dict[str, Any]
) -> None:
    pid = _stats()["pid"]
    config = copy.deepcopy(serve_config)
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] == DEPLOYMENT:
            deployment["user_config"] = {"max_batch_size": 2, "batch_wait_timeout_s": 0.05}
    deploy_config(config)
    models = httpx.get(f"{base_url}/api/v1/models", timeout=30).json()["models"]
    (minilm,) = [m for m in models if m["name"] == MODEL]
    assert minilm["batching"] == {"max_batch_size": 2, "batch_wait_timeout_s": 0.05}
    assert _stats()["pid"] == pid
    before = len(_stats()["batch_sizes"])
    _fire(base_url, 24)
    sizes = _stats()["batch_sizes"][before:]
    assert max(sizes) == 2
    deploy_config(copy.deepcopy(serve_config))
    assert _stats()["pid"] == pid
