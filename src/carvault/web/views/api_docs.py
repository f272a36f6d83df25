"""The API reference page: the vendored Swagger UI on a portal page of our own, under the portal's content policy.

FastAPI's built-in page loads its viewer from a CDN and starts it with an inline script; the portal's content
security policy (``script-src 'self'``) refuses both, so that page stayed blank. Here the viewer's files come from
/static/vendor and ``api_docs.js`` starts it on the OpenAPI document.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse

from carvault.web.views.base import page

DOCS_PATH = "/api/v1/docs"
OPENAPI_PATH = "/api/v1/openapi.json"


async def api_docs(request: Request) -> HTMLResponse:
    """The reference of every operation, for anyone (the OpenAPI document is public)."""
    p = await page(request, login=False)
    return p.render("api_docs.html", title=p.t("a11y.api_docs.title"), section="", openapi_url=OPENAPI_PATH)


def install(app: FastAPI) -> None:
    """Serve the page where FastAPI's own one was (``docs_url=None`` in web/app.py)."""
    app.add_route(DOCS_PATH, api_docs, methods=["GET"], include_in_schema=False)
