"""Peer 2: ModelShip's predictors behind BentoML 1.4.40 with adaptive batching.

BentoML's dispatcher merges the items of concurrent requests into one call of a
``batchable`` API (concatenated along ``batch_dim=0``, at most ``max_batch_size`` items,
splitting a request across calls if needed) and splits the returned list back per request.
That is the closest off-the-shelf equivalent of ModelShip's ``@serve.batch`` replicas, with
the very same model code (imported from ``modelship``, nothing copied).

Setup and start (from /work/main; the venv is BentoML's own, see setup_bentoml.sh)::

    bench/peers/setup_bentoml.sh
    BENCH_WORKLOAD=text HF_HUB_OFFLINE=1 BENTOML_DO_NOT_TRACK=true \\
        .bench-venvs/bentoml/bin/bentoml serve bench.peers.bentoml_service:ClassifierService \\
        --host 127.0.0.1 --port 8102

Environment: ``BENCH_WORKLOAD`` (``text`` | ``image``, required; only that model is loaded),
``BENCH_LABELS``, ``BENCH_TORCH_THREADS`` (as for the plain server), ``BENCH_MAX_BATCH``
(items per model call; default 32 for text, 8 for images), ``BENCH_MAX_LATENCY_MS``
(default 1000), ``BENCH_LOG_BATCHES=1`` logs every model call's item count at INFO.

HTTP contract, and where it differs from the plain server:

* ``POST /classify_text`` ``{"texts": [...]}`` and ``POST /classify_image``
  ``{"images": [<base64 file bytes>, ...]}`` answer a **bare JSON list**, one list of
  ``{"label", "score"}`` per item in order: ``[[{"label": ..., "score": ...}, ...], ...]``
  — not wrapped in ``{"results": ...}`` (a batchable API's return value is the batch itself).
* Readiness: poll ``GET /readyz`` (200, body ``"\\n"``) with a short per-attempt timeout.
  For the first seconds the port refuses connections; then BentoML's arbiter binds it and
  connections are accepted but hang until the worker has built the service (loaded the
  model); only then does anything answer. ``/healthz`` and ``/livez`` (liveness) turn 200 at
  the same moment, but ``/readyz`` is the one that means ready.
* When the dispatcher predicts a queued request would exceed ``max_latency_ms`` it cancels it:
  the client gets HTTP 503 with body ``{"error": "An unexpected error has occurred, please
  check the server log."}`` (the log says "process is overloaded"). Under load
  BentoML sheds requests rather than queueing them; raise ``BENCH_MAX_LATENCY_MS`` (BentoML's
  own default is 60000) to make it queue like the others.
* Errors raised inside the model call are lists too: ``[{"error": "..."}]``; bad images keep
  ModelShip's status (415, 422), but a batch is one call, so one bad item fails every
  request merged with it.
* Observing batching: ``GET /metrics`` has ``bentoml_service_adaptive_batch_size`` (a
  histogram of *requests* merged per model call; ``_sum / _count`` is the mean), and
  ``BENCH_LOG_BATCHES=1`` logs the *item* count of each call.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import bentoml
from bentoml.exceptions import BentoMLException, NotFound

from bench.peers import _common
from modelship.core.errors import ModelShipError

logger = logging.getLogger("bentoml.bench_peer")

_KIND = os.environ.get("BENCH_WORKLOAD", "")
_DEFAULT_BATCH = "32" if _KIND != "image" else "8"
MAX_BATCH = int(os.environ.get("BENCH_MAX_BATCH", _DEFAULT_BATCH))
MAX_LATENCY_MS = int(os.environ.get("BENCH_MAX_LATENCY_MS", "1000"))
LOG_BATCHES = os.environ.get("BENCH_LOG_BATCHES") == "1"


# No access log, as in the plain server: a line per request is work the others don't do.
@bentoml.service(workers=1, logging={"access": {"enabled": False}})
class ClassifierService:
    """One worker process holding the workload's predictor (loaded in ``__init__``)."""

    def __init__(self) -> None:
        self.kind = _common.workload()
        self.predictor = _common.load_predictor(self.kind)

    def _run(
        self, kind: str, items: list[str], prepare: Callable[[Any, list[str]], list[Any]]
    ) -> list[_common.JsonResult]:
        """Predict one merged batch. A bad item fails every request merged into it."""
        if self.kind != kind:
            raise NotFound(f"this server runs the {self.kind!r} workload")
        if LOG_BATCHES:
            logger.info("bench %s batch of %d items", kind, len(items))
        try:
            prepared = prepare(self.predictor, items)
        except ModelShipError as exc:
            raise BentoMLException(exc.message, error_code=HTTPStatus(exc.status)) from None
        return _common.to_json(self.predictor.predict(prepared))

    @bentoml.api(
        batchable=True, batch_dim=0, max_batch_size=MAX_BATCH, max_latency_ms=MAX_LATENCY_MS
    )
    def classify_text(self, texts: list[str]) -> list[_common.JsonResult]:
        return self._run("text", texts, _common.prepare_texts)

    @bentoml.api(
        batchable=True, batch_dim=0, max_batch_size=MAX_BATCH, max_latency_ms=MAX_LATENCY_MS
    )
    def classify_image(self, images: list[str]) -> list[_common.JsonResult]:
        return self._run("image", images, _common.prepare_images)
