"""cluster/k8s/postgres-backup-cronjob.yaml: valid for Kubernetes (strict), runs a command
the CLI accepts, reads every credential from the Secrets the RayService uses."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from modelship.ops import db
from modelship.ops.cluster.options import ClusterOptions
from modelship.ops.cluster.serve_config import secret_settings

MANIFEST = Path(__file__).resolve().parents[2] / "cluster" / "k8s" / "postgres-backup-cronjob.yaml"


def _cronjob() -> dict[str, Any]:
    cronjob: dict[str, Any] = yaml.safe_load(MANIFEST.read_text())
    return cronjob


def _pod() -> dict[str, Any]:
    pod: dict[str, Any] = _cronjob()["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return pod


def test_kubernetes_validate_strict_passes() -> None:
    binary = Path(sys.executable).with_name("kubernetes-validate")
    done = subprocess.run(
        [str(binary), "--strict", str(MANIFEST)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "passed for resource cronjob/modelship-postgres-backup" in done.stdout + done.stderr


def test_it_runs_modelship_db_backup_to_an_object_store_folder() -> None:
    (container,) = _pod()["containers"]
    assert container["command"] == ["modelship"]
    parser = argparse.ArgumentParser(prog="modelship")
    db.add_parser(parser.add_subparsers(dest="command"))
    ns = parser.parse_args(container["args"])  # as `modelship` parses them
    assert (ns.command, ns.action) == ("db", "backup")
    assert ns.target.startswith("s3://") and ns.target.endswith("/")  # one archive per run


def test_credentials_come_from_the_secrets_the_rayservice_reads() -> None:
    options = ClusterOptions()
    (container,) = _pod()["containers"]
    env = {e["name"]: e for e in container["env"]}
    url = env["MODELSHIP_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert url == {"name": options.secrets.app, "key": secret_settings()["MODELSHIP_DATABASE_URL"]}
    for entry in container["env"]:  # no literal credentials: only plain paths
        assert "value" not in entry or entry["name"] == "TMPDIR", entry
    assert container["envFrom"] == [
        {"secretRef": {"name": options.secrets.object_store, "optional": True}},
        {"configMapRef": {"name": options.config_map, "optional": True}},
    ]
    assert _cronjob()["metadata"]["namespace"] == options.namespace
    assert container["image"] == options.image


def test_one_run_at_a_time_non_root_and_a_writable_scratch_folder() -> None:
    spec = _cronjob()["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    pod = _pod()
    assert pod["securityContext"]["runAsNonRoot"] and not pod["automountServiceAccountToken"]
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"]
    tmpdir = next(e["value"] for e in container["env"] if e["name"] == "TMPDIR")
    (mount,) = container["volumeMounts"]
    assert mount["mountPath"] == tmpdir
    (volume,) = pod["volumes"]
    assert volume["name"] == mount["name"] and "emptyDir" in volume
