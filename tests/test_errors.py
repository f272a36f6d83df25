"""The error hierarchy: unique stable codes, each documented."""

from __future__ import annotations

from pathlib import Path

import carvault.region  # noqa: F401 - defines every error class
import carvault.web.app  # noqa: F401
from carvault.errors import CarVaultError, all_error_classes


def test_codes_are_unique_and_documented() -> None:
    classes = all_error_classes()
    codes = [c.code for c in classes]
    assert len(codes) == len(set(codes))
    doc = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
    for c in classes:
        assert f"`{c.code}`" in doc, c.code
        assert issubclass(c, CarVaultError) and 400 <= c.status <= 503 or c is CarVaultError
        assert c.__doc__
