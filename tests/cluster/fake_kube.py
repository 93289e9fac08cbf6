"""``FakeCustomObjects``: a small named fake of ``kube.CustomObjects`` (no Kubernetes API server
runs here). It keeps objects as the API server would: ``resourceVersion`` bumped on every
write, a stale one refused (409), ``status`` kept apart from what clients write, and every
body checked against KubeRay's CRD (422 when invalid). What KubeRay's operator and
autoscaler write is played by ``create_cluster`` and ``after_next_read``."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from kubernetes.client.exceptions import ApiException

from tests.cluster import crd

_KINDS = {
    ("ray.io", "rayservices"): "RayService",
    ("ray.io", "rayjobs"): "RayJob",
    ("ray.io", "rayclusters"): "RayCluster",
}


class FakeCustomObjects:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.writes = 0
        self._version = 0
        self._after_read: dict[tuple[str, str, str], Callable[[dict[str, Any]], None]] = {}

    def get_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> Any:
        found = copy.deepcopy(self._stored(group, namespace, plural, name))
        change = self._after_read.pop((namespace, plural, name), None)
        if change is not None:  # another writer, between this read and the reader's write
            changed = copy.deepcopy(self.objects[(namespace, plural, name)])
            change(changed["spec"])
            self._write((namespace, plural, name), changed)
        return found

    def create_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, body: Any
    ) -> Any:
        self._check(group, version, plural, body)
        key = (namespace, plural, body["metadata"]["name"])
        if key in self.objects:
            raise ApiException(status=409, reason="AlreadyExists")
        stored = copy.deepcopy(body)
        stored.pop("status", None)
        stored["metadata"]["generation"] = 1
        return self._write(key, stored)

    def replace_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str, body: Any
    ) -> Any:
        current = self._stored(group, namespace, plural, name)
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        self._check(group, version, plural, body)
        stored = copy.deepcopy(body)
        stored["status"] = copy.deepcopy(current.get("status"))  # status is a subresource
        generation = current["metadata"]["generation"]
        stored["metadata"]["generation"] = generation + (body["spec"] != current["spec"])
        return self._write((namespace, plural, name), stored)

    def set_status(self, namespace: str, plural: str, name: str, status: dict[str, Any]) -> None:
        """What KubeRay would write to the status subresource."""
        self.objects[(namespace, plural, name)]["status"] = copy.deepcopy(status)

    def create_cluster(self, namespace: str, service: str, cluster: str) -> None:
        """What KubeRay does for a new RayService: a RayCluster from its
        ``rayClusterConfig`` as it is now, named as the active cluster in its status. Later
        changes to the RayService's replica counts are not copied (v1.7.0 leaves them out
        of the spec hash it compares)."""
        owner = self.objects[(namespace, "rayservices", service)]
        body = {
            "apiVersion": "ray.io/v1",
            "kind": "RayCluster",
            "metadata": {"name": cluster, "namespace": namespace},
            "spec": copy.deepcopy(owner["spec"]["rayClusterConfig"]),
        }
        self.create_namespaced_custom_object("ray.io", "v1", namespace, "rayclusters", body)
        status = copy.deepcopy(owner.get("status") or {})
        status.setdefault("activeServiceStatus", {})["rayClusterName"] = cluster
        owner["status"] = status

    def after_next_read(
        self, namespace: str, plural: str, name: str, change: Callable[[dict[str, Any]], None]
    ) -> None:
        """Once the object is next read, another writer (the autoscaler) changes its spec."""
        self._after_read[(namespace, plural, name)] = change

    def _stored(self, group: str, namespace: str, plural: str, name: str) -> dict[str, Any]:
        if (group, plural) not in _KINDS or (namespace, plural, name) not in self.objects:
            raise ApiException(status=404, reason="Not Found")
        return self.objects[(namespace, plural, name)]

    def _check(self, group: str, version: str, plural: str, body: dict[str, Any]) -> None:
        kind = _KINDS.get((group, plural))
        if (
            kind is None
            or body.get("kind") != kind
            or body.get("apiVersion") != f"{group}/{version}"
        ):
            raise ApiException(status=400, reason=f"BadRequest: not a {plural} object")
        invalid = crd.errors({k: v for k, v in body.items() if k != "status"})
        if invalid:
            raise ApiException(status=422, reason="Invalid: " + "; ".join(invalid))

    def _write(self, key: tuple[str, str, str], stored: dict[str, Any]) -> dict[str, Any]:
        self._version += 1
        self.writes += 1
        stored["metadata"]["resourceVersion"] = str(self._version)
        self.objects[key] = stored
        return copy.deepcopy(stored)
