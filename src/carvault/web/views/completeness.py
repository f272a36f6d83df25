"""A vehicle's "Completeness" page (issue 13): a day's coverage, what is missing and why, per drive, with downloads.

Built on ``GET /api/v1/vehicles/{vin}/completeness`` (the signed report) and ``…/completeness/calendar`` (the strip
of the last 30 days) like every page on its API; the day is cut in the reader's display time zone.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from carvault.web.views.base import page
from carvault.web.views.vehicles import vehicle

router = APIRouter(include_in_schema=False)


def _describe(p: Any, gap: dict[str, Any]) -> str:
    """One gap's reason in the reader's language, with the records it rests on."""
    d = gap.get("detail") or {}
    reason = gap["reason"]
    if reason == "refused":
        return p.t("completeness.why.refused", codes=", ".join(d.get("codes", [])), n=d.get("count", 0))
    if reason in ("deleted", "retention_erased", "missing_from_chain"):
        lo, hi = d.get("missing_seqs", [0, 0])
        seqs = f"{lo}" if lo == hi else f"{lo}–{hi}"
        refs = d.get("deletion_requests") or d.get("retention_runs") or []
        return p.t(f"completeness.why.{reason}", seqs=seqs, refs=", ".join(f"#{r}" for r in refs))
    if reason == "not_sent" and "empty_in_batch" in d:
        return p.t("completeness.why.empty_in_batch", seq=d["empty_in_batch"])
    return p.t(f"completeness.why.{reason}")


@router.get("/vehicles/{vin}/completeness")
async def completeness(vin: str, request: Request) -> Response:
    p = await page(request)
    car = await vehicle(p, vin)
    today = dt.datetime.now(p.t.tz).date().isoformat()
    day = request.query_params.get("day") or today
    params = {"day": day, "tz": p.t.tz_name}
    report: dict[str, Any] = await p.get_json(f"/api/v1/vehicles/{car['vin']}/completeness", params=params)
    cal: dict[str, Any] = await p.get_json(
        f"/api/v1/vehicles/{car['vin']}/completeness/calendar",
        params={"end": str(report["window"]["end_ms"]), "days": "30", "tz": p.t.tz_name},
    )
    for d in cal["days"]:
        d["pct"] = round(100 * d["covered_seconds"] / d["seconds"]) if d["seconds"] else 0
    gaps = [{**g, "why": _describe(p, g)} for g in report["gaps"]]
    drives = [{**d, "holes": [{**g, "why": _describe(p, g)} for g in d["gaps"]]} for d in report.get("drives") or []]
    categories = [c for c in report["categories"] if c["consent_off"] or c["withheld_batches"] or c["present"]]
    query = f"day={day}&tz={p.t.tz_name}"
    return p.render(
        "completeness.html",
        title=p.t("completeness.title"),
        car=car,
        tab="completeness",
        day=day,
        today=today,
        report=report,
        totals=report["totals"],
        calendar=cal["days"],
        gaps=gaps,
        drives=drives,
        categories=categories,
        software=report["software"],
        json_href=f"/api/v1/vehicles/{car['vin']}/completeness.json?{query}",
        csv_href=f"/api/v1/vehicles/{car['vin']}/completeness.csv?{query}",
        file_name=f"completeness-{car['vin']}-{day}.json",
    )
