"""Core kinds checked offline with kubernetes-validate --strict, as the API server would
take them; a Ray group's pod template as a core PodTemplate."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml


def pod_template(name: str, template: dict[str, Any]) -> dict[str, Any]:
    """A group's pod template as a core PodTemplate document."""
    return {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": name, "namespace": "modelship"},
        "template": template,
    }


def validate_strict(documents: list[dict[str, Any]], tmp_path: Path) -> None:
    """Every document passes ``kubernetes-validate --strict`` (the test fails otherwise)."""
    tool = shutil.which("kubernetes-validate") or Path(sys.executable).with_name(
        "kubernetes-validate"
    )
    if not Path(tool).exists():
        pytest.fail("kubernetes-validate not found: pip install kubernetes-validate==1.37.0")
    path = tmp_path / "core.yaml"
    path.write_text(yaml.safe_dump_all(documents))
    run = subprocess.run(
        [str(tool), "--strict", str(path)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("passed") == len(documents), run.stdout
