"""Cluster tier: manifests, image and compose checked offline with the real tools. No
Kubernetes API server runs here, and this process never starts Ray (a bug here):
test_multinode starts its pods as separate processes in network namespaces."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import ray

from modelship.ops.cluster.options import ClusterOptions
from modelship.ops.cluster.render import render

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config" / "serve_config.yaml"


@pytest.fixture(autouse=True)
def _forbid_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("cluster tests check files and tools; they must not start Ray")

    monkeypatch.setattr(ray, "init", refuse)


@pytest.fixture(scope="session")
def manifests() -> dict[str, dict[str, Any]]:
    """Every manifest rendered from the shipped config with default options, by kind (the
    two NetworkPolicies by their instance: ``NetworkPolicy/<instance>``)."""
    found: dict[str, dict[str, Any]] = {}
    for manifest in render(CONFIG, ClusterOptions()):
        kind = manifest["kind"]
        if kind == "NetworkPolicy":
            kind += "/" + manifest["metadata"]["labels"]["app.kubernetes.io/instance"]
        found[kind] = manifest
    return found
