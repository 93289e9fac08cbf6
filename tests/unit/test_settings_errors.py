"""Settings that fail validation say which field and why, and never quote a secret."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from modelship.core.config import LabelingAppArgs
from modelship.core.settings import Profile, Settings

PASSWORD = "hunter2-in-the-dsn"
SECRET = "a-long-secret-key-for-staging"
MODELS = [{"name": "m", "task": "image-classification", "source": "packaged:efficientnet-lite0"}]


def test_a_refused_profile_quotes_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """The production check quoted its input, the secret key and the database URL with its
    password (cut in the middle when long), into the error: Serve's status and the logs."""
    monkeypatch.setenv("MODELSHIP_SECRET_KEY", SECRET)
    database = f"postgresql://app:{PASSWORD}@db/labels"
    with pytest.raises(ValidationError) as refused:
        Settings(profile=Profile.production, database_url=database)
    with pytest.raises(ValidationError) as in_args:
        LabelingAppArgs.model_validate(
            {"models": MODELS, "settings": {"profile": "production", "database_url": database}}
        )
    for error in (refused.value, in_args.value):
        said = str(error)
        assert "embedded services" in said and "input_value" not in said
        assert SECRET[:6] not in said and SECRET[-6:] not in said
        assert PASSWORD[:6] not in said and PASSWORD[-6:] not in said


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        ("database_url", f"mysql://app:{PASSWORD}@db/labels", "postgresql://"),
        ("database_url", f"host=db user=app password={PASSWORD}", "without a scheme"),
        ("redis_url", f"http://:{PASSWORD}@cache:6379", "redis://"),
        ("object_store_url", "s4://bucket/labels", "s4://"),
    ],
)
def test_a_storage_url_of_the_wrong_kind_is_refused_at_startup(
    field: str, value: str, said: str
) -> None:
    """Accepted before: a DSN asyncpg refuses made every storage request answer 503
    'retry later' for ever; a Redis or object store URL of the wrong kind failed inside
    every replica's constructor, naming no setting."""
    with pytest.raises(ValidationError) as refused:
        Settings(**{field: value})
    assert f"\n{field}\n" in str(refused.value) and said in str(refused.value)
    assert PASSWORD not in str(refused.value)


def test_storage_urls_of_the_right_kind_pass() -> None:
    settings = Settings(
        database_url="postgres://app@db/labels",
        redis_url="rediss://cache:6380/0",
        object_store_url="s3://bucket/labels",
    )
    assert settings.object_store_url == "s3://bucket/labels"
    assert Settings(redis_url="unix:///run/redis.sock", object_store_url="/srv/objects")
