"""The Serve config a cluster runs: config/serve_config.yaml, validated, with only what a
cluster needs changed: Serve listens on every interface, and model replicas ask for the GPU
group's custom resource instead of CPUs.

Settings that hold credentials never travel here: the dashboard shows serveConfigV2 and
its ``args`` to anyone who can read it, so they reach the pods as env from a Secret.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar, get_args

import yaml
from pydantic import BaseModel, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from modelship.core.config import LabelingAppArgs, ModelConfig
from modelship.core.settings import Settings
from modelship.ops.cluster.options import GPU_GROUP_RESOURCE

CPU_DEPLOYMENTS = ("Ingress", "Preprocessor", "JobRunner", "Exporter")
"""The graph's deployments that run on the CPU worker group; model replicas run on the GPU
group (``graphs/labeling.py`` binds these and one ``Model-<name>`` per model)."""

M = TypeVar("M", bound=BaseModel)
_ARGS = "applications[0].args"
_URL_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]*:[^/\s@]+@", re.IGNORECASE)
_SECRET_OPTION = re.compile(r"secret|password|token|key", re.IGNORECASE)


class ConfigError(ValueError):
    """The serve config cannot run on a cluster; ``field`` says where (a dotted path)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(field, message)
        self.field = field
        self.message = message

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class _FileSettings(Settings):
    """The file's own settings, without the environment of the machine that renders: in the
    cluster the pods' env completes them (secrets included), so the profile's checks wait."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)

    @model_validator(mode="after")
    def _check_profile(self) -> _FileSettings:  # replaces Settings' check of the same name
        return self


def secret_settings() -> dict[str, str]:
    """Each setting that holds a credential, by its env name (``MODELSHIP_SECRET_KEY``), to
    its key in the app Secret (``secret-key``)."""
    prefix = Settings.model_config.get("env_prefix", "")
    return {
        f"{prefix}{name}".upper(): name.replace("_", "-")
        for name, field in Settings.model_fields.items()
        if field.annotation is SecretStr or SecretStr in get_args(field.annotation)
    }


def load(path: Path) -> tuple[dict[str, Any], LabelingAppArgs]:
    """Read and validate a serve config file.

    Raises:
        ConfigError: naming the first invalid field.
    """
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(str(path), f"cannot be read as YAML: {exc}") from exc
    return config, validate(config)


def validate(config: Any) -> LabelingAppArgs:
    """Check the whole file as Ray Serve and the app builder will, and that it suits a
    cluster: one application, an autoscaling_config for every deployment, no secrets."""
    from ray.serve.schema import ServeDeploySchema

    _check(ServeDeploySchema, config, "")
    apps = config["applications"]
    if len(apps) != 1:
        raise ConfigError("applications", f"one application expected, found {len(apps)}")
    raw_args = apps[0].get("args") or {}
    if not isinstance(raw_args, dict):
        raise ConfigError(_ARGS, "must be a mapping")
    _refuse_secrets(config, raw_args.get("settings") or {})
    settings = _check(_FileSettings, raw_args.get("settings") or {}, f"{_ARGS}.settings")
    args = _check(LabelingAppArgs, {**raw_args, "settings": settings}, _ARGS)
    _check_deployments(apps[0].get("deployments") or [], args)
    return args


def cluster_config(config: dict[str, Any], args: LabelingAppArgs) -> dict[str, Any]:
    """The config with ``http_options.host: 0.0.0.0`` and each model deployment's
    ``ray_actor_options`` asking for the GPU group; nothing else differs."""
    out = copy.deepcopy(config)
    out["http_options"] = {**(out.get("http_options") or {}), "host": "0.0.0.0"}
    models = {model.deployment_name: model for model in args.models}
    for entry in out["applications"][0]["deployments"]:
        model = models.get(entry["name"])
        if model is not None:
            given = entry.get("ray_actor_options") or {}
            options = {"num_gpus": model.num_gpus, **given}
            # GPU pods advertise no CPUs to Ray: the custom resource is what places and
            # counts model replicas, and it keeps every other deployment off GPU pods.
            options["num_cpus"] = 0
            options["resources"] = {**(given.get("resources") or {}), GPU_GROUP_RESOURCE: 1}
            entry["ray_actor_options"] = options
    return out


def proxies_on_workers(config: dict[str, Any]) -> bool:
    """Whether Serve runs a proxy on worker nodes: ``proxy_location`` EveryNode, Ray's
    default (HeadOnly serves from the head alone, Disabled from nowhere)."""
    from ray.serve.config import ProxyLocation
    from ray.serve.schema import ServeDeploySchema

    return bool(ServeDeploySchema.model_validate(config).proxy_location == ProxyLocation.EveryNode)


def _check(model: type[M], data: Any, prefix: str) -> M:
    try:
        return model.model_validate(data) if not issubclass(model, BaseSettings) else model(**data)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise ConfigError(_path(prefix, error["loc"]), error["msg"]) from exc
    except TypeError as exc:
        raise ConfigError(prefix or "config", "must be a mapping") from exc


def _path(prefix: str, loc: tuple[int | str, ...]) -> str:
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _refuse_secrets(config: dict[str, Any], settings: dict[str, Any]) -> None:
    for env, _ in secret_settings().items():
        name = env.removeprefix("MODELSHIP_").lower()
        if name in settings:
            raise ConfigError(
                f"{_ARGS}.settings.{name}",
                f"holds a credential: pods get it as {env} from a Secret, never in"
                " serveConfigV2 (the dashboard shows its args)",
            )
    for option in settings.get("object_store_options") or {}:
        if _SECRET_OPTION.search(str(option)):
            raise ConfigError(
                f"{_ARGS}.settings.object_store_options.{option}",
                "looks like a credential: give the pods env from a Secret instead"
                " (e.g. AWS_SECRET_ACCESS_KEY)",
            )
    for path, value in _strings(config, ""):
        if _URL_WITH_PASSWORD.search(value):
            raise ConfigError(path, "a URL with a password: pass it as env from a Secret")


def _strings(node: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _strings(value, f"{path}[{i}]")


def check_model_deployments(entries: list[dict[str, Any]], args: LabelingAppArgs) -> None:
    """What a model's deployment entry may set, wherever the config runs (``modelship
    serve`` too): Serve would deploy these, and the replica would not do what they say.

    Raises:
        ConfigError: naming the entry's field.
    """
    models = {model.deployment_name: model for model in args.models}
    for i, entry in enumerate(entries):
        model = models.get(str(entry.get("name")))
        if model is None:
            continue
        # a replica refuses a bad user_config only in its log (raising would take the
        # model down): refuse it here, before anything is deployed
        if entry.get("user_config") is not None:
            _check_user_config(model, entry["user_config"], i)
        _check_model_gpus(model, entry, i, args)


def _check_deployments(entries: list[dict[str, Any]], args: LabelingAppArgs) -> None:
    expected = [*CPU_DEPLOYMENTS, *(model.deployment_name for model in args.models)]
    names = [entry.get("name") for entry in entries]
    for i, name in enumerate(names):
        if name not in expected:
            raise ConfigError(
                f"applications[0].deployments[{i}].name",
                f"no deployment {name!r} in the graph (it has {', '.join(expected)})",
            )
        if not entries[i].get("autoscaling_config"):
            raise ConfigError(
                f"applications[0].deployments[{i}].autoscaling_config",
                f"{name} needs one: every deployment autoscales on a cluster",
            )
    check_model_deployments(entries, args)
    for name in expected:
        if name not in names:
            raise ConfigError(
                "applications[0].deployments",
                f"no entry for {name}: every deployment needs an autoscaling_config",
            )


def _check_model_gpus(
    model: ModelConfig, entry: dict[str, Any], index: int, args: LabelingAppArgs
) -> None:
    """A model's GPUs are set once, in ``args.models``: the replica picks its device, the
    graph where images are decoded, and a batch job its actors from there. A deployment's
    ``ray_actor_options.num_gpus`` asking otherwise gave a replica a GPU it never used (it
    ran on the CPU)."""
    options = entry.get("ray_actor_options") or {}
    if "num_gpus" in options and options["num_gpus"] != model.num_gpus:
        raise ConfigError(
            f"applications[0].deployments[{index}].ray_actor_options.num_gpus",
            f"set it in applications[0].args.models[{args.models.index(model)}].num_gpus"
            f" ({model.num_gpus} there): the replica, the preprocessing choice and batch"
            " jobs read it there",
        )


def _check_user_config(model: ModelConfig, user_config: Any, index: int) -> None:
    """(Serve's schema has already checked that it is a mapping.)"""
    prefix = f"applications[0].deployments[{index}].user_config"
    try:
        model.batching.overlaid(user_config)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise ConfigError(_path(prefix, error["loc"]), error["msg"]) from exc
