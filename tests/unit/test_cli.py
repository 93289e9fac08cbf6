"""The ``modelship`` command given what a user mistypes: a clear message on stderr and a
non-zero exit, never a traceback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from modelship.ops import cli

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
@pytest.mark.parametrize("command", ["serve", "models", "preflight", "stop-services"])
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


def _serve_config(tmp_path: Path, port: int) -> Path:
    """The shipped config, listening on ``port``."""
    shipped = yaml.safe_load((ROOT / cli.DEFAULT_CONFIG).read_text())
    config = tmp_path / "serve_config.yaml"
    config.write_text(
        yaml.safe_dump({**shipped, "http_options": {"host": "127.0.0.1", "port": port}})
    )
    return config


@pytest.fixture
def no_child(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """What ``modelship serve`` would start, recorded instead (and its signal handlers and
    environment kept to itself)."""
    started: list[list[str]] = []

    class Child:
        def __init__(self, argv: list[str], **kwargs: object) -> None:
            started.append(argv)

        def wait(self) -> int:
            return 0

    monkeypatch.setattr(subprocess, "Popen", Child)
    monkeypatch.setattr(signal, "signal", lambda signum, handler: None)
    monkeypatch.setattr(os, "environ", dict(os.environ))
    return started


def test_serve_refuses_to_start_while_its_port_is_taken(
    tmp_path: Path, no_child: list[list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """A second ``modelship serve`` beside a running one: nothing is started."""
    with socket.create_server(("127.0.0.1", 0)) as running:
        port = running.getsockname()[1]
        assert cli.main(["serve", "--config", str(_serve_config(tmp_path, port))]) == 1
    assert no_child == []
    error = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in error and "another modelship serve" in error
    assert cli.main(["serve", "--config", str(_serve_config(tmp_path, port))]) == 0
    assert no_child and no_child[0][1:3] == ["run", str(tmp_path / "serve_config.yaml")]


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"ray_actor_options": {"num_gpus": 1}}, "ray_actor_options.num_gpus"),
        ({"user_config": {"max_batch_size": 0}}, "user_config.max_batch_size"),
    ],
)
def test_serve_refuses_a_model_override_its_replica_would_not_follow(
    tmp_path: Path,
    no_child: list[list[str]],
    capsys: pytest.CaptureFixture[str],
    override: dict[str, object],
    field: str,
) -> None:
    """A GPU given to a model in its deployment entry only (the replica ran on the CPU,
    holding the GPU) or a user_config its replica would refuse: ``modelship serve`` exits
    2 naming the field, before Ray starts, as ``modelship cluster render`` does."""
    shipped = yaml.safe_load((ROOT / cli.DEFAULT_CONFIG).read_text())
    entries = shipped["applications"][0]["deployments"]
    index = next(i for i, e in enumerate(entries) if e["name"].startswith("Model-"))
    entries[index].update(override)
    config = tmp_path / "serve_config.yaml"
    config.write_text(yaml.safe_dump(shipped))
    assert cli.main(["serve", "--config", str(config)]) == 2
    assert no_child == []
    error = capsys.readouterr().err
    assert f"applications[0].deployments[{index}].{field}" in error, error


CHILD = """
import signal, sys, time
from pathlib import Path

log = Path(sys.argv[1])

def interrupted(signum, frame):
    with log.open("a") as out:
        out.write("SIGINT\\n")
    raise KeyboardInterrupt

signal.signal(signal.SIGINT, interrupted)
try:
    print("ready", flush=True)
    while True:
        time.sleep(0.05)
except KeyboardInterrupt:
    try:
        time.sleep(2)  # shutting down, as serve.shutdown() does; a SIGINT here cuts it short
    except KeyboardInterrupt:
        sys.exit(3)
"""


def test_serve_passes_on_one_sigint_however_often_it_is_stopped(tmp_path: Path) -> None:
    """SIGTERM, then an impatient Ctrl-C while ``serve run`` shuts down: the child gets
    one SIGINT and finishes its shutdown."""
    script, log = tmp_path / "child.py", tmp_path / "signals.log"
    script.write_text(CHILD)
    supervise = (
        "import sys; from modelship.ops.cli import _supervise; sys.exit(_supervise(sys.argv[1:]))"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", supervise, sys.executable, str(script), str(log)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stdout.readline() == "ready\n"
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=30)
    finally:
        process.kill()
    assert code == 0, process.stderr.read() if process.stderr else ""
    assert log.read_text() == "SIGINT\n"


@pytest.mark.parametrize(
    ("args", "code", "said"),
    [
        (["overload", "--seconds", "1"], 1, "does not serve one request at a time"),
        (["chaos", "--address", "127.0.0.1:1"], 1, "ConnectError"),
        (["chaos", "--address", "127.0.0.1:1", "--targets", "model,node"], 2, "'model,node'"),
        (["chaos", "--address", "127.0.0.1:1", "--interval", "-1"], 2, "must be above 0"),
        (["overload", "--words", "0"], 2, "must be above 0"),
    ],
)
def test_a_drill_that_cannot_run_says_why(args: list[str], code: int, said: str) -> None:
    """Against a URL where nothing listens, or with arguments it cannot use."""
    run = modelship("drill", *args, "--url", "http://127.0.0.1:1")
    assert run.returncode == code, run.stderr
    assert said in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert run.stdout == ""
