"""``python -m bench.split``: where the served graph's CPU goes, process by process.

Serves the graph as ``python -m bench`` does (``bench.serve_modelship``), puts a closed
loop on it at each ``--load`` (clients x items per request), and reports CPU per item for
each process of the server's tree (the model replica, the Ingress, HAProxy, Serve's
controller and proxy, the rest of Ray), against the in-process limit's CPU per item; the
load generator runs in this process and is not counted. ``--spy DEPLOYMENT`` also samples
that replica with py-spy at the first load and prints where its CPU goes (inclusive, by
function).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from bench.loadgen import closed_loop
from bench.systems import ModelShip
from bench.workloads import build

_GROUPS = [
    ("model replica", r"ServeReplica:\S+:Model-"),
    ("ingress", r"ServeReplica:\S+:Ingress"),
    ("preprocessor", r"ServeReplica:\S+:Preprocessor"),
    ("other replicas", r"ServeReplica:"),
    ("haproxy", r"haproxy"),
    ("serve controller + proxy", r"ServeController|ProxyActor|HAProxyManager"),
]


def _group(process: psutil.Process) -> str:
    try:
        line = " ".join(process.cmdline())
    except psutil.Error:
        return "gone"
    return next((name for name, pattern in _GROUPS if re.search(pattern, line)), "ray + rest")


def cpu_by_group(root: psutil.Process) -> dict[int, tuple[str, float]]:
    """CPU seconds so far of every process under ``root``, with its group."""
    seen: dict[int, tuple[str, float]] = {}
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        seen[process.pid] = (_group(process), times.user + times.system)
    return seen


def _replica(server: ModelShip, deployment: str) -> psutil.Process:
    """The first replica of ``deployment`` (a name's start) in ``server``'s process tree."""
    assert server.process is not None
    for process in psutil.Process(server.process.pid).children(recursive=True):
        if re.search(rf"ServeReplica:\S+:{re.escape(deployment)}", " ".join(process.cmdline())):
            return process
    raise LookupError(f"no {deployment} replica under {server.name}")


def spy(pid: int, seconds: int) -> str:
    """py-spy's samples of ``pid`` as collapsed stacks (``frame;frame count`` lines)."""
    out = Path(tempfile.mkdtemp()) / "spy.txt"
    py_spy = str(Path(sys.executable).with_name("py-spy"))
    command = [py_spy, "record", "-p", str(pid), "-d", str(seconds), "-r", "200"]
    subprocess.run([*command, "-f", "raw", "-o", str(out), "--nonblocking"], check=True)
    return out.read_text()


def inclusive(raw: str, top: int = 40) -> list[tuple[float, str]]:
    """The share of samples in which each function is on the stack."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        total += int(count)
        names = {re.sub(r" \((.*/)?([^/:]+):\d+\)", r" (\2)", f) for f in stack.split(";")}
        for name in names:
            counts[name] += int(count)
    return [(100 * n / total, name) for name, n in counts.most_common(top)]


def measure(server: ModelShip, kind: str, clients: int, items: int, seconds: float) -> None:
    assert server.process is not None
    root = psutil.Process(server.process.pid)
    workload = build(kind, False)  # type: ignore[arg-type]

    def make(rng: random.Random) -> Any:
        return server.request(workload.pick(rng, items))

    batches = server.batch_counts()  # also drains the server's output
    before = cpu_by_group(root)
    outcome = asyncio.run(closed_loop(server.base_url, make, clients, seconds, 0.0, 1))
    after = cpu_by_group(root)
    batches_after = server.batch_counts()
    spent: dict[str, float] = collections.defaultdict(float)
    for pid, (group, cpu) in after.items():
        spent[group] += cpu - before.get(pid, (group, 0.0))[1]
    done = outcome.items or 1
    mean_batch = "-"
    if batches and batches_after and batches_after[0] > batches[0]:
        mean_batch = f"{(batches_after[1] - batches[1]) / (batches_after[0] - batches[0]):.1f}"
    print(
        f"\n{clients} clients x {items}: {outcome.throughput:.0f} items/s, p50"
        f" {outcome.percentile_ms(50):.1f} ms, {outcome.errors} errors, mean batch"
        f" {mean_batch}; CPU ms per item:"
    )
    for group, cpu in sorted(spent.items(), key=lambda pair: -pair[1]):
        print(f"  {group:26s} {1000 * cpu / done:7.2f}")
    print(f"  {'all':26s} {1000 * sum(spent.values()) / done:7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.split", description=__doc__)
    parser.add_argument("--workload", default="text", choices=["text", "image"])
    parser.add_argument("--load", default="1x1,16x1,8x16", help="clients x items, ...")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--spy", default="", help="deployments to py-spy: Ingress,Model-")
    args = parser.parse_args()
    server = ModelShip(args.workload, 32 if args.workload == "text" else 16, 0.005, {}, "g")
    server.start()
    try:
        time.sleep(2)
        measure(server, args.workload, 4, 1, 3)  # warm-up
        for index, load in enumerate(args.load.split(",")):
            clients, items = (int(n) for n in load.split("x"))
            spied = args.spy.split(",") if index == 0 and args.spy else []
            with ThreadPoolExecutor(max(1, len(spied))) as pool:
                samples = [
                    pool.submit(spy, _replica(server, name).pid, int(args.seconds))
                    for name in spied
                ]
                measure(server, args.workload, clients, items, args.seconds)
            for name, sampled in zip(spied, samples, strict=True):
                print(f"\npy-spy, {name} at {load}: share of samples on the stack")
                for share, function in inclusive(sampled.result()):
                    print(f"  {share:5.1f}%  {function[:120]}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
