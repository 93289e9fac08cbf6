"""Rendered manifests: valid for KubeRay's CRDs and for Kubernetes, serveConfigV2 the file
itself, and the groups, autoscaling, fault tolerance and auth the design asks for."""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelship.ops.cluster.options import GPU_GROUP_RESOURCE, ClusterOptions
from modelship.ops.cluster.pods import AGENT_PORT, NODE_HEALTH_PATH, ray_serve_env
from modelship.ops.cluster.render import render
from modelship.ops.cluster.serve_config import CPU_DEPLOYMENTS, ConfigError, validate
from tests.cluster import crd
from tests.cluster.conftest import CONFIG
from tests.cluster.kube_validate import pod_template, validate_strict

Manifests = dict[str, dict[str, Any]]


def cluster_of(manifest: dict[str, Any]) -> dict[str, Any]:
    spec = manifest["spec"]
    cluster: dict[str, Any] = spec.get("rayClusterConfig") or spec["rayClusterSpec"]
    return cluster


def groups(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The head (as ``head``) and every worker group, by name."""
    cluster = cluster_of(manifest)
    return {"head": cluster["headGroupSpec"]} | {
        g["groupName"]: g for g in cluster["workerGroupSpecs"]
    }


def served(manifests: Manifests) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(manifests["RayService"]["spec"]["serveConfigV2"])
    return config


@pytest.mark.parametrize("kind", ["RayService", "RayJob"])
def test_ray_resources_validate_strictly_against_kuberay_crds(
    manifests: Manifests, kind: str
) -> None:
    assert crd.errors(manifests[kind]) == []
    broken = copy.deepcopy(manifests[kind])
    cluster_of(broken)["headGroupSpec"]["rayStartParam"] = {}  # a typo the API server refuses
    assert any("rayStartParam" in error for error in crd.errors(broken))


@pytest.mark.parametrize("kind", ["RayService", "RayJob"])
def test_kuberay_rules_beyond_the_schema_hold(manifests: Manifests, kind: str) -> None:
    """Rules of KubeRay's ValidateRayClusterSpec (v1.7.0) that no CRD schema states."""
    manifest = manifests[kind]
    cluster = cluster_of(manifest)
    assert len(manifest["metadata"]["name"]) <= 47  # room for KubeRay's suffixes
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["autoscalerOptions"]["version"] == "v2"  # groups set idleTimeoutSeconds
    major, minor, _ = (int(part) for part in cluster["rayVersion"].split("."))
    assert (major, minor) >= (2, 52)  # token auth
    head = cluster["headGroupSpec"]
    assert "redis-password" not in head["rayStartParams"]
    env_names = {e["name"] for e in head["template"]["spec"]["containers"][0]["env"]}
    assert not env_names & {"REDIS_PASSWORD", "RAY_REDIS_ADDRESS", "REDIS_USERNAME"}
    for group in groups(manifest).values():
        assert not ("resources" in group and "num-cpus" in group["rayStartParams"])
        assert "labels" not in group["rayStartParams"]
        assert group["template"]["spec"].get("restartPolicy", "Never") == "Never"
        if "minReplicas" in group:
            assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_core_kinds_pass_kubernetes_validate_strict(manifests: Manifests, tmp_path: Path) -> None:
    """NetworkPolicies as they are; every group's pod template as a core PodTemplate."""
    documents = [m for kind, m in manifests.items() if kind.startswith("NetworkPolicy/")]
    for kind in ("RayService", "RayJob"):
        for name, group in groups(manifests[kind]).items():
            documents.append(pod_template(f"{kind.lower()}-{name}", group["template"]))
    assert len(documents) == 8
    validate_strict(documents, tmp_path)


def test_serve_config_v2_is_the_file_but_for_host_and_model_actor_options(
    manifests: Manifests,
) -> None:
    file = yaml.safe_load(CONFIG.read_text())
    config = served(manifests)
    assert config["http_options"]["host"] == "0.0.0.0"
    config["http_options"]["host"] = file["http_options"]["host"]
    models = {f"Model-{m['name']}": m for m in file["applications"][0]["args"]["models"]}
    for entry in config["applications"][0]["deployments"]:
        if entry["name"] in models:
            assert entry.pop("ray_actor_options") == {
                "num_gpus": models[entry["name"]].get("num_gpus", 0),
                "num_cpus": 0,
                "resources": {GPU_GROUP_RESOURCE: 1},
            }
    assert config == file


def test_replicas_fit_only_their_own_group(manifests: Manifests) -> None:
    """What each group offers Ray against what each deployment asks for: the head takes no
    replica, CPU deployments only the CPU group, model replicas only the GPU group."""
    from deployments.exporter import Exporter
    from deployments.ingress import Ingress
    from deployments.job_runner import JobRunnerDeployment
    from deployments.preprocess import Preprocessor

    offered = {}
    for name, group in groups(manifests["RayService"]).items():
        params = group["rayStartParams"]
        resources = json.loads(shlex.split(params.get("resources", "'{}'"))[0])
        offered[name] = {"CPU": float(params["num-cpus"]), **resources}
    cpu_deployments: list[Any] = [Ingress, Preprocessor, JobRunnerDeployment, Exporter]
    asks = {d.name: d.ray_actor_options for d in cpu_deployments}
    for entry in served(manifests)["applications"][0]["deployments"]:
        if entry["name"].startswith("Model-"):
            asks[entry["name"]] = entry["ray_actor_options"]
    assert set(asks) == set(CPU_DEPLOYMENTS) | {
        e["name"] for e in served(manifests)["applications"][0]["deployments"]
    }
    for deployment, options in asks.items():
        demand = {"CPU": options.get("num_cpus", 1), **options.get("resources", {})}
        fits = {
            name
            for name, offer in offered.items()
            if all(offer.get(resource, 0) >= amount for resource, amount in demand.items())
        }
        assert fits == ({"gpu"} if deployment.startswith("Model-") else {"cpu"}), deployment


def container(group: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = group["template"]["spec"]["containers"][0]
    return found


def test_workers_without_a_serve_proxy_get_probes_and_no_serve_traffic(
    manifests: Manifests,
) -> None:
    """KubeRay v1.7 (pod.go, initLivenessAndReadinessProbe) adds a check of
    ``localhost:<serve port>/-/healthz`` to a RayService worker's readiness only when the
    container has none: with HeadOnly no worker runs that proxy. A Ready worker joins the
    Serve Service (KubeRay labels every RayService worker for it), so that Service targets
    the port named ``serve``, which only the head declares."""
    from ray._private.ray_constants import DEFAULT_DASHBOARD_AGENT_LISTEN_PORT
    from ray.dashboard.http_server_agent import PUBLIC_EXACT_PATHS

    assert yaml.safe_load(CONFIG.read_text())["proxy_location"] == "HeadOnly"
    assert AGENT_PORT == DEFAULT_DASHBOARD_AGENT_LISTEN_PORT
    assert NODE_HEALTH_PATH in PUBLIC_EXACT_PATHS  # probes carry no Ray token
    service = manifests["RayService"]
    for name, group in groups(service).items():
        ray = container(group)
        if name == "head":  # KubeRay's own head probes (raylet and GCS) stay
            assert "readinessProbe" not in ray and "livenessProbe" not in ray
            assert {"name": "serve", "containerPort": 8000} in ray["ports"]
            continue
        assert "dashboard-agent-listen-port" not in group["rayStartParams"]
        for probe in ("readinessProbe", "livenessProbe"):
            check = ray[probe]
            assert "exec" not in check, (name, probe)
            assert check["httpGet"] == {"path": NODE_HEALTH_PATH, "port": AGENT_PORT}
        assert all(port["name"] != "serve" for port in ray["ports"]), name
    ports = service["spec"]["serveService"]["spec"]["ports"]
    assert ports == [{"name": "serve", "port": 8000, "targetPort": "serve"}]


def test_with_a_proxy_on_every_node_kuberay_probes_the_workers(tmp_path: Path) -> None:
    """EveryNode (Ray's default): each worker's proxy is KubeRay's to check, and serves."""
    config = yaml.safe_load(CONFIG.read_text())
    config["proxy_location"] = "EveryNode"
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    (service, _policy) = render(path, ClusterOptions(), "service")
    assert "serveService" not in service["spec"]
    for group in cluster_of(service)["workerGroupSpecs"]:
        assert "readinessProbe" not in container(group)
        assert "livenessProbe" not in container(group)


def test_gpu_group_has_gpus_tolerations_and_a_node_selector(manifests: Manifests) -> None:
    gpu = groups(manifests["RayService"])["gpu"]["template"]["spec"]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu[
        "tolerations"
    ]
    assert gpu["nodeSelector"]
    cpu = groups(manifests["RayService"])["cpu"]["template"]["spec"]
    assert "nvidia.com/gpu" not in cpu["containers"][0]["resources"]["limits"]
    assert "tolerations" not in cpu and "nodeSelector" not in cpu


def test_everything_autoscales(manifests: Manifests) -> None:
    cluster = cluster_of(manifests["RayService"])
    assert cluster["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    for group in cluster["workerGroupSpecs"]:
        assert group["maxReplicas"] > group["minReplicas"] >= 1
        assert group["idleTimeoutSeconds"] > 0
    for entry in served(manifests)["applications"][0]["deployments"]:
        autoscaling = entry["autoscaling_config"]
        assert 1 <= autoscaling["min_replicas"] <= autoscaling["max_replicas"], entry["name"]
    assert manifests["RayService"]["spec"]["upgradeStrategy"] == {"type": "NewCluster"}


def test_fault_tolerance_token_auth_and_serve_switches(manifests: Manifests) -> None:
    cluster = cluster_of(manifests["RayService"])
    ft = cluster["gcsFaultToleranceOptions"]
    assert ft["redisAddress"]
    assert ft["redisPassword"] == {
        "valueFrom": {"secretKeyRef": {"name": "modelship-gcs-redis", "key": "password"}}
    }
    assert "gcsFaultToleranceOptions" not in cluster_of(manifests["RayJob"])
    switches = ray_serve_env(served(manifests)["http_options"])
    assert switches["RAY_SERVE_DEFAULT_HTTP_HOST"] == "0.0.0.0"
    for kind in ("RayService", "RayJob"):
        assert cluster_of(manifests[kind])["authOptions"]["mode"] == "token"
        for name, group in groups(manifests[kind]).items():
            env = {e["name"]: e for e in group["template"]["spec"]["containers"][0]["env"]}
            assert env["RAY_AUTH_MODE"]["value"] == "token"
            assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "auth_token"
            assert {k: env[k]["value"] for k in switches} == switches
            reconnect = "RAY_gcs_rpc_server_reconnect_timeout_s" in env
            assert reconnect == (kind == "RayService" and name != "head")


def test_network_policy_opens_only_the_serve_port(manifests: Manifests) -> None:
    port = yaml.safe_load(CONFIG.read_text())["http_options"]["port"]
    for instance, kind, public in (
        ("modelship", "RayService", [port]),
        ("modelship-label-dataset", "RayJob", []),
    ):
        policy = manifests[f"NetworkPolicy/{instance}"]["spec"]
        selector = policy["podSelector"]["matchLabels"]
        for group in groups(manifests[kind]).values():  # it covers every pod
            assert selector.items() <= group["template"]["metadata"]["labels"].items()
        assert policy["policyTypes"] == ["Ingress"]
        opened = [
            p["port"] for rule in policy["ingress"] if "from" not in rule for p in rule["ports"]
        ]
        assert opened == public
        for rule in policy["ingress"]:
            sources = rule.get("from", [])
            if any("namespaceSelector" in s for s in sources):
                namespace = sources[0]["namespaceSelector"]["matchLabels"]
                ports = [p["port"] for p in rule["ports"]]
                assert (namespace, ports) in (
                    ({"kubernetes.io/metadata.name": "ray-system"}, [8265]),  # KubeRay
                    ({"kubernetes.io/metadata.name": "monitoring"}, [8080]),  # Prometheus
                )
            elif sources:  # the pods of this instance, to one another
                assert sources == [{"podSelector": {"matchLabels": selector}}]


def offers(manifest: dict[str, Any]) -> dict[str, dict[str, float]]:
    """What each group offers Ray: CPUs and custom resources from rayStartParams, GPUs from
    the container's limit (KubeRay v1.7 adds ``num-gpus`` from it, pod.go)."""
    offered = {}
    for name, group in groups(manifest).items():
        params = group["rayStartParams"]
        resources = json.loads(shlex.split(params.get("resources", "'{}'"))[0])
        gpus = container(group)["resources"]["limits"].get("nvidia.com/gpu", 0)
        offered[name] = {"CPU": float(params["num-cpus"]), "GPU": float(gpus), **resources}
    return offered


def test_ray_job_runs_the_batch_entrypoint_on_its_own_cluster(manifests: Manifests) -> None:
    job = manifests["RayJob"]["spec"]
    assert shlex.split(job["entrypoint"])[:3] == ["python", "-m", "jobs.label_dataset"]
    assert job["shutdownAfterJobFinishes"] is True
    assert job["ttlSecondsAfterFinished"] == 60  # docs/cluster.md says so
    assert set(groups(manifests["RayJob"])) == {"head", "cpu", "gpu"}


def test_ray_job_label_actors_land_on_gpu_pods_started_for_them(manifests: Manifests) -> None:
    """The entrypoint's label actors ask what the cluster's model replicas ask: a GPU
    model's actor fits only a GPU pod (they offer no CPUs), and the job's GPU group starts
    empty, grown by the autoscaler for those actors; the RayService keeps its GPU pods."""
    from jobs.label_dataset import actor_resources, parser
    from modelship.core.config import ModelConfig

    words = shlex.split(manifests["RayJob"]["spec"]["entrypoint"])[3:]
    ns = parser().parse_args([*words, "--project", "p", "--source", "s3://d/"])
    assert ns.model_resource == GPU_GROUP_RESOURCE
    offered = offers(manifests["RayJob"])
    for num_gpus in (1, 0.25, 0):
        model = ModelConfig(name="m", task="image-classification", source="x", num_gpus=num_gpus)
        asks = actor_resources(model, ns.model_resource)
        demand = {
            "CPU": asks["num_cpus"],
            "GPU": asks["num_gpus"],
            **asks.get("resources", {}),
        }
        fits = {
            name
            for name, offer in offered.items()
            if all(offer.get(resource, 0) >= amount for resource, amount in demand.items())
        }
        assert fits == {"gpu"}, (num_gpus, demand)
    job_gpu = groups(manifests["RayJob"])["gpu"]
    assert job_gpu["minReplicas"] == job_gpu["replicas"] == 0 < job_gpu["maxReplicas"]
    assert groups(manifests["RayService"])["gpu"]["minReplicas"] == 1
    local = actor_resources(ModelConfig(name="m", task="image-classification", source="x"), None)
    assert local == {"num_cpus": 0.5, "num_gpus": 0}  # a local run: no custom resource asked


def test_a_driver_starts_each_group_from_the_manifest_alone(manifests: Manifests) -> None:
    """What a stand-in for KubeRay reads: ``ray start`` flags from rayStartParams (shell
    words, as KubeRay pastes them), the container's resources, and env with Secrets named."""
    for name, group in groups(manifests["RayService"]).items():
        flags = [f"--{key}={value}" for key, value in group["rayStartParams"].items()]
        words = shlex.split(" ".join(["ray", "start", *flags]))
        container = group["template"]["spec"]["containers"][0]
        assert container["resources"]["limits"]["cpu"]
        secrets = {
            e["name"]: (
                e["valueFrom"]["secretKeyRef"]["name"],
                e["valueFrom"]["secretKeyRef"]["key"],
            )
            for e in container["env"]
            if "valueFrom" in e
        }
        assert secrets["RAY_AUTH_TOKEN"] == ("modelship-ray-auth", "auth_token")
        if name == "gpu":
            resources = next(w for w in words if w.startswith("--resources="))
            assert json.loads(resources.removeprefix("--resources=")) == {GPU_GROUP_RESOURCE: 4}


@pytest.mark.parametrize(
    ("user_config", "field"),
    [
        ({"max_batch_size": 0}, "user_config.max_batch_size"),
        ({"max_batch_sise": 4}, "user_config.max_batch_sise"),
    ],
)
def test_a_model_user_config_the_replica_would_refuse_is_refused_at_render(
    user_config: Any, field: str
) -> None:
    """A replica logs a bad user_config and keeps its batching (raising would take the
    model down), so a typo deployed went unseen: it is refused before anything deploys."""
    config = yaml.safe_load(CONFIG.read_text())
    entries = config["applications"][0]["deployments"]
    index = next(i for i, e in enumerate(entries) if e["name"] == "Model-minilm-zero-shot")
    entries[index]["user_config"] = user_config
    with pytest.raises(ConfigError) as raised:
        validate(config)
    assert raised.value.field == f"applications[0].deployments[{index}].{field}"
    entries[index]["user_config"] = {"max_batch_size": 4}  # a field left out keeps its value
    validate(config)


def test_a_model_s_gpus_set_in_a_deployment_override_are_refused() -> None:
    """ray_actor_options.num_gpus: 1 on a model whose args say 0 gave its replica a GPU
    that it never used: the replica picks cuda from the model's num_gpus, and the graph
    decodes its images inline as for a CPU model. One place says it: the model's args."""
    config = yaml.safe_load(CONFIG.read_text())
    entries = config["applications"][0]["deployments"]
    models = config["applications"][0]["args"]["models"]
    k = next(i for i, m in enumerate(models) if m["name"] == "minilm-zero-shot")
    index = next(i for i, e in enumerate(entries) if e["name"] == "Model-minilm-zero-shot")
    entries[index]["ray_actor_options"] = {"num_gpus": 1}
    with pytest.raises(ConfigError) as raised:
        validate(copy.deepcopy(config))
    assert raised.value.field == f"applications[0].deployments[{index}].ray_actor_options.num_gpus"
    assert f"applications[0].args.models[{k}].num_gpus" in raised.value.message
    models[k]["num_gpus"] = 1  # said in the model's args, the same override is consistent
    validate(config)
