"""Validate a custom resource against KubeRay's CRD as the API server would, offline: drop
nulls, apply the schema's defaults, then check with JSON Schema where every object that
declares its properties refuses unknown ones (strict). CEL rules are not checked.

The CRDs are KubeRay v1.7.0's (Apache-2.0, ``crds/LICENSE``), gzipped beside this file.
"""

from __future__ import annotations

import copy
import gzip
import os
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

CRDS = Path(os.environ.get("MODELSHIP_KUBERAY_CRDS", Path(__file__).resolve().parent / "crds"))


class CrdMissing(RuntimeError):
    """The CRD files are not where they should be: a test fails, it never skips."""


@cache
def schema(kind: str, version: str = "v1") -> dict[str, Any]:
    """The strict OpenAPI v3 schema of ``kind`` (e.g. RayService) at ``version``."""
    if not CRDS.is_dir():
        raise CrdMissing(f"KubeRay CRDs not found at {CRDS} (set MODELSHIP_KUBERAY_CRDS)")
    for path in sorted(CRDS.glob(f"*_{kind.lower()}s.yaml*")):
        text = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        crd = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        if crd["spec"]["names"]["kind"] != kind:
            continue
        for served in crd["spec"]["versions"]:
            if served["name"] == version:
                return _strict(copy.deepcopy(served["schema"]["openAPIV3Schema"]))
    raise CrdMissing(f"no CRD for {kind} {version} in {CRDS}")


def errors(resource: dict[str, Any]) -> list[str]:
    """Every schema violation of ``resource`` after defaulting, as ``path: message``."""
    group_version = resource.get("apiVersion", "")
    version = group_version.rsplit("/", 1)[-1]
    strict = schema(resource["kind"], version)
    document = _drop_nulls(copy.deepcopy(resource))
    _apply_defaults(strict, document)
    validator = jsonschema.Draft7Validator(strict)
    return sorted(
        f"{'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in validator.iter_errors(document)
    )


def _strict(node: Any) -> Any:
    if isinstance(node, dict):
        if node.get("nullable") is True and "type" in node:
            node["type"] = [node["type"], "null"]
        if (
            node.get("type") == "object"
            and "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        for value in node.values():
            _strict(value)
    elif isinstance(node, list):
        for value in node:
            _strict(value)
    return node


def _drop_nulls(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _drop_nulls(v) for k, v in node.items() if v is not None}
    if isinstance(node, list):
        return [_drop_nulls(v) for v in node]
    return node


def _apply_defaults(node: dict[str, Any], value: Any) -> None:
    if isinstance(value, dict):
        for name, child in (node.get("properties") or {}).items():
            if name not in value and "default" in child:
                value[name] = copy.deepcopy(child["default"])
            if name in value:
                _apply_defaults(child, value[name])
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            for name, item in value.items():
                if name not in (node.get("properties") or {}):
                    _apply_defaults(extra, item)
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for item in value:
            _apply_defaults(node["items"], item)
