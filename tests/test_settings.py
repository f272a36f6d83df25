"""Every setting is declared once, typed, and documented."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import get_origin

import pytest

from carvault.settings import SETTINGS, Setting, Settings

DOC = Path(__file__).resolve().parents[1] / "docs" / "operations.md"


def test_every_setting_is_declared_and_documented() -> None:
    declared = {s.name for s in SETTINGS}
    assert declared == {f.name for f in fields(Settings)}
    text = DOC.read_text()
    for s in SETTINGS:
        # The docs row repeats the table's default and help word for word, so neither can drift.
        row = f"| `{s.name}` | `CARVAULT_{s.name.upper()}` | `{s.default}` | {s.help} |"
        assert row in text, row


@pytest.mark.parametrize("row", SETTINGS, ids=lambda r: r.name)
def test_each_default_reads_back_as_its_typed_value(row: Setting) -> None:
    # The default as documented, read like an environment variable, is the dataclass default.
    from_text = Settings.from_env({f"CARVAULT_{row.name.upper()}": str(row.default)})
    assert getattr(from_text, row.name) == getattr(Settings(), row.name)
    assert isinstance(getattr(Settings(), row.name), get_origin(row.type) or row.type)


def test_from_env_and_overrides() -> None:
    s = Settings.from_env({"CARVAULT_REGION": "eu", "CARVAULT_PORT": "9000"}, port=9100)
    assert s.region == "eu" and s.port == 9100
    assert Settings.from_env({}).resolved_database_url.startswith("sqlite:///")
    with pytest.raises(ValueError, match="integer"):
        Settings.from_env({"CARVAULT_PORT": "eighty"})
    with pytest.raises(ValueError, match="region"):
        Settings.from_env({"CARVAULT_REGION": "CN China"})


def test_unknown_settings_and_endpoint_syntax_fail_clearly() -> None:
    with pytest.raises(ValueError, match="unknown setting"):
        Settings.coerce({"prot": "80"})
    with pytest.raises(ValueError, match="name=url"):
        Settings.from_env({"CARVAULT_REGION_ENDPOINTS": "cn"})
    s = Settings.from_env({"CARVAULT_DATA_DIR": "/srv/cv", "CARVAULT_REGION_ENDPOINTS": "eu=http://x/ "})
    assert s.data_dir == Path("/srv/cv") and dict(s.region_endpoints) == {"eu": "http://x"}
