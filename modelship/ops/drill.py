"""``modelship drill``: a deployed ModelShip put through a bad day, with the figures.

- ``overload``: its capacity measured, then three times as many requests as it can
  serve, then the time it takes to serve as before. Passing means every request was
  either served or shed with 429/503 and ``Retry-After`` (no other error, no timeout),
  and it recovered. Run it with a key whose rate limit is above the capacity (or with
  the limit off): otherwise it measures the rate limiter (all 429s).
- ``chaos``: a labeling job and a client (retrying as the ModelShip client does) running
  while a model replica, the Ingress, the HTTP proxy and the Serve controller are killed
  in turn. Passing means the job labeled every item once, and the client's error rate.

Both speak HTTP to the service; ``chaos`` also joins its Ray cluster to kill actors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from modelship.client import Client
from modelship.client.errors import ApiError

SHED = {429, 503}  # the answers of a service shedding load, with Retry-After
WORDS = ("goal", "match", "bread", "sauce", "rain", "market", "film", "garden", "engine")


def _text(rng: random.Random, words: int = 8) -> str:
    """A text no cache has seen, of ``words`` words."""
    return " ".join(rng.choice(WORDS) for _ in range(words)) + f" {rng.getrandbits(64):x}"


@dataclass
class OverloadReport:
    capacity_rps: float
    offered_rps: float
    seconds: float
    words: int
    sent_rps: float = 0.0
    answers: dict[str, int] = field(default_factory=dict)
    p99_ms_served: float | None = None
    p50_ms_before: float = 0.0
    p50_ms_after: float | None = None
    recovered_s: float | None = None

    @property
    def failures(self) -> int:
        """Answers that were neither served nor shed politely."""
        return sum(n for kind, n in self.answers.items() if kind not in ("200", "429", "503"))

    @property
    def ok(self) -> bool:
        return self.failures == 0 and self.recovered_s is not None


async def _classify(http: httpx.AsyncClient, rng: random.Random, words: int) -> tuple[str, float]:
    """One request's outcome (its status, ``... without Retry-After`` when shed without
    it, or the error's name) and its latency."""
    started = time.perf_counter()
    try:
        response = await http.post("/api/v1/classify/text", json={"text": _text(rng, words)})
    except httpx.HTTPError as exc:
        return type(exc).__name__, time.perf_counter() - started
    status = response.status_code
    polite = status not in SHED or "retry-after" in response.headers
    kind = str(status) if polite else f"{status} without Retry-After"
    return kind, time.perf_counter() - started


async def _p50_ms(
    http: httpx.AsyncClient, rng: random.Random, words: int, samples: int
) -> float | str:
    """The median latency of ``samples`` requests one at a time, or the outcome of the
    first that failed."""
    latencies = []
    for _ in range(samples):
        kind, seconds = await _classify(http, rng, words)
        if kind != "200":
            return kind
        latencies.append(seconds * 1000)
    return statistics.median(latencies)


async def _capacity(
    http: httpx.AsyncClient, rng: random.Random, words: int, seconds: float
) -> float:
    """Served requests per second with 64 clients sending back to back (enough for the
    replicas to fill their batches)."""
    served = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal served
        while time.perf_counter() < deadline:
            kind, _ = await _classify(http, rng, words)
            served += kind == "200"

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(64)))
    return served / (time.perf_counter() - started)


async def overload(
    url: str,
    api_key: str | None = None,
    multiple: float = 3.0,
    seconds: float = 20.0,
    words: int = 120,
    timeout_s: float = 30.0,
    recover_within_s: float = 60.0,
) -> OverloadReport:
    """Offer ``multiple`` times the measured capacity for ``seconds`` (texts of ``words``
    words, a review's length), then wait for the service to answer one request at a time
    as fast as before."""
    rng = random.Random(7)
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    async with httpx.AsyncClient(
        base_url=url, headers=headers, timeout=timeout_s, limits=limits
    ) as http:
        before = await _p50_ms(http, rng, words, 10)
        if isinstance(before, str):
            raise RuntimeError(f"{url} does not serve one request at a time ({before})")
        await _capacity(http, rng, words, max(3.0, seconds / 4))  # warm-up: batches, scaling
        capacity = max(1.0, await _capacity(http, rng, words, max(3.0, seconds / 4)))
        report = OverloadReport(capacity, capacity * multiple, seconds, words)
        report.p50_ms_before = before
        outcomes: Counter[str] = Counter()
        served: list[float] = []

        async def one() -> None:
            kind, latency = await _classify(http, rng, words)
            outcomes[kind] += 1
            if kind == "200":
                served.append(latency * 1000)

        tasks = []
        started = time.perf_counter()
        for n in range(int(report.offered_rps * seconds)):
            await asyncio.sleep(max(0.0, started + n / report.offered_rps - time.perf_counter()))
            tasks.append(asyncio.create_task(one()))
        report.sent_rps = len(tasks) / (time.perf_counter() - started)
        await asyncio.gather(*tasks)
        report.answers = dict(outcomes)
        if served:
            report.p99_ms_served = statistics.quantiles(served, n=100)[98]
        ended = time.perf_counter()
        while time.perf_counter() - ended < recover_within_s:
            after = await _p50_ms(http, rng, words, 5)
            if isinstance(after, float) and after <= max(3 * before, before + 100):
                report.p50_ms_after = after
                report.recovered_s = round(time.perf_counter() - ended, 1)
                break
            await asyncio.sleep(0.5)
    return report


@dataclass
class ChaosReport:
    items: int
    kills: list[str] = field(default_factory=list)
    job_status: str = ""
    labeled: int = 0
    duplicates: int = 0
    requests: int = 0
    failed_requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # after retries, by status or kind

    @property
    def lost(self) -> int:
        return self.items - self.labeled

    @property
    def error_rate(self) -> float:
        return self.failed_requests / self.requests if self.requests else 0.0

    @property
    def ok(self) -> bool:
        return self.job_status == "succeeded" and self.lost == 0 and self.duplicates == 0


TARGETS = ("model", "ingress", "proxy", "controller")


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)  # stdout holds the report


def _actor_to_kill(target: str, app: str, model: str) -> tuple[Any, bool]:
    """The actor that plays ``target``, and whether Ray should restart it (Serve replaces
    replicas and proxies itself; the controller is Ray's to restart)."""
    import ray

    prefixes = {
        "model": f"SERVE_REPLICA::{app}#Model-{model}#",
        "ingress": f"SERVE_REPLICA::{app}#Ingress#",
        "proxy": "SERVE_PROXY_ACTOR",
        "controller": "SERVE_CONTROLLER_ACTOR",
    }
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["name"].startswith(prefixes[target]):
            restart = target == "controller"
            return ray.get_actor(actor["name"], namespace=actor["namespace"]), restart
    raise LookupError(f"no {target} actor is alive")


@contextmanager
def _client_traffic(
    url: str, api_key: str | None, report: ChaosReport, stop: threading.Event
) -> Iterator[None]:
    """A client labeling texts one request at a time, retrying as the client does."""

    def run() -> None:
        rng = random.Random(11)
        with Client(url, api_key, timeout=30) as client:
            while not stop.is_set():
                report.requests += 1
                try:
                    client.classify_text(_text(rng, 20))
                except (ApiError, httpx.HTTPError) as exc:
                    report.failed_requests += 1
                    kind = str(exc.status) if isinstance(exc, ApiError) else type(exc).__name__
                    report.errors[kind] = report.errors.get(kind, 0) + 1
                time.sleep(0.05)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=60)


def chaos(
    url: str,
    address: str,
    api_key: str | None = None,
    items: int = 300,
    interval_s: float = 5.0,
    app: str = "modelship",
    targets: tuple[str, ...] = TARGETS,
    log: Callable[[str], None] = _to_stderr,
) -> ChaosReport:
    """Kill each of ``targets`` in turn, ``interval_s`` apart, while a job labels ``items``
    texts and a client keeps labeling; then check the job."""
    # Like `modelship serve` and the KubeRay manifests, clusters run with token auth (the
    # token from ~/.ray/auth_token or RAY_AUTH_TOKEN); Ray reads the mode on import.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    report = ChaosReport(items)
    with Client(url, api_key, timeout=60) as client:
        models = client.models()
        model = next((m for m in models if m.task == "zero-shot-text-classification"), None)
        if model is None:
            seen = ", ".join(f"{m.name} ({m.task})" for m in models)
            raise RuntimeError(f"the drill labels with a zero-shot text model; {url} has {seen}")
        project = client.create_project(
            f"drill-{int(time.time())}",
            model.task,
            model.name,
            labels=["sport", "cooking", "weather"],
        )
        rng = random.Random(5)
        client.upload_texts(project, [_text(rng) for _ in range(items)])
        job = client.create_job(project)
        ray.init(address=address, logging_level=logging.ERROR)
        stop = threading.Event()
        try:
            with _client_traffic(url, api_key, report, stop):
                for target in targets:
                    time.sleep(interval_s)
                    actor, restart = _actor_to_kill(target, app, model.name)
                    ray.kill(actor, no_restart=not restart)
                    report.kills.append(target)
                    log(f"killed the {target}")
                finished = client.wait_job(job, timeout_s=600)
        finally:
            ray.shutdown()
        results = client.job_results(finished)
    report.job_status = str(finished.status)
    labeled = Counter(str(result.item_id) for result in results if result.state == "succeeded")
    report.labeled = len(labeled)
    report.duplicates = sum(n - 1 for n in labeled.values())
    return report


def as_json(report: OverloadReport | ChaosReport) -> str:
    extra = (
        {"failures": report.failures}
        if isinstance(report, OverloadReport)
        else {"lost": report.lost, "error_rate": round(report.error_rate, 4)}
    )
    return json.dumps({**asdict(report), **extra, "ok": report.ok}, indent=2)


def _above(low: float, kind: Callable[[str], float]) -> Callable[[str], Any]:
    """An argparse type: a number of ``kind`` above ``low``."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > low:
            raise argparse.ArgumentTypeError(f"{text!r}: must be above {low}")
        return value

    return parse


def _targets(text: str) -> tuple[str, ...]:
    """``--targets``: known targets, comma-separated."""
    targets = tuple(t for t in text.split(",") if t)
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown or not targets:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give some of {', '.join(TARGETS)}, comma-separated"
        )
    return targets


def add_parser(sub: Any) -> None:
    """Register ``modelship drill overload|chaos`` on the CLI's subparsers."""
    drill = sub.add_parser("drill", help="put a running deployment through overload or chaos")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", required=True, help="the service, e.g. http://127.0.0.1:8000")
    common.add_argument("--api-key", default=os.environ.get("MODELSHIP_API_KEY"))
    actions = drill.add_subparsers(dest="action", required=True)
    load = actions.add_parser("overload", parents=[common], help="offer 3x its capacity")
    load.add_argument("--multiple", type=_above(0, float), default=3.0, help="times the capacity")
    load.add_argument("--seconds", type=_above(0, float), default=20.0, help="how long")
    load.add_argument("--words", type=_above(0, int), default=120, help="words per text")
    kill = actions.add_parser("chaos", parents=[common], help="kill actors during a job")
    kill.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS"),
        required="RAY_ADDRESS" not in os.environ,
        help="the service's Ray cluster (GCS ip:port); 'auto' could join another one",
    )
    kill.add_argument("--items", type=_above(0, int), default=300, help="texts the job labels")
    kill.add_argument(
        "--interval", type=_above(0, float), default=5.0, help="seconds between kills"
    )
    kill.add_argument(
        "--targets",
        type=_targets,
        default=TARGETS,
        help=f"what to kill, in order: a comma-separated list of {', '.join(TARGETS)}",
    )


def run(ns: argparse.Namespace) -> int:
    """Run the drill ``ns`` names; print its report; 0 when it passed, 1 when it failed or
    could not run (the service unreachable, not serving, or without a zero-shot model)."""
    report: OverloadReport | ChaosReport
    try:
        if ns.action == "overload":
            drill = overload(ns.url, ns.api_key, ns.multiple, ns.seconds, ns.words)
            report = asyncio.run(drill)
        else:
            report = chaos(
                ns.url, ns.address, ns.api_key, ns.items, ns.interval, targets=ns.targets
            )
    except (RuntimeError, LookupError, ConnectionError, ApiError, httpx.HTTPError) as exc:
        print(f"modelship drill {ns.action}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(as_json(report))
    return 0 if report.ok else 1
