"""The README walkthrough with ``AsyncClient``, on the real app in-process: a project,
a folder of photos uploaded with progress, a job waited for, results as records and a
DataFrame, review decisions, a COCO export downloaded and loaded."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from modelship.client import AsyncClient, NotFound, to_dataframe
from modelship.core.records import ItemState, JobResult, JobStatus
from tests.client.servers import BackgroundRunner
from tests.conftest import DATA

pytestmark = pytest.mark.asyncio(loop_scope="module")

PHOTOS = sorted(path.name for path in DATA.glob("*.jpg"))


async def test_readme_walkthrough(ms: AsyncClient, tmp_path: Path) -> None:
    project = await ms.create_project(
        f"photos-{uuid.uuid4().hex[:6]}",
        "image-classification",
        "efficientnet-lite0",
        auto_approve_threshold=0.8,
    )
    assert project.labels is None and project.auto_approve_threshold == 0.8

    seen: list[tuple[int, int]] = []
    upload = await ms.upload_folder(
        project, DATA, "*.jpg", progress=lambda done, total: seen.append((done, total)), bar=True
    )
    assert sorted(item.filename or "" for item in upload.items) == PHOTOS
    assert upload.duplicates == [] and len(upload.request_ids) == 1
    assert seen == [(len(PHOTOS), len(PHOTOS))]
    by_name = {item.filename: item.id for item in upload.items}

    key = f"photos-run-{uuid.uuid4().hex}"
    job = await ms.create_job(project, idempotency_key=key)
    assert (await ms.create_job(project, idempotency_key=key)).id == job.id  # replayed

    steps: list[tuple[int, int]] = []
    done = await ms.wait_job(job, timeout_s=60, progress=lambda d, t: steps.append((d, t)))
    assert done.status is JobStatus.succeeded
    assert done.counts[ItemState.failed] == 1  # truncated.jpg
    assert done.errors[0].error.startswith("corrupt_image")
    assert steps[-1] == (len(PHOTOS), len(PHOTOS))
    assert [d for d, _ in steps] == sorted(d for d, _ in steps)

    results = await ms.job_results(job, page_size=2)  # three pages
    assert all(isinstance(result, JobResult) for result in results)
    assert {r.item_id for r in results} == set(by_name.values())
    frame = to_dataframe(results).set_index("item_id")
    cat = frame.loc[by_name["cat.jpg"]]
    assert cat["state"] == "succeeded" and "cat" in cat["label"].lower(), cat
    assert cat["model_version"].startswith("sha256:") and 0 < cat["score"] <= 1
    broken = frame.loc[by_name["truncated.jpg"]]
    assert broken["state"] == "failed" and broken["error"].startswith("corrupt_image")

    queue = await ms.review_queue(project, limit=10)
    pending = [entry.item for entry in queue.entries if entry.item.id != by_name["cat.jpg"]]
    assert pending, "the astronaut scores under 0.8"
    approved = await ms.approve(project, pending[0])
    assert approved.annotation is not None and approved.annotation.status == "approved"
    assert approved.reviews[-1].reviewer == "anonymous"  # auth is off in this server
    corrected = await ms.correct(project, by_name["cat.jpg"], labels=["tabby"])
    assert corrected.annotation is not None
    assert corrected.annotation.status == "corrected"
    assert corrected.annotation.value == [{"label": "tabby", "score": None}]
    stats = await ms.stats(project)
    assert stats.items == len(PHOTOS) and stats.reviewed == 2

    path = await ms.export(project, "coco", tmp_path, selection="all", timeout_s=60)
    assert path.parent == tmp_path and path.suffix == ".json"
    coco = _only_file(tmp_path, path)
    assert len(coco["images"]) == len(PHOTOS)
    images = {image["modelship_item_id"]: image["id"] for image in coco["images"]}
    names = {c["id"]: c["name"] for c in coco["categories"]}
    cat_labels = [
        names[a["category_id"]]
        for a in coco["annotations"]
        if a["image_id"] == images[str(by_name["cat.jpg"])]
    ]
    assert cat_labels == ["tabby"]


async def test_projects_items_and_archive(ms: AsyncClient) -> None:
    project = await ms.create_project(
        f"texts-{uuid.uuid4().hex[:6]}",
        "zero-shot-text-classification",
        "minilm",
        labels=["sport", {"name": "cooking", "examples": ["stir the sauce"]}],
    )
    upload = await ms.upload_texts(project, ["a goal", "a cake", "a goal"])
    assert len(upload.items) == 2 and [d.index for d in upload.duplicates] == [2]
    listed = await ms.list_items(project, page_size=1)  # two pages
    assert sorted(i.id for i in listed) == sorted(i.id for i in upload.items)
    renamed = await ms.update_project(project, name="renamed", labels=["sport", "news"])
    assert renamed.name == "renamed" and renamed.label_schema_version == 2
    assert (await ms.get_project(project.id)).name == "renamed"
    assert project.id in [p.id for p in await ms.list_projects()]

    archived = await ms.archive_project(project)
    assert archived.archived
    assert project.id not in [p.id for p in await ms.list_projects()]
    assert project.id in [p.id for p in await ms.list_projects(include_archived=True)]
    with pytest.raises(NotFound):
        await ms.get_job(uuid.uuid4())


async def test_a_job_timed_out_then_cancelled(ms: AsyncClient, labeling: BackgroundRunner) -> None:
    project = await ms.create_project(
        f"cancel-{uuid.uuid4().hex[:6]}", "zero-shot-text-classification", "minilm"
    )
    await ms.upload_texts(project, ["one", "two", "three"])
    async with labeling.paused():
        job = await ms.create_job(project)
        assert job.status is JobStatus.queued and job.total_items == 3
        with pytest.raises(TimeoutError, match=str(job.id)):
            await ms.wait_job(job, timeout_s=0.2)
        cancelled = await ms.cancel_job(job)
    assert cancelled.status is JobStatus.cancelled
    done = await ms.wait_job(job, timeout_s=5)
    assert done.counts[ItemState.cancelled] == 3 and done.progress == 1
    assert {r.state for r in await ms.job_results(job)} == {ItemState.cancelled}


async def test_labeling_calls(ms: AsyncClient) -> None:
    models = {model.name: model for model in await ms.models()}
    assert models["efficientnet-lite0"].ready

    one = await ms.classify_image(DATA / "cat.jpg", top_k=3)
    assert len(one.labels) <= 3 and "cat" in one.labels[0].label.lower()
    assert one.model.name == "efficientnet-lite0" and one.image.width > 0
    several = await ms.classify_images([DATA / "cat.jpg", (DATA / "coffee.jpg").read_bytes()])
    assert [r.index for r in several.results] == [0, 1]
    assert several.results[0].labels[0].label == one.labels[0].label
    assert several.results[0].labels[0].score == pytest.approx(one.labels[0].score, abs=1e-5)

    texts = await ms.classify_text(
        ["the team won the match", "bake the bread"], model="minilm", labels=["sport", "cooking"]
    )
    assert [r.labels[0].label for r in texts.results] == ["sport", "cooking"]
    boxes = await ms.detect(DATA / "astronaut.jpg", model="nudenet")
    assert boxes.request_id and all(len(d.box) == 4 for d in boxes.detections)


def _only_file(folder: Path, path: Path) -> dict[str, Any]:
    """The download's JSON; it is alone in its folder (no ``.part`` left behind)."""
    assert sorted(folder.iterdir()) == [path]
    loaded: dict[str, Any] = json.loads(path.read_bytes())
    return loaded
