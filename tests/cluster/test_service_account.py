"""``service_account``: every Ray pod of the RayService and of the RayJob runs as the named
Kubernetes ServiceAccount, the cloud identity that reaches buckets without keys (GKE
Workload Identity, EKS IRSA); without it the manifests name no account at all."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelship.ops.cluster.options import ClusterOptions
from modelship.ops.cluster.render import render
from tests.cluster import crd
from tests.cluster.conftest import CONFIG
from tests.cluster.kube_validate import pod_template, validate_strict
from tests.cluster.test_cli import modelship

ACCOUNT = "modelship-buckets"


def pod_templates(manifest: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each group's pod template of a RayService or RayJob, by group name."""
    spec = manifest["spec"]
    cluster = spec.get("rayClusterConfig") or spec["rayClusterSpec"]
    yield "head", cluster["headGroupSpec"]["template"]
    for group in cluster["workerGroupSpecs"]:
        yield group["groupName"], group["template"]


def test_the_account_from_the_options_file_runs_every_pod(tmp_path: Path) -> None:
    """Set in the options file, as every option is: the head and both worker groups of the
    RayService and of the RayJob name it. Workers still mount no API token (a cloud
    identity needs none); the head keeps it for its autoscaler. Nothing else is rendered:
    the account is the platform team's, and KubeRay itself gives it the autoscaler's Role
    (a RoleBinding per RayCluster to the head's account)."""
    options = tmp_path / "options.yaml"
    options.write_text(yaml.safe_dump({"service_account": ACCOUNT}))
    run = modelship("cluster", "render", "--kind", "all", "--options", str(options))
    assert run.returncode == 0, run.stderr
    documents = [d for d in yaml.safe_load_all(run.stdout) if d]
    assert [d["kind"] for d in documents] == [
        "RayService",
        "NetworkPolicy",
        "RayJob",
        "NetworkPolicy",
    ]
    seen = []
    for manifest in documents[0], documents[2]:
        for group, template in pod_templates(manifest):
            pod = template["spec"]
            assert pod["serviceAccountName"] == ACCOUNT, (manifest["kind"], group)
            assert pod.get("automountServiceAccountToken", True) is (group == "head")
            seen.append((manifest["kind"], group))
    assert len(seen) == 6


def test_manifests_with_the_account_pass_kuberay_and_kubernetes_strict(tmp_path: Path) -> None:
    manifests = render(CONFIG, ClusterOptions(service_account=ACCOUNT))
    documents = []
    for manifest in manifests:
        if manifest["kind"] == "NetworkPolicy":
            continue
        assert crd.errors(manifest) == []
        for group, template in pod_templates(manifest):
            documents.append(pod_template(f"{manifest['kind'].lower()}-{group}", template))
    assert len(documents) == 6
    validate_strict(documents, tmp_path)


def test_without_the_account_no_manifest_names_one(
    manifests: dict[str, dict[str, Any]],
) -> None:
    assert "serviceAccountName" not in yaml.safe_dump(list(manifests.values()))
    for kind in ("RayService", "RayJob"):
        for group, template in pod_templates(manifests[kind]):
            assert template["spec"].get("automountServiceAccountToken", True) is (group == "head")


@pytest.mark.parametrize("name", ["Buckets", "buckets_reader", "-buckets", "b" * 64])
def test_an_account_name_kubernetes_would_refuse_exits_2(tmp_path: Path, name: str) -> None:
    options = tmp_path / "options.yaml"
    options.write_text(yaml.safe_dump({"service_account": name}))
    run = modelship("cluster", "render", "--options", str(options))
    assert run.returncode == 2, run.stderr
    assert "options service_account: String should" in run.stderr and run.stdout == ""
