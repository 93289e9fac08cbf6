"""The ``modelship`` command given what a user mistypes: a clear message on stderr and a
non-zero exit, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNREADABLE = [
    (None, "cannot be read as YAML"),  # no such file
    ("applications: [\n", "cannot be read as YAML"),
    ("", "not a Serve config"),
    ("- 1\n- 2\n", "not a Serve config"),
]
NO_APPLICATION = [
    ("applications: []\n", "one application expected"),
    ("applications: [{args: 3}]\n", "must be a mapping"),
    ("applications: [{args: {models: 3}}]\n", "models"),
]


def modelship(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "modelship.ops.cli", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def _exits_2_naming(tmp_path: Path, command: str, text: str | None, said: str) -> None:
    config = tmp_path / "serve_config.yaml"
    if text is not None:
        config.write_text(text)
    run = modelship(command, "--config", str(config))
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    assert str(config) in run.stderr and said in run.stderr, run.stderr


@pytest.mark.parametrize(("text", "said"), UNREADABLE)
@pytest.mark.parametrize("command", ["serve", "models", "preflight", "stop-services"])
def test_a_config_that_is_missing_or_no_yaml_mapping_exits_2_naming_it(
    tmp_path: Path, command: str, text: str | None, said: str
) -> None:
    _exits_2_naming(tmp_path, command, text, said)


@pytest.mark.parametrize(("text", "said"), NO_APPLICATION)
@pytest.mark.parametrize("command", ["models", "preflight", "stop-services"])
def test_a_config_without_a_valid_application_exits_2_naming_it(
    tmp_path: Path, command: str, text: str, said: str
) -> None:
    _exits_2_naming(tmp_path, command, text, said)


@pytest.mark.parametrize(
    "args",
    [
        ["keys", "revoke", "not-a-uuid"],
        ["keys", "create", "--scope", "read", "--project", "not-a-uuid"],
    ],
)
def test_an_id_that_is_no_uuid_is_refused_before_anything_connects(args: list[str]) -> None:
    run = modelship(*args)
    assert run.returncode == 2, run.stderr
    assert "invalid UUID value: 'not-a-uuid'" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
