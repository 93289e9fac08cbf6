"""The lease queue under races, driven through ``JobStore`` on the real PostgreSQL: a claim
that outlived its lease, attempts left under a lowered limit, completions and a cancel
locking the same rows. Each case was found wrong by driving these interleavings."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest

import storage.jobs
from modelship.core.errors import Conflict
from modelship.core.records import Project
from modelship.service.runner import JobRunner
from storage.batch import BatchItem, BatchStore
from storage.jobs import Claim, Failure, JobStore
from storage.services import Services
from tests.unit.flow import OwnQueue, job_results, text_project, upload_texts

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def _job(client: httpx.AsyncClient, texts: list[str]) -> tuple[str, list[str]]:
    project = await text_project(client)
    ids = await upload_texts(client, project, texts)
    job = (await client.post(f"/api/v1/projects/{project['id']}/jobs")).json()
    return job["id"], ids


async def _claim(jobs: JobStore, owner: str, job_id: str, **lease: Any) -> Claim:
    """The claim of ``job_id``'s items, the oldest job with open items in the test's own
    queue."""
    lease = {"lease_s": 60, "max_attempts": 3} | lease
    claim = await jobs.claim(owner, 10, **lease)
    assert claim is not None and claim.job_id == uuid.UUID(job_id), claim
    return claim


async def _status(client: httpx.AsyncClient, job_id: str) -> str:
    status: str = (await client.get(f"/api/v1/jobs/{job_id}")).json()["status"]
    return status


async def test_a_claim_that_outlived_its_lease_cannot_touch_a_newer_one_of_its_runner(
    own_queue: OwnQueue,
) -> None:
    """A runner's loops shared one lease owner, and a failure was re-queued by the attempt
    count its (stale) claim saw: the item ended queued with every attempt spent, which no
    claim and no reaper took, and its job ran forever."""
    client, jobs = own_queue.client, own_queue.jobs
    job_id, (item,) = await _job(client, [f"a lone text {uuid.uuid4().hex}"])
    stale = await _claim(jobs, "runner-x", job_id, lease_s=0.2)
    await asyncio.sleep(0.4)  # the lease lapses (renewing failed, say, in an outage)
    fresh = await _claim(jobs, "runner-x", job_id)  # another loop of the same runner
    assert fresh.owner != stale.owner and fresh.items[0].attempts == 2

    failure = Failure(uuid.UUID(item), "unprocessable_item: boom")
    assert await jobs.complete(stale, [], [failure], 3) == (0, 0)
    assert await jobs.renew(stale, 60) == 0
    assert await jobs.release(stale.owner, stale.job_id, [uuid.UUID(item)]) == 0
    assert await jobs.complete(fresh, [], [failure], 2) == (1, 1)  # its last attempt
    (result,) = await job_results(client, job_id)
    assert (result["state"], result["attempts"]) == ("failed", 2)
    assert await _status(client, job_id) == "failed"


async def test_items_with_no_attempt_left_under_a_lowered_limit_are_failed(
    own_queue: OwnQueue,
) -> None:
    """Queued with 1 of 5 attempts spent, then every runner restarted with a limit of 1:
    no claim takes the item (attempts < 1), and the reaper took only expired leases."""
    client, jobs = own_queue.client, own_queue.jobs
    job_id, (item,) = await _job(client, [f"another text {uuid.uuid4().hex}"])
    claim = await _claim(jobs, "runner-y", job_id, max_attempts=5)
    failure = Failure(uuid.UUID(item), "unprocessable_item: boom")
    assert await jobs.complete(claim, [], [failure], 5) == (1, 0)  # queued again
    assert await jobs.reap(1) == 1
    (result,) = await job_results(client, job_id)
    assert (result["state"], result["error"]) == ("failed", "unprocessable_item: boom")
    assert await _status(client, job_id) == "failed"


@pytest.fixture
def slow_annotations(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Each completion pauses after its first annotation, holding its locks, so two
    completions (or a completion and a cancel) interleave. The event is set once one
    has paused there."""
    real = storage.jobs._annotate
    paused: set[int] = set()
    holding = asyncio.Event()

    async def slow(conn: Any, *args: Any) -> str:
        decision: str = await real(conn, *args)
        if id(conn) not in paused:
            paused.add(id(conn))
            holding.set()
            await asyncio.sleep(0.3)
        return decision

    monkeypatch.setattr(storage.jobs, "_annotate", slow)
    return holding


@pytest.mark.usefixtures("slow_annotations")
async def test_completions_of_the_same_items_in_other_orders_both_commit(
    own_queue: OwnQueue, runner: JobRunner
) -> None:
    """Two jobs over the same items, completed at once with their successes in opposite
    orders (a runner lists cache hits first): one completion died of a deadlock, and its
    items waited out their lease and spent an attempt."""
    client, jobs = own_queue.client, own_queue.jobs
    tag = uuid.uuid4().hex
    project = await text_project(client)
    await upload_texts(client, project, [f"the match {tag}", f"the oven {tag}"])
    url = f"/api/v1/projects/{project['id']}/jobs"
    first, second = [(await client.post(url)).json()["id"] for _ in range(2)]
    claims = [await _claim(jobs, "runner-z", job) for job in (first, second)]
    labeled = [await runner._label(claim) for claim in claims]
    forward, _ = labeled[0]
    backward, _ = labeled[1]
    backward.sort(key=lambda success: success.item_id, reverse=True)
    forward.sort(key=lambda success: success.item_id)
    counted = await asyncio.gather(
        jobs.complete(claims[0], forward, [], 3), jobs.complete(claims[1], backward, [], 3)
    )
    assert counted == [(2, 0), (2, 0)]
    assert [await _status(client, job) for job in (first, second)] == ["succeeded"] * 2


async def test_a_cancel_racing_the_last_completion_is_one_or_the_other(
    own_queue: OwnQueue,
    runner: JobRunner,
    slow_annotations: asyncio.Event,
) -> None:
    """The cancel read the job as running before the last batch finished it, then
    answered 200 with the job succeeded and audited a cancel that never happened."""
    client, jobs = own_queue.client, own_queue.jobs
    job_id, _ = await _job(client, [f"one {uuid.uuid4().hex}", f"two {uuid.uuid4().hex}"])
    claim = await _claim(jobs, "runner-w", job_id)
    successes, failures = await runner._label(claim)
    completing = asyncio.create_task(jobs.complete(claim, successes, failures, 3))
    # once the completion holds the items' locks (a fixed 0.1 s assumed it got there in
    # time: on a busy machine the cancel could go first, and the completion then found
    # its items cancelled)
    await asyncio.wait_for(slow_annotations.wait(), 30)
    with pytest.raises(Conflict) as refused:
        await jobs.cancel("default", uuid.UUID(job_id), "anonymous")
    assert refused.value.code == "job_finished"
    assert await completing == (2, 0)
    assert await _status(client, job_id) == "succeeded"


async def test_the_reaper_leaves_a_batch_job_open_while_its_run_renews_it(
    client: httpx.AsyncClient, services: Services
) -> None:
    """The reaper closes running jobs with no open item (a batch run that died between
    chunks). A live run has none while it reads its first chunk, or after a chunk settled
    whole from earlier predictions: the reaper closed it, failed, under a run still adding
    and labeling. A run holds its job open (``alive_until``) while it renews it."""
    project = await text_project(client)
    batches = BatchStore(services.db)
    stored = Project.model_validate(project)
    live = await batches.start("t", stored, "m", {}, "tester", 100, lease_s=60)
    dead = await batches.start("t", stored, "m", {}, "tester", 100, lease_s=0.2)
    await asyncio.sleep(0.4)  # the second run stopped renewing: it died
    await JobStore(services.db).reap(3)
    assert await _status(client, str(live)) == "running"
    assert await _status(client, str(dead)) == "failed"


async def test_a_claim_passes_over_a_job_whose_open_items_another_claim_is_taking(
    own_queue: OwnQueue,
) -> None:
    """A claim picked the oldest job with open items, then skipped the rows another claim
    had locked: while a runner was claiming the oldest job's last items, a second runner
    got nothing, though a newer job waited (it slept a poll interval, job_poll_s)."""
    client, jobs = own_queue.client, own_queue.jobs
    older, older_items = await _job(client, [f"an older text {uuid.uuid4().hex}"])
    newer, _ = await _job(client, [f"a newer text {uuid.uuid4().hex}"])
    async with own_queue.services.db.transaction() as other:  # a claim in its transaction
        locked = await other.fetch(
            "SELECT item_id FROM job_items WHERE job_id = $1 FOR UPDATE",
            uuid.UUID(older),
        )
        assert [str(row["item_id"]) for row in locked] == older_items
        claim = await jobs.claim("runner-y", 10, lease_s=60, max_attempts=3)
    assert claim is not None and claim.job_id == uuid.UUID(newer)
    await _claim(jobs, "runner-z", older)  # the older job's items, once no claim holds them


async def test_a_chunk_added_after_its_batch_job_was_cancelled_adds_nothing(
    client: httpx.AsyncClient, services: Services
) -> None:
    """A batch job cancelled while its run was still reading the dataset: the run sees the
    cancel at its next progress report, and the chunks it added meanwhile went in as
    leased items of the cancelled job, which the run's end then failed as stopped. Such a
    chunk now adds nothing, and the images stored for it are handed back for deletion."""
    project = Project.model_validate(await text_project(client))
    batches = BatchStore(services.db)
    job_id = await batches.start("default", project, "minilm", {}, "tester", 100, lease_s=60)
    await JobStore(services.db).cancel("default", job_id, "key:operator")
    key = f"default/{project.id}/{uuid.uuid4().hex}.png"
    text = BatchItem(uuid.uuid4().hex, "text/plain", 4, text="late")
    image = BatchItem(uuid.uuid4().hex, "image/png", 9, object_key=key)
    rows = [text, image]
    added = await batches.add(project.id, job_id, f"batch:{job_id}", rows, "v1", "p", 60)
    assert (added.items, added.pending, added.unused_keys) == (0, [], [key])
    await batches.finish(job_id, f"batch:{job_id}")
    result = (await client.get(f"/api/v1/jobs/{job_id}")).json()
    assert result["status"] == "cancelled" and result["total_items"] == 0, result


async def test_items_a_cancel_missed_are_cancelled_when_the_run_ends(
    client: httpx.AsyncClient, services: Services
) -> None:
    """A chunk whose add read the job running while a cancel was committing gets its
    items leased in a job that ends cancelled (the cancel's update of open items did not
    see them): the run's end failed them as stopped; it now cancels them."""
    project = Project.model_validate(await text_project(client))
    batches = BatchStore(services.db)
    job_id = await batches.start("default", project, "minilm", {}, "tester", 100, lease_s=60)
    owner = f"batch:{job_id}"
    rows = [BatchItem(uuid.uuid4().hex, "text/plain", 4, text=f"late {i}") for i in range(3)]
    added = await batches.add(project.id, job_id, owner, rows, "v1", "p", 60)
    assert len(added.pending) == 3
    async with services.db.connection() as conn:  # where the race leaves it
        await conn.execute("UPDATE jobs SET status = 'cancelled' WHERE id = $1", job_id)
    await batches.finish(job_id, owner)
    result = (await client.get(f"/api/v1/jobs/{job_id}")).json()
    assert result["status"] == "cancelled", result
    assert result["counts"]["cancelled"] == 3 and result["counts"]["failed"] == 0, result
