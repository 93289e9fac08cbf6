"""A batch run's checks and its job's life beside the service, without Ray: ``BatchRun``
on this machine's PostgreSQL, the first pass's ``read_batch`` as a plain function, and the
entrypoint's refusals. Each case was found wrong by running it."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest

from jobs import ingest
from jobs.ingest import read_batch
from jobs.label_dataset import main
from modelship.core.errors import ModelShipError
from modelship.core.records import ExportFormat, ItemState, JobStatus
from modelship.core.settings import Settings
from modelship.service.batch import BatchRequest, BatchRun, Labeled
from modelship.service.datasets import text_item
from storage.batch import STOPPED
from storage.jobs import JobStore
from storage.services import Services
from tests.conftest import EFFICIENTNET, MINILM
from tests.jobs.conftest import Datasets

pytestmark = pytest.mark.asyncio(loop_scope="module")

MODELS = [MINILM, EFFICIENTNET]


async def _projects_named(services: Services, name: str) -> int:
    async with services.db.connection() as conn:
        count: int = await conn.fetchval("SELECT count(*) FROM projects WHERE name = $1", name)
    return count


async def test_an_export_the_task_cannot_take_is_refused_before_the_run(
    batch_settings: Settings, datasets: Datasets, services: Services
) -> None:
    """``--export coco`` of a text project was checked only after every item had been
    labeled: the run then ended "refused" (exit 2) with its job done. It is refused
    first, with nothing written."""
    project = f"export-{uuid.uuid4().hex[:6]}"
    request = BatchRequest(
        project=project, source=str(datasets.texts), model=MINILM.name, export=ExportFormat.coco
    )
    with pytest.raises(ModelShipError) as refused:
        await BatchRun.start(services, MODELS, batch_settings, request)
    assert refused.value.status == 422 and "coco" in refused.value.message
    assert await _projects_named(services, project) == 0


def test_a_config_that_does_not_parse_is_refused(
    tmp_path: Path, datasets: Datasets, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--config`` naming broken YAML, an empty file or a config without applications
    printed a traceback (exit 1) before any check; it is refused (exit 2), the file named."""
    configs = {
        "broken.yaml": "models: [\n",
        "empty.yaml": "",
        "no-apps.yaml": "applications: []\n",
        "scalar.yaml": "models\n",
    }
    for name, text in configs.items():
        config = tmp_path / name
        config.write_text(text)
        arguments = ["--config", str(config), "--project", "p", "--source", str(datasets.texts)]
        assert main(arguments) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("refused: ") and str(config) in err, err


async def test_a_manifest_that_does_not_parse_is_refused(
    batch_settings: Settings, datasets: Datasets, services: Services
) -> None:
    """An image manifest that is not JSON Lines, not UTF-8 or not parquet raised its
    parser's own error out of the run (a traceback, exit 1, where a source that cannot be
    read is refused with exit 2); it is refused as a source, with its reason, and nothing
    is written."""
    bad = {
        "bad.jsonl": b'{"path": "a.jpg"}\n{not json\n',
        "latin1.txt": "caf\xe9.jpg\n".encode("latin-1"),
        "broken.parquet": b"PAR1 not a parquet file",
    }  # an entry that parses but names no path fails alone (test_sources)
    (datasets.root / "manifests").mkdir(exist_ok=True)
    for name, content in bad.items():
        source = datasets.root / "manifests" / name
        source.write_bytes(content)
        project = f"manifest-{uuid.uuid4().hex[:6]}"
        request = BatchRequest(project=project, source=str(source), model=EFFICIENTNET.name)
        with pytest.raises(ModelShipError) as refused:
            await BatchRun.start(services, MODELS, batch_settings, request)
        assert refused.value.status == 422, name
        assert refused.value.code == "source_unreadable", name
        assert str(source) in refused.value.message, name
        assert await _projects_named(services, project) == 0


def test_texts_leave_a_read_task_as_each_file_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read task's texts leave it a file at a time once they are many (here two): a
    batch of big text files held every file's texts at once (16 files of 40,000 texts:
    387 MiB of Python objects, against 55 MiB a file at a time: docs/jobs.md)."""
    monkeypatch.setattr(ingest, "_TEXT_ROWS", 2)
    files = []
    for name, lines in [("a.txt", 3), ("b.txt", 1), ("c.txt", 1)]:
        files.append(str(tmp_path / name))
        (tmp_path / name).write_text("".join(f"{name} {i}\n" for i in range(lines)))
    batch = {"uri": files, "text": [""] * 3, "error": [""] * 3}
    settings = Settings(data_dir=tmp_path, batch_allowed_prefixes=[str(tmp_path)])
    tables = read_batch(batch, False, settings, "t", str(uuid.uuid4()), str(tmp_path / "o"))
    assert [table.column("text").to_pylist() for table in tables] == [
        ["a.txt 0", "a.txt 1", "a.txt 2"], ["b.txt 0", "c.txt 0"]
    ]  # fmt: skip


def test_an_entry_whose_backend_fails_fails_alone(
    tmp_path: Path, datasets: Datasets, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry on S3 read by a worker without credentials raised botocore's
    ``NoCredentialsError`` (not an ``OSError``) out of the Ray task reading its batch,
    which ended the whole job; it fails alone as an unreadable file, the entries beside
    it go on."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    settings = Settings(
        data_dir=tmp_path, batch_allowed_prefixes=[str(datasets.root), "s3://datasets-bucket"]
    )
    good = str(datasets.root / "images" / "cat.jpg")
    remote = "s3://datasets-bucket/images/cat.jpg"
    batch = {"uri": [good, remote], "text": ["", ""], "error": ["", ""]}
    project = str(uuid.uuid4())
    [table] = read_batch(batch, True, settings, "t", project, str(tmp_path / "objects"))
    read, failed = table.to_pylist()
    assert read["error"] is None and read["object_key"].startswith(f"t/{project}/")
    assert failed["filename"] == remote and failed["object_key"] is None
    assert failed["error"].startswith("unreadable_file: ") and remote in failed["error"]
    assert failed["content_hash"].startswith("source:")


async def test_the_reaper_leaves_a_live_batch_run_its_job(
    batch_settings: Settings, datasets: Datasets, services: Services
) -> None:
    """The service's job runner reaps every few seconds and closes running jobs with no
    open item. A batch job has none until its first chunk is read (Ray tasks reading up to
    1,024 files), nor after a chunk whose every item was settled from earlier predictions:
    the reaper closed it ("failed", no item yet) and it stayed closed while the run added
    and labeled its items, so a run that labeled everything ended "failed" (exit 1). Its
    run now holds it open (``alive_until``), and its end gives it its items' status."""
    request = BatchRequest(
        project=f"reaped-{uuid.uuid4().hex[:6]}", source=str(datasets.texts), model=MINILM.name
    )
    run = await BatchRun.start(services, MODELS, batch_settings, request)
    jobs = JobStore(services.db)
    try:
        await jobs.reap(batch_settings.job_max_attempts)  # no item yet
        assert (await run.job()).status is JobStatus.running
        [first] = await run.add([text_item("reaped before its first chunk", None, run.settings)])
        assert (await run.job()).status is JobStatus.running
        output = json.dumps([{"label": "positive", "score": 0.9}])
        assert await run.record([Labeled(str(first.item_id), output, run.version, "")]) == 1
        await jobs.reap(batch_settings.job_max_attempts)  # every item so far settled
        [_pending] = await run.add([text_item("and after it", None, run.settings)])
        shown = await run.job()
        assert shown.status is JobStatus.running and shown.finished_at is None
        assert shown.total_items == 2
    finally:
        job = await run.finish()  # the second item was never labeled: it fails
    assert job.status is JobStatus.succeeded
    assert job.counts[ItemState.succeeded] == 1 and job.counts[ItemState.failed] == 1


async def test_a_rerun_closes_the_job_of_a_run_that_died(
    batch_settings: Settings, datasets: Datasets, services: Services
) -> None:
    """A driver killed mid-run (OOM, a lost node) leaves its items leased. Only the
    service's job runner failed them once the leases expired: a batch job run without the
    service stayed "running" for ever, and counted against MAX_OPEN_JOBS, so with a limit
    of 1 the rerun that resumes it was refused (429) for ever. The rerun closes it."""
    one = batch_settings.model_copy(update={"max_open_jobs": 1})
    request = BatchRequest(
        project=f"died-{uuid.uuid4().hex[:6]}", source=str(datasets.texts), model=MINILM.name
    )
    dead = await BatchRun.start(services, MODELS, one, request)
    [item] = await dead.add([text_item("labeled by nobody", None, dead.settings)])
    async with services.db.connection() as conn:  # the driver died; its leases ran out
        await conn.execute(
            "UPDATE jobs SET alive_until = now() - interval '1 second' WHERE id = $1",
            dead.job_id,
        )
        await conn.execute(
            "UPDATE job_items SET lease_expires_at = now() - interval '1 second' WHERE job_id = $1",
            dead.job_id,
        )
    rerun = await BatchRun.start(services, MODELS, one, request)
    try:
        closed = await dead.job()
        assert closed.status is JobStatus.failed and closed.counts[ItemState.failed] == 1
        [result] = (await JobStore(services.db).results(one.tenant, dead.job_id, None, 10))[0]
        assert result.item_id == item.item_id and result.error == STOPPED
    finally:
        await rerun.finish()


async def test_a_glob_source_lists_what_it_matches(
    batch_settings: Settings, datasets: Datasets, services: Services
) -> None:
    """A glob (``folder/*.txt``, an fsspec URI as ``s3://bucket/photos/*.jpg``) was read as
    one path and refused as missing ("nothing at ..."); it lists every file it matches,
    as a folder's, hidden ones skipped. One that matches nothing is refused as missing."""
    folder = datasets.root / "glob"  # not the shared text folder: other tests count it
    folder.mkdir(exist_ok=True)
    for name in ["b.txt", "a.txt", ".hidden.txt", "c.csv"]:
        (folder / name).write_text(f"the text of {name}\n")
    request = BatchRequest(
        project=f"glob-{uuid.uuid4().hex[:6]}", source=f"{folder}/*.txt", model=MINILM.name
    )
    run = await BatchRun.start(services, MODELS, batch_settings, request)
    await run.finish()
    listed = [entry.uri for chunk in run.listing for entry in chunk]
    assert listed == [str(folder / "a.txt"), str(folder / "b.txt")]
    nothing = BatchRequest(
        project=f"glob-{uuid.uuid4().hex[:6]}", source=f"{folder}/*.xml", model=MINILM.name
    )
    with pytest.raises(ModelShipError) as refused:
        await BatchRun.start(services, MODELS, batch_settings, nothing)
    assert refused.value.code == "source_missing" and "nothing matches" in refused.value.message


async def test_two_runs_that_create_one_project_at_once_both_run(
    batch_settings: Settings, datasets: Datasets, services: Services
) -> None:
    """Two runs started at once (two RayJobs, a retried submission) naming a project
    that did not exist yet: both found none, both created it, and the second failed with
    409 duplicate_name although the project it asked for was there."""
    request = BatchRequest(
        project=f"twice-{uuid.uuid4().hex[:6]}", source=str(datasets.texts), model=MINILM.name
    )
    runs = await asyncio.gather(
        *(BatchRun.start(services, MODELS, batch_settings, request) for _ in range(2)),
        return_exceptions=True,
    )
    try:
        assert not [r for r in runs if isinstance(r, BaseException)], runs
        assert await _projects_named(services, request.project) == 1
        first, second = runs
        assert isinstance(first, BatchRun) and isinstance(second, BatchRun)
        assert first.project.id == second.project.id and first.job_id != second.job_id
    finally:
        for run in runs:
            if isinstance(run, BatchRun):
                await run.finish()
