"""What a KubeRay cluster is rendered with, beyond the Serve config: names, image, pod sizes,
worker group bounds and the names of the Secrets that hold every credential.

Options hold names of Secrets, never their values: a rendered manifest refers to secrets
and never contains one.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

# A RayService's or RayJob's name: a DNS-1035 label, short enough for KubeRay's suffixes.
ResourceName = Annotated[
    str, StringConstraints(pattern=r"^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length=40)
]
# A namespace, Secret or ConfigMap name: a DNS-1123 label.
Label = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)]
Cores = Annotated[str, StringConstraints(pattern=r"^[0-9]+(\.[0-9]+)?m?$")]
Bytes = Annotated[str, StringConstraints(pattern=r"^[0-9]+(Ki|Mi|Gi|Ti)?$")]


def _version(package: str, default: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return default


RAY_VERSION = _version("ray", "2.60.0")
GPU_GROUP_RESOURCE = "gpu_group"
"""Custom Ray resource that only GPU worker pods advertise: model replicas ask for one unit,
so Serve and the autoscaler place them on the GPU group whether or not CUDA is present."""


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PodSize(_Options):
    """Container requests and limits (equal, so pods are Guaranteed QoS)."""

    cpu: Cores = Field("2", description="CPU request and limit (e.g. 4 or 3500m).")
    memory: Bytes = Field("8Gi", description="Memory request and limit (e.g. 8Gi).")


class WorkerGroup(PodSize):
    """One KubeRay worker group; the in-tree autoscaler keeps it within min/max."""

    min_replicas: int = Field(1, ge=0, description="Pods kept even when idle.")
    max_replicas: int = Field(4, ge=1, description="Most pods the autoscaler adds.")
    idle_timeout_s: int = Field(60, ge=0, description="An idle pod is removed after this long.")

    @model_validator(mode="after")
    def _bounds(self) -> WorkerGroup:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self


class GpuGroup(WorkerGroup):
    """The model replicas' worker group: GPU pods on GPU nodes."""

    gpus: int = Field(1, ge=0, description="nvidia.com/gpu limit per pod.")
    replica_slots: int = Field(
        4, ge=1, description=f"Model replicas one pod holds (its '{GPU_GROUP_RESOURCE}' units)."
    )
    node_selector: dict[str, str] = Field(
        default_factory=lambda: {"nvidia.com/gpu.present": "true"},
        description="Labels of the nodes GPU pods may run on.",
    )
    tolerations: list[dict[str, Any]] = Field(
        default_factory=lambda: [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ],
        description="Taints of GPU nodes that GPU pods tolerate.",
    )


class Secrets(_Options):
    """Names of the Kubernetes Secrets the pods read (created by the platform team)."""

    app: Label = Field(
        "modelship-app",
        description="Keys secret-key, database-url, redis-url (and, optional, sentry-dsn and"
        " previous-secret-key): the MODELSHIP_ settings that hold credentials.",
    )
    ray_auth: Label = Field(
        "modelship-ray-auth", description="Key auth_token: Ray's token (dashboard, GCS, jobs)."
    )
    gcs_redis: Label = Field(
        "modelship-gcs-redis", description="Key password: the GCS fault-tolerance Redis."
    )
    object_store: Label = Field(
        "modelship-object-store",
        description="Optional; every key becomes an env var (e.g. AWS_ACCESS_KEY_ID).",
    )


class JobOptions(_Options):
    """The RayJob that labels a whole dataset (``python -m jobs.label_dataset``)."""

    name: ResourceName = "modelship-label-dataset"
    args: list[str] = Field(
        default_factory=list, description="Arguments after the entrypoint (input URI, project)."
    )
    active_deadline_s: int = Field(86_400, gt=0, description="The job is stopped after this.")
    ttl_after_finished_s: int = Field(
        60,
        ge=0,
        description="Seconds its cluster is kept after the job ends (to read its logs), then"
        " deleted; the RayJob object stays.",
    )


class ClusterOptions(_Options):
    """Everything about the cluster that config/serve_config.yaml does not say."""

    name: ResourceName = "modelship"
    namespace: Label = "modelship"
    image: str = Field(
        f"modelship:{_version('modelship', '0.1.0')}",
        pattern=r"^\S+$",
        description="Built from cluster/Dockerfile.",
    )
    ray_version: str = Field(
        RAY_VERSION,
        pattern=r"^[0-9]+\.[0-9]+(\.[0-9]+)?$",
        description="Ray's version in the image: 2.52 or later, which KubeRay requires for"
        " the token auth the cluster runs with (authOptions).",
    )
    config_map: Label = Field(
        "modelship-config",
        description="Optional ConfigMap of non-secret MODELSHIP_ settings (envFrom).",
    )
    secrets: Secrets = Field(default_factory=Secrets)
    gcs_redis_address: str = Field(
        "modelship-gcs-redis:6379", description="Redis that keeps GCS state across head restarts."
    )
    head: PodSize = Field(default_factory=lambda: PodSize(cpu="2", memory="8Gi"))
    cpu_group: WorkerGroup = Field(
        default_factory=lambda: WorkerGroup(cpu="4", memory="8Gi", max_replicas=4)
    )
    gpu_group: GpuGroup = Field(
        default_factory=lambda: GpuGroup(cpu="8", memory="32Gi", idle_timeout_s=300)
    )
    autoscaler_idle_timeout_s: int = Field(60, ge=0, description="Default for every group.")
    upgrade_strategy: str = Field(
        "NewCluster",
        pattern="^(NewCluster|None)$",
        description="NewCluster: a changed cluster spec starts a new cluster, traffic moves "
        "when it serves; Serve config changes alone update in place.",
    )
    operator_namespace: Label = Field(
        "ray-system", description="Namespace of the KubeRay operator (reaches the dashboard)."
    )
    monitoring_namespace: Label = Field(
        "monitoring", description="Namespace of Prometheus (reaches the metrics port)."
    )
    service_account: Label | None = Field(
        None,
        description="Kubernetes ServiceAccount of every Ray pod, created beforehand by the"
        " platform team: the cloud identity that reaches buckets without keys (GKE Workload"
        " Identity for gs://, EKS IRSA for s3://). KubeRay binds it the autoscaler's Role"
        " itself; None: KubeRay's own account for the head, the namespace's default for"
        " workers.",
    )
    job: JobOptions = Field(default_factory=JobOptions)

    @field_validator("ray_version")
    @classmethod
    def _token_auth(cls, value: str) -> str:
        major, minor = (int(part) for part in value.split(".")[:2])
        if (major, minor) < (2, 52):
            raise ValueError("KubeRay needs Ray 2.52 or later for token auth (authOptions)")
        return value

    @model_validator(mode="before")
    @classmethod
    def _over_defaults(cls, data: Any) -> Any:
        """A group given in part keeps this class's defaults for what it leaves out: a
        ``gpu_group`` that only names its node selector still gets 8 CPUs, 32Gi and 300 s,
        not the plain ``GpuGroup`` field defaults."""
        if not isinstance(data, dict):
            return data
        merged = dict(data)
        for name, field in cls.model_fields.items():
            value = data.get(name)
            if isinstance(value, dict) and field.default_factory is not None:
                default = field.get_default(call_default_factory=True)
                if isinstance(default, BaseModel):
                    merged[name] = default.model_dump() | value
        return merged

    @classmethod
    def from_file(cls, path: Path | None, **overrides: Any) -> ClusterOptions:
        """Options from a YAML file (or the defaults), with command-line overrides on top."""
        data: Any = (yaml.safe_load(path.read_text()) or {}) if path else {}
        if isinstance(data, dict):  # anything else is refused, as not a mapping
            data.update({key: value for key, value in overrides.items() if value is not None})
        return cls.model_validate(data)
