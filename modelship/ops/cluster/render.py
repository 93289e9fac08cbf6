"""Kubernetes manifests rendered from config/serve_config.yaml, the one source of truth: the
RayService that serves ModelShip, the RayJob that labels a dataset, and a NetworkPolicy for
each that leaves only the Serve port open.

Pure functions (a file in, dicts out); nothing here talks to Kubernetes (``kube.py`` does).
A manifest names Secrets and never holds a secret value.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from modelship.core.config import LabelingAppArgs
from modelship.ops.cluster import serve_config
from modelship.ops.cluster.options import GPU_GROUP_RESOURCE, ClusterOptions
from modelship.ops.cluster.pods import (
    DASHBOARD_PORT,
    METRICS_PORT,
    SERVE_PORT_NAME,
    cluster_spec,
    labels,
)

RAY_API_VERSION = "ray.io/v1"
JOB_ENTRYPOINT = ("python", "-m", "jobs.label_dataset")
Kind = Literal["service", "job", "all"]


def ray_service(
    config: Mapping[str, Any], args: LabelingAppArgs, options: ClusterOptions
) -> dict[str, Any]:
    """The RayService: serveConfigV2 is the file with only the cluster's changes
    (``serve_config.cluster_config``); GCS state survives head restarts in Redis.

    With no Serve proxy on the workers (``proxy_location: HeadOnly``), workers get probes
    of their own (``pods.worker_probes``) and the Serve Service targets the port named
    ``serve``, which only the head declares: KubeRay labels every RayService worker for
    that Service, and a Ready worker would otherwise get requests on a port nothing
    listens on."""
    serve = serve_config.cluster_config(dict(config), args)
    head_only = not serve_config.proxies_on_workers(serve)
    spec: dict[str, Any] = {
        # A changed cluster spec brings up a new cluster and moves traffic when it
        # serves; a Serve config change alone is applied in place, replica by replica.
        "upgradeStrategy": {"type": options.upgrade_strategy},
        "serveConfigV2": yaml.safe_dump(serve, sort_keys=False),
        "rayClusterConfig": cluster_spec(
            options, options.name, serve["http_options"], gcs_ft=True, probe_workers=head_only
        ),
    }
    if head_only:
        port = int(serve["http_options"].get("port", 8000))
        spec["serveService"] = {
            "spec": {
                "ports": [{"name": SERVE_PORT_NAME, "port": port, "targetPort": SERVE_PORT_NAME}]
            }
        }
    return {
        "apiVersion": RAY_API_VERSION,
        "kind": "RayService",
        "metadata": {
            "name": options.name,
            "namespace": options.namespace,
            "labels": labels(options.name, "serve"),
        },
        "spec": spec,
    }


def ray_job(
    config: Mapping[str, Any], args: LabelingAppArgs, options: ClusterOptions
) -> dict[str, Any]:
    """The RayJob for a dataset (``python -m jobs.label_dataset``) on its own cluster of the
    same shape, deleted ``job.ttl_after_finished_s`` after the job ends; KubeRay submits it
    over the dashboard's API. Label actors ask for the GPU group's resource, as model
    replicas do, and the GPU group starts empty: the autoscaler adds GPU pods for them."""
    job = options.job
    http_options = serve_config.cluster_config(dict(config), args)["http_options"]
    on_demand = options.model_copy(
        update={"gpu_group": options.gpu_group.model_copy(update={"min_replicas": 0})}
    )
    command = [*JOB_ENTRYPOINT, "--model-resource", GPU_GROUP_RESOURCE, *job.args]
    return {
        "apiVersion": RAY_API_VERSION,
        "kind": "RayJob",
        "metadata": {
            "name": job.name,
            "namespace": options.namespace,
            "labels": labels(job.name, "batch"),
        },
        "spec": {
            "entrypoint": shlex.join(command),
            "submissionMode": "HTTPMode",
            "backoffLimit": 2,  # a rerun skips the items already labeled
            "activeDeadlineSeconds": job.active_deadline_s,
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": job.ttl_after_finished_s,
            "rayClusterSpec": cluster_spec(on_demand, job.name, http_options, gcs_ft=False),
        },
    }


def network_policy(
    options: ClusterOptions, instance: str, serve_port: int | None
) -> dict[str, Any]:
    """Ingress to one instance's pods: anything between its own pods (GCS, raylets, object
    transfers), the dashboard and job API only from the KubeRay operator, metrics only from
    Prometheus, and from anywhere only the Serve port (none for a job's cluster)."""
    own = {
        "app.kubernetes.io/instance": instance,
        "app.kubernetes.io/part-of": "modelship",
    }
    rules: list[dict[str, Any]] = [
        {"from": [{"podSelector": {"matchLabels": own}}]},
        _from_namespace(options.operator_namespace, DASHBOARD_PORT),
        _from_namespace(options.monitoring_namespace, METRICS_PORT),
    ]
    if serve_port is not None:
        rules.append({"ports": [{"protocol": "TCP", "port": serve_port}]})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": f"{instance}-ray",
            "namespace": options.namespace,
            "labels": labels(instance, "network-policy"),
        },
        "spec": {"podSelector": {"matchLabels": own}, "policyTypes": ["Ingress"], "ingress": rules},
    }


def render(config_path: Path, options: ClusterOptions, kind: Kind = "all") -> list[dict[str, Any]]:
    """Every manifest of ``kind`` for the config at ``config_path``.

    Raises:
        serve_config.ConfigError: the config is invalid or not fit for a cluster; its
            ``field`` names where.
    """
    config, args = serve_config.load(config_path)
    port = int((config.get("http_options") or {}).get("port", 8000))
    manifests: list[dict[str, Any]] = []
    if kind in ("service", "all"):
        manifests += [
            ray_service(config, args, options),
            network_policy(options, options.name, port),
        ]
    if kind in ("job", "all"):
        manifests += [
            ray_job(config, args, options),
            network_policy(options, options.job.name, None),
        ]
    return manifests


def render_serve_config(config_path: Path) -> dict[str, Any]:
    """The Serve config as the cluster runs it (serveConfigV2), for ``serve deploy`` on a
    single host (cluster/compose.yaml); the head must offer the GPU group's resource."""
    config, args = serve_config.load(config_path)
    return serve_config.cluster_config(config, args)


def to_yaml(manifests: Iterable[Mapping[str, Any]]) -> str:
    """Manifests as one multi-document YAML stream, ``serveConfigV2`` as a readable block."""
    return "".join(
        "---\n" + yaml.dump(dict(m), Dumper=_BlockDumper, sort_keys=False) for m in manifests
    )


def _from_namespace(namespace: str, port: int) -> dict[str, Any]:
    return {
        "from": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}
        ],
        "ports": [{"protocol": "TCP", "port": port}],
    }


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings as literal blocks, and every mapping in full (no anchors)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _block(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _block)
