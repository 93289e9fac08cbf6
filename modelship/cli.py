"""The ``modelship`` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml

DEFAULT_CONFIG = Path("config/serve_config.yaml")


def _app_args(config_path: Path) -> dict[str, object]:
    config = yaml.safe_load(config_path.read_text())
    args: dict[str, object] = config["applications"][0]["args"]
    return args


def serve(config_path: Path) -> int:
    """Serve the application on a local Ray cluster (``serve run`` on the config)."""
    serve_bin = Path(sys.executable).with_name("serve")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.execv(serve_bin, [str(serve_bin), "run", str(config_path)])
    return 0  # not reached


def models(config_path: Path) -> int:
    """Resolve every configured model and print its version (fetching remote ones once)."""
    from modelship.predictors import ModelStore
    from modelship.schemas import LabelingAppArgs

    args = LabelingAppArgs.model_validate(_app_args(config_path))
    store = ModelStore(args.settings.models_dir)
    for config in args.models:
        files = store.resolve(config.source)
        print(f"{config.name}\t{config.task}\t{files.version}\t{files.path}")
    return 0


def openapi() -> int:
    """Print the OpenAPI document (no Ray, no models needed)."""
    from modelship.api import create_api
    from modelship.local import LocalBackend
    from modelship.settings import Settings

    app = create_api(LocalBackend([], Settings()), Settings())
    print(json.dumps(app.openapi(), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modelship", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("serve", "serve ModelShip on a local Ray cluster"),
        ("models", "resolve configured models and print their versions"),
    ):
        command = sub.add_parser(name, help=help_text)
        command.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    sub.add_parser("openapi", help="print the OpenAPI document")
    ns = parser.parse_args(argv)
    if ns.command == "serve":
        return serve(ns.config)
    if ns.command == "models":
        return models(ns.config)
    return openapi()


if __name__ == "__main__":
    sys.exit(main())
