"""Runs ModelShip for the benchmark in its own process, with one model, on a fresh local Ray.

Prints ``READY`` when the app answers; then reads commands on stdin: ``stats`` prints
the model replica's stats as one JSON line; end of input shuts everything down.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import ray
from ray import serve

from bench.workloads import LABELS
from graphs.labeling import build_app
from modelship.core.config import BatchingConfig, LabelingAppArgs, LabelSpec, ModelConfig, Task
from modelship.core.settings import Settings
from modelship.ops.ray_env import private_haproxy, ray_environment
from storage.embedded import stop_embedded


def model_config(args: argparse.Namespace) -> ModelConfig:
    batching = BatchingConfig(max_batch_size=args.max_batch, batch_wait_timeout_s=args.wait)
    if args.workload == "text":
        return ModelConfig(
            name="minilm",
            task=Task.zero_shot_text_classification,
            source="packaged:all-minilm-l6-v2",
            labels=[LabelSpec(name=name) for name in LABELS],
            top_k=3,
            batching=batching,
            num_cpus=1,
            torch_threads=args.threads,
            concurrent_batches=args.concurrent_batches,
        )
    return ModelConfig(
        name="efficientnet-lite0",
        task=Task.image_classification,
        source="packaged:efficientnet-lite0",
        batching=batching,
        num_cpus=1,
        torch_threads=args.threads,
        concurrent_batches=args.concurrent_batches,
        preprocess=args.preprocess,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", choices=["text", "image"], required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--wait", type=float, default=0.0)
    # As config/serve_config.yaml ships: two single-threaded batches at once.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--concurrent-batches", type=int, default=2)
    # Where images are decoded; unset: by device, as the config's default (inline on CPU).
    parser.add_argument("--preprocess", choices=["inline", "deployment"])
    args = parser.parse_args()
    temp_dir = tempfile.mkdtemp(prefix="ray-bench-", dir="/tmp")
    try:
        serve_until_eof(model_config(args), args.port, Path(temp_dir))
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


def serve_until_eof(
    config: ModelConfig,
    port: int,
    temp_dir: Path,
    cpus: int = 2,
    gpus: int = 0,
    object_store_mib: int = 256,
) -> None:
    """Serve the graph with ``config`` alone on a fresh local Ray kept in ``temp_dir``,
    started as `modelship serve` starts it; print READY, answer ``stats`` on stdin with the
    model replica's stats, stop Ray and the embedded services at end of input."""
    # Set after importing Serve (unless this process was given other switches), so this
    # driver's handle keeps its own event loop for `stats`.
    os.environ.update(ray_environment(None, os.environ))
    os.environ.update(private_haproxy(temp_dir / "hap"))
    try:
        ray.init(
            num_cpus=cpus,
            num_gpus=gpus,
            include_dashboard=False,
            log_to_driver=False,
            object_store_memory=object_store_mib * 1024**2,
            _temp_dir=str(temp_dir),
            runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}},
        )
        serve.start(
            http_options={"host": "127.0.0.1", "port": port},
            logging_config={"enable_access_log": False, "log_level": "WARNING"},
        )
        # The limit is what is measured: no rate limit; embedded services in the temp folder.
        settings = Settings(data_dir=temp_dir / "data", rate_limit_per_minute=0)
        app = build_app(LabelingAppArgs(models=[config], settings=settings))
        serve.run(app, name="modelship", route_prefix="/")
        handle = serve.get_deployment_handle(config.deployment_name, app_name="modelship")
        print("READY", flush=True)
        for line in sys.stdin:
            if line.strip() == "stats":
                print(json.dumps(handle.stats.remote().result()), flush=True)
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
        stop_embedded(temp_dir / "data" / "services")


if __name__ == "__main__":
    main()
