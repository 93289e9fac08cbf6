from __future__ import annotations

import pickle

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
