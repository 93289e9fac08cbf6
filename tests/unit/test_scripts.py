"""``scripts/setup`` (which ``scripts/run`` runs first) on a machine whose package manager
cannot install the test tools: it says so and goes on, as serving needs none of them."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _command(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!{shutil.which('bash')}\n{body}\n")
    path.chmod(0o755)


def test_setup_goes_on_when_the_test_tools_cannot_be_installed(tmp_path: Path) -> None:
    """As root with apt-get on a release without caddy (Debian 11, Ubuntu 22.04): ``apt-get
    install`` fails, and the virtualenv, already installed here, is all ``scripts/run``
    needs."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup", repo / "scripts" / "setup")
    for name in ("pyproject.toml", "constraints.txt"):
        (repo / name).write_text("")
    os.utime(repo / "pyproject.toml", (time.time() - 60, time.time() - 60))
    os.utime(repo / "constraints.txt", (time.time() - 60, time.time() - 60))
    venv = repo / ".venv"
    (venv / "bin").mkdir(parents=True)
    _command(venv / "bin", "python", "exit 0")
    (venv / ".modelship-installed").touch()  # installed, and newer than what it installed
    tools = tmp_path / "bin"  # none of promtool, docker-compose, caddy on PATH
    tools.mkdir()
    calls = tmp_path / "apt-get.log"
    _command(tools, "id", "echo 0")  # root
    _command(tools, "dirname", f'exec {shutil.which("dirname")} "$@"')
    _command(
        tools,
        "apt-get",
        f'echo "$1" >> {calls}\n[ "$1" = update ] && exit 0\n'
        'echo "E: Unable to locate package caddy" >&2; exit 100',
    )
    bash = shutil.which("bash")
    assert bash is not None
    run = subprocess.run(
        [bash, str(repo / "scripts" / "setup")],
        env={"PATH": str(tools)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert calls.read_text().split() == ["update", "install"]
    assert run.returncode == 0, run.stderr
    assert "scripts/setup: could not install" in run.stderr and "caddy" in run.stderr
