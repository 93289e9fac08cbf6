from __future__ import annotations

import copy
import logging
import pickle

import cloudpickle
import pytest
from pydantic import ValidationError

from modelship.core.errors import (
    InvalidInput,
    ModelShipError,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from modelship.core.settings import Profile, Settings


@pytest.mark.parametrize(
    "error",
    [
        InvalidInput("bad", "empty_text"),
        UnsupportedMediaType("nope"),
        PayloadTooLarge("big"),
        NotFound("gone", "unknown_model"),
        Overloaded("busy", retry_after_s=7),
    ],
)
def test_errors_survive_pickling_across_actors(error: ModelShipError) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert (copy.status, copy.code, copy.message) == (error.status, error.code, error.message)
    assert getattr(copy, "retry_after_s", None) == getattr(error, "retry_after_s", None)


def test_statuses() -> None:
    assert (InvalidInput.status, UnsupportedMediaType.status, PayloadTooLarge.status) == (
        422,
        415,
        413,
    )
    assert NotFound.status == 404
    assert Overloaded.status == 503


def test_settings_read_the_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELSHIP_MAX_TEXTS_PER_REQUEST", "7")
    monkeypatch.setenv("MODELSHIP_PROFILE", "staging")
    monkeypatch.setenv("MODELSHIP_SECRET_KEY", "a-staging-secret")
    settings = Settings()
    assert settings.max_texts_per_request == 7
    assert settings.profile is Profile.staging


def test_production_refuses_the_default_secret_and_embedded_services() -> None:
    services = {
        "database_url": "postgresql://db.internal/modelship",
        "redis_url": "redis://cache.internal:6379/0",
        "object_store_url": "s3://labels/modelship",
    }
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        Settings(profile=Profile.production, **services)
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        Settings(profile=Profile.staging)
    for missing in services:
        given = {k: v for k, v in services.items() if k != missing}
        with pytest.raises(ValidationError, match=r"embedded|OBJECT_STORE"):
            Settings(profile=Profile.production, secret_key="s3cret-for-real", **given)
    ok = Settings(profile=Profile.production, secret_key="s3cret-for-real", **services)
    assert ok.profile is Profile.production
    assert Settings(profile=Profile.dev).database_url is None  # dev: embedded PostgreSQL


def test_unknown_settings_are_refused() -> None:
    with pytest.raises(ValidationError):
        Settings(max_textz=3)  # type: ignore[call-arg]


def test_secrets_never_travel_with_pickled_settings(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Ray pickles a deployment's init args (Serve keeps them in its checkpoint): the
    secrets stay out, and the receiving process takes its own from its environment."""
    made = Settings(
        secret_key="k" * 40, database_url="postgresql://app:hunter2@db/labels", max_body_bytes=99
    )
    blob = cloudpickle.dumps(made)
    assert b"hunter2" not in blob and b"k" * 40 not in blob
    monkeypatch.setenv("MODELSHIP_DATABASE_URL", "postgresql://app:hunter2@db/labels")
    monkeypatch.setenv("MODELSHIP_SECRET_KEY", "k" * 40)
    received = pickle.loads(blob)
    assert received == made and received.max_body_bytes == 99
    assert copy.deepcopy(made) == made  # a copy in this process keeps them
    assert made.model_copy(update={"max_body_bytes": 1}).secret_key == made.secret_key

    monkeypatch.delenv("MODELSHIP_DATABASE_URL")
    with caplog.at_level(logging.WARNING, logger="modelship.settings"):
        assert pickle.loads(blob).database_url is None
    assert "MODELSHIP_DATABASE_URL" in caplog.text
    production = made.model_copy(update={"profile": "production"})
    with pytest.raises(ValidationError, match="embedded services"):
        pickle.loads(cloudpickle.dumps(production))  # outside dev, a missing one is fatal
    staging = made.model_copy(update={"profile": "staging"})  # embedded services allowed
    with pytest.raises(ValueError, match="MODELSHIP_DATABASE_URL was set where"):
        pickle.loads(cloudpickle.dumps(staging))  # but not one replica's own
