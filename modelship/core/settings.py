"""Process settings: one pydantic-settings class, env prefix ``MODELSHIP_``.

Settings are built once (by the app builder or the CLI) and passed to every deployment;
nothing reads the environment inside a request handler. The secrets among them never
travel: pickled (as Ray does for a deployment's init args, which Serve keeps in its
checkpoint, and for tasks and actors), Settings leave them out, and the process that
unpickles them reads its own from its environment (on KubeRay, every pod gets them from
the same Secret).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SECRET = "modelship-dev-secret-change-me"
# Pillow refuses to open an image of more pixels than this (twice its MAX_IMAGE_PIXELS),
# whatever max_image_pixels says. Written out: the client imports these settings without
# Pillow.
PILLOW_MAX_PIXELS = 2 * 89_478_485
SECRETS = frozenset(
    {"secret_key", "previous_secret_key", "database_url", "redis_url", "sentry_dsn"}
)
# Secrets the production profile runs without: their key in a cluster's Secret is optional.
OPTIONAL_SECRETS = frozenset({"previous_secret_key", "sentry_dsn"})

logger = logging.getLogger("modelship.settings")


class Profile(StrEnum):
    dev = "dev"
    staging = "staging"
    production = "production"


class Settings(BaseSettings):
    """Everything an operator can set, with the reason for each default."""

    # hide_input_in_errors: a validation error (a bad profile, a URL of the wrong kind)
    # would quote its input, the secrets included, into Serve's status and the logs.
    model_config = SettingsConfigDict(
        env_prefix="MODELSHIP_", extra="forbid", frozen=True, hide_input_in_errors=True
    )

    profile: Profile = Field(Profile.dev, description="dev, staging or production.")
    secret_key: SecretStr = Field(
        SecretStr(DEFAULT_SECRET),
        description="Keys the HMAC that API keys are stored as; must be changed outside dev.",
    )
    previous_secret_key: SecretStr | None = Field(
        None,
        description="The secret key before a rotation: API keys stored under it still"
        " authenticate, and each is stored again under secret_key on its first use.",
    )
    data_dir: Path = Field(
        Path.home() / ".modelship",
        description="Root for local state: model cache, embedded services, local objects.",
    )
    model_cache_dir: Path | None = Field(
        None, description="Where remote models are fetched to; defaults to data_dir/models."
    )
    max_body_bytes: int = Field(
        20 * 1024 * 1024, gt=0, description="Largest request body accepted (413 above)."
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="A request body must arrive within this (408 after): a client trickling"
        " its body holds a slot no longer, whatever x-request-timeout-seconds it sends.",
    )
    upload_body_timeout_s: float = Field(
        900.0, gt=0, description="The same for upload bodies (up to max_upload_bytes)."
    )
    max_image_bytes: int = Field(
        10 * 1024 * 1024, gt=0, description="Largest single image accepted (413 above)."
    )
    max_concurrent_decodes: int = Field(
        4,
        ge=1,
        le=256,
        description="Images one process decodes at once (each may take max_image_pixels"
        " x 4 bytes); the others wait their turn.",
    )
    max_image_pixels: int = Field(
        40_000_000,
        gt=0,
        le=PILLOW_MAX_PIXELS,
        description="Decompression-bomb guard: images with more pixels are refused (422). At"
        " most 178,956,970: Pillow opens no larger image.",
    )
    max_image_side: int = Field(
        16_384, gt=0, description="Largest width or height accepted, in pixels."
    )
    max_images_per_request: int = Field(
        32, gt=0, description="Most images in one batch classification request."
    )
    max_texts_per_request: int = Field(
        64, gt=0, description="Most texts in one classification request."
    )
    max_text_chars: int = Field(
        10_000, gt=0, description="Longest single text accepted, in characters."
    )
    max_label_texts: int = Field(
        256,
        gt=0,
        description="Most label texts (names or descriptions, and examples) one zero-shot"
        " request or project may carry: each is embedded, on the model replica every other"
        " request shares.",
    )
    model_call_timeout_s: float = Field(
        30.0, gt=0, description="How long a labeling request may take before 503 overloaded."
    )
    max_labeling_items: int = Field(
        512,
        ge=1,
        description="Items one ingress replica labels at once; a request past them is shed"
        " at once with 503 overloaded and Retry-After rather than queued to a timeout.",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Origins browsers may call the API from (exact matches; none by default).",
    )
    auth_required: bool | None = Field(
        None,
        description="API keys on /api routes; unset: required outside the dev profile.",
    )
    auth_outage_grace_s: float = Field(
        300.0,
        ge=0,
        description="While PostgreSQL is unreachable, an API key that authenticated in this"
        " Ingress replica within this many seconds still does (labeling needs no database);"
        " others get 503. 0: none.",
    )
    slow_request_s: float = Field(
        2.0, ge=0, description="Requests slower than this are logged as slow (a warning)."
    )
    sentry_dsn: SecretStr | None = Field(
        None,
        description="Report errors (log records at ERROR, uncaught exceptions) to this Sentry"
        " or Sentry-compatible DSN (modelship/core/errortracking.py); unset: off.",
    )
    rate_limit_per_minute: int = Field(
        60, ge=0, description="Requests per minute per client and route under /api; 0: off."
    )
    rate_limit_burst: int = Field(20, ge=1, description="Requests a client may make at once.")
    rate_limit_fail_open: bool = Field(
        True, description="When Redis is unreachable: serve (true) or refuse with 503 (false)."
    )
    tenant: str = Field(
        "default", description="Tenant of every request until API keys carry their own."
    )
    database_url: SecretStr | None = Field(
        None, description="PostgreSQL DSN; unset: an embedded PostgreSQL under data_dir."
    )
    db_pool_size: int = Field(
        4,
        ge=1,
        le=50,
        description="Most PostgreSQL connections one process (a replica) holds; every"
        " replica's pool together must fit the server's max_connections.",
    )
    db_idle_transaction_timeout_s: float = Field(
        60.0,
        gt=0,
        description="PostgreSQL ends a session left idle inside a transaction this long (a"
        " process that lost its network mid-transaction), releasing its locks.",
    )
    redis_url: SecretStr | None = Field(
        None, description="Redis URL; unset: an embedded Redis under data_dir."
    )
    redis_prefix: str = Field(
        "modelship", description="Prefix of every Redis key and channel (to share a Redis)."
    )
    object_store_url: str | None = Field(
        None, description="Folder or fsspec URL (s3://bucket/prefix); unset: data_dir/objects."
    )
    object_store_options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec storage options, e.g. endpoint_url for S3; credentials go in"
        " AWS_* variables or the node's role, not here (these travel with the settings).",
    )
    max_upload_bytes: int = Field(
        256 * 1024 * 1024, gt=0, description="Largest upload request body (413 above)."
    )
    max_upload_files: int = Field(1000, gt=0, description="Most files in one upload request.")
    max_upload_texts: int = Field(100_000, gt=0, description="Most texts in one upload.")
    max_open_jobs: int = Field(
        8, gt=0, description="Jobs a project may have queued or running at once (429 above)."
    )
    max_open_exports: int = Field(
        4, gt=0, description="Exports a project may have queued or running at once (429 above)."
    )
    max_bulk_approve: int = Field(
        10_000,
        gt=0,
        description="Most annotations one bulk approval changes (one transaction); the"
        " answer says how many, and the client asks again for the rest.",
    )
    max_text_file_bytes: int = Field(
        16 * 1024 * 1024,
        gt=0,
        description="Largest text file in an upload (413 above): its texts become Python"
        " objects several times its size.",
    )
    clamd_url: str | None = Field(
        None,
        pattern=r"^(unix:///.+|tcp://.+:[0-9]+)$",
        description="ClamAV's daemon, unix:///run/clamav/clamd.ctl or tcp://host:3310: every"
        " upload is scanned (INSTREAM) before it is stored; unset: uploads are not scanned.",
    )
    clamd_timeout_s: float = Field(
        30.0, gt=0, description="How long one scan may take before the upload fails (503)."
    )
    export_retention_hours: float = Field(
        168.0, gt=0, description="How long an export's file is kept (410 export_expired after)."
    )
    job_batch_size: int = Field(32, ge=1, le=1024, description="Items a runner claims at once.")
    job_concurrency: int = Field(
        2, ge=1, le=64, description="Batches one runner replica keeps in flight."
    )
    job_lease_s: float = Field(
        60.0, gt=0, description="A claimed batch returns to the queue if not done by then."
    )
    job_max_attempts: int = Field(
        3, ge=1, le=100, description="Tries before an item that keeps failing ends failed."
    )
    job_poll_s: float = Field(
        2.0, gt=0, description="Idle runners look for work this often without a wake-up."
    )
    batch_allowed_prefixes: list[str] = Field(
        default_factory=list,
        description=(
            "Folders and fsspec URL prefixes (s3://bucket/datasets) batch jobs may read;"
            " anything else is refused before a job starts. Empty: data_dir and the object"
            " store."
        ),
    )

    @property
    def auth_enabled(self) -> bool:
        return self.auth_required if self.auth_required is not None else self.profile != "dev"

    def __reduce__(self) -> tuple[Any, ...]:
        given = sorted(name for name in SECRETS if name in self.model_fields_set)
        return (_unpickle, (self.model_dump(exclude=set(SECRETS)), given))

    @property
    def export_retention(self) -> timedelta:
        return timedelta(hours=self.export_retention_hours)

    @property
    def models_dir(self) -> Path:
        return self.model_cache_dir or self.data_dir / "models"

    @property
    def batch_prefixes(self) -> list[str]:
        """Where batch jobs may read: ``batch_allowed_prefixes``, or by default the data
        dir and the object store."""
        if self.batch_allowed_prefixes:
            return list(self.batch_allowed_prefixes)
        return [str(self.data_dir), self.object_store_url or str(self.data_dir / "objects")]

    # A URL of the wrong kind is a mistake to name at startup: a DSN asyncpg refuses made
    # every storage request 503 "retry later" for ever; a Redis or object store URL it cannot
    # use failed inside each replica's constructor. Only the scheme is quoted (credentials).
    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _check_scheme(value.get_secret_value(), {"postgresql", "postgres"})
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _check_scheme(value.get_secret_value(), {"redis", "rediss", "unix"})
        return value

    @field_validator("sentry_dsn")
    @classmethod
    def _sentry_dsn(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():  # empty (compose's default): off
            return None
        _check_scheme(value.get_secret_value(), {"http", "https"})
        return value

    @field_validator("previous_secret_key")
    @classmethod
    def _previous_secret_key(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value() else None  # empty: none

    @field_validator("object_store_url")
    @classmethod
    def _object_store_url(cls, value: str | None) -> str | None:
        if value is not None and "://" in value:
            import fsspec

            protocol = value.split("://", 1)[0]
            try:
                fsspec.get_filesystem_class(protocol)
            except (ValueError, ImportError) as exc:
                raise ValueError(f"no filesystem for {protocol}:// here ({exc})") from None
        return value

    @model_validator(mode="after")
    def _check_profile(self) -> Settings:
        if self.profile is not Profile.dev and self.secret_key.get_secret_value() == DEFAULT_SECRET:
            raise ValueError(f"MODELSHIP_SECRET_KEY must be set in the {self.profile} profile")
        if self.previous_secret_key == self.secret_key:
            raise ValueError("MODELSHIP_PREVIOUS_SECRET_KEY is MODELSHIP_SECRET_KEY: no rotation")
        if self.profile is Profile.production:
            if self.database_url is None or self.redis_url is None:
                raise ValueError(
                    "the production profile refuses embedded services: set "
                    "MODELSHIP_DATABASE_URL and MODELSHIP_REDIS_URL"
                )
            if self.object_store_url is None:
                raise ValueError("MODELSHIP_OBJECT_STORE_URL must be set in production")
            if self.auth_required is False:
                raise ValueError("the production profile refuses MODELSHIP_AUTH_REQUIRED=false")
        return self


def _check_scheme(url: str, schemes: set[str]) -> None:
    scheme = urlsplit(url).scheme
    if scheme not in schemes:
        wanted = " or ".join(f"{name}://" for name in sorted(schemes))
        found = f"{scheme}://" if scheme else "one without a scheme"
        raise ValueError(f"expected a {wanted} URL, not {found}")


def _unpickle(values: dict[str, Any], given: list[str]) -> Settings:
    """Settings that travelled without their secrets, which this process's environment
    supplies. A secret set where they were made and missing here is named in the log in
    ``dev``, and refused in any other profile: a replica without the database URL would
    start an embedded PostgreSQL of its own, and its data would live apart."""
    settings = Settings(**values)
    missing = sorted(set(given) - settings.model_fields_set)
    if missing and settings.profile is not Profile.dev:
        names = ", ".join(f"MODELSHIP_{name.upper()}" for name in missing)
        raise ValueError(
            f"{names} was set where these settings were made but is not in this process's"
            f" environment; in the {settings.profile} profile secrets go in every node's"
            " environment"
        )
    for name in missing:
        logger.warning(
            "%s was set where these settings were made but is not in this process's"
            " environment (MODELSHIP_%s): secrets go in every node's environment, not in"
            " a config; using the default",
            name,
            name.upper(),
        )
    return settings
