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
