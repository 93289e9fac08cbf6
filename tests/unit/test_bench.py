"""The benchmark's own instruments: load generators and the report's arithmetic."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest
import torch
from aiohttp import web

from bench import limit
from bench.ingress_app import MINILM, InstantLabeler, one_request
from bench.loadgen import Request, closed_loop, open_loop
from bench.report import ratios, saturation
from bench.split import inclusive
from modelship.core.settings import Settings
from modelship.http.app import create_api

SERVICE_S = 0.05


@pytest.fixture
async def one_at_a_time_server() -> AsyncIterator[str]:
    """Answers one request at a time, each taking SERVICE_S: capacity 20 requests/s."""
    lock = asyncio.Lock()

    async def handle(request: web.Request) -> web.Response:
        async with lock:
            await asyncio.sleep(SERVICE_S)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/work", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


def _make(rng: random.Random) -> Request:
    return "/work", {"x": rng.random()}, 2


async def test_closed_loop_measures_service_time(one_at_a_time_server: str) -> None:
    outcome = await closed_loop(one_at_a_time_server, _make, 1, 1.0, 0.2, seed=1)
    assert outcome.errors == 0
    assert outcome.percentile_ms(50) == pytest.approx(1000 * SERVICE_S, rel=0.5)
    assert outcome.throughput == pytest.approx(2 / SERVICE_S, rel=0.35)  # 2 items a request


async def test_open_loop_charges_queueing_to_the_intended_send_time(
    one_at_a_time_server: str,
) -> None:
    # Twice the capacity for one second: a backlog builds, and requests sent late must
    # still be timed from when they were meant to go (no coordinated omission).
    outcome = await open_loop(one_at_a_time_server, _make, 40.0, 1.0, 0.0, seed=1)
    assert outcome.errors == 0
    assert outcome.percentile_ms(99) > 6 * 1000 * SERVICE_S
    assert outcome.percentile_ms(50) > 2 * 1000 * SERVICE_S


def _row(system: str, items: int, level: float, throughput: float, p50: float) -> dict:
    return {
        "system": system,
        "items_per_request": items,
        "mode": "closed",
        "level": level,
        "throughput": throughput,
        "p50_ms": p50,
        "p95_ms": p50,
        "p99_ms": p50,
        "mean_batch": None,
        "cpu_s_per_1000": 1.0,
        "errors": 0,
    }


def test_saturation_takes_the_best_concurrency_averaged_over_rounds() -> None:
    rows = [
        _row("modelship", 1, 1, 40, 20),
        _row("modelship", 1, 16, 90, 200),
        _row("modelship", 1, 16, 110, 220),
        _row("modelship", 1, 64, 80, 900),
    ]
    throughput, level, best = saturation(rows, "modelship", 1)
    assert (throughput, level, len(best)) == (100, 16, 2)


def test_ratios_against_the_limit_and_peers() -> None:
    rows = [
        _row("modelship", 1, 1, 40, 30.0),
        _row("modelship", 16, 4, 160, 100),
        _row("per-request", 1, 4, 20, 50),
        _row("bentoml", 1, 4, 50, 50),
    ]
    workload = {
        "rows": rows,
        "limit": {"best": {"items_per_s": 200.0}, "single_p50_with_preprocess_ms": 27.0},
    }
    got = ratios(workload)
    assert got["modelship16_over_limit"] == pytest.approx(0.8)
    assert got["modelship1_over_limit"] == pytest.approx(0.2)
    assert got["modelship1_over_per_request1"] == pytest.approx(2.0)
    assert got["modelship1_over_bentoml1"] == pytest.approx(0.8)
    assert got["overhead_c1_ms"] == pytest.approx(3.0)


def test_the_limit_runs_whole_passes_in_streams_and_restores_torch_threads() -> None:
    calls: list[int] = []

    class Counting:
        def predict(self, batch: list[int]) -> list[int]:
            calls.append(len(batch))
            return batch

    threads = torch.get_num_threads()
    rate = limit.throughput(Counting(), list(range(10)), 4, False, 0.0, streams=2)  # type: ignore[arg-type]
    assert sorted(calls) == [2, 4, 4, 4]  # the warm-up batch, then one whole pass
    assert rate > 0
    assert torch.get_num_threads() == threads


def test_a_function_counts_once_per_stack_in_the_split_profile() -> None:
    raw = "\n".join(
        [
            "main (app.py:1);handle (app.py:5);walk (tree.py:9);walk (tree.py:9) 6",
            "main (app.py:1);metrics (ray/metrics.py:133) 3",
            "main (app.py:1);handle (app.py:7) 1",
        ]
    )
    shares = {name: share for share, name in inclusive(raw)}
    assert shares["main (app.py)"] == pytest.approx(100)
    assert shares["handle (app.py)"] == pytest.approx(70)  # two lines of it, one function
    assert shares["walk (tree.py)"] == pytest.approx(60)  # recursion is not counted twice
    assert shares["metrics (metrics.py)"] == pytest.approx(30)


async def test_the_ingress_app_instrument_drives_the_real_route() -> None:
    settings = Settings(rate_limit_per_minute=0)
    app = create_api(InstantLabeler(), [MINILM], settings, behind_serve_proxy=True)
    assert await one_request(app) == 200
    broken = create_api(InstantLabeler(), [], settings, behind_serve_proxy=True)
    assert await one_request(broken) == 404  # no model: the route answered, not a stub
