"""``modelship cluster``: render as a real subprocess (bad configs exit non-zero naming the
field); apply, status and scale against ``FakeCustomObjects``, which keeps objects as the
API server would and checks each write against KubeRay's CRD."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelship.ops import cluster
from modelship.ops.cluster.options import ClusterOptions
from modelship.ops.cluster.render import render
from tests.cluster.conftest import CONFIG, ROOT
from tests.cluster.fake_kube import FakeCustomObjects

NAMESPACE = "modelship"


def modelship(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cli = Path(sys.executable).with_name("modelship")
    if not cli.exists():
        pytest.fail(f"{cli} not found: install the project (pip install -e .)")
    return subprocess.run(
        [str(cli), *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def cluster_command(api: FakeCustomObjects, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="modelship")
    cluster.add_parser(parser.add_subparsers(dest="command", required=True))
    return cluster.run(parser.parse_args(["cluster", *argv]), api=api)


def test_render_prints_the_manifests_render_makes() -> None:
    run = modelship("cluster", "render", "--kind", "service")
    assert run.returncode == 0, run.stderr
    assert list(yaml.safe_load_all(run.stdout)) == render(CONFIG, ClusterOptions(), "service")


def _bad_task(config: dict[str, Any]) -> None:
    config["applications"][0]["args"]["models"][2]["task"] = "image-segmentation"


def _no_runner_entry(config: dict[str, Any]) -> None:
    deployments = config["applications"][0]["deployments"]
    deployments[:] = [d for d in deployments if d["name"] != "JobRunner"]


def _port_not_a_number(config: dict[str, Any]) -> None:
    config["http_options"]["port"] = "eighty"


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (_bad_task, "applications[0].args.models[2].task"),
        (_no_runner_entry, "applications[0].deployments: no entry for JobRunner"),
        (_port_not_a_number, "http_options.port"),
    ],
)
def test_render_of_an_invalid_config_exits_non_zero_naming_the_field(
    tmp_path: Path, change: Any, named: str
) -> None:
    config = yaml.safe_load(CONFIG.read_text())
    change(config)
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    run = modelship("cluster", "render", "--config", str(path))
    assert run.returncode == 2
    assert named in run.stderr
    assert run.stdout == ""


def test_status_without_kubernetes_credentials_says_so(tmp_path: Path) -> None:
    run = modelship("cluster", "status", env={"KUBECONFIG": str(tmp_path / "none")})
    assert run.returncode == 1
    assert "no Kubernetes credentials (kubeconfig)" in run.stderr
    assert "Traceback" not in run.stderr


def test_invalid_options_exit_non_zero_naming_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    options = tmp_path / "options.yaml"
    options.write_text(yaml.safe_dump({"gpu_group": {"min_replicas": 5, "max_replicas": 2}}))
    api = FakeCustomObjects()
    argv = ("apply", "--config", str(CONFIG), "--options", str(options))
    assert cluster_command(api, *argv) == 2
    assert "options gpu_group: Value error, min_replicas must not exceed" in capsys.readouterr().err
    assert api.writes == 0


def test_a_group_given_in_part_keeps_the_defaults_it_leaves_out(tmp_path: Path) -> None:
    """docs/cluster.md's example names a GPU group's bounds and node selector only: its pods
    keep the GPU group's own 8 CPUs, 32Gi and 300 s idle timeout."""
    options = tmp_path / "options.yaml"
    selector = {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    partial = {"gpu_group": {"max_replicas": 6, "node_selector": selector}}
    options.write_text(yaml.safe_dump(partial))
    given, default = ClusterOptions.from_file(options).gpu_group, ClusterOptions().gpu_group
    assert (given.max_replicas, given.node_selector) == (6, selector)
    assert (given.cpu, given.memory, given.idle_timeout_s) == ("8", "32Gi", 300)
    assert given.tolerations == default.tolerations


def test_apply_creates_then_updates_the_rayservice(tmp_path: Path) -> None:
    api = FakeCustomObjects()
    assert cluster_command(api, "apply", "--config", str(CONFIG)) == 0
    stored = api.get_namespaced_custom_object("ray.io", "v1", NAMESPACE, "rayservices", "modelship")
    (expected, _policy) = render(CONFIG, ClusterOptions(), "service")
    assert stored["spec"] == expected["spec"]
    first = stored["metadata"]["resourceVersion"]

    options = tmp_path / "options.yaml"
    options.write_text(yaml.safe_dump({"image": "registry.example/modelship:0.2.0"}))
    assert cluster_command(api, "apply", "--config", str(CONFIG), "--options", str(options)) == 0
    stored = api.get_namespaced_custom_object("ray.io", "v1", NAMESPACE, "rayservices", "modelship")
    assert stored["metadata"]["resourceVersion"] != first
    assert stored["metadata"]["generation"] == 2
    head = stored["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    assert head["containers"][0]["image"] == "registry.example/modelship:0.2.0"
    assert api.writes == 2


def test_status_reports_conditions_groups_and_deployments(
    capsys: pytest.CaptureFixture[str],
) -> None:
    api = FakeCustomObjects()
    assert cluster_command(api, "status") == 1  # nothing there yet: the API's 404, said so
    assert "404" in capsys.readouterr().err
    cluster_command(api, "apply", "--config", str(CONFIG))
    assert cluster_command(api, "status") == 1  # KubeRay has not reported yet
    assert "group gpu: min 1, max 4 (RayService spec: no RayCluster yet)" in capsys.readouterr().out
    api.create_cluster(NAMESPACE, "modelship", "modelship-x7k2p")
    api.set_status(
        NAMESPACE,
        "rayservices",
        "modelship",
        {
            "conditions": [{"type": "Ready", "status": "True", "reason": "NonZeroServeEndpoints"}],
            "activeServiceStatus": {
                "rayClusterName": "modelship-x7k2p",
                "applicationStatuses": {
                    "modelship": {
                        "status": "RUNNING",
                        "serveDeploymentStatuses": {
                            "Ingress": {"status": "HEALTHY"},
                            "Model-minilm-zero-shot": {"status": "UPSCALING"},
                        },
                    }
                },
            },
        },
    )
    capsys.readouterr()
    assert cluster_command(api, "status") == 0
    table = capsys.readouterr().out
    assert "RayService modelship: ready" in table
    assert "active cluster: modelship-x7k2p" in table
    assert "group gpu: min 1, max 4, replicas 1" in table  # the RayCluster's
    assert "deployment Model-minilm-zero-shot: UPSCALING" in table


def rayclusters_group(api: FakeCustomObjects, name: str, group: str) -> dict[str, Any]:
    cluster = api.get_namespaced_custom_object("ray.io", "v1", NAMESPACE, "rayclusters", name)
    found: dict[str, Any] = next(
        g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == group
    )
    return found


def test_scale_of_a_group_reaches_the_running_raycluster(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """KubeRay copies a RayService's group bounds into its RayCluster only when it creates
    it; scale sets them on the running cluster too, keeping the autoscaler's replicas
    within the new bounds, and retries when the autoscaler wrote in between."""
    api = FakeCustomObjects()
    cluster_command(api, "apply", "--config", str(CONFIG))
    api.create_cluster(NAMESPACE, "modelship", "modelship-x7k2p")

    def autoscaler_sets(replicas: int) -> None:
        def change(spec: dict[str, Any]) -> None:
            (gpu,) = [g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu"]
            gpu["replicas"] = replicas

        api.after_next_read(NAMESPACE, "rayclusters", "modelship-x7k2p", change)

    autoscaler_sets(3)
    api.get_namespaced_custom_object("ray.io", "v1", NAMESPACE, "rayclusters", "modelship-x7k2p")
    capsys.readouterr()
    assert cluster_command(api, "scale", "--group", "gpu", "--min", "2", "--max", "8") == 0
    assert "scaled group gpu of modelship (RayCluster modelship-x7k2p)" in capsys.readouterr().err
    gpu = rayclusters_group(api, "modelship-x7k2p", "gpu")
    assert (gpu["minReplicas"], gpu["replicas"], gpu["maxReplicas"]) == (2, 3, 8)
    cpu = rayclusters_group(api, "modelship-x7k2p", "cpu")
    assert (cpu["minReplicas"], cpu["replicas"], cpu["maxReplicas"]) == (1, 1, 4)
    assert cluster_command(api, "status") == 1
    assert "group gpu: min 2, max 8, replicas 3" in capsys.readouterr().out

    writes = api.writes
    autoscaler_sets(7)  # between scale's read of the cluster and its write: a 409, re-read
    assert cluster_command(api, "scale", "--group", "gpu", "--max", "5") == 0
    gpu = rayclusters_group(api, "modelship-x7k2p", "gpu")
    assert (gpu["minReplicas"], gpu["replicas"], gpu["maxReplicas"]) == (2, 5, 5)
    assert api.writes == writes + 3  # the RayService, the autoscaler, the RayCluster
    stored = api.get_namespaced_custom_object("ray.io", "v1", NAMESPACE, "rayservices", "modelship")
    (spec,) = [
        g for g in stored["spec"]["rayClusterConfig"]["workerGroupSpecs"] if g["groupName"] == "gpu"
    ]
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 5)


def test_scale_changes_group_and_deployment_bounds_in_place(
    capsys: pytest.CaptureFixture[str],
) -> None:
    api = FakeCustomObjects()
    cluster_command(api, "apply", "--config", str(CONFIG))
    assert cluster_command(api, "scale", "--group", "gpu", "--min", "2", "--max", "8") == 0
    assert cluster_command(api, "scale", "--deployment", "Model-nudenet-320n", "--max", "6") == 0
    stored = api.get_namespaced_custom_object("ray.io", "v1", NAMESPACE, "rayservices", "modelship")
    (gpu,) = [
        g for g in stored["spec"]["rayClusterConfig"]["workerGroupSpecs"] if g["groupName"] == "gpu"
    ]
    assert (gpu["minReplicas"], gpu["replicas"], gpu["maxReplicas"]) == (2, 2, 8)
    served = yaml.safe_load(stored["spec"]["serveConfigV2"])
    (nudenet,) = [
        d for d in served["applications"][0]["deployments"] if d["name"] == "Model-nudenet-320n"
    ]
    assert nudenet["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 6,
        "target_ongoing_requests": 8,
    }
    writes = api.writes
    capsys.readouterr()
    assert cluster_command(api, "scale", "--group", "tpu", "--max", "2") == 2
    assert "no worker group 'tpu' (there are: cpu, gpu)" in capsys.readouterr().err
    assert cluster_command(api, "scale", "--group", "cpu", "--min", "5", "--max", "3") == 2
    assert cluster_command(api, "scale", "--deployment", "Nope", "--min", "1") == 2
    assert api.writes == writes


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (None, "cannot be read as YAML"),  # no such file
        ("gpu_group: {\n", "cannot be read as YAML"),
        ("- gpu_group\n", "Input should be a valid dictionary"),
    ],
)
def test_an_options_file_that_is_no_mapping_exits_2_naming_it(
    tmp_path: Path, text: str | None, said: str
) -> None:
    options = tmp_path / "options.yaml"
    if text is not None:
        options.write_text(text)
    run = modelship("cluster", "render", "--options", str(options))
    assert run.returncode == 2, run.stderr
    assert f"options {options}: {said}" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr and run.stdout == ""


def test_render_to_a_folder_that_does_not_exist_says_so(tmp_path: Path) -> None:
    out = tmp_path / "missing" / "modelship.yaml"
    run = modelship("cluster", "render", "-o", str(out))
    assert run.returncode == 1, run.stderr
    assert f"-o {out}: [Errno 2] No such file or directory" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ({"ray_version": "2.46.0"}, "options ray_version: Value error, KubeRay needs Ray 2.52"),
        ({"ray_version": "latest"}, "options ray_version: String should match pattern"),
        ({"image": "registry.example.com/modelship: 0.1.0"}, "options image: String should"),
        ({"image": ""}, "options image: String should match pattern"),
    ],
)
def test_options_kuberay_would_refuse_or_pods_could_not_pull_exit_2(
    tmp_path: Path, given: dict[str, str], said: str
) -> None:
    """KubeRay v1.7 refuses token auth (authOptions) with Ray before 2.52 or a version it
    cannot parse (ValidateRayClusterSpec); an image name with a space never pulls."""
    options = tmp_path / "options.yaml"
    options.write_text(yaml.safe_dump(given))
    run = modelship("cluster", "render", "--options", str(options))
    assert run.returncode == 2, run.stderr
    assert said in run.stderr and run.stdout == "", run.stderr
