"""``modelship jobs``: batch labeling jobs on a Ray cluster, over Ray's job API.

``submit`` starts ``python -m jobs.label_dataset`` as a Ray job (or any ``--entrypoint``);
``status --wait`` follows its progress from the ``modelship-progress`` lines it logs;
``logs``, ``stop`` and ``list`` do what they say. The cluster is ``--address``, else
``RAY_ADDRESS``, else the local dashboard. Ray 2.60 clusters require a token: it is read
from ``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH`` names, or ``~/.ray/auth_token``,
and sent as ``Authorization: Bearer``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelship.core.records import ExportFormat

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
PROGRESS = "modelship-progress"  # the prefix of jobs.label_dataset's progress lines
# Never uploaded with --working-dir: environments, caches and build output.
EXCLUDES = [
    ".git",
    ".venv",
    "venv",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".import_linter_cache",
    "**/__pycache__",
    "*.egg-info",
    "bench/results",
]
_TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
_POLL_S = 1.0


def add_parser(sub: Any) -> None:
    """Register ``modelship jobs`` and its actions on the CLI's subparsers."""
    jobs = sub.add_parser("jobs", help="batch labeling jobs on a Ray cluster (Ray Data)")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--address", help=f"the Ray dashboard; default: $RAY_ADDRESS or {DEFAULT_ADDRESS}"
    )
    actions = jobs.add_subparsers(dest="action", required=True)

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = actions.add_parser(name, help=help_text, parents=[common])
        return parser

    submit = action("submit", "label a dataset as a Ray job")
    submit.add_argument("--project", help="a project id, or a name (created if new)")
    submit.add_argument("--source", help="what to label: folder, file or manifest (fsspec URI)")
    submit.add_argument("--model", help="a configured model; default: the project's")
    submit.add_argument("--config", help="serve config with the models, as the cluster sees it")
    submit.add_argument(
        "--export", choices=[f.value for f in ExportFormat], help="export written at the end"
    )
    submit.add_argument(
        "--export-all", action="store_true", help="export every item, not only approved ones"
    )
    submit.add_argument("--tenant", help="default: the cluster's MODELSHIP_TENANT")
    submit.add_argument("--actors", type=int, help="most label actors at once")
    submit.add_argument(
        "--model-resource", help="custom resource each label actor asks (gpu_group on KubeRay)"
    )
    submit.add_argument("--entrypoint", help="run this command instead of jobs.label_dataset")
    submit.add_argument("--submission-id", help="default: modelship-<random>")
    submit.add_argument("--working-dir", help="upload this folder as the job's working dir")
    submit.add_argument("--py-module", action="append", help="upload this package (repeat)")
    submit.add_argument("--env", action="append", metavar="KEY=VALUE", help="repeat for more")
    submit.add_argument("--wait", action="store_true", help="follow its progress to the end")
    status = action("status", "a job's status; --wait follows its progress")
    status.add_argument("submission_id")
    status.add_argument("--wait", action="store_true")
    status.add_argument("--timeout", type=float, default=None, help="seconds to wait at most")
    logs = action("logs", "a job's logs")
    logs.add_argument("submission_id")
    logs.add_argument("--follow", action="store_true", help="stream until the job ends")
    stop = action("stop", "stop a job")
    stop.add_argument("submission_id")
    action("list", "every job the cluster knows")


def run(ns: argparse.Namespace) -> int:
    """Run a ``modelship jobs`` action; non-zero exit when it fails."""
    try:
        client = connect(ns.address)
        action: Callable[[JobSubmissionClient, argparse.Namespace], int] = _ACTIONS[ns.action]
        return action(client, ns)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def auth_token() -> str | None:
    """The cluster's token, where Ray itself looks for it."""
    if token := os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return token
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def connect(address: str | None) -> JobSubmissionClient:
    from ray.job_submission import JobSubmissionClient

    token = auth_token()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return JobSubmissionClient(
        address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS, headers=headers
    )


def entrypoint(ns: argparse.Namespace, submission_id: str) -> str:
    """The command the job runs: ``ns.entrypoint``, or ``jobs.label_dataset`` with the
    submission id as its request id (the job's ``request_id`` in ModelShip)."""
    if ns.entrypoint:
        return str(ns.entrypoint)
    if not ns.project or not ns.source:
        raise ValueError("submit needs --project and --source (or an --entrypoint)")
    command = ["python", "-m", "jobs.label_dataset", "--project", ns.project]
    command += ["--source", ns.source, "--request-id", submission_id]
    for flag in ("model", "config", "export", "actors", "model_resource", "tenant"):
        if getattr(ns, flag) is not None:
            command += [f"--{flag.replace('_', '-')}", str(getattr(ns, flag))]
    if ns.export_all:
        command.append("--export-all")
    return shlex.join(command)


def runtime_env(ns: argparse.Namespace) -> dict[str, Any]:
    env: dict[str, Any] = {}
    if ns.working_dir:
        env["working_dir"] = ns.working_dir
        env["excludes"] = EXCLUDES
    if ns.py_module:
        env["py_modules"] = ns.py_module
    if ns.env:
        pairs = [item.split("=", 1) for item in ns.env]
        if any(len(pair) != 2 for pair in pairs):
            raise ValueError("--env takes KEY=VALUE")
        env["env_vars"] = dict(pairs)
    return env


def submit(client: JobSubmissionClient, ns: argparse.Namespace) -> int:
    submission_id = ns.submission_id or f"modelship-{uuid.uuid4().hex[:12]}"
    command = entrypoint(ns, submission_id)
    client.submit_job(
        entrypoint=command, submission_id=submission_id, runtime_env=runtime_env(ns) or None
    )
    print(submission_id)
    return wait(client, submission_id, None) if ns.wait else 0


def status(client: JobSubmissionClient, ns: argparse.Namespace) -> int:
    if ns.wait:
        return wait(client, ns.submission_id, ns.timeout)
    info = client.get_job_info(ns.submission_id)
    print(f"{ns.submission_id}: {info.status}" + (f" ({info.message})" if info.message else ""))
    progress = last_progress(client.get_job_logs(ns.submission_id))
    if progress:
        print(_describe(progress))
    return 0


def wait(client: JobSubmissionClient, submission_id: str, timeout_s: float | None) -> int:
    """Follow a job to its end with a progress bar; 0 if it succeeded."""
    bar = _Bar()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        while True:
            state = str(client.get_job_status(submission_id))
            progress = last_progress(client.get_job_logs(submission_id))
            if progress:
                bar.update(progress)
            if state in _TERMINAL:
                break
            if deadline is not None and time.monotonic() > deadline:
                print(f"\n{submission_id}: still {state} after {timeout_s}s", file=sys.stderr)
                return 1
            time.sleep(_POLL_S)
    finally:
        bar.close()
    info = client.get_job_info(submission_id)
    print(f"{submission_id}: {state}" + (f" ({info.message})" if info.message else ""))
    if progress:
        print(_describe(progress))
    return 0 if state == "SUCCEEDED" else 1


def logs(client: JobSubmissionClient, ns: argparse.Namespace) -> int:
    if not ns.follow:
        print(client.get_job_logs(ns.submission_id), end="")
        return 0

    async def follow() -> None:
        async for lines in client.tail_job_logs(ns.submission_id):
            print(lines, end="", flush=True)

    asyncio.run(follow())
    return 0


def stop(client: JobSubmissionClient, ns: argparse.Namespace) -> int:
    stopped = client.stop_job(ns.submission_id)
    print(f"{ns.submission_id}: {'stopping' if stopped else 'not running'}")
    return 0


def list_jobs(client: JobSubmissionClient, ns: argparse.Namespace) -> int:
    jobs = sorted(client.list_jobs(), key=lambda job: job.start_time or 0)
    for job in jobs:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((job.start_time or 0) / 1000))
        print(f"{job.submission_id or job.job_id}\t{job.status}\t{started}\t{job.entrypoint}")
    return 0


_ACTIONS: dict[str, Callable[[JobSubmissionClient, argparse.Namespace], int]] = {
    "submit": submit,
    "status": status,
    "logs": logs,
    "stop": stop,
    "list": list_jobs,
}


def last_progress(log: str) -> dict[str, Any] | None:
    """The last progress line ``jobs.label_dataset`` logged, if any."""
    for line in reversed(log.splitlines()):
        if line.startswith(PROGRESS + " "):
            try:
                progress: dict[str, Any] = json.loads(line.removeprefix(PROGRESS + " "))
                return progress
            except json.JSONDecodeError:
                continue
    return None


def _describe(progress: dict[str, Any]) -> str:
    return (
        f"job {progress['job_id']} ({progress['status']}): {progress['done']}/{progress['total']}"
        f" items, {progress['succeeded']} succeeded, {progress['failed']} failed"
    )


class _Bar:
    """tqdm's bar when tqdm is installed, else one rewritten line on stderr."""

    def __init__(self) -> None:
        try:
            from tqdm import tqdm
        except ImportError:
            self._tqdm = None
        else:
            self._tqdm = tqdm(total=0, unit="item", desc="labeling", file=sys.stderr)

    def update(self, progress: dict[str, Any]) -> None:
        total, done = int(progress["total"]), int(progress["done"])
        if self._tqdm is not None:
            self._tqdm.total = total
            self._tqdm.n = done
            self._tqdm.set_postfix(failed=progress["failed"], refresh=False)
            self._tqdm.refresh()
        else:
            print(
                f"\rlabeling: {done}/{total} items, {progress['failed']} failed",
                end="",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
        else:
            print(file=sys.stderr)
