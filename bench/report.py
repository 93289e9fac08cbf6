"""The benchmark's outputs: ratios against the limit and the peers, a table, two plots."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from statistics import mean
from typing import Any

Row = dict[str, Any]


def closed_levels(rows: list[Row], system: str, items: int) -> dict[float, list[Row]]:
    """Closed-loop rows of one system and request size, grouped by concurrency."""
    levels: dict[float, list[Row]] = defaultdict(list)
    for row in rows:
        if (row["system"], row["items_per_request"], row["mode"]) == (system, items, "closed"):
            levels[row["level"]].append(row)
    return levels


def _avg(rows: list[Row], key: str) -> float | None:
    values = [r[key] for r in rows if r[key] is not None and not math.isnan(r[key])]
    return mean(values) if values else None


def saturation(rows: list[Row], system: str, items: int) -> tuple[float, float, list[Row]]:
    """(items/s, concurrency, rows) at the concurrency with the best mean throughput."""
    levels = closed_levels(rows, system, items)
    if not levels:
        return math.nan, math.nan, []
    level, best = max(levels.items(), key=lambda kv: _avg(kv[1], "throughput") or 0.0)
    return _avg(best, "throughput") or 0.0, level, best


def ratios(workload: dict[str, Any]) -> dict[str, float | None]:
    rows, ceiling = workload["rows"], workload["limit"]["best"]["items_per_s"]
    sat = {(s, i): saturation(rows, s, i)[0] for s in _systems(rows) for i in (1, 16)}

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a and b and not math.isnan(a) and not math.isnan(b) else None

    c1 = closed_levels(rows, "modelship", 1).get(1, [])
    p50 = _avg(c1, "p50_ms")
    single = workload["limit"]["single_p50_with_preprocess_ms"]
    return {
        "modelship16_over_limit": ratio(sat.get(("modelship", 16)), ceiling),
        "modelship1_over_limit": ratio(sat.get(("modelship", 1)), ceiling),
        "modelship1_over_per_request1": ratio(
            sat.get(("modelship", 1)), sat.get(("per-request", 1))
        ),
        "modelship1_over_bentoml1": ratio(sat.get(("modelship", 1)), sat.get(("bentoml", 1))),
        "overhead_c1_ms": (p50 - single) if p50 is not None else None,
    }


TARGETS = {
    "modelship16_over_limit": (">=", 0.8),
    "modelship1_over_limit": (">=", 0.6),
    "modelship1_over_per_request1": (">=", 2.0),
    "modelship1_over_bentoml1": (">=", 1.0),
    "overhead_c1_ms": ("<=", 5.0),
}


def _systems(rows: list[Row]) -> list[str]:
    return list(dict.fromkeys(row["system"] for row in rows))


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _streams(streams: int) -> str:
    return f", {streams} batches at once on a torch thread each" if streams > 1 else ""


def markdown(results: dict[str, Any]) -> str:
    lines = []
    for kind, workload in results["workloads"].items():
        limit = workload["limit"]
        best = limit["best"]
        lines += [
            f"### {kind}",
            "",
            f"Limit (in-process, pre-processed): {best['items_per_s']:.0f} items/s at batch "
            f"{best['batch']}{' length-sorted' if best['sorted'] else ''}"
            f"{_streams(best.get('streams', 1))}; one item "
            f"{limit['single_p50_ms']:.1f} ms (with preprocessing "
            f"{limit['single_p50_with_preprocess_ms']:.1f} ms).",
            "",
            "| system | items/request | saturation items/s | ÷ limit | at concurrency "
            "| p50 / p95 / p99 ms | mean batch | CPU s / 1000 items |",
            "|---|---|---|---|---|---|---|---|",
        ]
        rows = workload["rows"]
        for system in _systems(rows):
            for items in (1, 16):
                throughput, level, best_rows = saturation(rows, system, items)
                if not best_rows:
                    continue
                lines.append(
                    f"| {system} | {items} | {throughput:.0f} "
                    f"| {throughput / best['items_per_s']:.2f} | {level:g} "
                    f"| {_fmt(_avg(best_rows, 'p50_ms'))} / {_fmt(_avg(best_rows, 'p95_ms'))} "
                    f"/ {_fmt(_avg(best_rows, 'p99_ms'))} | {_fmt(_avg(best_rows, 'mean_batch'))} "
                    f"| {_fmt(_avg(best_rows, 'cpu_s_per_1000'), 2)} |"
                )
        open_rows = [row for row in rows if row["mode"] == "open"]
        if open_rows:
            base = workload.get("open_loop_base_rps", 0)
            lines += [
                "",
                f"Open loop, Poisson arrivals, 1 item/request, as fractions of the slowest "
                f"system's capacity ({base:.0f} items/s); latency from the intended send time:",
                "",
                "| system | offered req/s | achieved items/s | p50 / p95 / p99 ms | errors |",
                "|---|---|---|---|---|",
            ]
            for row in open_rows:
                lines.append(
                    f"| {row['system']} | {row['level']:.0f} | {row['throughput']:.0f} "
                    f"| {_fmt(row['p50_ms'])} / {_fmt(row['p95_ms'])} / {_fmt(row['p99_ms'])} "
                    f"| {row['errors']} |"
                )
        lines += ["", "| target | wanted | measured | met |", "|---|---|---|---|"]
        for name, value in ratios(workload).items():
            op, wanted = TARGETS[name]
            met = value is not None and (value >= wanted if op == ">=" else value <= wanted)
            lines.append(
                f"| {name} | {op} {wanted} | {_fmt(value, 2)} | {'yes' if met else 'no'} |"
            )
        lines.append("")
    return "\n".join(lines)


def plots(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(results["workloads"])
    fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        workload = results["workloads"][kind]
        for system in _systems(workload["rows"]):
            for items in (1, 16):
                levels = sorted(closed_levels(workload["rows"], system, items).items())
                if levels:
                    xs = [level for level, _ in levels]
                    ys = [_avg(rows, "throughput") for _, rows in levels]
                    ax.plot(xs, ys, marker="o", label=f"{system} x{items}")
        ax.axhline(workload["limit"]["best"]["items_per_s"], color="k", ls="--", label="limit")
        ax.set(xscale="log", xlabel="concurrent clients", ylabel="items/s", title=kind)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)

    fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        rows = [r for r in results["workloads"][kind]["rows"] if r["mode"] == "open"]
        for system in _systems(rows):
            mine = sorted((r for r in rows if r["system"] == system), key=lambda r: r["level"])
            for key, style in (("p50_ms", "-"), ("p99_ms", ":")):
                xs = [r["level"] for r in mine]
                ax.plot(xs, [r[key] for r in mine], style, marker="o", label=f"{system} {key[:3]}")
        ax.set(yscale="log", xlabel="offered requests/s", ylabel="latency ms", title=kind)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
