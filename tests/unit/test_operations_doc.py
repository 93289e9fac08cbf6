"""docs/operations.md names every setting: an operator reading its list of settings finds
each one there (or where it points), none only in the code."""

from __future__ import annotations

import re
from pathlib import Path

from modelship.core.settings import Settings

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def test_every_setting_is_named_in_the_settings_section() -> None:
    text = OPERATIONS.read_text()
    section = text[text.index("## Settings") :]
    section = section[: section.index("\n## ", 1)]
    named = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", section))
    missing = sorted(name.upper() for name in Settings.model_fields if name.upper() not in named)
    assert missing == []
