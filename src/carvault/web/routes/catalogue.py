"""The signal catalogue and the data categories, as the API serves them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from carvault.signals import CATEGORIES
from carvault.web.deps import RegionDep

router = APIRouter(prefix="/api/v1", tags=["catalogue"])


@router.get("/signals", summary="Every signal: VSS path, datatype, unit, range, rate, category, privacy class")
def signals(region: RegionDep, category: str | None = None) -> list[dict[str, Any]]:
    return [s.to_json() for s in region.catalogue if category is None or s.category == category]


@router.get("/categories", summary="Data categories with privacy class, purpose and retention")
def categories() -> list[dict[str, Any]]:
    return [
        {
            "name": c.name,
            "title": c.title,
            "privacy": c.privacy.value,
            "purpose": c.purpose,
            "retention_days": c.retention_days,
        }
        for c in CATEGORIES.values()
    ]
