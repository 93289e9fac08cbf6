"""``FakeCustomObjects``: a small named fake of ``kube.CustomObjects`` (no Kubernetes API server
runs here). It keeps objects as the API server would: ``resourceVersion`` bumped on every
write, a stale one refused (409), ``status`` kept apart from what clients write, and every
body checked against KubeRay's CRD (422 when invalid)."""

from __future__ import annotations

import copy
from typing import Any

from kubernetes.client.exceptions import ApiException

from tests.cluster import crd

_KINDS = {("ray.io", "rayservices"): "RayService", ("ray.io", "rayjobs"): "RayJob"}


class FakeCustomObjects:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.writes = 0
        self._version = 0

    def get_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> Any:
        return copy.deepcopy(self._stored(group, namespace, plural, name))

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
