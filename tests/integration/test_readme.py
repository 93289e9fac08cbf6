"""The README's curl examples, run as written against the live application."""

from __future__ import annotations

import json
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


def test_readme_walkthrough_runs_as_one_script(base_url: str) -> None:
    (script,) = re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.S)
    script = script.replace("http://127.0.0.1:8000", base_url)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=DATA,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    outputs = _json_values(done.stdout)
    upload, photos_job, photos_results, _, reviews_results, queue = outputs
    assert len(upload["items"]) == len(list(DATA.glob("*.jpg")))
    assert photos_job["status"] == "succeeded"
    assert photos_job["counts"]["failed"] == 1  # truncated.jpg
    assert photos_job["errors"][0]["error"].startswith("corrupt_image")
    assert len(photos_results["results"]) == 2 and photos_results["next_cursor"]
    labels = [r["output"][0]["label"] for r in reviews_results["results"]]
    assert len(labels) == 4 and set(labels) <= {"positive", "negative", "neutral"}
    assert len(queue["entries"]) <= 2
    assert f"{len(upload['items'])} images exported" in done.stdout


def _json_values(text: str) -> list[dict[str, object]]:
    """The JSON documents curl printed back to back (it adds no newlines)."""
    decoder, values, at = json.JSONDecoder(), [], 0
    while (at := text.find("{", at)) != -1:
        value, at = decoder.raw_decode(text, at)
        values.append(value)
    return values
