"""``python -m bench``: ModelShip against the limit and its peers, side by side in one run.

Every figure that matters is a ratio between systems measured in the same run on the
same inputs; rounds alternate the system order so drift on a noisy machine cancels out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import limit, report
from bench.cpu import CpuMeter
from bench.loadgen import Outcome, closed_loop, open_loop
from bench.systems import BENTOML_VENV, ModelShip, Server, bentoml, plain
from bench.workloads import Kind, Workload, build

BEST_BATCH = {"text": (1, 8, 16, 32, 64, 128), "image": (1, 4, 8, 16)}
ITEMS_PER_REQUEST = (1, 16)
CONCURRENCY = {1: (1, 4, 16, 64), 16: (1, 2, 4, 8)}
OPEN_FRACTIONS = (0.5, 0.8)


def measure_limit(workload: Workload, seconds: float) -> dict[str, Any]:
    predictor = limit.load(workload.kind, Path(tempfile.mkdtemp()))
    items = limit.prepare(predictor, workload)
    sorts = (False, True) if workload.kind == "text" else (False,)
    table = [
        {
            "batch": b,
            "sorted": s,
            "streams": n,
            "items_per_s": limit.throughput(predictor, items, b, s, seconds, n),
        }
        for b in BEST_BATCH[workload.kind]
        for s in sorts
        for n in sorted({1, os.cpu_count() or 1})
    ]
    best = max(table, key=lambda row: row["items_per_s"])
    return {
        "table": table,
        "best": best,
        "single_p50_ms": limit.single_item_p50_ms(predictor, workload, 50, False),
        "single_p50_with_preprocess_ms": limit.single_item_p50_ms(predictor, workload, 50, True),
    }


def systems(kind: Kind, names: list[str], args: argparse.Namespace) -> list[Server]:
    env = dict(pair.split("=", 1) for pair in args.env)
    max_batch = args.max_batch or (32 if kind == "text" else 16)  # as serve_config.yaml
    # modelship runs as `modelship serve` starts it (HAProxy, throughput mode);
    # modelship-proxy with Serve's own defaults (its Python proxy), for comparison.
    proxy = {**env, "RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"}
    made: dict[str, Server] = {
        "modelship": ModelShip(kind, max_batch, args.wait, env, "modelship"),
        "modelship-proxy": ModelShip(kind, max_batch, args.wait, proxy, "modelship-proxy"),
        # Images decoded in the Preprocessor deployment (a GPU model's default), not inline.
        "modelship-preprocessor": ModelShip(
            kind,
            max_batch,
            args.wait,
            env,
            "modelship-preprocessor",
            ("--preprocess", "deployment"),
        ),
        "per-request": plain(kind),
        "bentoml": bentoml(kind),
    }
    return [made[name] for name in names]


def run_phase(
    system: Server,
    workload: Workload,
    items: int,
    mode: str,
    level: float,
    args: argparse.Namespace,
) -> dict[str, Any]:
    def make(rng: Any) -> Any:
        return system.request(workload.pick(rng, items))

    before = system.batch_counts()
    with CpuMeter() as cpu:
        if mode == "closed":
            coro = closed_loop(system.base_url, make, int(level), args.seconds, args.warmup, 1)
        else:
            coro = open_loop(system.base_url, make, level, args.seconds, args.warmup, 1)
        try:  # a server that stops answering must not stall the whole run
            limit_s = args.warmup + args.seconds + 60
            outcome = asyncio.run(asyncio.wait_for(coro, limit_s))
        except TimeoutError:
            outcome = Outcome(errors=-1, duration_s=args.seconds)
    after = system.batch_counts()
    mean_batch = None
    if before and after and after[0] > before[0]:
        mean_batch = (after[1] - before[1]) / (after[0] - before[0])
    return {
        "system": system.name,
        "items_per_request": items,
        "mode": mode,
        "level": level,
        "throughput": outcome.throughput,
        "p50_ms": outcome.percentile_ms(50),
        "p95_ms": outcome.percentile_ms(95),
        "p99_ms": outcome.percentile_ms(99),
        "errors": outcome.errors,
        "mean_batch": mean_batch,
        # Includes the warm-up window's work too, so it is slightly pessimistic.
        "cpu_s_per_1000": 1000 * cpu.seconds / outcome.items if outcome.items else None,
    }


def run_workload(kind: Kind, names: list[str], args: argparse.Namespace) -> dict[str, Any]:
    workload = build(kind, args.quick)
    print(f"[{kind}] limit", flush=True)
    result: dict[str, Any] = {"limit": measure_limit(workload, args.seconds), "rows": []}
    slowest: float | None = None
    for round_index in range(args.rounds):
        order = names if round_index % 2 == 0 else list(reversed(names))
        last_round = round_index == args.rounds - 1
        for system in systems(kind, order, args):
            print(f"[{kind}] round {round_index}: {system.name}", flush=True)
            system.start()
            try:
                for items in ITEMS_PER_REQUEST:
                    for concurrency in CONCURRENCY[items]:
                        row = run_phase(system, workload, items, "closed", concurrency, args)
                        result["rows"].append({**row, "round": round_index})
                if last_round and slowest:
                    for fraction in OPEN_FRACTIONS:
                        row = run_phase(system, workload, 1, "open", fraction * slowest, args)
                        result["rows"].append({**row, "round": round_index, "fraction": fraction})
            finally:
                system.stop()
        if slowest is None:
            slowest = min(report.saturation(result["rows"], name, 1)[0] for name in names)
            result["open_loop_base_rps"] = slowest
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--workloads", default="text,image")
    parser.add_argument("--systems", default="modelship,modelship-proxy,per-request,bentoml")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0, help="per measured phase")
    parser.add_argument("--warmup", type=float, default=2.0, help="per phase, not counted")
    parser.add_argument("--max-batch", type=int, default=0, help="ModelShip's; 0: per workload")
    parser.add_argument("--wait", type=float, default=0.005, help="ModelShip's batch wait (s)")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for ModelShip")
    parser.add_argument("--quick", action="store_true", help="tiny inputs: a smoke run")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so every started server is stopped in its finally.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    names = args.systems.split(",")
    if "bentoml" in names and not (BENTOML_VENV / "bin" / "bentoml").exists():
        raise SystemExit("run bench/peers/setup_bentoml.sh first (or drop bentoml)")
    started = time.time()
    results = {
        "settings": {k: str(v) for k, v in vars(args).items()},
        "workloads": {kind: run_workload(kind, names, args) for kind in args.workloads.split(",")},
    }
    results["wall_s"] = time.time() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(results, indent=2))
    markdown = report.markdown(results)
    (args.out / "report.md").write_text(markdown)
    report.plots(results, args.out)
    print(markdown)


if __name__ == "__main__":
    main()
