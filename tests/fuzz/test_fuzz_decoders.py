"""The decoders fuzz drill (``tests/fuzz/decoders.py``), bounded: every input that once
crashed replays clean, then a fixed number of atheris runs from the seed corpus find no
crash, hang or runaway allocation. Each runs in its own process, as libFuzzer exits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REGRESSIONS = Path(__file__).resolve().parent / "regressions"
RUNS = 50_000  # about 10 s at the 5,000-10,000 executions a second of one core
# libFuzzer's own crash criteria besides an exception: an input over 10 s, or 2 GiB.
LIMITS = ["-timeout=10", "-rss_limit_mb=2048"]


def _fuzz(tmp_path: Path, *args: str) -> None:
    command = [sys.executable, "-m", "tests.fuzz.decoders", *LIMITS, *args]
    command.append(f"-artifact_prefix={tmp_path}/")
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    crashes = sorted(p.name for p in tmp_path.glob("crash-*"))
    assert done.returncode == 0, f"{crashes}\n{done.stderr[-4000:]}"


def test_found_crashes_stay_fixed(tmp_path: Path) -> None:
    found = sorted(REGRESSIONS.iterdir())
    assert found
    _fuzz(tmp_path, *map(str, found))  # files, not a directory: each runs once


def test_bounded_fuzzing_finds_no_crash(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    _fuzz(tmp_path, f"-runs={RUNS}", "-seed=1", "-print_final_stats=1", str(corpus))
