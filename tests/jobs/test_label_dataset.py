"""Batch labeling with Ray Data on a real local Ray cluster and PostgreSQL: 1,000 entries
(texts and images, duplicates, broken files), checked against the online path.

``label_dataset`` runs in this process, the Ray driver, as ``python -m
jobs.label_dataset`` runs it in a RayJob; its tasks and label actors are real Ray workers.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import fsspec
import httpx
import pytest
import yaml

from jobs.label_dataset import ISOLATED_FAILURE, label_dataset, main
from modelship.core.config import ModelConfig
from modelship.core.errors import ModelShipError, QuotaExceeded
from modelship.core.messages import ItemOptions
from modelship.core.records import ExportFormat, ItemState, Job
from modelship.core.settings import Settings
from modelship.http.app import create_api
from modelship.service import batch as batch_module
from modelship.service import datasets as datasets_module
from modelship.service.batch import BatchRequest, BatchRun
from modelship.service.labeling import LocalLabeler
from modelship.service.runner import item_options
from modelship.service.workflow import Workflow
from storage.jobs import JobStore
from storage.services import Services
from tests.conftest import DATA, EFFICIENTNET, MINILM, REDIS_URL
from tests.jobs.conftest import BAD_IMAGES, GOOD_IMAGES, Datasets, texts, unlistable
from tests.sentry_receiver import SentryReceiver, message
from tests.unit.flow import assert_same_labels, job_results

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

MODELS = [MINILM, EFFICIENTNET]


@pytest.fixture(scope="module")
def local(batch_settings: Settings) -> LocalLabeler:
    """The in-process labeler the online path's tests use: the reference labels."""
    return LocalLabeler(MODELS, batch_settings)


@pytest.fixture(scope="module")
async def api(
    local: LocalLabeler, services: Services, batch_settings: Settings
) -> AsyncIterator[httpx.AsyncClient]:
    """The HTTP API over the same database, to read jobs as clients see them."""
    workflow = Workflow(services, MODELS, batch_settings)
    app = create_api(local, MODELS, batch_settings, workflow=workflow)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def run(
    settings: Settings, project: str, source: Path | str, model: ModelConfig, **kwargs: Any
) -> Job:
    request = BatchRequest(project=project, source=str(source), model=model.name)
    return await label_dataset(request, MODELS, settings, **kwargs)


@pytest.fixture(scope="module")
async def text_job(serve_cluster: int, batch_settings: Settings, datasets: Datasets) -> Job:
    return await run(batch_settings, f"texts-{uuid.uuid4().hex[:6]}", datasets.texts, MINILM)


@pytest.fixture(scope="module")
async def image_job(serve_cluster: int, batch_settings: Settings, datasets: Datasets) -> Job:
    return await run(
        batch_settings, f"images-{uuid.uuid4().hex[:6]}", datasets.images, EFFICIENTNET
    )


async def options(services: Services, job: Job) -> ItemOptions:
    """The options the job labeled with, as the service's job runner reads them."""
    async with services.db.connection() as conn:
        return item_options(await conn.fetchval("SELECT options FROM jobs WHERE id = $1", job.id))


async def labels_by_hash(api: httpx.AsyncClient, job: Job) -> dict[str, dict[str, Any]]:
    """The job's results as the API returns them, by the item's content hash."""
    items: dict[str, str] = {}
    cursor = None
    while True:
        params = {"limit": 500, **({"cursor": cursor} if cursor else {})}
        page = (await api.get(f"/api/v1/projects/{job.project_id}/items", params=params)).json()
        items |= {item["id"]: item["content_hash"] for item in page["items"]}
        if (cursor := page["next_cursor"]) is None:
            break
    return {items[r["item_id"]]: r for r in await job_results(api, str(job.id), limit=500)}


async def test_texts_get_the_online_labels(
    text_job: Job,
    api: httpx.AsyncClient,
    local: LocalLabeler,
    datasets: Datasets,
    services: Services,
) -> None:
    distinct = sorted(set(datasets.text_entries))
    assert len(distinct) == 850
    shown = (await api.get(f"/api/v1/jobs/{text_job.id}")).json()
    assert shown["status"] == "succeeded"
    assert shown["total_items"] == 851  # one item per distinct text, and the broken file
    assert shown["counts"] == {
        "queued": 0, "leased": 0, "succeeded": 850, "failed": 1, "cancelled": 0
    }  # fmt: skip
    assert shown["progress"] == 1.0
    [error] = shown["errors"]
    assert error["error"].startswith("invalid_text_file: ") and error["count"] == 1

    results = await labels_by_hash(api, text_job)
    expected = await local.label(MINILM.name, list(distinct), await options(services, text_job))
    for text, reference in zip(distinct, expected, strict=True):
        assert not isinstance(reference, ModelShipError)
        result = results[hashlib.sha256(text.encode()).hexdigest()]
        assert result["state"] == "succeeded" and result["attempts"] == 1
        assert result["model_version"] == reference.version
        assert_same_labels(result["output"], [o.model_dump() for o in reference.output])


async def test_images_get_the_online_labels_and_bad_ones_fail_alone(
    image_job: Job, api: httpx.AsyncClient, local: LocalLabeler, services: Services
) -> None:
    shown = (await api.get(f"/api/v1/jobs/{image_job.id}")).json()
    assert shown["status"] == "succeeded"
    assert shown["total_items"] == len(GOOD_IMAGES) + len(BAD_IMAGES)  # duplicates are one item
    assert shown["counts"]["succeeded"] == len(GOOD_IMAGES)
    assert shown["counts"]["failed"] == len(BAD_IMAGES)

    results = await labels_by_hash(api, image_job)
    payloads: list[bytes | str] = [(DATA / name).read_bytes() for name in GOOD_IMAGES]
    expected = await local.label(EFFICIENTNET.name, payloads, await options(services, image_job))
    for data, reference in zip(payloads, expected, strict=True):
        assert not isinstance(reference, ModelShipError)
        assert isinstance(data, bytes)
        result = results[hashlib.sha256(data).hexdigest()]
        assert result["state"] == "succeeded"
        assert_same_labels(result["output"], [o.model_dump() for o in reference.output])
    failed = sorted(r["error"] for r in results.values() if r["state"] == "failed")
    reasons = sorted(BAD_IMAGES.values())
    assert [error.split(":")[0] for error in failed] == reasons, failed
    assert all(len(error) > len(code) + 2 for error, code in zip(failed, reasons, strict=True))


async def test_a_rerun_labels_nothing(
    text_job: Job, image_job: Job, batch_settings: Settings, datasets: Datasets, services: Services
) -> None:
    async with services.db.connection() as conn:
        before = await conn.fetchval("SELECT count(*) FROM predictions")
    again = await run(batch_settings, str(text_job.project_id), datasets.texts, MINILM)
    assert again.id != text_job.id and again.project_id == text_job.project_id
    assert again.status == "succeeded" and again.total_items == 851
    assert again.counts[ItemState.succeeded] == 850 and again.counts[ItemState.failed] == 1
    async with services.db.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM predictions") == before
        attempts = await conn.fetch(
            "SELECT DISTINCT attempts, state FROM job_items WHERE job_id = $1", again.id
        )
    # 0: settled from the earlier prediction; 1: the broken file, failed as it is read
    assert {(r["attempts"], r["state"]) for r in attempts} == {(0, "succeeded"), (1, "failed")}


async def test_a_killed_actor_still_labels_everything(
    serve_cluster: int, batch_settings: Settings, datasets: Datasets
) -> None:
    source = datasets.root / "crash.txt"
    source.write_text("".join(t + "\n" for t in texts(200, 200, seed="crash-")))
    flag = Path(batch_settings.data_dir) / "crash-once"
    flag.touch()
    from tests.jobs.crash import CrashOnce

    job = await run(
        batch_settings, f"crash-{uuid.uuid4().hex[:6]}", source, MINILM, actor_cls=CrashOnce
    )
    assert not flag.exists()  # an actor died on its second batch
    assert job.status == "succeeded"
    assert job.total_items == 200 and job.counts[ItemState.succeeded] == 200


async def test_an_item_that_kills_the_model_fails_alone(
    serve_cluster: int, batch_settings: Settings, datasets: Datasets
) -> None:
    """An item whose batch kills the label actor's process on every try was retried for
    ever (Ray Data's default for actor pools): the job never ended. The batch is now
    left out after three tries and its items labeled one by one; the item that kills
    the model fails alone, with its reason, and the others are labeled."""
    from tests.jobs.crash import POISON, KilledByPoison

    entries = texts(60, 60, seed="poison-")
    entries[17] = f"a {POISON} among the reviews"
    source = datasets.root / "poison.txt"
    source.write_text("".join(t + "\n" for t in entries))
    project = f"poison-{uuid.uuid4().hex[:6]}"
    labeling = run(batch_settings, project, source, MINILM, actor_cls=KilledByPoison)
    job = await asyncio.wait_for(labeling, timeout=240)
    assert job.status == "succeeded" and job.total_items == 60
    assert job.counts[ItemState.succeeded] == 59 and job.counts[ItemState.failed] == 1
    assert [(e.error, e.count) for e in job.errors] == [(ISOLATED_FAILURE, 1)]


async def test_an_object_store_outage_fails_items_with_its_reason(
    serve_cluster: int, batch_settings: Settings, datasets: Datasets
) -> None:
    """Label actors that cannot read the items' files (the store is down) fail those items
    with ``object_store_unavailable``, which a rerun labels again. The outage used to fail
    each batch three times, then each item alone, and the items were failed as ones that
    kill the model: a user would drop good images."""
    from tests.jobs.crash import StoreOutage

    source = datasets.images.with_name("outage.jsonl")
    source.write_text("".join(json.dumps({"path": name}) + "\n" for name in GOOD_IMAGES))
    project = f"outage-{uuid.uuid4().hex[:6]}"
    labeling = run(batch_settings, project, source, EFFICIENTNET, actor_cls=StoreOutage)
    job = await asyncio.wait_for(labeling, timeout=240)
    assert job.total_items == len(GOOD_IMAGES)
    assert job.counts[ItemState.failed] == len(GOOD_IMAGES)
    assert [(e.error.split(":")[0], e.count) for e in job.errors] == [
        ("object_store_unavailable", len(GOOD_IMAGES))
    ]

    again = await run(batch_settings, str(job.project_id), source, EFFICIENTNET)
    assert again.status == "succeeded"
    assert again.counts[ItemState.succeeded] == len(GOOD_IMAGES)


async def test_a_cancelled_batch_job_stops_labeling(
    serve_cluster: int, batch_settings: Settings, datasets: Datasets, services: Services
) -> None:
    """``POST /jobs/{id}/cancel`` on a batch job: the run stops at its next batch instead
    of labeling the rest for nothing; what it labeled stays."""
    source = datasets.root / "cancelled.txt"
    source.write_text("".join(t + "\n" for t in texts(3000, 3000, seed="cancel-")))
    project = f"cancel-{uuid.uuid4().hex[:6]}"
    labeled = Path(batch_settings.data_dir) / "batches-labeled"
    labeled.unlink(missing_ok=True)
    from tests.jobs.crash import Counted

    running = asyncio.create_task(run(batch_settings, project, source, MINILM, actor_cls=Counted))
    jobs = JobStore(services.db)
    for _ in range(600):
        async with services.db.connection() as conn:
            job_id = await conn.fetchval(
                "SELECT j.id FROM jobs j JOIN projects p ON p.id = j.project_id"
                " WHERE p.name = $1 AND EXISTS (SELECT 1 FROM job_items ji"
                " WHERE ji.job_id = j.id AND ji.state = 'succeeded')",
                project,
            )
        if job_id is not None:
            break
        await asyncio.sleep(0.2)
    assert job_id is not None, "the batch job never labeled anything"
    await jobs.cancel(batch_settings.tenant, job_id, "key:operator")
    job = await asyncio.wait_for(running, timeout=120)
    assert job.status == "cancelled"
    assert 0 < job.counts[ItemState.succeeded] < 3000
    assert job.counts[ItemState.cancelled] > 0
    assert job.counts[ItemState.failed] == 0  # nothing left behind failed as STOPPED
    batches = len(labeled.read_text().splitlines())
    assert batches < 3000 / MINILM.batching.max_batch_size / 2, batches  # it stopped early


async def test_a_batch_job_counts_against_the_projects_open_jobs(
    batch_settings: Settings, datasets: Datasets, services: Services
) -> None:
    """MAX_OPEN_JOBS holds for batch jobs as for jobs submitted over the API."""
    one = batch_settings.model_copy(update={"max_open_jobs": 1})
    request = BatchRequest(
        project=f"open-{uuid.uuid4().hex[:6]}", source=str(datasets.texts), model=MINILM.name
    )
    first = await BatchRun.start(services, MODELS, one, request)
    try:
        with pytest.raises(QuotaExceeded):
            await BatchRun.start(services, MODELS, one, request)
    finally:
        await first.finish()
    second = await BatchRun.start(services, MODELS, one, request)  # the first is closed
    await second.finish()


async def test_a_run_that_fails_is_reported_to_error_tracking(
    serve_cluster: int,
    tmp_path: Path,
    batch_settings: Settings,
    datasets: Datasets,
    sentry_receiver: SentryReceiver,
) -> None:
    """The entrypoint, as a RayJob runs it, with MODELSHIP_SENTRY_DSN in its environment:
    a run that fails (its model's files are not there) exits 1 and its error reaches
    error tracking, tagged ``batch`` with the run's request id. It only printed it."""
    assert batch_settings.database_url is not None
    settings = batch_settings.model_dump(
        mode="json", include={"data_dir", "batch_allowed_prefixes"}
    )
    settings["database_url"] = batch_settings.database_url.get_secret_value()
    settings["redis_url"] = REDIS_URL
    gone = MINILM.model_copy(update={"source": str(tmp_path / "no-such-model")})
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump({"models": [gone.model_dump(mode="json")], "settings": settings})
    )
    request_id = f"failing-run-{uuid.uuid4().hex[:8]}"
    arguments = ["--config", str(config), "--project", f"fails-{uuid.uuid4().hex[:6]}"]
    arguments += ["--model", MINILM.name, "--source", str(datasets.texts)]
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "jobs.label_dataset", *arguments, "--request-id", request_id],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={
            **os.environ,
            "RAY_ADDRESS": "127.0.0.1:1",  # it fails before Ray; a cluster tried would hang
            "MODELSHIP_SENTRY_DSN": sentry_receiver.dsn,
        },
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 1, stderr
    assert "does not exist" in stderr.decode()
    event = await asyncio.to_thread(
        sentry_receiver.wait_for, lambda e: e.get("tags", {}).get("request_id") == request_id
    )
    assert event["tags"]["component"] == "batch" and event["logger"] == "modelship.batch"
    assert "batch job failed" in message(event) and "does not exist" in message(event)


async def test_a_source_outside_the_allowed_prefixes_is_refused(
    tmp_path: Path,
    batch_settings: Settings,
    datasets: Datasets,
    services: Services,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Refused by the entrypoint before Ray, a model or the database is touched."""
    assert batch_settings.database_url is not None
    config = tmp_path / "config.yaml"
    settings = batch_settings.model_dump(
        mode="json", include={"data_dir", "batch_allowed_prefixes", "object_store_url"}
    )
    settings["database_url"] = batch_settings.database_url.get_secret_value()
    settings["redis_url"] = REDIS_URL
    config.write_text(
        yaml.safe_dump({"models": [MINILM.model_dump(mode="json")], "settings": settings})
    )
    project = f"refused-{uuid.uuid4().hex[:6]}"
    arguments = ["--config", str(config), "--project", project, "--model", MINILM.name]
    command = [sys.executable, "-m", "jobs.label_dataset", *arguments, "--source", "/etc"]
    process = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "RAY_ADDRESS": "127.0.0.1:1"},  # were a cluster tried, it would hang
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2, stderr
    assert "outside the allowed prefixes" in stderr.decode()
    assert str(datasets.root) in stderr.decode()
    for source in [f"{datasets.root}/../outside", "s3://elsewhere/data", "file:///etc/passwd"]:
        assert main([*arguments, "--source", source]) == 2
        assert "outside the allowed prefixes" in capsys.readouterr().err
    async with services.db.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM projects WHERE name = $1", project) == 0


async def test_images_the_object_store_cannot_take_fail_with_its_reason(
    serve_cluster: int, batch_settings: Settings, datasets: Datasets, s3_options: dict[str, Any]
) -> None:
    """An image read while the object store is down (an S3 endpoint that refuses
    connections) fails at once with ``object_store_unavailable``; the other entries go on.
    The Ray task storing it used to raise, and the run died with a Ray traceback."""
    down = batch_settings.model_copy(
        update={
            "object_store_url": "s3://labels/objects",
            "object_store_options": {**s3_options, "endpoint_url": "http://127.0.0.1:1"},
        }
    )
    project = f"store-down-{uuid.uuid4().hex[:6]}"
    job = await asyncio.wait_for(run(down, project, datasets.images, EFFICIENTNET), 240)
    unstored = len(GOOD_IMAGES) + 1  # truncated.jpg's header reads: it is stored too
    assert job.total_items == len(GOOD_IMAGES) + len(BAD_IMAGES)
    assert job.counts[ItemState.failed] == job.total_items
    reasons = {e.error.split(":")[0]: e.count for e in job.errors}
    assert reasons.pop("object_store_unavailable") == unstored
    assert sorted(reasons) == sorted(set(BAD_IMAGES.values()) - {"corrupt_image"})


async def test_a_listing_that_fails_after_the_job_began_fails_the_run_with_its_reason(
    tmp_path: Path,
    batch_settings: Settings,
    services: Services,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Listed two entries at a time, a source whose second chunk cannot be listed: the
    run fails (exit 1, error tracking), and the job shows why as a failed item. Without
    it, the job would succeed on the entries listed so far, the rest in no count."""
    monkeypatch.setattr(batch_module, "LIST_CHUNK", 2)
    folder = tmp_path / "texts"
    folder.mkdir()
    for name in ["a.txt", "b.txt", "c.txt"]:
        (folder / name).write_text(f"the text of {name}\n")
    unlistable(folder)  # listed after c.txt, in the second chunk
    settings = batch_settings.model_copy(update={"batch_allowed_prefixes": [str(tmp_path)]})
    project = f"unlistable-{uuid.uuid4().hex[:6]}"
    with pytest.raises(ModelShipError) as failed:
        await run(settings, project, folder, MINILM)
    assert failed.value.status == 500 and failed.value.code == "source_unreadable"
    assert "the listing stopped after 2 entries" in failed.value.message
    async with services.db.connection() as conn:
        items = await conn.fetch(
            "SELECT ji.state, ji.error, i.filename FROM job_items ji"
            " JOIN items i ON i.id = ji.item_id JOIN projects p ON p.id = i.project_id"
            " WHERE p.name = $1 ORDER BY i.filename",
            project,
        )
    [listing] = [i for i in items if i["filename"] == str(folder)]
    assert listing["state"] == "failed" and "File name too long" in listing["error"]
    assert listing["error"].startswith("source_unreadable: the listing stopped after 2 entries")
    assert sorted(i["filename"] for i in items if i is not listing) == [
        str(folder / "a.txt"), str(folder / "b.txt")
    ]  # fmt: skip


async def outcomes(services: Services, job: Job, column: str) -> list[tuple[str, str, Any]]:
    """(the item's ``column``, state, error) of each of the job's items, by ``column``."""
    async with services.db.connection() as conn:
        items = await conn.fetch(
            f"SELECT i.{column}, ji.state, ji.error FROM job_items ji"
            f" JOIN items i ON i.id = ji.item_id WHERE ji.job_id = $1 ORDER BY i.{column}",
            job.id,
        )
    return [tuple(item) for item in items]


async def test_a_file_named_in_latin1_fails_alone(
    serve_cluster: int, tmp_path: Path, batch_settings: Settings, services: Services
) -> None:
    """A file whose name is not UTF-8 is a failed item that says so; the rest is labeled.
    Its name failed the whole job before (Arrow refused it: no item was added)."""
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes((DATA / "cat.jpg").read_bytes())
    (folder / os.fsdecode(b"caf\xe9.jpg")).write_bytes((DATA / "astronaut.jpg").read_bytes())
    settings = batch_settings.model_copy(update={"batch_allowed_prefixes": [str(tmp_path)]})
    project = f"latin1-{uuid.uuid4().hex[:6]}"
    job = await run(settings, project, folder, EFFICIENTNET)
    assert job.status == "succeeded"
    shown = f"{folder}/caf\\xe9.jpg"
    assert await outcomes(services, job, "filename") == [
        (shown, "failed", f"invalid_file_name: {shown} is not UTF-8; rename it"),
        (f"{folder}/cat.jpg", "succeeded", None),
    ]


async def test_texts_postgresql_cannot_hold_fail_alone(
    serve_cluster: int, tmp_path: Path, batch_settings: Settings, services: Services
) -> None:
    """A text holding a NUL, and a text file holding no text, are failed items; the rest
    is labeled. The NUL failed the whole job (PostgreSQL refused the chunk's items), and
    the empty file left no item."""
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("a fine review\nbroken\x00text\n")
    (folder / "b.txt").write_text("\n")
    settings = batch_settings.model_copy(update={"batch_allowed_prefixes": [str(tmp_path)]})
    job = await run(settings, f"nul-{uuid.uuid4().hex[:6]}", folder, MINILM)
    assert job.status == "succeeded"
    assert await outcomes(services, job, "text") == [
        ("", "failed", f"empty_file: {folder}/b.txt holds no texts"),
        ("a fine review", "succeeded", None),
        ("broken\ufffdtext", "failed", "invalid_text: the text holds a NUL character"),
    ]


@pytest.mark.parametrize("protocol", ["s3", "gs"])
async def test_a_bucket_dataset_labeled_and_exported(
    serve_cluster: int,
    batch_settings: Settings,
    protocol: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Images read from a bucket and stored in an object store on the same service (S3:
    moto; GCS: gcp-storage-emulator), under content keys; the export written at the end,
    as ``--export`` asks. Listed, read and added in chunks of two entries (listing
    pages of one key), as a dataset of millions of files is."""
    monkeypatch.setattr(batch_module, "LIST_CHUNK", 2)
    monkeypatch.setattr(datasets_module, "_PAGE", 1)
    options = request.getfixturevalue("s3_options" if protocol == "s3" else "gcs_options")
    fs = fsspec.filesystem(protocol, **options)
    folder = f"labels/datasets/{uuid.uuid4().hex[:8]}"
    files = {
        "cat.jpg": "cat.jpg",
        "coffee.jpg": "coffee.jpg",
        "again.jpg": "cat.jpg",  # one item
        "sub/astronaut.jpg": "astronaut.jpg",
        ".hidden.jpg": "cat_small.png",  # not listed
    }
    for key, name in files.items():
        fs.pipe_file(f"{folder}/{key}", (DATA / name).read_bytes())
    settings = batch_settings.model_copy(
        update={
            "object_store_url": f"{protocol}://labels/objects",
            "object_store_options": options,
            "batch_allowed_prefixes": [f"{protocol}://labels/datasets"],
        }
    )
    batch = BatchRequest(
        project=f"{protocol}-{uuid.uuid4().hex[:6]}",
        source=f"{protocol}://{folder}/",
        model=EFFICIENTNET.name,
        export=ExportFormat.csv,
        export_all=True,
    )
    job = await label_dataset(batch, MODELS, settings)
    assert job.status == "succeeded" and job.total_items == 3
    assert job.counts[ItemState.succeeded] == 3
    stored = sorted(fs.glob(f"labels/objects/default/{job.project_id}/*.jpg"))
    names = ["cat.jpg", "coffee.jpg", "astronaut.jpg"]
    digests = sorted(hashlib.sha256((DATA / n).read_bytes()).hexdigest()[:32] for n in names)
    assert [Path(key).stem for key in stored] == digests
    services = Services.from_settings(settings)
    try:
        async with services.db.connection() as conn:
            export = await conn.fetchrow(
                "SELECT status, row_count, object_key FROM exports WHERE project_id = $1",
                job.project_id,
            )
        assert export["status"] == "succeeded" and export["row_count"] == 3
        csv_text = (await services.objects.get(export["object_key"])).decode()
        assert csv_text.count("\n") == 4  # a header and a row per item
    finally:
        await services.close()
