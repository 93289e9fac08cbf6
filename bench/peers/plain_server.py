"""Peer 1: what a user writes without a serving framework — FastAPI + uvicorn, one process.

Handlers are plain sync ``def`` (FastAPI's documented way to run blocking work: each
request runs in Starlette's thread pool), and each request is predicted on its own items
only — no batching across requests. That is the baseline ModelShip's dynamic batching and
separate preprocessing are measured against.

Start (from /work/main, main .venv)::

    BENCH_WORKLOAD=text BENCH_PORT=8101 python -m bench.peers.plain_server

Environment: ``BENCH_WORKLOAD`` (``text`` | ``image``, required; only that model is loaded),
``BENCH_PORT`` (default 8101), ``BENCH_LABELS`` (comma-separated, default
``positive,negative,neutral``), ``BENCH_TORCH_THREADS`` (default 2).

HTTP: ``POST /classify_text`` ``{"texts": [...]}`` and ``POST /classify_image``
``{"images": [<base64 file bytes>, ...]}`` both answer ``{"results": [[{"label", "score"},
...], ...]}``, one list per item in order; ``GET /healthz`` is 200 once the model is
loaded and warm (uvicorn only starts listening after that).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from bench.peers import _common
from modelship.core.errors import ModelShipError


class TextsIn(BaseModel):
    texts: list[str] = Field(min_length=1)


class ImagesIn(BaseModel):
    images: list[str] = Field(min_length=1)


class ResultsOut(BaseModel):
    results: list[_common.JsonResult]


_state: dict[str, Any] = {}


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    kind = _common.workload()
    _state["kind"] = kind
    _state["predictor"] = _common.load_predictor(kind)
    yield
    _state.clear()


app = FastAPI(lifespan=lifespan)


def _classify(kind: str, prepare: Callable[[Any], list[Any]]) -> ResultsOut:
    if _state.get("kind") != kind:
        raise HTTPException(404, f"this server runs the {_state.get('kind')!r} workload")
    predictor = _state["predictor"]
    try:
        prepared = prepare(predictor)
    except ModelShipError as exc:
        raise HTTPException(exc.status, exc.message) from None
    return ResultsOut(results=_common.to_json(predictor.predict(prepared)))


@app.post("/classify_text")
def classify_text(body: TextsIn) -> ResultsOut:
    return _classify("text", lambda p: _common.prepare_texts(p, body.texts))


@app.post("/classify_image")
def classify_image(body: ImagesIn) -> ResultsOut:
    return _classify("image", lambda p: _common.prepare_images(p, body.images))


@app.get("/healthz")
def healthz() -> dict[str, str]:
    if "predictor" not in _state:
        raise HTTPException(503, "loading")
    return {"status": "ok"}


def main() -> None:
    port = int(os.environ.get("BENCH_PORT", "8101"))
    uvicorn.run(app, host="127.0.0.1", port=port, workers=1, access_log=False)


if __name__ == "__main__":
    main()
