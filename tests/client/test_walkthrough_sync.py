"""The README's text half with the blocking ``Client``, over real HTTP to the app served
by uvicorn: a folder of reviews uploaded, a job waited for, results as a DataFrame,
review decisions, a JSON Lines export downloaded; and its errors carry the request id."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest

from modelship.client import Client, InvalidInput, NotFound, UnsupportedMediaType, to_dataframe
from modelship.core import errors
from modelship.core.records import ItemState, JobStatus
from tests.client.servers import AppServer, Recording
from tests.conftest import DATA

DOCS = Path(__file__).resolve().parents[2] / "docs" / "client.md"
REVIEWS = [  # a line is an object with "text", or the text as a JSON string
    line if isinstance(line, str) else line["text"]
    for line in map(json.loads, (DATA / "reviews.jsonl").read_text().splitlines())
]


def test_readme_texts(server: AppServer, tmp_path: Path) -> None:
    with Client(server.url, poll_s=0.05) as ms:
        project = ms.create_project(
            f"reviews-{uuid.uuid4().hex[:6]}", "zero-shot-text-classification", "minilm"
        )
        seen: list[tuple[int, int]] = []
        upload = ms.upload_folder(
            project, DATA, "*.jsonl", progress=lambda done, total: seen.append((done, total))
        )
        assert len(upload.items) == len(REVIEWS) and seen == [(1, 1)]  # one file

        job = ms.wait_job(ms.create_job(project), timeout_s=60)
        assert job.status is JobStatus.succeeded
        assert job.counts[ItemState.succeeded] == len(REVIEWS)

        frame = to_dataframe(ms.job_results(job))
        assert len(frame) == len(REVIEWS)
        assert set(frame["label"]) <= {"positive", "negative"}
        assert frame["model"].eq("minilm").all() and frame["score"].between(0, 1).all()

        queue = ms.review_queue(project, limit=2)
        assert len(queue.entries) <= 2
        stats = ms.stats(project)
        pending = stats.by_status.get("pending", 0)
        assert pending >= 1, stats  # a 0.9 threshold leaves some for people
        rejected = ms.reject(project, queue.entries[0].item)
        assert rejected.annotation is not None and rejected.annotation.status == "rejected"
        assert ms.bulk_approve(project) == pending - 1
        stats = ms.stats(project)
        assert stats.by_status["pending"] == 0 and stats.by_status["rejected"] == 1

        path = ms.export(project, "jsonl", tmp_path / "reviews.jsonl", timeout_s=60)
        lines = path.read_text().splitlines()
        assert len(lines) == len(REVIEWS) - 1  # approved ones: the rejected one is left out
        assert {json.loads(line)["text"] for line in lines} < set(REVIEWS)


def test_errors_name_their_class_code_and_request(server: AppServer) -> None:
    recording = Recording()
    with Client(server.url, transport=recording) as ms:
        with pytest.raises(NotFound) as missing:
            ms.get_project(uuid.uuid4())
        error = missing.value
        assert isinstance(error, errors.NotFound)  # the server's class catches it too
        assert (error.status, error.code) == (404, "unknown_project")
        assert error.request_id == recording.responses[-1].headers["x-request-id"]
        assert f"request_id={error.request_id!r}" in repr(error)

        with pytest.raises(InvalidInput) as corrupt:
            ms.classify_image(DATA / "truncated.jpg")
        assert (corrupt.value.status, corrupt.value.code) == (422, "corrupt_image")
        assert corrupt.value.request_id == recording.responses[-1].headers["x-request-id"]

        photos = ms.create_project(
            f"photos-{uuid.uuid4().hex[:6]}", "image-classification", "efficientnet-lite0"
        )
        with pytest.raises(UnsupportedMediaType) as pdf:
            ms.upload_folder(photos, DATA, "*.pdf")
        assert pdf.value.status == 415 and pdf.value.request_id
        assert ms.list_items(photos) == []  # nothing half-written


def test_the_docs_walkthrough_runs_as_written(
    server: AppServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/client.md's walkthrough, with the server's URL from ``MODELSHIP_URL``."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    (walkthrough,) = [block for block in blocks if "ms.wait_job(" in block and "await" not in block]
    monkeypatch.setenv("MODELSHIP_URL", server.url)
    monkeypatch.delenv("MODELSHIP_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    exec(walkthrough.replace('"tests/data"', repr(str(DATA))), {})
    coco = json.loads((tmp_path / "photos-coco.json").read_text())
    assert len(coco["images"]) == len(list(DATA.glob("*.jpg")))
