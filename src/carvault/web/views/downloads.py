"""Downloads: any window or the whole history as CSV, Parquet, JSON or GPX, built as background jobs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from carvault.signals import CATEGORIES
from carvault.web.deps import RowId
from carvault.web.views.base import FormError, Page, PageError, page
from carvault.web.views.vehicles import vehicle

router = APIRouter(include_in_schema=False)
FORMATS = ("csv", "parquet", "json", "gpx")
RESAMPLE = ("", "1s", "10s", "1min", "5min", "1h")


def categories(p: Page) -> list[dict[str, Any]]:
    """The data categories, for the signal picker."""
    return [{"name": c.name, "title": p.t.maybe(f"category.{c.name}", c.title)} for c in CATEGORIES.values()]


async def _page(
    p: Page, vin: str, status: int = 200, error: str | None = None, form: dict[str, Any] | None = None
) -> HTMLResponse:
    car = await vehicle(p, vin)
    jobs = await p.get_json("/api/v1/exports", params={"vin": car["vin"]})
    q = p.request.query_params
    defaults: dict[str, Any] = {
        "scope": "window" if q.get("from") else "all",
        "from": q.get("from", ""),
        "to": q.get("to", ""),
        "format": "csv",
        "resample": "",
        "categories": [],
    }
    return p.render(
        "downloads.html",
        status=status,
        title=p.t("downloads.title"),
        car=car,
        jobs=jobs,
        error=error,
        form={**defaults, **(form or {})},
        formats=FORMATS,
        resample=RESAMPLE,
        categories=categories(p),
    )


@router.get("/vehicles/{vin}/downloads")
async def downloads(vin: str, request: Request) -> Response:
    return await _page(await page(request), vin)


@router.post("/vehicles/{vin}/downloads")
async def start_download(vin: str, request: Request) -> Response:
    p = await page(request)
    car = await vehicle(p, vin)
    data = await request.form()
    form = await p.form()
    chosen = [c for c in data.getlist("categories") if isinstance(c, str) and c in CATEGORIES]
    body: dict[str, Any] = {"vin": car["vin"], "format": form.get("format", "csv")}
    keep = {**form, "categories": chosen}
    try:
        if form.get("scope") == "window":
            body["start"], body["end"] = p.time_input(form.get("from"), "from"), p.time_input(form.get("to"), "to")
    except FormError as e:
        return await _page(p, vin, 400, str(e), keep)
    if chosen and len(chosen) < len(CATEGORIES):
        paths = [s.path for s in request.app.state.region.catalogue if s.category in chosen]
        body["signals"] = ",".join(paths)
    if form.get("resample") in RESAMPLE[1:]:
        body["resample"] = form["resample"]
    r = await p.api("POST", "/api/v1/exports", json_body=body)
    if r.status_code != 202:
        return await _page(p, vin, 400, p.error_text(r), keep)
    return p.redirect(f"/vehicles/{car['vin']}/downloads/{r.json()['id']}", "export_started")


async def _job(p: Page, vin: str, job_id: int) -> tuple[dict[str, Any], dict[str, Any]]:
    car = await vehicle(p, vin)
    job = await p.get_json(f"/api/v1/exports/{job_id}")
    if job["vin"] != car["vin"]:
        raise PageError(404, p.t("error.404"))
    return car, job


@router.get("/vehicles/{vin}/downloads/{job_id}")
async def job_page(vin: str, job_id: RowId, request: Request) -> Response:
    p = await page(request)
    car, job = await _job(p, vin, job_id)
    return p.render("download_job.html", title=p.t("job.title", id=job["id"]), car=car, job=job)


@router.post("/vehicles/{vin}/downloads/{job_id}/cancel")
async def cancel(vin: str, job_id: RowId, request: Request) -> Response:
    p = await page(request)
    await p.form()
    car, job = await _job(p, vin, job_id)
    await p.api("DELETE", f"/api/v1/exports/{job['id']}")
    return p.redirect(f"/vehicles/{car['vin']}/downloads", "export_cancelled")
