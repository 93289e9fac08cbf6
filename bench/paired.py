"""``python -m bench.paired``: two or more ModelShip variants up at once, measured in
interleaved turns, for differences smaller than a noisy machine's drift.

``python -m bench`` runs one system after another; on shared cores a neighbour's load
between them moves a ratio by more than the change under test. Here every variant serves
at once: at concurrency 1 the requests alternate between the variants (A, B, B, A...),
and the closed-loop windows at higher concurrency alternate order too, so drift and
neighbours hit all alike. CPU is each server's process tree (Ray's processes descend from
it), not the machine's, so neighbours' tests do not count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from bench.loadgen import closed_loop
from bench.systems import ModelShip
from bench.workloads import Kind, Workload, build

# Variants of the image graph, as bench.serve_modelship options.
VARIANTS: dict[str, tuple[str, ...]] = {
    "inline": ("--preprocess", "inline"),
    "deployment": ("--preprocess", "deployment"),
}


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its live descendants."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return total
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


async def alternating_c1(
    servers: list[ModelShip], workload: Workload, pairs: int
) -> dict[str, list[float]]:
    """Latency (ms) of one request at a time, the variants taking turns on the same item."""
    latencies: dict[str, list[float]] = {server.name: [] for server in servers}
    rng = random.Random(1)
    async with aiohttp.ClientSession() as session:
        for turn in range(pairs + 5):  # the first 5 turns warm up
            items = workload.pick(rng, 1)
            for server in servers if turn % 2 == 0 else servers[::-1]:
                path, body, _ = server.request(items)
                started = time.perf_counter()
                async with session.post(server.base_url + path, json=body) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"{server.name} answered {response.status}")
                if turn >= 5:
                    latencies[server.name].append(1000 * (time.perf_counter() - started))
    return latencies


def closed_window(
    server: ModelShip, workload: Workload, items: int, concurrency: int, seconds: float
) -> dict[str, Any]:
    def make(rng: random.Random) -> Any:
        return server.request(workload.pick(rng, items))

    assert server.process is not None
    cpu = tree_cpu_s(server.process.pid)
    outcome = asyncio.run(closed_loop(server.base_url, make, concurrency, seconds, 1.0, 1))
    cpu = tree_cpu_s(server.process.pid) - cpu
    return {
        "items_per_s": outcome.throughput,
        "p50_ms": outcome.percentile_ms(50),
        "errors": outcome.errors,
        # the warm-up second's work included: slightly pessimistic, alike for every variant
        "cpu_ms_per_item": 1000 * cpu / outcome.items if outcome.items else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.paired", description=__doc__)
    parser.add_argument("--variants", default="inline,deployment", help=", ".join(VARIANTS))
    parser.add_argument("--workload", default="image", choices=["image", "text"])
    parser.add_argument("--pairs", type=int, default=150, help="turns at concurrency 1, twice")
    parser.add_argument("--items", type=int, default=1, help="per request, closed loop")
    parser.add_argument("--concurrency", default="16,64")
    parser.add_argument("--rounds", type=int, default=2, help="windows per variant and level")
    parser.add_argument("--seconds", type=float, default=5.0, help="per closed-loop window")
    parser.add_argument("--out", type=Path, default=Path("bench/results/paired.json"))
    args = parser.parse_args()
    kind: Kind = args.workload
    workload = build(kind, False)
    servers = [
        ModelShip(kind, 16 if kind == "image" else 32, 0.005, {}, name, VARIANTS[name])
        for name in args.variants.split(",")
    ]
    results: dict[str, Any] = {"settings": vars(args) | {"out": str(args.out)}, "c1": []}
    try:
        for server in servers:
            server.start()
        for repeat in range(2 if args.pairs else 0):
            latencies = asyncio.run(alternating_c1(servers, workload, args.pairs))
            p50 = {name: statistics.median(values) for name, values in latencies.items()}
            results["c1"].append(p50)
            print(f"c1 p50 ms, pass {repeat}: {json.dumps(p50)}", flush=True)
        results["closed"] = []
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            for index in range(args.rounds):
                for server in servers if index % 2 == 0 else servers[::-1]:
                    row = closed_window(server, workload, args.items, concurrency, args.seconds)
                    row |= {"variant": server.name, "items": args.items, "concurrency": concurrency}
                    results["closed"].append(row)
                    print(json.dumps(row), flush=True)
    finally:
        for server in servers:
            server.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
