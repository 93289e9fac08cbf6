"""The Ray cluster spec that a RayService and a RayJob share: a head that runs no replicas,
a CPU worker group, a GPU worker group, the in-tree autoscaler and token auth.

Each group's ``rayStartParams``, its container's resources and its env are complete in the
manifest, so anything that starts pods from it (KubeRay, or a driver standing in for it)
needs nothing else. Every credential comes from a Secret by reference.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from modelship.core.settings import OPTIONAL_SECRETS
from modelship.ops.cluster.options import (
    GPU_GROUP_RESOURCE,
    ClusterOptions,
    GpuGroup,
    PodSize,
    WorkerGroup,
)
from modelship.ops.cluster.serve_config import secret_settings
from modelship.ops.ray_env import ray_environment

CONTAINER = "ray"
GCS_PORT = 6379
DASHBOARD_PORT = 8265
CLIENT_PORT = 10001
METRICS_PORT = 8080
SERVE_PORT_NAME = "serve"  # KubeRay's Serve Service takes the head's port of this name
AGENT_PORT = 52365
"""Ray's default ``dashboard-agent-listen-port``, where KubeRay's probes reach the agent."""
NODE_HEALTH_PATH = "/api/healthz"
"""The agent's node health (raylet; GCS too on the head), open without Ray's token."""
RAY_UID = 1000  # the ``ray`` user of rayproject/ray images (group ``users``, 100)
RAY_GID = 100
GCS_RECONNECT_TIMEOUT_S = "600"
"""How long a worker waits for a restarted head's GCS before it exits (GCS fault tolerance)."""

_CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "runAsUser": RAY_UID,
    "runAsGroup": RAY_GID,
}


def labels(instance: str, component: str) -> dict[str, str]:
    """Labels of every object and pod of one instance (the NetworkPolicy selects on them)."""
    return {
        "app.kubernetes.io/name": "modelship",
        "app.kubernetes.io/instance": instance,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "modelship",
    }


def ray_serve_env(http_options: Mapping[str, Any]) -> dict[str, str]:
    """Ray Serve's switches (``modelship.ops.ray_env``) and the host that proxies and
    ingress replicas bind on every node: HAProxy on the head reaches them across pods."""
    return {**ray_environment(http_options, {}), "RAY_SERVE_DEFAULT_HTTP_HOST": "0.0.0.0"}


def env(
    options: ClusterOptions, http_options: Mapping[str, Any], worker: bool, gcs_ft: bool
) -> list[dict[str, Any]]:
    """Every container's env: plain values for switches, ``secretKeyRef`` for credentials."""
    plain = {
        "RAY_AUTH_MODE": "token",
        **ray_serve_env(http_options),
        "HF_HUB_OFFLINE": "1",  # models come packaged in the image or from the model store
        "MODELSHIP_PROFILE": "production",
    }
    if worker and gcs_ft:
        plain["RAY_gcs_rpc_server_reconnect_timeout_s"] = GCS_RECONNECT_TIMEOUT_S
    entries: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in plain.items()]
    entries.append(_from_secret("RAY_AUTH_TOKEN", options.secrets.ray_auth, "auth_token"))
    entries += [
        _from_secret(name, options.secrets.app, key, optional=_optional(name))
        for name, key in secret_settings().items()
    ]
    return entries


def env_from(options: ClusterOptions) -> list[dict[str, Any]]:
    """Non-secret settings from a ConfigMap, object-store credentials from a Secret (both
    optional, both owned by the platform team)."""
    return [
        {"configMapRef": {"name": options.config_map, "optional": True}},
        {"secretRef": {"name": options.secrets.object_store, "optional": True}},
    ]


def worker_probes() -> dict[str, dict[str, Any]]:
    """A worker's readiness and liveness: its raylet's health at the agent, as KubeRay v1.7
    probes a worker that serves no traffic (``pod.go``, ``initLivenessAndReadinessProbe``,
    Ray >= 2.53), same timings. Left to KubeRay, a RayService worker's readiness would also
    ask ``localhost:<serve port>/-/healthz``, a Serve proxy that ``proxy_location:
    HeadOnly`` never starts there: the worker would never be Ready."""
    check = {"httpGet": {"path": NODE_HEALTH_PATH, "port": AGENT_PORT}, "timeoutSeconds": 2}
    return {
        "readinessProbe": {
            **check,
            "initialDelaySeconds": 10,
            "periodSeconds": 5,
            "successThreshold": 1,
            "failureThreshold": 10,
        },
        "livenessProbe": {
            **check,
            "initialDelaySeconds": 30,
            "periodSeconds": 5,
            "successThreshold": 1,
            "failureThreshold": 120,
        },
    }


def cluster_spec(
    options: ClusterOptions,
    instance: str,
    http_options: Mapping[str, Any],
    gcs_ft: bool,
    probe_workers: bool = False,
) -> dict[str, Any]:
    """A ``RayClusterSpec``: the head, a CPU and a GPU worker group, autoscaler, auth.
    ``probe_workers`` gives the workers ``worker_probes()`` (no Serve proxy runs on them);
    the head keeps the probes KubeRay makes."""
    serve_port = int(http_options.get("port", 8000))
    head_ports = {
        "gcs-server": GCS_PORT,
        "dashboard": DASHBOARD_PORT,
        "client": CLIENT_PORT,
        SERVE_PORT_NAME: serve_port,
        "metrics": METRICS_PORT,
    }
    head_env = env(options, http_options, worker=False, gcs_ft=gcs_ft)
    worker_env = env(options, http_options, worker=True, gcs_ft=gcs_ft)
    spec: dict[str, Any] = {
        "rayVersion": options.ray_version,
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": {
            "version": "v2",  # per-group idleTimeoutSeconds needs autoscaler v2
            "upscalingMode": "Default",
            "idleTimeoutSeconds": options.autoscaler_idle_timeout_s,
            "resources": _resources(PodSize(cpu="500m", memory="512Mi")),
            "securityContext": copy.deepcopy(_CONTAINER_SECURITY),
        },
        "authOptions": {"mode": "token", "secretName": options.secrets.ray_auth},
        "headGroupSpec": {
            "rayStartParams": {
                "num-cpus": "0",  # the head runs Serve's controller and proxy, no replicas
                "dashboard-host": "0.0.0.0",
                "metrics-export-port": str(METRICS_PORT),
            },
            "template": _pod(
                options, instance, "ray-head", options.head, head_env, head_ports, None
            ),
        },
        "workerGroupSpecs": [
            _worker_group(options, instance, "cpu", options.cpu_group, worker_env),
            _worker_group(options, instance, "gpu", options.gpu_group, worker_env),
        ],
    }
    if probe_workers:
        for group in spec["workerGroupSpecs"]:
            group["template"]["spec"]["containers"][0].update(worker_probes())
    if gcs_ft:
        spec["gcsFaultToleranceOptions"] = {
            "redisAddress": options.gcs_redis_address,
            "redisPassword": {
                "valueFrom": {
                    "secretKeyRef": {"name": options.secrets.gcs_redis, "key": "password"}
                }
            },
        }
    return spec


def _worker_group(
    options: ClusterOptions,
    instance: str,
    name: str,
    group: WorkerGroup,
    worker_env: list[dict[str, Any]],
) -> dict[str, Any]:
    gpu = group if isinstance(group, GpuGroup) else None
    params = {"metrics-export-port": str(METRICS_PORT)}
    if gpu is None:
        params["num-cpus"] = str(max(1, int(_cores(group.cpu))))
    else:
        # No CPUs for Ray: only what asks for the GPU group's resource lands here.
        params["num-cpus"] = "0"
        params["resources"] = "'" + json.dumps({GPU_GROUP_RESOURCE: gpu.replica_slots}) + "'"
    return {
        "groupName": name,
        "replicas": group.min_replicas,
        "minReplicas": group.min_replicas,
        "maxReplicas": group.max_replicas,
        "idleTimeoutSeconds": group.idle_timeout_s,
        "rayStartParams": params,
        "template": _pod(
            options,
            instance,
            f"ray-worker-{name}",
            group,
            worker_env,
            {"metrics": METRICS_PORT},
            gpu,
        ),
    }


def _pod(
    options: ClusterOptions,
    instance: str,
    component: str,
    size: PodSize,
    container_env: list[dict[str, Any]],
    ports: Mapping[str, int],
    gpu: GpuGroup | None,
) -> dict[str, Any]:
    container = {
        "name": CONTAINER,
        "image": options.image,
        "imagePullPolicy": "IfNotPresent",
        "env": container_env,
        "envFrom": env_from(options),
        "ports": [{"name": name, "containerPort": port} for name, port in ports.items()],
        "resources": _resources(size, gpu.gpus if gpu else 0),
        "securityContext": copy.deepcopy(_CONTAINER_SECURITY),
    }
    spec: dict[str, Any] = {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RAY_UID,
            "fsGroup": RAY_GID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
    }
    if options.service_account is not None:
        spec["serviceAccountName"] = options.service_account
    if component != "ray-head":  # the head's autoscaler sidecar calls the Kubernetes API
        # Not even with a service account: a cloud identity needs no API token (Workload
        # Identity answers from the node's metadata server; IRSA's webhook mounts a projected
        # token of its own).
        spec["automountServiceAccountToken"] = False
    if gpu is not None:
        spec["nodeSelector"] = dict(gpu.node_selector)
        spec["tolerations"] = [dict(t) for t in gpu.tolerations]
    return {"metadata": {"labels": labels(instance, component)}, "spec": spec}


def _resources(size: PodSize, gpus: int = 0) -> dict[str, Any]:
    amounts: dict[str, Any] = {"cpu": size.cpu, "memory": size.memory}
    if gpus:
        amounts["nvidia.com/gpu"] = gpus
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def _from_secret(name: str, secret: str, key: str, optional: bool = False) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": secret, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def _optional(env_name: str) -> bool:
    """Whether a pod starts without this setting's key in the app Secret (``sentry-dsn``)."""
    return env_name.removeprefix("MODELSHIP_").lower() in OPTIONAL_SECRETS
