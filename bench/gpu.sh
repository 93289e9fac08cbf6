#!/usr/bin/env bash
# The GPU benchmark as one prepared run: device facts, then `python -m bench.gpu "$@"` under
# a hard 7-minute cap (the script itself aims to finish well inside it; see --budget).
# Writes $OUT/gpu_report.json (or bench/results/gpu_report.json) and prints a summary.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
export HF_HUB_OFFLINE=1
if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi || true; fi
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
exec timeout --kill-after=30 420 "$PYTHON" -m bench.gpu "$@"
