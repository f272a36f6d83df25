"""The one place where errors become HTTP answers: ``{"error": {"code", "message", ...}}``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from carvault.errors import CarVaultError, TooManyRequests, WrongRegion

log = logging.getLogger("carvault.web")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def error_response(e: CarVaultError) -> JSONResponse:
    """JSON answer for a CarVault error, with the headers its status calls for."""
    headers = {}
    if isinstance(e, TooManyRequests) and "retry_after_s" in e.details:
        headers["Retry-After"] = str(e.details["retry_after_s"])
    if isinstance(e, WrongRegion) and e.details.get("endpoint"):
        headers["CarVault-Region-Endpoint"] = str(e.details["endpoint"])
    if e.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="carvault"'
    return JSONResponse(e.to_json(), status_code=e.status, headers=headers)


def install(app: FastAPI) -> None:
    """Register the handlers on an app."""

    @app.exception_handler(CarVaultError)
    async def _carvault(_: Request, e: CarVaultError) -> JSONResponse:
        if e.status >= 500:
            log.error("%s: %s", e.code, e.message)
        return error_response(e)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError) -> JSONResponse:
        problems = [
            {"where": ".".join(str(p) for p in err.get("loc", ())), "problem": err.get("msg", "")} for err in e.errors()
        ]
        first = problems[0] if problems else {"where": "request", "problem": "invalid"}
        body = {
            "error": {
                "code": "validation_failed",
                "message": f"{first['where']}: {first['problem']}",
                "problems": problems,
            }
        }
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> Response:
        html_error = getattr(request.app.state, "html_error", None)
        if html_error is not None and not request.url.path.startswith("/api/"):
            return await html_error(request, e.status_code, str(e.detail))  # people browsing get a page
        code = _HTTP_CODES.get(e.status_code, "http_error")
        return JSONResponse({"error": {"code": code, "message": str(e.detail)}}, status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(
            {"error": {"code": "internal_error", "message": "the server failed to handle this request"}},
            status_code=500,
        )
