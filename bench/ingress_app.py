"""``python -m bench.ingress_app``: what the Ingress's own code costs one request.

The FastAPI app as the Ingress builds it (behind Serve: no auth in the dev profile, no
rate limit), over a labeler that answers at once, driven through ASGI in this process (no
socket, no Ray): one text a request, one request at a time, so each figure is the app's
own CPU per request (middleware, validation, admission, the response). ``--profile``
prints where it goes (cProfile, by own time).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import time
from typing import Any

from bench.peers._common import model_config
from modelship.core.errors import ModelShipError
from modelship.core.messages import ItemOptions, ItemResult, LabelScore, ModelInfo
from modelship.core.settings import Settings
from modelship.http.app import create_api
from modelship.predictors import describe

MINILM = model_config("text")  # the model the benchmark serves
BODY = json.dumps({"text": "the team won the match in the final minute"}).encode()


class InstantLabeler:
    """Answers every text at once with two scores (what the model replica sends back)."""

    async def label(
        self, model: str, payloads: list[bytes | str], options: ItemOptions
    ) -> list[ItemResult | ModelShipError]:
        scores = [LabelScore(label="positive", score=0.9), LabelScore(label="negative", score=0.1)]
        return [ItemResult(scores, "v1") for _ in payloads]

    async def info(self, model: str) -> ModelInfo:
        return describe(MINILM, None)


async def one_request(app: Any) -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/v1/classify/text",
        "raw_path": b"/api/v1/classify/text",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(BODY)).encode()),
            (b"x-request-id", b"0123456789abcdef"),
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": BODY, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def measure(requests: int, profile: bool) -> float:
    settings = Settings(rate_limit_per_minute=0)
    app = create_api(InstantLabeler(), [MINILM], settings, behind_serve_proxy=True)
    for _ in range(200):  # warm-up: routes, validators, caches
        assert await one_request(app) == 200
    profiler = cProfile.Profile() if profile else None
    if profiler:
        profiler.enable()
    started = time.perf_counter()
    for _ in range(requests):
        await one_request(app)
    elapsed = time.perf_counter() - started
    if profiler:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
    return elapsed / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ingress_app", description=__doc__)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    runs = [asyncio.run(measure(args.requests, False)) for _ in range(args.rounds)]
    print("µs per request:", ", ".join(f"{r:.0f}" for r in runs), f"(best {min(runs):.0f})")
    if args.profile:
        asyncio.run(measure(args.requests, True))


if __name__ == "__main__":
    main()
