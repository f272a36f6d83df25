"""The public data sheet (EU Data Act Art. 3(2)): what a vehicle generates and how its user gets at it, as JSON.

Public on purpose: the Act asks for this information *before* a vehicle is bought, so it needs no account. It
names no vehicle and no person: only the catalogue, the rules, the models registered here and the operator's
public contact (compliance/data_sheet.py builds it).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from carvault.web.deps import RegionDep

router = APIRouter(prefix="/api/v1", tags=["catalogue"])


@router.get(
    "/data-sheet",
    summary="Data sheet of this region's vehicles: data types, format, volume, availability, storage, retention, "
    "how to access, retrieve and erase (Data Act Art. 3(2))",
)
def data_sheet(region: RegionDep) -> dict[str, Any]:
    return region.data_sheet.json()
