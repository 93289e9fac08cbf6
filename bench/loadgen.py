"""Load generators: closed loop (fixed concurrency) and open loop (Poisson arrivals).

Open-loop latency is timed from each request's *intended* send time, so a server that
stalls is charged for the requests that queued behind it (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

# A request: (path, JSON body, number of items in it).
Request = tuple[str, dict[str, Any], int]
MakeRequest = Callable[[random.Random], Request]


@dataclass
class Outcome:
    """What one measured phase observed."""

    latencies_s: list[float] = field(default_factory=list)
    items: int = 0
    errors: int = 0
    duration_s: float = 0.0

    @property
    def throughput(self) -> float:
        return self.items / self.duration_s if self.duration_s else 0.0

    def percentile_ms(self, q: float) -> float:
        if not self.latencies_s:
            return math.nan
        ordered = sorted(self.latencies_s)
        return 1000 * ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


async def _send(session: aiohttp.ClientSession, base: str, request: Request) -> bool:
    path, body, _ = request
    try:
        async with session.post(base + path, json=body) as response:
            await response.read()
            return response.status == 200
    except (TimeoutError, aiohttp.ClientError):
        return False


def _session(concurrency: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120))


async def closed_loop(
    base: str, make: MakeRequest, concurrency: int, duration_s: float, warmup_s: float, seed: int
) -> Outcome:
    """``concurrency`` clients sending back to back; what completes in the measured window
    (after the first ``warmup_s``) counts, so requests longer than the window still do."""
    outcome = Outcome()
    rng = random.Random(seed)
    start = time.perf_counter()
    measure_from, stop_at = start + warmup_s, start + warmup_s + duration_s

    async def client(session: aiohttp.ClientSession) -> None:
        while (sent := time.perf_counter()) < stop_at:
            request = make(rng)
            ok = await _send(session, base, request)
            done = time.perf_counter()
            if measure_from <= done <= stop_at:
                if ok:
                    outcome.latencies_s.append(done - sent)
                    outcome.items += request[2]
                else:
                    outcome.errors += 1

    async with _session(concurrency) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    outcome.duration_s = duration_s
    return outcome


async def open_loop(
    base: str, make: MakeRequest, rate: float, duration_s: float, warmup_s: float, seed: int
) -> Outcome:
    """Poisson arrivals at ``rate`` requests/s; latency from each intended send time."""
    outcome = Outcome()
    rng = random.Random(seed)
    arrivals: list[float] = []
    t = 0.0
    while t < warmup_s + duration_s:
        t += rng.expovariate(rate)
        arrivals.append(t)

    async def one(session: aiohttp.ClientSession, intended: float, request: Request) -> None:
        ok = await _send(session, base, request)
        if intended >= start + warmup_s:
            if ok:
                outcome.latencies_s.append(time.perf_counter() - intended)
                outcome.items += request[2]
            else:
                outcome.errors += 1

    async with _session(4096) as session:
        start = time.perf_counter()
        tasks = []
        for offset in arrivals:
            intended = start + offset
            delay = intended - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(session, intended, make(rng))))
        await asyncio.gather(*tasks)
    outcome.duration_s = duration_s
    return outcome
