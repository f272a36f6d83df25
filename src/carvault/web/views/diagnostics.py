"""A vehicle's "Health" page: lit warning lamps, trouble codes in plain words, service and software (issue 14).

Built on ``GET /api/v1/vehicles/{vin}/diagnostics`` like every page on its API; meanings, advice and lamp names come
in English and Simplified Chinese from the API and are shown in the page's language.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from carvault.web.views.base import page
from carvault.web.views.vehicles import vehicle

router = APIRouter(include_in_schema=False)


def _pick(p: Any, texts: dict[str, str] | None) -> str:
    """The text of ``texts`` ({"en", "zh-CN"}) in the page's language."""
    if not texts:
        return ""
    return texts.get("zh-CN", "") if p.t.language.startswith("zh") else texts.get("en", "")


@router.get("/vehicles/{vin}/diagnostics")
async def diagnostics(vin: str, request: Request) -> Response:
    p = await page(request)
    car = await vehicle(p, vin)
    # ?end= and ?days= pass through to the API (a past day's state); anything else is ignored here and checked there.
    params = {k: v for k in ("end", "days") if (v := request.query_params.get(k))}
    report: dict[str, Any] = await p.get_json(f"/api/v1/vehicles/{car['vin']}/diagnostics", params=params)
    days = round((report["end_ms"] - report["start_ms"]) / 86_400_000)
    lamps = [
        {**lamp, "text": _pick(p, lamp["description"]).split("：")[0].split(":")[0]}
        for lamp in report["lamps"]
        if lamp["state"] != "OFF"
    ]
    codes = [
        {**c, "meaning_text": _pick(p, c["meaning"]), "advice_text": _pick(p, c["advice"])} for c in report["codes"]
    ]
    return p.render(
        "diagnostics.html",
        title=p.t("diagnostics.title"),
        car=car,
        tab="diagnostics",
        report=report,
        lamps=lamps,
        codes=codes,
        days=days,
    )
