"""Process settings: one pydantic-settings class, env prefix ``MODELSHIP_``.

Settings are built once (by the app builder or the CLI) and passed to every deployment;
nothing reads the environment inside a request handler.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SECRET = "modelship-dev-secret-change-me"


class Profile(StrEnum):
    dev = "dev"
    staging = "staging"
    production = "production"


class Settings(BaseSettings):
    """Everything an operator can set, with the reason for each default."""

    model_config = SettingsConfigDict(env_prefix="MODELSHIP_", extra="forbid", frozen=True)

    profile: Profile = Field(Profile.dev, description="dev, staging or production.")
    debug: bool = Field(False, description="Verbose errors in logs; refused in production.")
    secret_key: SecretStr = Field(
        SecretStr(DEFAULT_SECRET),
        description="Signs tokens and hashes keys; must be changed outside dev.",
    )
    data_dir: Path = Field(
        Path.home() / ".modelship",
        description="Root for local state: the model cache and, later, embedded services.",
    )
    model_cache_dir: Path | None = Field(
        None, description="Where remote models are fetched to; defaults to data_dir/models."
    )
    max_body_bytes: int = Field(
        20 * 1024 * 1024, gt=0, description="Largest request body accepted (413 above)."
    )
    max_image_bytes: int = Field(
        10 * 1024 * 1024, gt=0, description="Largest single image accepted (413 above)."
    )
    max_image_pixels: int = Field(
        40_000_000,
        gt=0,
        description="Decompression-bomb guard: images with more pixels are refused (422).",
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
    model_call_timeout_s: float = Field(
        30.0, gt=0, description="How long the ingress waits for a model before 503."
    )

    @property
    def models_dir(self) -> Path:
        return self.model_cache_dir or self.data_dir / "models"

    @model_validator(mode="after")
    def _check_profile(self) -> Settings:
        if self.profile is Profile.production:
            if self.debug:
                raise ValueError("debug mode is refused in the production profile")
            if self.secret_key.get_secret_value() == DEFAULT_SECRET:
                raise ValueError("MODELSHIP_SECRET_KEY must be set in the production profile")
        return self
