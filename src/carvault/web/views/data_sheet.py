"""The public data sheet page (EU Data Act Art. 3(2)), in English and Chinese, built on GET /api/v1/data-sheet."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from carvault.web.views.base import page

router = APIRouter(include_in_schema=False)


@router.get("/data-sheet")
async def data_sheet(request: Request) -> Response:
    p = await page(request, login=False)
    sheet = await p.get_json("/api/v1/data-sheet")
    return p.render("data_sheet.html", title=p.t("data_sheet.title"), section="data_sheet", sheet=sheet)
