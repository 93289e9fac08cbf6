"""The ``modelship`` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from modelship.ops import cluster, db, drill, ray_jobs

if TYPE_CHECKING:
    from storage.keys import KeyInfo

DEFAULT_CONFIG = Path("config/serve_config.yaml")


class ConfigFileError(ValueError):
    """The config file cannot be read, or is not a Serve config: the command exits 2."""


def _read_config(config_path: Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load(config_path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigFileError(f"{config_path}: cannot be read as YAML: {exc}") from exc
    if not isinstance(config, dict):
        raise ConfigFileError(f"{config_path}: not a Serve config (a mapping of applications)")
    return config


def _application(config_path: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The config's first application, whose ``args`` is a mapping."""
    apps = config.get("applications")
    if not isinstance(apps, list) or not apps or not isinstance(apps[0], dict):
        raise ConfigFileError(f"{config_path}: applications: one application expected")
    if not isinstance(apps[0].get("args") or {}, dict):
        raise ConfigFileError(f"{config_path}: applications[0].args: must be a mapping")
    application: dict[str, Any] = apps[0]
    return application


def _app_args(config_path: Path) -> dict[str, object]:
    args: dict[str, object] = _application(config_path, _read_config(config_path)).get("args") or {}
    return args


def serve(config_path: Path) -> int:
    """Serve the application on a local Ray cluster (``serve run`` on the config), with
    Serve's fast data path unless the config asks for TLS (``modelship.ops.ray_env``).

    It refuses to start while something listens on the config's Serve port: a second
    instance would start a Ray cluster of its own whose HAProxy cannot bind that port,
    and whose replicas would share the first one's replica ports (``SO_REUSEPORT``,
    ``ray_env._replica_ports``), taking some of its requests.
    """
    from modelship.ops.ray_env import ray_environment

    config = _read_config(config_path)
    _check_model_deployments(config_path, _application(config_path, config))
    http_options = config.get("http_options") or {}
    taken = _serve_port_taken(config_path, http_options)
    if taken:
        print(
            f"modelship serve: {taken}; is another modelship serve running? Stop it, or give"
            f" this one another http_options.port in {config_path}",
            file=sys.stderr,
        )
        return 1
    serve_bin = Path(sys.executable).with_name("serve")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # The dashboard and Job Submission API refuse calls without the cluster's token
    # (~/.ray/auth_token): nobody local can submit a job that reads the service's secrets.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ.update(ray_environment(http_options, os.environ))
    return _supervise([str(serve_bin), "run", str(config_path)])


def _check_model_deployments(config_path: Path, application: dict[str, Any]) -> None:
    """Refuse, before Ray starts, a model's deployment entry that its replica would not
    follow: a GPU given in ``ray_actor_options`` only, a ``user_config`` it would refuse.
    (The rest of the file is Serve's to check, as ``serve run`` reads it.)"""
    from modelship.core.config import LabelingAppArgs
    from modelship.ops.cluster.serve_config import ConfigError, check_model_deployments

    args = LabelingAppArgs.model_validate(application.get("args") or {})
    entries = application.get("deployments") or []
    if isinstance(entries, list) and all(isinstance(entry, dict) for entry in entries):
        try:
            check_model_deployments(entries, args)
        except ConfigError as exc:
            raise ConfigFileError(f"{config_path}: {exc}") from exc


def _serve_port_taken(config_path: Path, http_options: dict[str, Any]) -> str | None:
    """Why Serve could not listen where the config says (as Serve binds: SO_REUSEADDR, so
    only a listener counts), or None."""
    import socket

    host = str(http_options.get("host") or "127.0.0.1")
    try:
        port = int(http_options.get("port") or 8000)
    except (TypeError, ValueError) as exc:
        raise ConfigFileError(f"{config_path}: http_options.port: not a port number") from exc
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.create_server((host, port), family=family):
            return None
    except OSError as exc:
        return f"cannot listen on {host}:{port} ({exc.strerror or exc})"


def _supervise(argv: list[str]) -> int:
    """Run ``argv`` (``serve run``) as a child in its own session until it exits; the first
    SIGTERM or SIGINT reaches it as one SIGINT, and later ones are not passed on.

    ``serve run`` shuts Serve and its cluster down on Ctrl-C only; a SIGTERM (systemd,
    ``docker stop``, ``kill``) would end it with Serve's HAProxy still holding the ports
    and the next start failing. A second SIGINT while it shuts down (an impatient Ctrl-C,
    a supervisor's repeated SIGTERM) would interrupt ``serve.shutdown()`` the same way.
    """
    import signal
    import subprocess

    child: subprocess.Popen[bytes] | None = None
    stopping = forwarded = False

    def forward() -> None:
        nonlocal forwarded
        if child is not None and not forwarded:
            forwarded = True
            child.send_signal(signal.SIGINT)

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        if stopping:
            print("modelship serve: already stopping, please wait", file=sys.stderr)
            return
        stopping = True
        forward()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # Its own session: a terminal's Ctrl-C reaches it once, through us, like a SIGTERM.
    child = subprocess.Popen(argv, start_new_session=True)
    if stopping:  # a signal came while it started
        forward()
    return child.wait()


def models(config_path: Path) -> int:
    """Resolve every configured model and print its version (fetching remote ones once)."""
    from modelship.core.config import LabelingAppArgs
    from modelship.predictors import ModelStore

    args = LabelingAppArgs.model_validate(_app_args(config_path))
    store = ModelStore(args.settings.models_dir)
    for config in args.models:
        files = store.resolve(config.source)
        print(f"{config.name}\t{config.task}\t{files.version}\t{files.path}")
    return 0


def preflight(config_path: Path, as_json: bool) -> int:
    """Check settings, services, disk and models; non-zero exit if anything fails."""
    import asyncio
    from dataclasses import asdict

    from pydantic import ValidationError

    from modelship.core.config import LabelingAppArgs
    from modelship.ops.preflight import run_checks, table

    try:
        args = LabelingAppArgs.model_validate(_app_args(config_path))
    except ValidationError as exc:
        print(f"settings: FAILED ({config_path})\n{exc}", file=sys.stderr)
        return 2
    checks = asyncio.run(run_checks(args))
    print(json.dumps([asdict(c) for c in checks], indent=2) if as_json else table(checks))
    return 0 if all(c.ok for c in checks) else 1


def stop_services(config_path: Path) -> int:
    """Stop the embedded PostgreSQL and Redis under the config's data dir, which ``modelship
    serve`` and local batch jobs leave running for the next start; their data stays."""
    from modelship.core.config import LabelingAppArgs
    from storage.embedded import stop_embedded

    data_dir = LabelingAppArgs.model_validate(_app_args(config_path)).settings.data_dir
    stop_embedded(data_dir / "services")
    print(f"stopped the embedded PostgreSQL and Redis under {data_dir / 'services'}")
    return 0


def keys(ns: argparse.Namespace) -> int:
    """Create a key (printed once, stored hashed), list keys, or revoke one."""
    import asyncio

    from modelship.core.settings import Settings
    from storage.keys import KeyStore
    from storage.services import Services

    settings = Settings()

    async def run() -> int:
        services = Services.from_settings(settings)
        store = KeyStore(services.db, settings.secret_key.get_secret_value())
        try:
            if ns.action == "create":
                key, principal = await store.create(ns.tenant, ns.scope, ns.name, ns.project)
                print(key)
                projects = ", ".join(str(p) for p in ns.project or [])
                print(
                    f"key {principal.key_id} for tenant {principal.tenant}, scopes"
                    f" {', '.join(sorted(principal.scopes))}"
                    f"{', projects ' + projects if projects else ''}:"
                    " shown once, stored hashed",
                    file=sys.stderr,
                )
            elif ns.action == "list":
                found = await store.list_keys(ns.tenant, ns.revoked)
                print(_keys_json(found) if ns.json else _keys_table(found))
            else:
                await store.revoke(ns.key_id)
                print(f"revoked {ns.key_id}", file=sys.stderr)
        finally:
            await services.close()
        return 0

    return asyncio.run(run())


def _keys_json(found: list[KeyInfo]) -> str:
    from dataclasses import asdict

    return json.dumps([asdict(info) for info in found], indent=2, default=str)


def _keys_table(found: list[KeyInfo]) -> str:
    lines = ["KEY ID\tTENANT\tNAME\tSTARTS\tSCOPES\tPROJECTS\tCREATED\tREVOKED"]
    for info in found:
        projects = ",".join(map(str, info.project_ids)) if info.project_ids is not None else "all"
        lines.append(
            f"{info.key_id}\t{info.tenant}\t{info.name or '-'}\tms_{info.prefix}_\t"
            f"{','.join(info.scopes)}\t{projects}\t{info.created_at:%Y-%m-%d %H:%M}\t"
            f"{f'{info.revoked_at:%Y-%m-%d %H:%M}' if info.revoked_at else '-'}"
        )
    return "\n".join(lines)


def smoke(ns: argparse.Namespace) -> int:
    """Check a running deployment from outside; non-zero exit on any failure."""
    from dataclasses import asdict

    from modelship.ops.smoke import Smoke, table

    checker = Smoke(ns.url, ns.api_key)
    try:
        results = checker.run(ns.samples, ns.rate_limit)
    finally:
        checker.close()
    print(json.dumps([asdict(r) for r in results], indent=2) if ns.json else table(results))
    return 0 if all(r.ok for r in results) else 1


def openapi() -> int:
    """Print the OpenAPI document (no Ray, no models needed)."""
    from modelship.core.settings import Settings
    from modelship.http.app import create_api
    from modelship.service.labeling import LocalLabeler

    app = create_api(LocalLabeler([], Settings()), [], Settings())
    print(json.dumps(app.openapi(), indent=2))
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number above 0")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modelship", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("serve", "serve ModelShip on a local Ray cluster"),
        ("models", "resolve configured models and print their versions"),
        ("preflight", "check settings, PostgreSQL, Redis, object storage, disk and models"),
        ("stop-services", "stop the embedded PostgreSQL and Redis (the data stays)"),
    ):
        command = sub.add_parser(name, help=help_text)
        command.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
        if name == "preflight":
            command.add_argument("--json", action="store_true", help="JSON instead of a table")
    sub.add_parser("openapi", help="print the OpenAPI document")
    smoke_parser = sub.add_parser("smoke", help="check a running deployment from outside")
    smoke_parser.add_argument("--url", required=True)
    smoke_parser.add_argument("--api-key", default=os.environ.get("MODELSHIP_API_KEY"))
    smoke_parser.add_argument("--samples", type=_positive, default=20, help="latency samples")
    smoke_parser.add_argument(
        "--rate-limit", type=_positive, help="the burst configured: expect a 429 right after it"
    )
    smoke_parser.add_argument("--json", action="store_true")
    key_parser = sub.add_parser("keys", help="create, list or revoke API keys")
    key_actions = key_parser.add_subparsers(dest="action", required=True)
    create = key_actions.add_parser("create", help="create a key and print it (once)")
    create.add_argument("--tenant", default="default")
    create.add_argument(
        "--scope",
        action="append",
        required=True,
        choices=["read", "label", "review", "export", "admin"],
        help="repeat for several; admin allows everything",
    )
    create.add_argument("--name", default="", help="what the key is for")
    create.add_argument(
        "--project",
        action="append",
        metavar="PROJECT_ID",
        type=uuid.UUID,
        help="bind the key to this project (repeat for several); default: every project",
    )
    listing = key_actions.add_parser("list", help="list keys (ids, names, how they start)")
    listing.add_argument("--tenant", help="one tenant's keys (default: every tenant's)")
    listing.add_argument("--revoked", action="store_true", help="revoked keys too")
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    revoke = key_actions.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id", type=uuid.UUID)
    cluster.add_parser(sub)
    db.add_parser(sub)
    ray_jobs.add_parser(sub)
    drill.add_parser(sub)
    ns = parser.parse_args(argv)
    try:
        return _dispatch(ns)
    except ConfigFileError as exc:
        print(f"modelship {ns.command}: {exc}", file=sys.stderr)
        return 2


def _dispatch(ns: argparse.Namespace) -> int:
    from pydantic import ValidationError

    if ns.command in ("serve", "models", "stop-services"):
        command = {"serve": serve, "models": models, "stop-services": stop_services}
        try:
            return command[ns.command](ns.config)
        except ValidationError as exc:
            raise ConfigFileError(f"{ns.config}: {exc}") from exc
    if ns.command == "preflight":
        return preflight(ns.config, ns.json)
    if ns.command == "keys":
        return keys(ns)
    if ns.command == "smoke":
        return smoke(ns)
    if ns.command == "drill":
        return drill.run(ns)
    if ns.command == "cluster":
        return cluster.run(ns)
    if ns.command == "db":
        return db.run(ns)
    if ns.command == "jobs":
        return ray_jobs.run(ns)
    return openapi()


if __name__ == "__main__":
    sys.exit(main())
