"""Every setting is declared once, typed, and documented."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from carvault.settings import SETTINGS, Settings

DOC = Path(__file__).resolve().parents[1] / "docs" / "operations.md"


def test_every_setting_is_declared_and_documented() -> None:
    declared = {s.name for s in SETTINGS}
    assert declared == {f.name for f in fields(Settings)}
    text = DOC.read_text()
    for s in SETTINGS:
        assert f"`{s.name}`" in text and f"CARVAULT_{s.name.upper()}" in text, s.name


def test_from_env_and_overrides() -> None:
    s = Settings.from_env({"CARVAULT_REGION": "eu", "CARVAULT_PORT": "9000"}, port=9100)
    assert s.region == "eu" and s.port == 9100
    assert Settings.from_env({}).resolved_database_url.startswith("sqlite:///")
    with pytest.raises(ValueError, match="integer"):
        Settings.from_env({"CARVAULT_PORT": "eighty"})
    with pytest.raises(ValueError, match="region"):
        Settings.from_env({"CARVAULT_REGION": "CN China"})
