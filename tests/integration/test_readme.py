"""The README's curl examples, run as written against the live application."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
DATA = Path(__file__).resolve().parents[1] / "data"


def _examples() -> list[str]:
    blocks = re.findall(r"```console\n(.*?)```", README.read_text(), flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.startswith("curl ")]


def test_readme_examples_answer(base_url: str) -> None:
    examples = _examples()
    assert len(examples) >= 4
    for line in examples:
        command = line.replace("http://127.0.0.1:8000", base_url)
        done = subprocess.run(
            command, shell=True, cwd=DATA, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, (line, done.stderr)
        assert '"request_id"' in done.stdout or '"models"' in done.stdout
