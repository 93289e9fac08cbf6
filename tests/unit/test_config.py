"""config/serve_config.yaml is a valid Serve config whose app args and overrides agree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from modelship.core.config import LabelingAppArgs, ModelConfig, Task

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "config" / "serve_config.yaml").read_text())
    return loaded


def test_it_is_a_serve_deploy_config(config: dict[str, Any]) -> None:
    schema = ServeDeploySchema.model_validate(config)
    assert schema.http_options.host == "127.0.0.1"
    (app,) = schema.applications
    assert app.import_path == "graphs.labeling:build_app"


def test_overrides_name_real_deployments_and_fit_two_cores(config: dict[str, Any]) -> None:
    app = config["applications"][0]
    args = LabelingAppArgs.model_validate(app["args"])
    expected = {"Ingress", "Preprocessor", "JobRunner", "Exporter"} | {
        m.deployment_name for m in args.models
    }
    overrides = {d["name"] for d in app["deployments"]}
    assert overrides == expected
    assert all("autoscaling_config" in d for d in app["deployments"])
    assert sum(m.num_cpus for m in args.models) + 0.25 + 0.25 <= 2.0
    assert all(m.source.startswith("packaged:") for m in args.models)


def test_serve_build_accepts_the_default_app(tmp_path: Path) -> None:
    out = tmp_path / "built.yaml"
    subprocess.run(
        [Path(sys.executable).with_name("serve"), "build", "graphs.default:app", "-o", out],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    built = ServeDeploySchema.model_validate(yaml.safe_load(out.read_text()))
    names = {d.name for d in built.applications[0].deployments}
    assert {"Preprocessor", "Model-efficientnet-lite0", "Model-minilm-zero-shot"} <= names


def test_tracing_is_off_by_default_and_its_exporter_loads(config: dict[str, Any]) -> None:
    from opentelemetry.sdk.trace import SpanProcessor
    from ray._common.utils import import_attr

    tracing = ServeDeploySchema.model_validate(config).tracing_config
    assert tracing is not None and tracing.enabled is False
    processors = import_attr(tracing.exporter_import_path)()
    assert processors and all(isinstance(p, SpanProcessor) for p in processors)
    for processor in processors:
        processor.shutdown()


def test_images_are_prepared_inline_on_cpu_and_in_the_preprocessor_with_a_gpu() -> None:
    cpu = ModelConfig(name="m", task=Task.image_classification, source="packaged:x")
    assert cpu.preprocess is None and cpu.preprocessed_in == "inline"
    gpu = cpu.model_copy(update={"num_gpus": 0.5})
    assert gpu.preprocessed_in == "deployment"
    chosen = ModelConfig.model_validate({**cpu.model_dump(), "num_gpus": 1, "preprocess": "inline"})
    assert chosen.preprocessed_in == "inline"
    chosen = ModelConfig.model_validate({**cpu.model_dump(), "preprocess": "deployment"})
    assert chosen.preprocessed_in == "deployment"
    with pytest.raises(ValueError, match="preprocess"):
        ModelConfig.model_validate({**cpu.model_dump(), "preprocess": "gpu"})


def test_the_shipped_cpu_models_prepare_their_images_inline(config: dict[str, Any]) -> None:
    args = LabelingAppArgs.model_validate(config["applications"][0]["args"])
    assert {m.preprocessed_in for m in args.models} == {"inline"}
