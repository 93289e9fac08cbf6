"""``modelship jobs`` against a real local Ray cluster's job API (its dashboard, with
Ray 2.60's token auth on): a dataset labeled as a Ray job and followed to its end, logs,
the job list, and a job stopped.

The cluster is a second one, started here in its own process (the session's cluster has
no dashboard), and stopped by stopping that process. Each command runs as a user runs
it, in a fresh process that finds the token where Ray keeps it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import yaml

from modelship.core.settings import Settings
from modelship.ops import ray_jobs
from modelship.ops.cli import main
from modelship.ops.ray_env import free_port
from modelship.ops.ray_jobs import auth_token, connect
from tests.conftest import MINILM, REDIS_URL
from tests.jobs.conftest import Datasets, texts

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _environment() -> dict[str, str]:
    """This process's environment without Ray's session variables, and the venv's python
    first on PATH (the job's entrypoint says ``python``)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["HF_HUB_OFFLINE"] = "1"
    return env


@pytest.fixture(scope="module")
def dashboard() -> Iterator[str]:
    """A local Ray cluster with its dashboard (the job API) on free loopback ports.

    ``ray start --head --block``, stopped by SIGTERM (it stops what it started; ``ray
    stop`` would stop every cluster on the machine). It runs in a session
    of its own, killed whole if it hangs. Every port is its own, the dashboard agent's
    too: with two clusters on one agent port, no job runs.
    """
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="rayjobs-", dir="/tmp")
    ports = {
        "port": free_port(),  # GCS
        "dashboard-port": port,
        "dashboard-agent-listen-port": free_port(),
        "ray-client-server-port": free_port(),
        "metrics-export-port": free_port(),
    }
    command = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block"]
    command += [f"--{name}={value}" for name, value in ports.items()]
    command += ["--dashboard-host=127.0.0.1", f"--temp-dir={temp_dir}", "--num-cpus=2"]
    command += ['--resources={"gpu_group": 2}']  # as a KubeRay cluster's GPU pods offer
    command += [f"--object-store-memory={256 * 1024**2}", "--disable-usage-stats"]
    head = subprocess.Popen(
        command,
        env={**_environment(), "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"},  # stop at once
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{port}"
    try:
        headers = {"Authorization": f"Bearer {auth_token()}"}
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{address}/api/jobs/", headers=headers, timeout=5).is_success:
                    break
            except httpx.HTTPError:
                pass
            assert head.poll() is None, "ray start exited"
            assert time.monotonic() < deadline, "the job API did not come up"
            time.sleep(0.5)
        yield address
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)


def cli(address: str, *arguments: str, timeout_s: float = 180) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "modelship.ops.cli", "jobs", *arguments, "--address", address]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout_s, env=_environment(), cwd=REPO
    )


def run(address: str, capsys: pytest.CaptureFixture[str], *arguments: str) -> tuple[int, str, str]:
    """A command run in this process (quicker than a fresh one): exit code, out, err."""
    code = main(["jobs", *arguments, "--address", address])
    out, err = capsys.readouterr()
    return code, out, err


def job_config(tmp_path: Path, settings: Settings) -> tuple[Path, str]:
    """A config of MiniLM and the session's settings, and the database's DSN."""
    assert settings.database_url is not None
    dsn = settings.database_url.get_secret_value()
    plain = settings.model_dump(
        mode="json", include={"data_dir", "object_store_url", "batch_allowed_prefixes"}
    )
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "models": [MINILM.model_dump(mode="json")],
                # the machine's PostgreSQL and Redis: no embedded service left behind
                "settings": {**plain, "database_url": dsn, "redis_url": REDIS_URL},
            }
        )
    )
    return config, dsn


def test_the_job_api_wants_the_token(dashboard: str) -> None:
    assert httpx.get(f"{dashboard}/api/jobs/", timeout=5).status_code == 401


def test_a_dataset_labeled_as_a_ray_job(
    dashboard: str,
    batch_settings: Settings,
    datasets: Datasets,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = datasets.root / "ray-job.txt"
    source.write_text("".join(t + "\n" for t in texts(12, 10, seed="rayjob-")))
    config, dsn = job_config(tmp_path, batch_settings)
    project = f"rayjob-{uuid.uuid4().hex[:6]}"
    submitted = cli(
        dashboard, "submit", "--py-module", str(REPO / "jobs"), "--config", str(config),
        "--project", project, "--source", str(source), "--model", MINILM.name, "--wait",
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    submission_id = submitted.stdout.splitlines()[0]
    assert f"{submission_id}: SUCCEEDED" in submitted.stdout
    assert "10/10 items, 10 succeeded, 0 failed" in submitted.stdout
    assert "10/10" in submitted.stderr  # the progress bar's last state

    code, out, _ = run(dashboard, capsys, "status", submission_id)
    assert code == 0 and f"{submission_id}: SUCCEEDED" in out and "10/10 items" in out
    code, out, _ = run(dashboard, capsys, "logs", submission_id)
    assert code == 0 and "modelship-progress" in out
    code, out, _ = run(dashboard, capsys, "list")
    assert code == 0 and f"{submission_id}\tSUCCEEDED" in out

    async def labeled() -> tuple[int, str]:
        conn = await asyncpg.connect(dsn)
        try:
            row = await conn.fetchrow(
                "SELECT count(p.id) AS n, min(j.request_id) AS request_id FROM projects pr"
                " JOIN jobs j ON j.project_id = pr.id JOIN job_items ji ON ji.job_id = j.id"
                " JOIN predictions p ON p.id = ji.prediction_id WHERE pr.name = $1",
                project,
            )
            return row["n"], row["request_id"]
        finally:
            await conn.close()

    # the job's request id is the submission id: the API's job names its Ray job
    assert asyncio.run(labeled()) == (10, submission_id)


def test_label_actors_ask_for_the_gpu_group_as_the_rayjob_runs_them(
    dashboard: str, batch_settings: Settings, datasets: Datasets, tmp_path: Path
) -> None:
    """The RayJob's entrypoint says ``--model-resource gpu_group`` (and ``jobs submit`` passes
    it on): each label actor asks one unit of it and no CPU, as model replicas do (a KubeRay
    GPU pod offers no CPUs)."""
    source = datasets.root / "gpu-group.txt"
    source.write_text("".join(t + "\n" for t in texts(6, 6, seed="gpu-group-")))
    config, _dsn = job_config(tmp_path, batch_settings)
    submitted = cli(
        dashboard, "submit", "--py-module", str(REPO / "jobs"), "--model-resource", "gpu_group",
        "--config", str(config), "--project", f"gpu-group-{uuid.uuid4().hex[:6]}",
        "--source", str(source), "--model", MINILM.name, "--wait",
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert "6/6 items, 6 succeeded, 0 failed" in submitted.stdout
    submission_id = submitted.stdout.splitlines()[0]
    ray_job = connect(dashboard).get_job_info(submission_id).job_id
    headers = {"Authorization": f"Bearer {auth_token()}"}
    listed = httpx.get(
        f"{dashboard}/api/v0/actors",
        params={"detail": "true", "limit": "10000"},
        headers=headers,
        timeout=30,
    )
    assert listed.is_success, listed.text
    actors = [
        a
        for a in listed.json()["data"]["result"]["result"]
        if a["job_id"] == ray_job and "LabelActor" in a["class_name"]
    ]
    assert actors, listed.json()["data"]["result"]["result"]
    for actor in actors:
        assert actor["required_resources"] == {"gpu_group": 1.0}, actor


def test_a_job_stopped(dashboard: str, capsys: pytest.CaptureFixture[str]) -> None:
    sleeper = "python -c 'import time; time.sleep(300)'"
    code, out, err = run(dashboard, capsys, "submit", "--entrypoint", sleeper)
    assert code == 0, err
    submission_id = out.strip()
    code, out, _ = run(dashboard, capsys, "stop", submission_id)
    assert code == 0 and "stopping" in out
    code, out, _ = run(dashboard, capsys, "status", submission_id, "--wait", "--timeout", "60")
    assert code == 1 and f"{submission_id}: STOPPED" in out
    code, _, err = run(dashboard, capsys, "status", "no-such-job")
    assert code == 1 and "error:" in err


def test_submit_refuses_an_unknown_export_and_passes_every_label_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``jobs submit --export bogus`` was submitted, and the job failed on the cluster on
    its own argument error; ``--export-all`` and ``--tenant`` (flags of
    ``jobs.label_dataset``) could not be given at all. No cluster: argparse refuses first."""
    address = "http://127.0.0.1:9"  # nothing listens: a refusal must come before connecting
    with pytest.raises(SystemExit) as refused:
        main(["jobs", "submit", "--project", "p", "--source", "/d", "--export", "bogus",
              "--address", address])  # fmt: skip
    assert refused.value.code == 2 and "invalid choice: 'bogus'" in capsys.readouterr().err
    parser = argparse.ArgumentParser()
    ray_jobs.add_parser(parser.add_subparsers(dest="command"))
    ns = parser.parse_args(
        ["jobs", "submit", "--project", "p", "--source", "/d", "--export", "coco",
         "--export-all", "--tenant", "acme"]
    )  # fmt: skip
    command = shlex.split(ray_jobs.entrypoint(ns, "modelship-1"))
    assert command[command.index("--export") + 1] == "coco" and "--export-all" in command
    assert command[command.index("--tenant") + 1] == "acme"
    from jobs.label_dataset import parser as label_parser

    label_parser().parse_args(command[3:])  # the job's own parser takes what submit passes
