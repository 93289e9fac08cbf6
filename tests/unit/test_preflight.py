"""``modelship preflight`` against this machine's PostgreSQL and Redis, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from modelship.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _preflight(
    tmp_path: Path, settings: Settings, source: str, **env: str
) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "serve_config.yaml"
    model = {"name": "efficientnet-lite0", "task": "image-classification", "source": source}
    config.write_text(yaml.safe_dump({"applications": [{"args": {"models": [model]}}]}))
    assert settings.database_url is not None and settings.redis_url is not None
    environment = {
        **os.environ,
        "MODELSHIP_DATA_DIR": str(tmp_path / "data"),
        "MODELSHIP_DATABASE_URL": settings.database_url.get_secret_value(),
        "MODELSHIP_REDIS_URL": settings.redis_url.get_secret_value(),
        "MODELSHIP_OBJECT_STORE_URL": str(tmp_path / "objects"),
        **env,
    }
    command = [
        sys.executable,
        "-m",
        "modelship.ops.cli",
        "preflight",
        "--config",
        str(config),
        "--json",
    ]
    return subprocess.run(
        command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120
    )


def test_preflight_passes_when_everything_is_reachable(
    tmp_path: Path, storage_settings: Settings
) -> None:
    done = _preflight(tmp_path, storage_settings, "packaged:efficientnet-lite0")
    assert done.returncode == 0, done.stdout + done.stderr
    checks = {c["name"]: c for c in json.loads(done.stdout)}
    assert list(checks) == [
        "database",
        "redis",
        "object_storage",
        "disk",
        "model:efficientnet-lite0",
    ]
    assert all(c["ok"] for c in checks.values())
    assert "migrations applied" in checks["database"]["detail"]
    assert checks["model:efficientnet-lite0"]["detail"].startswith("sha256:")


@pytest.mark.parametrize(
    ("env", "source", "failed"),
    [
        ({"MODELSHIP_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none"}, None, "database"),
        ({"MODELSHIP_REDIS_URL": "redis://127.0.0.1:1/0"}, None, "redis"),
        # a folder that is there but that no one, root included, can write into
        ({"MODELSHIP_OBJECT_STORE_URL": "/proc/sys"}, None, "object_storage"),
        ({}, "/nonexistent/model", "model:efficientnet-lite0"),
    ],
)
def test_preflight_fails_loudly_on_what_is_broken(
    tmp_path: Path, storage_settings: Settings, env: dict[str, str], source: str | None, failed: str
) -> None:
    done = _preflight(tmp_path, storage_settings, source or "packaged:efficientnet-lite0", **env)
    assert done.returncode == 1, done.stdout + done.stderr
    checks = {c["name"]: c for c in json.loads(done.stdout)}
    assert [name for name, c in checks.items() if not c["ok"]] == [failed]
    assert checks[failed]["detail"]


def test_preflight_refuses_invalid_settings(tmp_path: Path, storage_settings: Settings) -> None:
    done = _preflight(
        tmp_path, storage_settings, "packaged:efficientnet-lite0", MODELSHIP_PROFILE="production"
    )
    assert done.returncode == 2
    assert "SECRET_KEY" in done.stderr
