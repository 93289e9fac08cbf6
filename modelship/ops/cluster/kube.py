"""The RayService through the Kubernetes API: apply a rendered one, read its status, change
a worker group's or a deployment's replica bounds.

A worker group's bounds are in two places. KubeRay copies the RayService's
``rayClusterConfig`` into a RayCluster when it creates one, and leaves ``replicas``,
``minReplicas`` and ``maxReplicas`` out of the hash it compares afterwards (v1.7.0,
``GenerateHashWithoutReplicasAndWorkersToDelete``): a later change to them in the
RayService never reaches the running cluster. So scaling a group writes both, and status
reads the bounds from the cluster.

It goes through the ``kubernetes`` client's ``CustomObjectsApi`` (group ``ray.io``, version
``v1``), as KubeRay's own Python client does; any object with the same methods will do
(``CustomObjects``), which is how the tests drive it without an API server.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Protocol

import yaml

GROUP = "ray.io"
VERSION = "v1"
PLURAL = "rayservices"
CLUSTERS = "rayclusters"
_WRITE_TRIES = 3  # the autoscaler writes a RayCluster's replicas too: re-read on a conflict


class CustomObjects(Protocol):
    """The part of ``kubernetes.client.CustomObjectsApi`` used here. Failures raise an
    exception with the HTTP ``status`` (``kubernetes.client.ApiException``)."""

    def get_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> Any: ...

    def create_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, body: Any
    ) -> Any: ...

    def replace_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str, body: Any
    ) -> Any: ...


class KubeUnavailable(RuntimeError):
    """No Kubernetes client or no credentials to reach an API server."""


class ScaleError(ValueError):
    """A scale request that cannot apply (unknown group or deployment, min above max)."""


@dataclass(frozen=True)
class ServiceStatus:
    """What ``modelship cluster status`` reports about one RayService: ``groups`` are the
    bounds in force, the active RayCluster's (the RayService's own before there is one)."""

    name: str
    ready: bool
    conditions: dict[str, str] = field(default_factory=dict)
    cluster: str | None = None
    applications: dict[str, str] = field(default_factory=dict)
    deployments: dict[str, str] = field(default_factory=dict)
    groups: dict[str, str] = field(default_factory=dict)

    def table(self) -> str:
        lines = [f"RayService {self.name}: {'ready' if self.ready else 'NOT READY'}"]
        lines += [f"  condition {name}: {value}" for name, value in self.conditions.items()]
        lines.append(f"  active cluster: {self.cluster or '-'}")
        lines += [f"  group {name}: {bounds}" for name, bounds in self.groups.items()]
        lines += [f"  application {name}: {state}" for name, state in self.applications.items()]
        lines += [f"  deployment {name}: {state}" for name, state in self.deployments.items()]
        return "\n".join(lines)


class RayServices:
    """RayServices of one namespace."""

    def __init__(self, api: CustomObjects, namespace: str) -> None:
        self._api = api
        self._namespace = namespace

    def get(self, name: str) -> dict[str, Any]:
        return self._get(PLURAL, name)

    def apply(self, manifest: dict[str, Any]) -> str:
        """Create the RayService, or replace the spec of the one there (its
        ``resourceVersion`` kept, so a concurrent change fails instead of being lost).

        Returns:
            ``"created"`` or ``"updated"``.
        """
        name = manifest["metadata"]["name"]
        try:
            existing = self.get(name)
        except Exception as exc:
            if getattr(exc, "status", None) != 404:
                raise
            self._api.create_namespaced_custom_object(
                GROUP, VERSION, self._namespace, PLURAL, manifest
            )
            return "created"
        body = copy.deepcopy(manifest)
        body["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
        self._api.replace_namespaced_custom_object(
            GROUP, VERSION, self._namespace, PLURAL, name, body
        )
        return "updated"

    def status(self, name: str) -> ServiceStatus:
        """The RayService's conditions, its active cluster's groups, and Serve's view of
        each application and deployment, as KubeRay last recorded them."""
        service = self.get(name)
        status = service.get("status") or {}
        conditions = {
            c["type"]: f"{c.get('status')} ({c.get('reason', '')})".replace(" ()", "")
            for c in status.get("conditions") or []
        }
        active = status.get("activeServiceStatus") or {}
        apps = active.get("applicationStatuses") or {}
        groups = self._groups(service, active.get("rayClusterName"))
        return ServiceStatus(
            name=name,
            ready=conditions.get("Ready", "").startswith("True"),
            conditions=conditions,
            cluster=active.get("rayClusterName"),
            applications={app: s.get("status", "?") for app, s in apps.items()},
            deployments={
                deployment: d.get("status", "?")
                for s in apps.values()
                for deployment, d in (s.get("serveDeploymentStatuses") or {}).items()
            },
            groups=groups,
        )

    def scale_group(
        self, name: str, group: str, min_replicas: int | None, max_replicas: int | None
    ) -> list[str]:
        """Change a worker group's autoscaling bounds in place, in the RayService (kept for
        the clusters KubeRay creates later) and in its active and pending RayClusters (in
        force now; KubeRay would not copy them there). A cluster keeps the replicas its
        autoscaler chose, brought within the new bounds.

        Returns:
            The RayClusters changed (none before KubeRay has created one).
        """
        service = self.get(name)
        spec = _group(service["spec"]["rayClusterConfig"], group)
        low, high = _bounds(
            spec.get("minReplicas", 0), spec.get("maxReplicas"), min_replicas, max_replicas
        )
        status = service.get("status") or {}
        clusters: dict[str, dict[str, Any]] = {}
        for key in ("activeServiceStatus", "pendingServiceStatus"):
            cluster = (status.get(key) or {}).get("rayClusterName")
            found = self._find(CLUSTERS, cluster) if cluster else None
            if cluster and found is not None:
                _group(found["spec"], group)  # refused before anything is written
                clusters[cluster] = found
        _set_bounds(spec, low, high)
        self._replace(name, service)
        for cluster, found in clusters.items():
            self._scale_cluster(cluster, found, group, low, high)
        return list(clusters)

    def scale_deployment(
        self, name: str, deployment: str, min_replicas: int | None, max_replicas: int | None
    ) -> dict[str, Any]:
        """Change one Serve deployment's ``autoscaling_config`` bounds in serveConfigV2;
        KubeRay applies a Serve config change without a new cluster."""
        service = self.get(name)
        config = yaml.safe_load(service["spec"]["serveConfigV2"])
        entries = [d for app in config["applications"] for d in app.get("deployments") or []]
        entry = next((d for d in entries if d["name"] == deployment), None)
        if entry is None:
            known = ", ".join(d["name"] for d in entries)
            raise ScaleError(f"no deployment {deployment!r} (there are: {known})")
        autoscaling = entry.setdefault("autoscaling_config", {})
        low, high = _bounds(
            autoscaling.get("min_replicas", 1),
            autoscaling.get("max_replicas", 1),
            min_replicas,
            max_replicas,
        )
        autoscaling["min_replicas"], autoscaling["max_replicas"] = low, high
        service["spec"]["serveConfigV2"] = yaml.safe_dump(config, sort_keys=False)
        return self._replace(name, service)

    def _groups(self, service: dict[str, Any], cluster: str | None) -> dict[str, str]:
        """Each worker group's bounds: the RayCluster's, and its replicas; the RayService's
        where there is no cluster yet."""
        found = self._find(CLUSTERS, cluster) if cluster else None
        if found is not None:
            return {
                g["groupName"]: f"{_bounds_text(g)}, replicas {g.get('replicas', '-')}"
                for g in found["spec"].get("workerGroupSpecs") or []
            }
        where = f"RayCluster {cluster} not found" if cluster else "no RayCluster yet"
        return {
            g["groupName"]: f"{_bounds_text(g)} (RayService spec: {where})"
            for g in service["spec"]["rayClusterConfig"].get("workerGroupSpecs") or []
        }

    def _scale_cluster(
        self, name: str, cluster: dict[str, Any], group: str, low: int, high: int
    ) -> None:
        """Write the bounds into the RayCluster as read; read again when another writer
        (the autoscaler, setting replicas) changed it since."""
        for attempt in range(_WRITE_TRIES):
            _set_bounds(_group(cluster["spec"], group), low, high)
            cluster.pop("status", None)
            try:
                self._api.replace_namespaced_custom_object(
                    GROUP, VERSION, self._namespace, CLUSTERS, name, cluster
                )
                return
            except Exception as exc:
                if getattr(exc, "status", None) != 409 or attempt == _WRITE_TRIES - 1:
                    raise
            cluster = self._get(CLUSTERS, name)

    def _find(self, plural: str, name: str) -> dict[str, Any] | None:
        try:
            return self._get(plural, name)
        except Exception as exc:
            if getattr(exc, "status", None) != 404:
                raise
            return None

    def _get(self, plural: str, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self._api.get_namespaced_custom_object(
            GROUP, VERSION, self._namespace, plural, name
        )
        return found

    def _replace(self, name: str, service: dict[str, Any]) -> dict[str, Any]:
        service.pop("status", None)
        replaced: dict[str, Any] = self._api.replace_namespaced_custom_object(
            GROUP, VERSION, self._namespace, PLURAL, name, service
        )
        return replaced


def kubernetes_api(context: str | None = None) -> CustomObjects:
    """The real ``CustomObjectsApi``: in-cluster credentials in a pod, else the kubeconfig."""
    try:
        from kubernetes import client, config
    except ImportError as exc:  # an optional dependency: only apply/status/scale need it
        raise KubeUnavailable(
            "apply, status and scale need the kubernetes client: pip install kubernetes==36.0.3"
        ) from exc
    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config(context=context)
        except (config.ConfigException, OSError) as exc:
            raise KubeUnavailable(f"no Kubernetes credentials (kubeconfig): {exc}") from exc
    api: CustomObjects = client.CustomObjectsApi()
    return api


def _group(cluster_spec: dict[str, Any], group: str) -> dict[str, Any]:
    groups = cluster_spec.get("workerGroupSpecs") or []
    found = next((g for g in groups if g["groupName"] == group), None)
    if found is None:
        known = ", ".join(g["groupName"] for g in groups)
        raise ScaleError(f"no worker group {group!r} (there are: {known})")
    return found


def _set_bounds(spec: dict[str, Any], low: int, high: int) -> None:
    spec["minReplicas"], spec["maxReplicas"] = low, high
    spec["replicas"] = min(max(spec.get("replicas", low), low), high)


def _bounds_text(spec: dict[str, Any]) -> str:
    return f"min {spec.get('minReplicas', 0)}, max {spec.get('maxReplicas', '-')}"


def _bounds(
    current_min: int, current_max: int | None, new_min: int | None, new_max: int | None
) -> tuple[int, int]:
    low = current_min if new_min is None else new_min
    high = current_max if new_max is None else new_max
    if high is None:
        raise ScaleError("no max_replicas set: give --max")
    if low < 0 or high < 1 or low > high:
        raise ScaleError(f"min {low} and max {high}: need 0 <= min <= max and max >= 1")
    return low, high
