"""Unit tier: plain Python, no Ray. Starting Ray here is a bug in the test."""

from __future__ import annotations

import pytest
import ray


@pytest.fixture(autouse=True)
def _forbid_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("unit tests must not start Ray; move this test to a higher tier")

    monkeypatch.setattr(ray, "init", refuse)
