"""The rendered RayService on a real multi-node Ray cluster: a head and two worker pods,
each in its own network namespace, started from the manifest by
``modelship.ops.cluster.emulate`` (KubeRay's part), with GCS state in an external Redis and
the app's data in a PostgreSQL database of its own.

The first tests build pods from the shipped config's manifest without starting anything.
Then one cluster serves the rest of the module, in file order, the destructive tests (a
worker pod killed, the head killed) last. Those need root, iproute2 and redis-server:
without them they fail, saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
import yaml

from modelship.ops.cluster.emulate import PodConfigError, PodSpec, RayServiceEmulator, pod_spec
from modelship.ops.cluster.netns import Network, Relay, wait_for
from modelship.ops.cluster.options import GPU_GROUP_RESOURCE, ClusterOptions
from modelship.ops.cluster.render import render, to_yaml
from modelship.ops.cluster.serve_config import CPU_DEPLOYMENTS
from tests.cluster.conftest import CONFIG
from tests.conftest import POSTGRES_ADMIN_DSN

APP = "modelship"
MODEL = "minilm-zero-shot"
MODEL_DEPLOYMENT = f"Model-{MODEL}"
REDIS_PORT = 6390
REPLICA_SLOTS = 2  # model replicas the GPU pod holds: the autoscaling test's maximum


@dataclass
class Cluster:
    emulator: RayServiceEmulator
    network: Network
    api_key: str
    dsn: str  # the app's database, from this machine's side

    @property
    def serve_url(self) -> str:
        return f"http://{self.emulator.head_ip}:8000"

    def http(self, timeout_s: float = 60) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        return httpx.Client(base_url=self.serve_url, headers=headers, timeout=timeout_s)

    def replicas(self) -> dict[str, list[dict[str, Any]]]:
        deployments = self.emulator.serve_details()["applications"][APP]["deployments"]
        return {name: d["replicas"] for name, d in deployments.items()}


def _serve_config(path: Path) -> Path:
    """The shipped config with one small model and quick autoscaling of its replicas; the
    CPU deployments stay at one replica each (two cores here)."""
    config = yaml.safe_load(CONFIG.read_text())
    app = config["applications"][0]
    app["args"]["models"] = [m for m in app["args"]["models"] if m["name"] == MODEL]
    app["args"]["models"][0]["batching"] = {"max_batch_size": 8, "batch_wait_timeout_s": 0.005}
    app["args"]["settings"] = {
        "job_batch_size": 8,
        "job_lease_s": 5,  # a dead runner's leases come back soon
        "job_poll_s": 0.5,
        "rate_limit_per_minute": 0,  # the load below is one client
    }
    deployments = []
    for entry in app["deployments"]:
        if entry["name"] == MODEL_DEPLOYMENT:
            entry["autoscaling_config"] = {
                "min_replicas": 1,
                "max_replicas": REPLICA_SLOTS,
                "target_ongoing_requests": 2,
                "upscale_delay_s": 0.5,
                "downscale_delay_s": 3,
                "metrics_interval_s": 0.5,
                "look_back_period_s": 1,
            }
        elif entry["name"] in CPU_DEPLOYMENTS:
            entry["autoscaling_config"].update(min_replicas=1, max_replicas=1)
        else:
            continue
        deployments.append(entry)
    app["deployments"] = deployments
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _rayservice(work: Path, gcs_redis: str) -> dict[str, Any]:
    """The RayService as ``modelship cluster render`` writes it, read back from its YAML."""
    options = ClusterOptions.model_validate(
        {
            "gcs_redis_address": gcs_redis,
            "head": {"cpu": "1", "memory": "2Gi"},
            "cpu_group": {"cpu": "2", "memory": "4Gi", "min_replicas": 1, "max_replicas": 2},
            "gpu_group": {
                "cpu": "2",
                "memory": "6Gi",
                "gpus": 1,
                "replica_slots": REPLICA_SLOTS,
                "min_replicas": 1,
                "max_replicas": 1,
            },
        }
    )
    text = to_yaml(render(_serve_config(work / "serve_config.yaml"), options, "service"))
    (work / "rayservice.yaml").write_text(text)
    service: dict[str, Any] = next(
        d for d in yaml.safe_load_all(text) if d and d["kind"] == "RayService"
    )
    return service


def _require_namespaces() -> None:
    if os.geteuid() != 0:
        pytest.fail("multi-node tests create network namespaces: run them as root")
    for tool in ("ip", "redis-server"):
        if shutil.which(tool) is None:
            pytest.fail(f"multi-node tests need {tool} (Debian: iproute2, redis-server)")


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(POSTGRES_ADMIN_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _rows(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def _listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def _wait(check: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.5) -> Any:
    """``check()``'s first truthy result; errors and falsy results are retried until then."""
    last: Any = None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if result := check():
                return result
            last = result
        except (httpx.HTTPError, KeyError, ValueError) as exc:  # ValueError: not JSON
            last = repr(exc)
        time.sleep(every_s)
    raise AssertionError(f"{what}: not after {timeout_s}s (last: {last})")


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """The RayService's pods on a bridge, Redis for GCS state and a relay to PostgreSQL on
    the bridge's gateway; the app deployed as KubeRay would, and an admin API key made in
    the head pod (``kubectl exec``). Everything is stopped by pid and namespace after; the
    pods' folders (logs) are kept in /tmp/msn-* when a test failed."""
    _require_namespaces()
    failed = request.session.testsfailed
    with contextlib.ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="msn-", dir="/tmp"))  # short: Ray's socket paths

        @stack.callback
        def _remove_unless_failed() -> None:
            if request.session.testsfailed == failed:
                shutil.rmtree(work, ignore_errors=True)

        network = Network.create()
        stack.callback(network.close)

        password = secrets.token_hex(16)
        redis_argv = ["redis-server", "--bind", network.gateway, "--port", str(REDIS_PORT)]
        redis_argv += ["--requirepass", password, "--save", "", "--appendonly", "no"]
        with (work / "redis.log").open("wb") as log:
            redis = subprocess.Popen(redis_argv, stdout=log, stderr=subprocess.STDOUT)
        stack.callback(redis.wait, 10)
        stack.callback(redis.terminate)
        wait_for(lambda: _listening(network.gateway, REDIS_PORT), 30, "the GCS Redis")

        admin = urlsplit(POSTGRES_ADMIN_DSN)
        relay = Relay(
            (network.gateway, admin.port or 5432), (admin.hostname or "", admin.port or 5432)
        )
        stack.callback(relay.close)
        database = f"modelship_mn_{uuid.uuid4().hex[:12]}"
        asyncio.run(_admin(f"CREATE DATABASE {database}"))
        stack.callback(lambda: asyncio.run(_admin(f"DROP DATABASE {database} WITH (FORCE)")))
        via_bridge = admin._replace(
            netloc=admin.netloc.replace(admin.hostname or "", network.gateway)
        )

        service = _rayservice(work, f"{network.gateway}:{REDIS_PORT}")
        secret_values = {  # what the platform team puts in the Secrets (docs/cluster.md)
            "modelship-app": {
                "secret-key": secrets.token_hex(32),
                "database-url": via_bridge._replace(path=f"/{database}").geturl(),
                "redis-url": f"redis://:{password}@{network.gateway}:{REDIS_PORT}/1",
            },
            "modelship-ray-auth": {"auth_token": secrets.token_hex(32)},
            "modelship-gcs-redis": {"password": password},
        }
        config_maps = {"modelship-config": {"MODELSHIP_OBJECT_STORE_URL": str(work / "objects")}}
        emulator = RayServiceEmulator(service, network, secret_values, config_maps, work)
        stack.callback(emulator.close)
        emulator.start()
        emulator.deploy()
        emulator.wait_running(timeout_s=240)
        head = emulator.pods_of("head")[0]
        created = emulator.exec(head, ["modelship", "keys", "create", "--scope", "admin"])
        cluster = Cluster(
            emulator=emulator,
            network=network,
            api_key=created.split()[0],
            dsn=admin._replace(path=f"/{database}").geturl(),
        )
        with cluster.http(timeout_s=10) as http:  # as a readiness probe would
            _wait(lambda: http.get("/health/ready").status_code == 200, 120, "the app ready")
        yield cluster


def _pod(group: str, secret_values: Any = None) -> PodSpec:
    service = next(m for m in render(CONFIG, ClusterOptions()) if m["kind"] == "RayService")
    return pod_spec(
        service["spec"]["rayClusterConfig"],
        group,
        cluster_name="modelship-abcde",
        namespace="modelship",
        head_ip="10.0.0.2",
        head_port="6379",
        storage_namespace="uid-1",
        secrets=SECRETS if secret_values is None else secret_values,
        config_maps={},
    )


SECRETS = {
    "modelship-app": {"secret-key": "k", "database-url": "postgresql://db/app", "redis-url": "r"},
    "modelship-ray-auth": {"auth_token": "tok"},
    "modelship-gcs-redis": {"password": "pw"},
}


def test_pods_are_built_from_the_manifest_as_kuberay_builds_them() -> None:
    """Each group's ``ray start`` line and env, from the shipped config's RayService alone."""
    head, cpu, gpu = _pod("head"), _pod("cpu"), _pod("gpu")
    assert head.command.startswith("ray start --head --block ")
    assert {"--num-cpus=0", "--no-monitor", "--redis-password=$REDIS_PASSWORD"} <= set(
        head.command.split()
    )
    assert head.env["REDIS_PASSWORD"] == "pw" and head.env["RAY_external_storage_namespace"]
    assert head.env["RAY_REDIS_ADDRESS"] == ClusterOptions().gcs_redis_address
    assert "--address=10.0.0.2:6379" in cpu.command.split()
    assert "--num-cpus=4" in cpu.command.split()  # the CPU group's pods: 4 cores
    assert {"--num-cpus=0", "--num-gpus=1"} <= set(gpu.command.split())  # GPUs: from limits
    assert f"--resources='{{\"{GPU_GROUP_RESOURCE}\": 4}}' " in gpu.command  # a shell word
    for pod in (head, cpu, gpu):
        assert pod.env["RAY_AUTH_MODE"] == "token" and pod.env["RAY_AUTH_TOKEN"] == "tok"
        assert pod.env["MODELSHIP_DATABASE_URL"] == "postgresql://db/app"
        assert pod.env["RAY_SERVE_DEFAULT_HTTP_HOST"] == "0.0.0.0"
    assert cpu.env["RAY_gcs_rpc_server_reconnect_timeout_s"] == "600"
    assert cpu.env["RAY_NODE_TYPE_NAME"] == "cpu" and gpu.env["RAY_NODE_TYPE_NAME"] == "gpu"


def test_a_pod_whose_secret_is_missing_does_not_start() -> None:
    without_app = {k: v for k, v in SECRETS.items() if k != "modelship-app"}
    with pytest.raises(PodConfigError, match="secretKeyRef modelship-app/"):
        _pod("cpu", without_app)


@pytest.mark.integration
def test_replicas_land_in_their_groups(cluster: Cluster) -> None:
    """Model replicas on the GPU pod (by its custom resource: no CUDA here), the rest on
    the CPU pod, no replica on the head; Serve's controller and proxy on the head."""
    emulator = cluster.emulator
    details = emulator.serve_details()
    placed = {
        name: {emulator.group_of(replica["node_ip"]) for replica in replicas}
        for name, replicas in cluster.replicas().items()
    }
    assert placed == {MODEL_DEPLOYMENT: {"gpu"}} | {name: {"cpu"} for name in CPU_DEPLOYMENTS}
    assert emulator.group_of(details["controller_info"]["node_ip"]) == "head"
    assert {emulator.group_of(p["node_ip"]) for p in details["proxies"].values()} == {"head"}

    nodes = [n for n in emulator.nodes() if n["state"] == "ALIVE"]
    assert len(nodes) == 3
    for node in nodes:  # KubeRay's RAY_NODE_TYPE_NAME reached Ray as the node's group
        group = emulator.group_of(node["node_ip"])
        assert node["labels"]["ray.io/node-group"] == ("headgroup" if group == "head" else group)
    offered = {emulator.group_of(n["node_ip"]): n["resources_total"] for n in nodes}
    assert offered["head"].get("CPU", 0) == 0
    assert offered["cpu"]["CPU"] == 2 and GPU_GROUP_RESOURCE not in offered["cpu"]
    assert offered["gpu"].get("CPU", 0) == 0
    assert offered["gpu"][GPU_GROUP_RESOURCE] == REPLICA_SLOTS


CLIENT = """
import json, sys, time, urllib.error, urllib.request

def call(url, body=None, key=None):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = "Bearer " + key
    request = urllib.request.Request(url, json.dumps(body).encode() if body else None, headers)
    for _ in range(5):
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            if error.code != 503 or not error.headers.get("Retry-After"):
                return error.code, None
            time.sleep(min(float(error.headers["Retry-After"]), 5))  # as the API asks
    return 503, None

serve, dashboard, key = sys.argv[1:4]
texts = {"texts": ["I love it, it works great", "it broke after a day"]}
print(json.dumps([
    call(serve + "/api/v1/classify/text", texts, key),
    call(serve + "/api/v1/classify/text", texts),
    call(dashboard + "/api/serve/applications/"),
]))
"""
"""A client on a host of its own, with nothing but Python's standard library."""


@pytest.mark.integration
def test_a_client_in_another_namespace_labels_through_the_serve_port(cluster: Cluster) -> None:
    """From a host that runs no Ray: HAProxy on the head's Serve port reaches the Ingress
    on the CPU pod; the API wants the key, the dashboard the Ray token."""
    client = cluster.network.add_host("client")
    try:
        argv = [sys.executable, "-c", CLIENT, cluster.serve_url, cluster.emulator.dashboard_url]
        done = client.run([*argv, cluster.api_key], env={"PATH": "/usr/bin:/bin"})
    finally:
        cluster.network.remove_host(client)
    assert done.returncode == 0, done.stderr
    (status, labeled), (anonymous, _), (dashboard, _) = json.loads(done.stdout)
    assert status == 200
    assert labeled["model"]["name"] == MODEL
    assert [r["labels"][0]["label"] for r in labeled["results"]] == ["positive", "negative"]
    assert anonymous == 401
    assert dashboard == 401


@pytest.mark.integration
def test_serve_autoscaling_adds_model_replicas_under_load_and_removes_them_idle(
    cluster: Cluster,
) -> None:
    assert len(cluster.replicas()[MODEL_DEPLOYMENT]) == 1
    stop = threading.Event()
    statuses: list[int] = []
    errors: list[str] = []

    def load() -> None:
        with cluster.http() as http:
            while not stop.is_set():
                texts = [f"request text {i}, {uuid.uuid4().hex[:6]}" for i in range(8)]
                response = http.post("/api/v1/classify/text", json={"texts": texts})
                statuses.append(response.status_code)
                if response.status_code != 200 and not (
                    response.status_code == 503 and response.headers.get("retry-after")
                ):
                    errors.append(f"{response.status_code} {response.text[:300]}")

    def running() -> list[dict[str, Any]]:
        return [r for r in cluster.replicas()[MODEL_DEPLOYMENT] if r["state"] == "RUNNING"]

    threads = [threading.Thread(target=load, daemon=True) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        grown = _wait(lambda: len(running()) == REPLICA_SLOTS and running(), 90, "scale up")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert {cluster.emulator.group_of(r["node_ip"]) for r in grown} == {"gpu"}
    # Nothing but labels, or the documented 503 with Retry-After: on two shared cores a
    # burst while a replica starts can time out the Ingress's new database connections.
    assert not errors, errors[:3]
    assert statuses.count(200) >= 0.8 * len(statuses), statuses
    _wait(lambda: len(cluster.replicas()[MODEL_DEPLOYMENT]) == 1, 90, "scale down when idle")


def _job(http: httpx.Client, count: int) -> str:
    body = {"name": f"mn-{uuid.uuid4().hex[:8]}", "task": "zero-shot-text-classification"}
    project = _post(http, "/api/v1/projects", json={**body, "model": MODEL})
    assert project.status_code == 201, project.text
    texts = [f"item {i}: it works, {uuid.uuid4().hex[:6]}" for i in range(count)]
    items = _post(http, f"/api/v1/projects/{project.json()['id']}/items", json={"texts": texts})
    assert items.status_code == 201, items.text
    key = {"Idempotency-Key": uuid.uuid4().hex}
    job = _post(http, f"/api/v1/projects/{project.json()['id']}/jobs", headers=key)
    assert job.status_code == 202, job.text
    job_id: str = job.json()["id"]
    return job_id


def _post(http: httpx.Client, path: str, **kwargs: Any) -> httpx.Response:
    """POST as a client should: the documented 503 with Retry-After (PostgreSQL connections
    that time out while two shared cores start replicas) is tried again, a few times."""
    for _ in range(4):
        response = http.post(path, **kwargs)
        if response.status_code != 503 or "retry-after" not in response.headers:
            break
        time.sleep(min(float(response.headers["retry-after"]), 5))
    return response


def _item_states(dsn: str, job_id: str) -> list[asyncpg.Record]:
    sql = (
        "SELECT ji.state, (SELECT count(*) FROM predictions p WHERE p.item_id = ji.item_id)"
        " AS predictions FROM job_items ji WHERE ji.job_id = $1"
    )
    return asyncio.run(_rows(dsn, sql, uuid.UUID(job_id)))


def _stuck(dsn: str, job_id: str) -> str:
    """What holds a job up: its items by state and lease, and the database's sessions."""
    items = asyncio.run(
        _rows(
            dsn,
            "SELECT state, lease_owner, lease_expires_at > now() AS held, attempts, count(*)"
            " FROM job_items WHERE job_id = $1 GROUP BY 1, 2, 3, 4",
            uuid.UUID(job_id),
        )
    )
    sessions = asyncio.run(
        _rows(
            dsn,
            "SELECT pid, state, wait_event, now() - xact_start AS in_xact, left(query, 200) AS q"
            " FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
    )
    return "\n".join(str(dict(row)) for row in [*items, *sessions])


def _labels(cluster: Cluster) -> bool:
    with cluster.http(timeout_s=10) as http:
        response = http.post("/api/v1/classify/text", json={"text": "fine"})
        return response.status_code == 200


@pytest.mark.integration
def test_killing_the_cpu_worker_mid_job_loses_no_item(cluster: Cluster) -> None:
    """Every process of the CPU pod dies while a job runs; KubeRay's new pod takes the
    Ingress, Preprocessor, JobRunner and Exporter; every item ends succeeded, once."""
    emulator = cluster.emulator
    total = 200
    with cluster.http(timeout_s=5) as http:
        job_id = _job(http, total)
        _wait(
            lambda: http.get(f"/api/v1/jobs/{job_id}").json()["counts"]["succeeded"] >= 8,
            60,
            "the job under way",
            every_s=0.05,
        )
        old = emulator.pods_of("cpu")[0]
        emulator.kill(old)
        done_before = sum(r["state"] == "succeeded" for r in _item_states(cluster.dsn, job_id))
        new = emulator.replace(old)

        try:
            job = _wait(
                lambda: (
                    (j := http.get(f"/api/v1/jobs/{job_id}").json())["status"]
                    not in ("queued", "running")
                    and j
                ),
                150,
                "the job finished",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{_stuck(cluster.dsn, job_id)}") from None
    assert 0 < done_before < total, "the kill did not land mid-job"
    assert job["status"] == "succeeded" and job["counts"]["succeeded"] == total, job
    rows = _item_states(cluster.dsn, job_id)
    assert len(rows) == total and {r["state"] for r in rows} == {"succeeded"}
    assert all(r["predictions"] == 1 for r in rows), "an item was labeled twice"
    on_new = [new.host.ip]
    for name in CPU_DEPLOYMENTS:  # a replica still starting has no node_ip yet: wait
        _wait(lambda n=name: [r["node_ip"] for r in cluster.replicas()[n]] == on_new, 60, name)
    assert _wait(lambda: _labels(cluster), 60, "labeling through the Serve port")


@pytest.mark.integration
def test_the_head_restarted_with_gcs_in_redis_brings_the_application_back(
    cluster: Cluster,
) -> None:
    """The head pod dies and comes back (same Service address, nothing resubmitted): GCS
    state from Redis, Serve RUNNING again, the workers and their replicas never restarted."""
    emulator = cluster.emulator
    workers = {
        n["node_id"]
        for n in emulator.nodes()
        if n["state"] == "ALIVE" and n["node_ip"] != emulator.head_ip
    }
    assert len(workers) == 2
    pids = {name: {r["pid"] for r in replicas} for name, replicas in cluster.replicas().items()}
    deploys = emulator.deploys

    emulator.replace(emulator.pods_of("head")[0])
    emulator.wait_running(timeout_s=180)
    assert _wait(lambda: _labels(cluster), 60, "labeling through the new head's Serve port")

    assert emulator.deploys == deploys, "the Serve config was submitted again"
    alive = {n["node_id"] for n in emulator.nodes() if n["state"] == "ALIVE"}
    assert workers <= alive, "a worker node did not reconnect"
    after = {name: {r["pid"] for r in replicas} for name, replicas in cluster.replicas().items()}
    assert after == pids, "replicas were restarted"
