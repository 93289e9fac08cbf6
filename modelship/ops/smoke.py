"""``modelship smoke --url URL``: a deployed ModelShip checked from outside, as a client.

Health probes, the security headers, a real labeling call for every task the deployment
serves (a generated image, a sentence), latency percentiles over repeated calls, and —
with ``--rate-limit N`` — that the N+1st burst request is refused with 429 and
``Retry-After``. Any failed check makes the command exit non-zero.
"""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from PIL import Image

REQUIRED_HEADERS = (
    "strict-transport-security",
    "content-security-policy",
    "x-content-type-options",
    "x-frame-options",
    "referrer-policy",
    "x-request-id",
)
TEXT = "The delivery was quick and the product works perfectly."


@dataclass
class Result:
    name: str
    ok: bool
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


def _image() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 80, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


class Smoke:
    def __init__(self, url: str, api_key: str | None, timeout_s: float = 30) -> None:
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s)

    def run(self, samples: int, rate_limit: int | None) -> list[Result]:
        results = [
            self._check("health", self._health),
            self._check("security_headers", self._headers),
        ]
        tasks: set[str] = set()

        def models() -> str:
            response = self._http.get("/api/v1/models")
            assert response.status_code == 200, f"{response.status_code}: {response.text[:200]}"
            tasks.update(m["task"] for m in response.json()["models"] if m["ready"])
            return f"ready for {', '.join(sorted(tasks)) or 'nothing'}"

        results.append(self._check("models", models))
        if tasks & {"zero-shot-text-classification", "text-classification"}:
            results.append(self._check("label_text", self._label_text))
            results.append(self._check("latency", lambda: self._latency(samples)))
        if "image-classification" in tasks:
            results.append(self._check("label_image", self._label_image))
        if rate_limit is not None:
            results.append(self._check("rate_limit", lambda: self._rate_limit(rate_limit)))
        return results

    def close(self) -> None:
        self._http.close()

    @staticmethod
    def _check(name: str, probe: Callable[[], Result | str]) -> Result:
        try:
            outcome = probe()
        except AssertionError as exc:
            return Result(name, False, str(exc))
        except httpx.HTTPError as exc:
            return Result(name, False, f"{type(exc).__name__}: {exc}")
        except (ValueError, LookupError, TypeError) as exc:  # a body that is not ModelShip's
            return Result(name, False, f"not a ModelShip answer: {type(exc).__name__}: {exc}")
        if isinstance(outcome, Result):
            return outcome
        return Result(name, True, outcome)

    def _health(self) -> str:
        for path in ("/health/live", "/health/ready"):
            status = self._http.get(path).status_code
            assert status == 200, f"{path} answered {status}"
        return "live, ready"

    def _headers(self) -> str:
        response = self._http.get("/health/live")
        missing = [name for name in REQUIRED_HEADERS if name not in response.headers]
        assert not missing, f"missing {', '.join(missing)}"
        return f"{len(REQUIRED_HEADERS)} present"

    def _label_text(self) -> str:
        response = self._http.post("/api/v1/classify/text", json={"text": TEXT})
        assert response.status_code == 200, f"{response.status_code}: {response.text[:200]}"
        labels = response.json()["results"][0]["labels"]
        assert labels, "no labels"
        return f"{labels[0]['label']} {labels[0]['score']:.2f}"

    def _label_image(self) -> str:
        response = self._http.post("/api/v1/classify/image", files={"file": _image()})
        assert response.status_code == 200, f"{response.status_code}: {response.text[:200]}"
        return f"{response.json()['labels'][0]['label']}"

    def _latency(self, samples: int) -> Result:
        times = []
        for _ in range(samples):
            started = time.perf_counter()
            response = self._http.post("/api/v1/classify/text", json={"text": TEXT})
            times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, f"{response.status_code}"
        times.sort()
        data = {
            "p50_ms": round(statistics.median(times), 1),
            "p95_ms": round(times[int(0.95 * (len(times) - 1))], 1),
            "p99_ms": round(times[int(0.99 * (len(times) - 1))], 1),
        }
        return Result("latency", True, ", ".join(f"{k} {v}" for k, v in data.items()), data)

    def _rate_limit(self, burst: int) -> str:
        for sent in range(1, burst + 20):
            response = self._http.get("/api/v1/models")
            if response.status_code == 429:
                # this client's other calls (the checks above) share the bucket: allow for them
                assert sent > burst // 2, f"429 after only {sent} requests; the burst is {burst}"
                assert response.headers.get("retry-after"), "429 without Retry-After"
                return f"429 after {sent} requests, Retry-After {response.headers['retry-after']}"
            assert response.status_code == 200, f"{response.status_code}"
        raise AssertionError(f"no 429 after {burst + 19} requests (burst {burst})")


def table(results: list[Result]) -> str:
    width = max(len(r.name) for r in results)
    return "\n".join(
        f"{r.name:<{width}}  {'ok' if r.ok else 'FAILED':<6}  {r.detail}" for r in results
    )
