"""Durable jobs on the running application, through failures.

The application here runs on embedded defaults (no database or Redis URL: it starts a
real PostgreSQL and Redis under its data dir), so these tests also prove the laptop
path. Killing replicas, restarting Redis and stopping PostgreSQL happen mid-job.
"""

from __future__ import annotations

import asyncio
import copy
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
import pytest
import ray
from ray import serve

from storage.embedded import EmbeddedPostgres, EmbeddedRedis
from storage.services import resolve_urls
from tests.integration.conftest import APP, deploy_config

MODEL = "minilm-zero-shot"


@pytest.fixture
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=60) as http:
        yield http


def _project(client: httpx.Client, texts: list[str]) -> dict[str, Any]:
    body = {"name": f"live-{uuid.uuid4().hex[:8]}", "task": "zero-shot-text-classification"}
    response = client.post("/api/v1/projects", json={**body, "model": MODEL})
    assert response.status_code == 201, response.text
    project: dict[str, Any] = response.json()
    upload = client.post(f"/api/v1/projects/{project['id']}/items", json={"texts": texts})
    assert upload.status_code == 201, upload.text
    assert len(upload.json()["items"]) == len(texts)
    return project


def _texts(count: int) -> list[str]:
    kinds = ["I love it, works great", "it broke after a day", "the parcel came on Tuesday"]
    return [f"{kinds[i % 3]} (order {i}, {uuid.uuid4().hex[:6]})" for i in range(count)]


def _wait(client: httpx.Client, job_id: str, until: Any, timeout_s: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = client.get(f"/api/v1/jobs/{job_id}")
        if response.status_code == 200 and until(job := response.json()):
            return job
        time.sleep(0.2)
    raise AssertionError(
        f"job {job_id} never got there: {client.get(f'/api/v1/jobs/{job_id}').text}"
    )


def _replica_actor(deployment: str, replica: str = "") -> Any:
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["name"].startswith(f"SERVE_REPLICA::{APP}#{deployment}#{replica}"):
            return ray.get_actor(actor["name"], namespace=actor["namespace"])
    raise AssertionError(f"no replica of {deployment}")


async def _rows(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def _kill_runner_holding_leases(dsn: str, tries: int = 5) -> set[Any]:
    """Kill the JobRunner replica at a moment it holds leases; the items it held then.

    A batch is leased for only tens of milliseconds here, so a kill can land between two;
    the leases left once the process is gone are the ones to check, and a kill that left
    none is tried again on the replacement replica.
    """
    sql = (  # each claim leases to the runner's name and a token of its own
        "SELECT item_id FROM job_items WHERE starts_with(lease_owner, $1 || '/')"
        " AND state = 'leased'"
    )
    for _ in range(tries):
        handle = serve.get_deployment_handle("JobRunner", app_name=APP)
        stats = handle.stats.remote().result(timeout_s=60)
        owner, replica = stats["owner"], stats["replica"]
        deadline = time.monotonic() + 20
        while not asyncio.run(_rows(dsn, sql, owner)) and time.monotonic() < deadline:
            time.sleep(0.005)
        ray.kill(_replica_actor("JobRunner", replica), no_restart=True)
        # ray.kill returns before the process is dead: on a busy machine it could live past
        # a fixed 1 s and finish a batch counted here as orphaned (done on attempt 1)
        _wait_until_gone(stats["pid"])
        time.sleep(1.0)  # what it sent before dying is done: what it leases, it never finishes
        orphaned = {row["item_id"] for row in asyncio.run(_rows(dsn, sql, owner))}
        if orphaned:
            return orphaned
    raise AssertionError(f"no kill in {tries} left a lease behind")


def _wait_until_gone(pid: int, timeout_s: float = 60) -> None:
    """Until process ``pid`` (on this machine) has exited."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        assert time.monotonic() < deadline, f"process {pid} still runs after ray.kill"
        time.sleep(0.05)


def _item_states(dsn: str, job_id: str) -> list[asyncpg.Record]:
    return asyncio.run(
        _rows(
            dsn,
            "SELECT ji.item_id, ji.state, ji.attempts, ji.prediction_id,"
            " (SELECT count(*) FROM predictions p WHERE p.item_id = ji.item_id) AS predictions"
            " FROM job_items ji WHERE ji.job_id = $1",
            uuid.UUID(job_id),
        )
    )


def test_a_job_survives_killing_the_model_replica_and_the_runner(
    client: httpx.Client, live_settings: Any
) -> None:
    dsn = resolve_urls(live_settings).database
    project = _project(client, _texts(1000))
    job = client.post(f"/api/v1/projects/{project['id']}/jobs").json()
    _wait(client, job["id"], lambda j: j["counts"]["succeeded"] >= 100, timeout_s=120)

    done_before = {
        r["item_id"]: r["prediction_id"]
        for r in _item_states(dsn, job["id"])
        if r["state"] == "succeeded"
    }
    # The runner first, while it holds leases; then the model its replacement needs.
    orphaned = _kill_runner_holding_leases(dsn)
    ray.kill(_replica_actor(f"Model-{MODEL}"), no_restart=True)

    job = _wait(client, job["id"], lambda j: j["status"] not in ("queued", "running"))
    assert job["status"] == "succeeded", job
    assert job["counts"]["succeeded"] == 1000 and job["progress"] == 1.0
    rows = _item_states(dsn, job["id"])
    assert len(rows) == 1000
    assert {r["state"] for r in rows} == {"succeeded"}
    assert all(r["predictions"] == 1 for r in rows), "a prediction was duplicated"
    assert len(done_before) < 1000, "the job finished before the kill: make it longer"
    assert orphaned, "the runner held no lease when it was killed: nothing to take over"
    for row in rows:  # the dead runner's items were taken over once their leases expired
        if row["item_id"] in orphaned:
            assert row["attempts"] >= 2, row
    for row in rows:
        if row["item_id"] in done_before:
            assert row["prediction_id"] == done_before[row["item_id"]]
            assert row["attempts"] == 1, "a finished item was done again"


def _runner_pid() -> int:
    stats = serve.get_deployment_handle("JobRunner", app_name=APP).stats.remote().result()
    pid: int = stats["pid"]
    return pid


def test_redis_restart_mid_job_loses_nothing(client: httpx.Client, live_settings: Any) -> None:
    pid = _runner_pid()
    project = _project(client, _texts(300))
    job = client.post(f"/api/v1/projects/{project['id']}/jobs").json()
    _wait(client, job["id"], lambda j: j["counts"]["succeeded"] >= 30, timeout_s=120)
    with EmbeddedRedis(_services_dir(live_settings) / "redis").outage():
        time.sleep(1.0)
    job = _wait(client, job["id"], lambda j: j["status"] not in ("queued", "running"))
    assert job["status"] == "succeeded" and job["counts"]["succeeded"] == 300
    assert _runner_pid() == pid, "the job runner crashed and was restarted"


def test_postgres_outage_is_503_and_the_job_resumes(
    client: httpx.Client, live_settings: Any
) -> None:
    pid = _runner_pid()
    project = _project(client, _texts(300))
    job = client.post(f"/api/v1/projects/{project['id']}/jobs").json()
    _wait(client, job["id"], lambda j: j["counts"]["succeeded"] >= 30, timeout_s=120)
    # While it is down nobody can start it (a replica starting up would, on embedded defaults)
    with EmbeddedPostgres(_services_dir(live_settings) / "postgres").outage():
        response = client.post(f"/api/v1/projects/{project['id']}/jobs")
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "service_unavailable"
        assert response.headers["retry-after"]
        ready = client.get("/health/ready")
        assert ready.status_code == 503 and ready.json()["checks"]["database"] == "unavailable"
        # labeling that needs no database goes on
        assert client.post("/api/v1/classify/text", json={"text": "fine"}).status_code == 200
    job = _wait(client, job["id"], lambda j: j["status"] not in ("queued", "running"))
    assert job["status"] == "succeeded" and job["counts"]["succeeded"] == 300
    assert _runner_pid() == pid, "the job runner crashed and was restarted"


def _services_dir(settings: Any) -> Path:
    return Path(settings.data_dir) / "services"


def test_a_rolling_restart_drains_requests_and_gives_leases_back(
    client: httpx.Client, base_url: str, live_settings: Any, serve_config: dict[str, Any]
) -> None:
    """A new model replica and job runner version: what was in flight finishes, no lease is
    left to expire and no item spends an attempt (a crash, above, leaves leases behind)."""
    dsn = resolve_urls(live_settings).database
    project = _project(client, _texts(400))
    job = client.post(f"/api/v1/projects/{project['id']}/jobs").json()
    _wait(client, job["id"], lambda j: j["counts"]["succeeded"] >= 16, timeout_s=120)
    old = serve.get_deployment_handle("JobRunner", app_name=APP).stats.remote().result()

    def label(n: int) -> int:
        texts = [f"in flight {n} {i} {uuid.uuid4().hex}" for i in range(32)]
        with httpx.Client(base_url=base_url, timeout=120) as http:
            return http.post("/api/v1/classify/text", json={"texts": texts}).status_code

    restarted = copy.deepcopy(serve_config)  # new actor options: new replicas of these two
    deployments = restarted["applications"][0]["deployments"]
    changed = {f"Model-{MODEL}": {"num_cpus": 0.45}, "JobRunner": {"num_cpus": 0.11}}
    for deployment in deployments:
        if deployment["name"] in changed:
            deployment["ray_actor_options"] = changed.pop(deployment["name"])
    assert not changed, f"no entry in the config for {sorted(changed)}"
    try:
        with ThreadPoolExecutor(6) as pool:
            in_flight = [pool.submit(label, n) for n in range(6)]
            time.sleep(0.3)
            deploy_config(restarted)
            deadline = time.monotonic() + 180
            while _runner_pid() == old["pid"]:
                assert time.monotonic() < deadline, "the job runner was not replaced"
                time.sleep(0.5)
            assert [f.result() for f in in_flight] == [200] * 6

        leased = "SELECT count(*) AS n FROM job_items WHERE lease_owner = $1 AND state = 'leased'"
        assert asyncio.run(_rows(dsn, leased, old["owner"]))[0]["n"] == 0
        job = _wait(client, job["id"], lambda j: j["status"] not in ("queued", "running"))
        assert job["status"] == "succeeded", job
        rows = _item_states(dsn, job["id"])
        assert len(rows) == 400 and {r["state"] for r in rows} == {"succeeded"}
        assert all(r["predictions"] == 1 for r in rows)
        assert all(r["attempts"] == 1 for r in rows), "a clean stop spent an attempt"
    finally:
        deploy_config(serve_config)  # as shipped again, for the tests after this one
