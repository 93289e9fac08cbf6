"""A stand-in for the KubeRay operator on one Linux machine: each pod is a network namespace.

It reads a rendered RayService and does with it what KubeRay v1.7 does: builds each
group's ``ray start`` command from its ``rayStartParams`` and container resources, and its
env from ``env``/``envFrom`` (Secrets and ConfigMaps are given as dicts, as the kubelet
would inject them) plus what KubeRay adds (GCS fault tolerance, token auth, addresses);
starts every pod in its own namespace with its own address on a bridge; PUTs
``serveConfigV2`` to the head's dashboard and polls Serve's status, with the token header.

So a head and workers are a real multi-node Ray cluster on one machine (hosts from
``netns.py``). Beyond the manifest, each pod gets only what one shared machine needs: its
own temp dir, HOME and HAProxy files, a small object store, and the head's GCS off 6379
(this machine's Redis port). Not emulated: scheduling, Services and DNS (the head keeps its
address across restarts, as its Service would), NetworkPolicies, probes, and the
autoscaler sidecar (no pod is added or removed by load). docs/cluster.md, "Proven here
without Kubernetes", says what this proves.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from modelship.ops.cluster.netns import Host, Network, wait_for
from modelship.ops.ray_env import private_haproxy

DASHBOARD_AGENT_PORT = "52365"
OBJECT_STORE_BYTES = str(128 * 1024**2)
"""A pod's /dev/shm is its own and sized from its memory limit; here every node shares the
machine's, so each gets a small object store."""

Secrets = Mapping[str, Mapping[str, str]]


class PodConfigError(RuntimeError):
    """A pod cannot start: a Secret or ConfigMap it needs is missing (the kubelet's
    CreateContainerConfigError)."""


# -- what KubeRay puts in a pod ------------------------------------------------------------


@dataclass(frozen=True)
class PodSpec:
    """One pod as KubeRay builds it: its group, its ``ray start`` line (run by a shell, as
    the container's command) and its env."""

    group: str  # "head" or a worker group's name
    name: str
    command: str
    env: dict[str, str]


def pod_spec(
    cluster: Mapping[str, Any],
    group: str,
    *,
    cluster_name: str,
    namespace: str,
    head_ip: str,
    head_port: str,
    storage_namespace: str,
    secrets: Secrets,
    config_maps: Secrets,
    extra_params: Mapping[str, str] = {},
) -> PodSpec:
    """The pod of ``group`` (``head`` or a worker group) of a ``RayClusterSpec``.

    ``extra_params`` are ``rayStartParams`` this machine needs beyond the manifest's (a
    temp dir, a small object store, a GCS port); they never replace the manifest's own.

    Raises:
        PodConfigError: a Secret or ConfigMap it refers to is missing.
    """
    head = group == "head"
    spec = cluster["headGroupSpec"] if head else _worker_group(cluster, group)
    container = spec["template"]["spec"]["containers"][0]
    params = {**extra_params, **{k: str(v) for k, v in spec.get("rayStartParams", {}).items()}}
    env_entries = list(container.get("env", []))
    name = f"{cluster_name}-{'head' if head else group + '-worker'}-{uuid.uuid4().hex[:5]}"

    def add(entry: dict[str, Any]) -> None:
        if all(e["name"] != entry["name"] for e in env_entries):
            env_entries.append(entry)

    ft = cluster.get("gcsFaultToleranceOptions")
    if head:
        params.setdefault("dashboard-host", "0.0.0.0")
        if cluster.get("enableInTreeAutoscaling"):
            params["no-monitor"] = "true"  # the autoscaler runs as a sidecar instead
            version = (cluster.get("autoscalerOptions") or {}).get("version")
            add({"name": "RAY_enable_autoscaler_v2", "value": str(version == "v2").lower()})
        if ft:
            add({"name": "RAY_external_storage_namespace", "value": storage_namespace})
            env_entries.append({"name": "RAY_REDIS_ADDRESS", "value": ft["redisAddress"]})
            if "redisPassword" in ft:
                params["redis-password"] = "$REDIS_PASSWORD"
                env_entries.append({"name": "REDIS_PASSWORD", **ft["redisPassword"]})
    else:
        params.setdefault("address", f"{head_ip}:{head_port}")
        if ft:
            add({"name": "RAY_gcs_rpc_server_reconnect_timeout_s", "value": "600"})
    if (cluster.get("authOptions") or {}).get("mode") == "token":
        secret = cluster["authOptions"].get("secretName") or cluster_name
        add({"name": "RAY_AUTH_MODE", "value": "token"})
        ref = {"secretKeyRef": {"name": secret, "key": "auth_token"}}
        add({"name": "RAY_AUTH_TOKEN", "valueFrom": ref})
    params.setdefault("metrics-export-port", "8080")
    params["block"] = "true"
    params.setdefault("dashboard-agent-listen-port", DASHBOARD_AGENT_PORT)
    _resource_params(params, container.get("resources") or {})
    command = ("ray start --head" if head else "ray start") + _flags(params)

    ip = "127.0.0.1" if head else head_ip
    kuberay = {
        "RAY_CLUSTER_NAME": cluster_name,
        "RAY_CLUSTER_NAMESPACE": namespace,
        "RAY_CLOUD_INSTANCE_ID": name,
        "RAY_NODE_TYPE_NAME": "headgroup" if head else group,
        "KUBERAY_GEN_RAY_START_CMD": command,
        "RAY_PORT": head_port,
        "RAY_timeout_ms_task_wait_for_death_info": "0",  # RayService pods only
        "RAY_gcs_server_request_timeout_seconds": "5",
        "RAY_SERVE_KV_TIMEOUT_S": "5",
        "RAY_ADDRESS": f"{ip}:{head_port}",
        "RAY_USAGE_STATS_KUBERAY_IN_USE": "1",
        "RAY_DASHBOARD_ENABLE_K8S_DISK_USAGE": "1",
    }
    if not head:
        env_entries += [
            {"name": "FQ_RAY_IP", "value": head_ip},
            {"name": "RAY_IP", "value": head_ip},
        ]
    for key, value in kuberay.items():
        add({"name": key, "value": value})
    env = container_env({**container, "env": env_entries}, secrets, config_maps)
    return PodSpec(group=group, name=name, command=command, env=env)


def container_env(
    container: Mapping[str, Any], secrets: Secrets, config_maps: Secrets
) -> dict[str, str]:
    """A container's env as the kubelet makes it: ``envFrom`` first, then ``env`` in order
    (later wins), ``$(VAR)`` expanded from what is defined before it."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        kind, store = (
            ("secretRef", secrets) if "secretRef" in source else ("configMapRef", config_maps)
        )
        ref = source[kind]
        if ref["name"] not in store:
            if ref.get("optional"):
                continue
            raise PodConfigError(f"{kind} {ref['name']} not found")
        env.update({source.get("prefix", "") + k: v for k, v in store[ref["name"]].items()})
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = re.sub(
                r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                lambda m: env.get(m.group(1), m.group(0)),
                str(entry["value"]),
            )
            continue
        source = entry["valueFrom"]
        kind, store = (
            ("secretKeyRef", secrets)
            if "secretKeyRef" in source
            else ("configMapKeyRef", config_maps)
        )
        ref = source[kind]
        value = store.get(ref["name"], {}).get(ref["key"])
        if value is None:
            if ref.get("optional"):
                continue
            raise PodConfigError(f"{entry['name']}: {kind} {ref['name']}/{ref['key']} not found")
        env[entry["name"]] = value
    return env


def _worker_group(cluster: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    for group in cluster.get("workerGroupSpecs", []):
        if group["groupName"] == name:
            return dict(group)
    raise KeyError(f"no worker group {name!r}")


def _resource_params(params: dict[str, str], resources: Mapping[str, Any]) -> None:
    """``num-cpus``, ``memory`` and ``num-gpus`` from the container's limits (requests for
    CPUs when no limit), unless rayStartParams set them."""
    limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
    cpu = limits.get("cpu") or requests.get("cpu")
    if "num-cpus" not in params and cpu is not None:
        params["num-cpus"] = str(math.ceil(quantity(cpu)))
    if "memory" not in params and "memory" in limits:
        params["memory"] = str(int(quantity(limits["memory"])))
    if "num-gpus" not in params and "nvidia.com/gpu" in limits:
        params["num-gpus"] = str(int(quantity(limits["nvidia.com/gpu"])))


def quantity(value: Any) -> float:
    """A Kubernetes quantity (``500m``, ``4``, ``8Gi``, ``1G``) as a number."""
    text = str(value)
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    units |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * units[suffix]
    return float(text)


def _flags(params: Mapping[str, str]) -> str:
    """KubeRay's ``convertParamMap``: sorted, ``true`` as a bare flag, ``false`` dropped."""
    out = ""
    for key in sorted(params):
        value = params[key]
        if value.lower() in ("true", "false"):
            out += f" --{key} " if value.lower() == "true" else ""
        else:
            out += f" --{key}={value} "
    return out


# -- the operator --------------------------------------------------------------------------


@dataclass
class Pod:
    """A started pod: its spec, its namespace, its folder, its container's main process and
    that process's whole env."""

    spec: PodSpec
    host: Host
    workdir: Path
    process: subprocess.Popen[bytes]
    env: dict[str, str]

    @property
    def group(self) -> str:
        return self.spec.group


class RayServiceEmulator:
    """Does what KubeRay does with one RayService: its pods, its Serve config, its status.

    Args:
        service: the rendered RayService.
        network: where pods get their namespaces.
        secrets: Secret name → key → value, as the kubelet would inject them.
        config_maps: ConfigMap name → key → value.
        workdir: each pod's own folder (HOME, Ray's temp dir) goes under it; keep it short,
            Ray's socket paths must fit in 107 characters.
        image_env: the image's own env (PATH to ``ray``); the manifest's env comes on top.
        gcs_port: the head's GCS port where the manifest leaves it to KubeRay's default
            (6379, the port of this machine's Redis).
    """

    def __init__(
        self,
        service: Mapping[str, Any],
        network: Network,
        secrets: Secrets,
        config_maps: Secrets,
        workdir: Path,
        image_env: Mapping[str, str] | None = None,
        gcs_port: int = 6380,
    ) -> None:
        self.service = service
        self.cluster = service["spec"]["rayClusterConfig"]
        self.network = network
        self.secrets = secrets
        self.config_maps = config_maps
        self.workdir = workdir
        bin_dir = Path(sys.executable).parent
        self.image_env = dict(
            image_env or {"PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        )
        head_params = self.cluster["headGroupSpec"].get("rayStartParams") or {}
        self.head_port = str(head_params.get("port", gcs_port))
        self.name = f"{service['metadata']['name']}-{uuid.uuid4().hex[:5]}"  # the RayCluster
        self.storage_namespace = str(uuid.uuid4())  # the RayCluster's uid
        self.pods: list[Pod] = []
        self.deploys = 0  # serveConfigV2 submissions so far
        self._head_host: Host | None = None
        self._count = 0
        token = self._secret_value(self.cluster["authOptions"]["secretName"], "auth_token")
        self._auth = {"x-ray-authorization": f"Bearer {token}"}

    # pods

    @property
    def head_ip(self) -> str:
        if self._head_host is None:
            raise RuntimeError("the head has not started")
        return self._head_host.ip

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.head_ip}:8265"

    def start(self, timeout_s: float = 180) -> None:
        """Start the head, then (once its GCS answers) every worker group's ``replicas``."""
        self._head_host = self.network.add_host("head")
        self._start_pod("head", self._head_host)
        self.wait_dashboard(timeout_s)
        for group in self.cluster["workerGroupSpecs"]:
            for _ in range(group.get("replicas", 1)):
                self._start_pod(group["groupName"])
        self.wait_nodes(len(self.pods), timeout_s)

    def pods_of(self, group: str) -> list[Pod]:
        return [pod for pod in self.pods if pod.group == group]

    def group_of(self, ip: str) -> str:
        """The group of the pod with address ``ip``."""
        for pod in self.pods:
            if pod.host.ip == ip:
                return pod.group
        raise KeyError(f"no pod has address {ip}")

    def kill(self, pod: Pod) -> None:
        """Every process of the pod dies at once (SIGKILL, as on an OOM kill), on a node that
        lives on: their connections close before the pod's network goes."""
        pod.host.kill()
        pod.host.settle()
        pod.process.wait(timeout=10)

    def replace(self, pod: Pod) -> Pod:
        """What KubeRay does when a pod fails: delete it and create a new one of its group.
        A new worker pod gets a new address; the head keeps its own (its Service's)."""
        self.kill(pod)
        self.pods.remove(pod)
        if pod.group == "head":
            return self._start_pod("head", pod.host)
        self.network.remove_host(pod.host)
        return self._start_pod(pod.group)

    def exec(self, pod: Pod, argv: list[str], timeout_s: float = 120) -> str:
        """``kubectl exec``: run ``argv`` in the pod with its env; its stdout."""
        done = pod.host.run(argv, pod.env, timeout_s)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} in {pod.spec.name}: {done.stderr.strip()[-2000:]}")
        return done.stdout

    def close(self) -> None:
        """Kill every pod and delete its namespace; nothing else on the machine is touched."""
        for pod in list(self.pods):
            self.kill(pod)
            self.network.remove_host(pod.host)
        self.pods.clear()

    def _start_pod(self, group: str, host: Host | None = None) -> Pod:
        self._count += 1
        host = host or self.network.add_host(f"{group}-{self._count}")
        workdir = self.workdir / f"{group[:4]}{self._count}"
        workdir.mkdir(parents=True)
        extra = {
            "temp-dir": str(workdir / "ray"),
            "object-store-memory": OBJECT_STORE_BYTES,
        }
        if group == "head":
            extra["port"] = self.head_port
        spec = pod_spec(
            self.cluster,
            group,
            cluster_name=self.name,
            namespace=self.service["metadata"]["namespace"],
            head_ip=host.ip if group == "head" else self.head_ip,
            head_port=self.head_port,
            storage_namespace=self.storage_namespace,
            secrets=self.secrets,
            config_maps=self.config_maps,
            extra_params=extra,
        )
        # The image's env, then the manifest's; a home of its own (Ray writes under ~), no
        # usage stats (no internet), HAProxy's files in the pod's folder (a shared disk here).
        env = {
            **self.image_env,
            "HOME": str(workdir),
            "RAY_USAGE_STATS_ENABLED": "0",
            **private_haproxy(workdir / "hap"),
            **spec.env,
        }
        container_cmd = f"ulimit -n ${{RAY_START_ULIMIT_OPEN_FILES:-65536}}; {spec.command}"
        process = host.popen(
            ["/bin/bash", "-c", container_cmd], env, workdir, log=workdir / "container.log"
        )
        pod = Pod(spec=spec, host=host, workdir=workdir, process=process, env=env)
        self.pods.append(pod)
        return pod

    def _secret_value(self, name: str, key: str) -> str:
        try:
            return self.secrets[name][key]
        except KeyError:
            raise PodConfigError(f"secret {name}/{key} not found") from None

    # the dashboard

    def get(self, path: str, timeout_s: float = 10) -> Any:
        """GET a dashboard path with the token; its JSON."""
        response = httpx.get(self.dashboard_url + path, headers=self._auth, timeout=timeout_s)
        response.raise_for_status()
        return response.json()

    def wait_dashboard(self, timeout_s: float = 120) -> None:
        wait_for(lambda: self._answers("/api/version"), timeout_s, "the head's dashboard")

    def nodes(self) -> list[dict[str, Any]]:
        """Every Ray node the GCS knows, dead ones too (Ray's state API): ``node_ip``,
        ``state``, ``node_id``, ``resources_total``, ``labels`` (``ray.io/node-group``)."""
        found = self.get("/api/v0/nodes?detail=true&limit=1000")["data"]["result"]["result"]
        return list(found)

    def wait_nodes(self, count: int, timeout_s: float = 120) -> None:
        """Until every pod's node is alive (``count`` of them)."""

        def alive() -> bool:
            if not self._answers("/api/version"):
                return False
            live = {n["node_ip"] for n in self.nodes() if n["state"] == "ALIVE"}
            return {pod.host.ip for pod in self.pods} <= live and len(live) >= count

        wait_for(alive, timeout_s, f"{count} live nodes")

    def deploy(self) -> None:
        """PUT serveConfigV2 to the dashboard, as KubeRay's ``UpdateDeployments`` does."""
        config = yaml.safe_load(self.service["spec"]["serveConfigV2"])
        response = httpx.put(
            self.dashboard_url + "/api/serve/applications/",
            content=json.dumps(config),
            headers={**self._auth, "Content-Type": "application/json"},
            timeout=60,
        )
        if response.status_code // 100 != 2:
            raise RuntimeError(f"UpdateDeployments fail: {response.status_code} {response.text}")
        self.deploys += 1

    def serve_details(self) -> dict[str, Any]:
        """Serve's applications, deployments, replicas (with node addresses) and proxies."""
        details: dict[str, Any] = self.get("/api/serve/applications/?api_type=declarative")
        return details

    def wait_running(self, timeout_s: float = 240) -> dict[str, Any]:
        """Poll Serve's status as KubeRay does until every application is RUNNING.

        Raises:
            RuntimeError: an application's deployment failed.
            TimeoutError: not RUNNING in time (the last status in the message).
        """
        last: Any = None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                details = self.serve_details()
            except httpx.HTTPError as exc:
                last = exc
            else:
                apps = details.get("applications") or {}
                last = {name: app["status"] for name, app in apps.items()}
                failed = [
                    app["message"] for app in apps.values() if app["status"] == "DEPLOY_FAILED"
                ]
                if failed:
                    raise RuntimeError(f"Serve application failed: {failed[0]}")
                if apps and all(app["status"] == "RUNNING" for app in apps.values()):
                    return details
            time.sleep(1)
        raise TimeoutError(f"Serve not RUNNING after {timeout_s}s: {last}")

    def _answers(self, path: str) -> bool:
        try:
            self.get(path, timeout_s=3)
            return True
        except httpx.HTTPError:
            return False
