"""No secret ever lands in a rendered manifest or in serveConfigV2's args (the dashboard
shows them): credentials reach pods only as env from Secrets."""

from __future__ import annotations

import copy
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelship.ops.cluster import serve_config
from modelship.ops.cluster.emulate import PodConfigError, container_env
from modelship.ops.cluster.serve_config import ConfigError, secret_settings
from tests.cluster.conftest import CONFIG, ROOT

CREDENTIAL_ENV = {*secret_settings(), "RAY_AUTH_TOKEN"}
URL_WITH_PASSWORD = re.compile(r"://[^/\s:@]*:[^/\s@]+@")


def containers(manifest: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = manifest["spec"]
    cluster = spec.get("rayClusterConfig") or spec.get("rayClusterSpec")
    if cluster is None:
        return
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        yield from group["template"]["spec"]["containers"]


def test_no_secret_value_reaches_any_manifest() -> None:
    """Rendered in an environment full of real-looking secrets, none of them comes out, and
    every credential the pods need is a reference to a Secret."""
    values = {name: secrets.token_hex(16) for name in CREDENTIAL_ENV}
    values["MODELSHIP_DATABASE_URL"] = f"postgresql://app:{secrets.token_hex(8)}@db:5432/app"
    values["MODELSHIP_REDIS_URL"] = f"redis://:{secrets.token_hex(8)}@redis:6379/0"
    values["REDIS_PASSWORD"] = secrets.token_hex(16)
    cli = Path(sys.executable).with_name("modelship")
    run = subprocess.run(
        [str(cli), "cluster", "render", "--kind", "all", "--config", str(CONFIG)],
        cwd=ROOT,
        env={**os.environ, **values},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    for value in values.values():
        assert value not in run.stdout
    assert not URL_WITH_PASSWORD.search(run.stdout)
    documents = [d for d in yaml.safe_load_all(run.stdout) if d]
    assert {d["kind"] for d in documents} == {"RayService", "RayJob", "NetworkPolicy"}
    seen = set()
    for document in documents:
        for container in containers(document):
            for entry in container["env"]:
                if entry["name"] in CREDENTIAL_ENV:
                    assert set(entry) == {"name", "valueFrom"}, entry
                    assert set(entry["valueFrom"]) == {"secretKeyRef"}, entry
                    seen.add(entry["name"])
            assert all("secretRef" in e or "configMapRef" in e for e in container["envFrom"])
        if document["kind"] == "RayService":
            password = document["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
            assert "value" not in password["redisPassword"]
            args = yaml.safe_load(document["spec"]["serveConfigV2"])["applications"][0]["args"]
            assert not {name.removeprefix("MODELSHIP_").lower() for name in CREDENTIAL_ENV} & set(
                args.get("settings") or {}
            )
    assert seen == CREDENTIAL_ENV


def _config_with(change: Any) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    change(config["applications"][0]["args"])
    return config


@pytest.mark.parametrize("env_name", sorted(secret_settings()))
def test_a_credential_in_the_config_args_is_refused_naming_it(env_name: str) -> None:
    field = env_name.removeprefix("MODELSHIP_").lower()
    config = _config_with(lambda args: args.setdefault("settings", {}).update({field: "x" * 40}))
    with pytest.raises(ConfigError) as raised:
        serve_config.validate(copy.deepcopy(config))
    assert raised.value.field == f"applications[0].args.settings.{field}"
    assert env_name in raised.value.message


def test_credentials_in_storage_options_or_in_any_url_are_refused() -> None:
    options = _config_with(
        lambda args: args.setdefault("settings", {}).update(
            {"object_store_options": {"secret": "abc", "endpoint_url": "http://s3:9000"}}
        )
    )
    with pytest.raises(ConfigError, match="looks like a credential") as raised:
        serve_config.validate(options)
    assert raised.value.field == "applications[0].args.settings.object_store_options.secret"

    def model_from_s3(args: dict[str, Any]) -> None:
        args["models"][1]["source"] = "s3://reader:hunter2@models/minilm/"

    with pytest.raises(ConfigError, match="password") as raised:
        serve_config.validate(_config_with(model_from_s3))
    assert raised.value.field == "applications[0].args.models[1].source"


@pytest.mark.parametrize(
    ("key", "value"),
    [("sentry-dsn", "https://key@sentry.example/1"), ("previous-secret-key", "o" * 32)],
)
def test_pods_start_without_an_optional_key_and_not_without_a_credential(
    manifests: dict[str, dict[str, Any]], key: str, value: str
) -> None:
    """Error tracking and a rotation's previous secret key are optional: a Secret without
    the key still starts every pod (the kubelet skips an optional key), one with it gives
    it to every pod, and one missing a credential the production profile needs starts
    none."""
    app = {"secret-key": "k" * 32, "database-url": "postgresql://db/app", "redis-url": "redis://r"}
    others = {"modelship-ray-auth": {"auth_token": "t"}, "modelship-gcs-redis": {"password": "p"}}
    name = "MODELSHIP_" + key.upper().replace("-", "_")
    for kind in ("RayService", "RayJob"):
        for container in containers(manifests[kind]):
            env = container_env(container, {"modelship-app": app, **others}, {})
            assert name not in env and env["MODELSHIP_DATABASE_URL"]
            env = container_env(container, {"modelship-app": app | {key: value}, **others}, {})
            assert env[name] == value
            without = {k: v for k, v in app.items() if k != "database-url"}
            with pytest.raises(PodConfigError, match="MODELSHIP_DATABASE_URL"):
                container_env(container, {"modelship-app": without, **others}, {})
