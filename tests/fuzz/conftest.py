"""Fuzz drills (docs/drills.md): in-process like the unit tier, so Ray is forbidden here too."""

from __future__ import annotations

import pytest
import ray


@pytest.fixture(autouse=True)
def _forbid_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("fuzz drills run in-process and must not start Ray")

    monkeypatch.setattr(ray, "init", refuse)
