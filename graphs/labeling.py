"""The labeling application: Ingress → one ModelReplica per model (images of models
prepared in the ``deployment`` through the Preprocessor first), a JobRunner driving durable
jobs through the same path, and an Exporter."""

from ray.serve import Application

from deployments.exporter import Exporter
from deployments.ingress import Ingress
from deployments.job_runner import JobRunnerDeployment
from deployments.model import ModelReplica
from deployments.preprocess import Preprocessor
from modelship.core.config import LabelingAppArgs


def build_app(args: LabelingAppArgs) -> Application:
    """Bind the graph. ``serve run config/serve_config.yaml`` calls this with its ``args``.

    Args:
        args: the configured models and settings (validated by pydantic).

    Returns:
        The bound application, ready for ``serve.run`` or ``serve build``.
    """
    models = {
        config.name: ModelReplica.options(
            name=config.deployment_name,
            user_config=config.batching.model_dump(),
            max_ongoing_requests=max(32, 4 * config.batching.max_batch_size),
            max_queued_requests=config.max_queued_requests,
            ray_actor_options={"num_cpus": config.num_cpus, "num_gpus": config.num_gpus},
        ).bind(config, args.settings)
        for config in args.models
    }
    preprocessor = Preprocessor.bind(args.models, args.settings)
    runner = JobRunnerDeployment.bind(preprocessor, models, args.models, args.settings)
    exporter = Exporter.bind(args.settings)
    return Ingress.bind(preprocessor, models, args.models, args.settings, runner, exporter)
