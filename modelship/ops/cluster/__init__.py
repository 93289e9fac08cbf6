"""``modelship cluster render|apply|status|scale``: ModelShip on a KubeRay cluster.

``render`` writes the manifests (``render.py``) from config/serve_config.yaml and needs
nothing but the files; ``apply``, ``status`` and ``scale`` reach the Kubernetes API
(``kube.py``) with the kubeconfig's credentials or the pod's own.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

DEFAULT_CONFIG = Path("config/serve_config.yaml")


def add_parser(subparsers: Any) -> None:
    """Add ``cluster`` and its actions to the ``modelship`` command's subparsers."""
    parser = subparsers.add_parser("cluster", help="run ModelShip on a KubeRay cluster")
    actions = parser.add_subparsers(dest="cluster_action", required=True)

    render = actions.add_parser("render", help="print the RayService (or RayJob) manifests")
    _options_arguments(render)
    render.add_argument(
        "--kind",
        choices=["service", "job", "all", "serve"],
        default="service",
        help="service: RayService and its NetworkPolicy; job: the RayJob and its; "
        "serve: only the cluster's Serve config (for serve deploy on one host)",
    )
    render.add_argument("-o", "--output", type=Path, help="write here instead of stdout")

    apply = actions.add_parser("apply", help="create or update the RayService")
    _options_arguments(apply)
    _api_arguments(apply)

    status = actions.add_parser("status", help="conditions, groups, applications, deployments")
    _target_arguments(status)
    _api_arguments(status)
    status.add_argument("--json", action="store_true", help="JSON instead of a table")

    scale = actions.add_parser("scale", help="change a worker group's or deployment's bounds")
    _target_arguments(scale)
    _api_arguments(scale)
    what = scale.add_mutually_exclusive_group(required=True)
    what.add_argument("--group", help="worker group: cpu or gpu")
    what.add_argument("--deployment", help="Serve deployment, e.g. Model-minilm-zero-shot")
    scale.add_argument("--min", type=int, dest="min_replicas")
    scale.add_argument("--max", type=int, dest="max_replicas")


def run(ns: argparse.Namespace, api: Any = None) -> int:
    """Carry out a parsed ``modelship cluster`` command; ``api`` stands in for the
    Kubernetes ``CustomObjectsApi`` (``kube.CustomObjects``) when given."""
    from modelship.ops.cluster.kube import (
        KubeUnavailable,
        RayServices,
        ScaleError,
        kubernetes_api,
    )
    from modelship.ops.cluster.render import render, render_serve_config, to_yaml
    from modelship.ops.cluster.serve_config import ConfigError

    action = ns.cluster_action
    try:
        if action == "render":
            if ns.kind == "serve":
                text = yaml.safe_dump(render_serve_config(ns.config), sort_keys=False)
            else:
                text = to_yaml(render(ns.config, _options(ns), ns.kind))
            if ns.output:
                try:
                    ns.output.write_text(text)
                except OSError as exc:
                    print(f"modelship cluster render: -o {ns.output}: {exc}", file=sys.stderr)
                    return 1
            else:
                sys.stdout.write(text)
            return 0
        if action == "apply":
            service, _policy = render(ns.config, _options(ns), "service")
            namespace = service["metadata"]["namespace"]
            outcome = RayServices(api or kubernetes_api(ns.context), namespace).apply(service)
            print(
                f"RayService {namespace}/{service['metadata']['name']} {outcome}", file=sys.stderr
            )
            return 0
        services = RayServices(api or kubernetes_api(ns.context), ns.namespace)
        if action == "status":
            state = services.status(ns.name)
            print(json.dumps(asdict(state), indent=2) if ns.json else state.table())
            return 0 if state.ready else 1
        if ns.min_replicas is None and ns.max_replicas is None:
            print("modelship cluster scale: give --min, --max or both", file=sys.stderr)
            return 2
        if ns.group:
            clusters = services.scale_group(ns.name, ns.group, ns.min_replicas, ns.max_replicas)
            where = ", ".join(f"RayCluster {c}" for c in clusters) or "no RayCluster yet"
            print(f"scaled group {ns.group} of {ns.name} ({where})", file=sys.stderr)
        else:
            services.scale_deployment(ns.name, ns.deployment, ns.min_replicas, ns.max_replicas)
            print(f"scaled {ns.deployment} of {ns.name}", file=sys.stderr)
        return 0
    except ConfigError as exc:
        print(f"modelship cluster {action}: {ns.config}: {exc}", file=sys.stderr)
        return 2
    except ScaleError as exc:
        print(f"modelship cluster scale: {exc}", file=sys.stderr)
        return 2
    except KubeUnavailable as exc:
        print(f"modelship cluster {action}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        status = getattr(exc, "status", None)
        if status is None:
            raise
        reason = getattr(exc, "reason", "") or ""
        print(f"modelship cluster {action}: Kubernetes API: {status} {reason}", file=sys.stderr)
        return 1


def _options(ns: argparse.Namespace) -> Any:
    from pydantic import ValidationError

    from modelship.ops.cluster.options import ClusterOptions
    from modelship.ops.cluster.serve_config import ConfigError

    overrides = {"image": ns.image, "name": ns.name, "namespace": ns.namespace}
    if ns.job_arg:
        overrides["job"] = {"args": ns.job_arg}
    try:
        return ClusterOptions.from_file(ns.options, **overrides)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"options {ns.options}", f"cannot be read as YAML: {exc}") from exc
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or str(ns.options)
        raise ConfigError(f"options {where}", error["msg"]) from exc


def _options_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="Serve config")
    parser.add_argument("--options", type=Path, help="YAML of cluster options (options.py)")
    parser.add_argument("--image", help="container image built from cluster/Dockerfile")
    parser.add_argument("--name", help="RayService name (default modelship)")
    parser.add_argument("--namespace", help="Kubernetes namespace (default modelship)")
    parser.add_argument(
        "--job-arg", action="append", help="--job-arg=ARG: one argument of jobs.label_dataset"
    )


def _target_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default="modelship", help="RayService name")
    parser.add_argument("--namespace", default="modelship", help="Kubernetes namespace")


def _api_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--context", help="kubeconfig context (default: the current one)")
