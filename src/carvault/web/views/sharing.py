"""Connected apps: every grant of the owner (who, why, what, how long, how much was read), one-step revoke, and
scoped personal access tokens for the owner's own scripts. Built on /api/v1/grants like any other client."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from carvault.compliance.sharing import DEFAULT_GRANT_DAYS, MAX_GRANT_DAYS, NEVER_SHAREABLE
from carvault.errors import NotShareable
from carvault.web.deps import RowId
from carvault.web.views.base import FormError, Page, api_message, page

router = APIRouter(include_in_schema=False)
PRIVACY_ORDER = ("important", "sensitive", "personal", "technical")


def signal_groups(p: Page, paths: list[str], catalogue: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a grant covers in plain words: its signals grouped by category, with privacy class and count."""
    chosen = [s for s in catalogue if any(s["path"] == x or s["path"].startswith(x + ".") for x in paths)]
    by_category: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in chosen:
        by_category[s["category"]].append(s)
    groups = [
        {
            "category": c,
            "title": p.t.maybe(f"category.{c}", c),
            "privacy": sigs[0]["privacy"],
            "privacy_title": p.t.maybe(f"privacy.{sigs[0]['privacy']}", sigs[0]["privacy"]),
            "count": len(sigs),
            "paths": [s["path"] for s in sigs],
        }
        for c, sigs in by_category.items()
    ]
    rank = {name: i for i, name in enumerate(PRIVACY_ORDER)}
    return sorted(groups, key=lambda g: (rank.get(g["privacy"], len(rank)), g["title"]))


def shareable_categories(p: Page, catalogue: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The categories a token may cover (never camera, biometric or cabin data), for the token form."""
    groups = signal_groups(p, sorted({s["path"] for s in catalogue}), catalogue)
    return [g for g in groups if g["category"] not in NEVER_SHAREABLE]


def grant_view(p: Page, g: dict[str, Any], catalogue: list[dict[str, Any]], cars: dict[str, str]) -> dict[str, Any]:
    """A grant as the page shows it."""
    if g["kind"] == "app" and g["app"]:
        who = g["app"]["name"]
    elif g["kind"] == "pat":
        who = g["label"] or p.t("sharing.unnamed_token")
    else:
        who = g["label"] or p.t("sharing.kind.portability")
    if g["from_ms"] is None and g["to_ms"] is None:
        window = p.t("sharing.window_all")
    elif g["to_ms"] is None:
        window = p.t("sharing.window_from", start=p.t.dt(g["from_ms"], "date"))
    else:
        start = p.t.dt(g["from_ms"], "date") if g["from_ms"] is not None else p.t("sharing.window_start")
        window = p.t("sharing.window_range", start=start, end=p.t.dt(g["to_ms"], "date"))
    if g["revoked_ms"]:
        ended = p.t("sharing.revoked_on", when=p.t.dt(g["revoked_ms"]))
    else:
        ended = p.t("sharing.ended_on", when=p.t.dt(g["expires_ms"]))
    return {
        **g,
        "who": who,
        "kind_title": p.t(f"sharing.kind.{g['kind']}"),
        "purpose_title": p.t.maybe(f"purpose.{g['purpose']}", g["purpose"]),
        "groups": signal_groups(p, g["signals"], catalogue),
        "cars": [(vin, cars.get(vin, "")) for vin in g["vins"]],
        "window": window,
        "ended": ended,
    }


async def _page(
    p: Page, status: int = 200, error: str | None = None, created: dict[str, Any] | None = None, form: Any = None
) -> HTMLResponse:
    grants = (await p.get_json("/api/v1/grants", params={"all": "true"}))["grants"]
    catalogue = await p.get_json("/api/v1/signals")
    vehicles = await p.get_json("/api/v1/vehicles")
    cars = {v["vin"]: v["display_name"] for v in vehicles}
    shown = [grant_view(p, g, catalogue, cars) for g in grants]
    today = datetime.now(p.t.tz).date()
    return p.render(
        "sharing.html",
        status=status,
        title=p.t("sharing.title"),
        error=error,
        live=[g for g in shown if g["active"]],
        ended=[g for g in shown if not g["active"]],
        vehicles=vehicles,
        categories=shareable_categories(p, catalogue),
        created=created,
        form=form or {},
        default_end=(today + timedelta(days=DEFAULT_GRANT_DAYS)).isoformat(),
        max_end=(today + timedelta(days=MAX_GRANT_DAYS)).isoformat(),
        min_end=(today + timedelta(days=1)).isoformat(),
        max_days=MAX_GRANT_DAYS,
    )


@router.get("/sharing")
async def sharing(request: Request) -> Response:
    return await _page(await page(request))


@router.post("/sharing/{grant_id}/revoke")
async def revoke(grant_id: RowId, request: Request) -> Response:
    p = await page(request)
    await p.form()
    r = await p.api("DELETE", f"/api/v1/grants/{grant_id}")
    if r.status_code >= 400:
        return await _page(p, r.status_code, api_message(r))
    return p.redirect("/sharing", "grant_revoked")


def token_request(
    p: Page, form: dict[str, str], selected: list[str], vins: list[str], catalogue: Any
) -> dict[str, Any]:
    """The API request a token form says; ``FormError`` for what the page itself can tell is missing."""
    label = form.get("label", "").strip()
    if not label:
        raise FormError(p.t("sharing.token_label_needed"))
    chosen = {c["category"]: c["paths"] for c in shareable_categories(p, catalogue)}
    signals = [path for c in selected if c in chosen for path in chosen[c]]
    signals += [x for x in form.get("paths", "").replace(",", " ").split() if x]
    if not signals:
        raise FormError(p.t("sharing.token_signals_needed"))
    if not vins:
        raise FormError(p.t("sharing.token_vehicles_needed"))
    body: dict[str, Any] = {
        "label": label,
        "vins": vins,
        "signals": list(dict.fromkeys(signals)),
        "live": form.get("live") == "on",
        "precise_location": form.get("precise_location") == "on",
        "expires": _day_end(p, form.get("expires"), "ends"),
    }
    if form.get("history_from"):
        body["history_from"] = p.time_input(form["history_from"], "from")
    if form.get("history_to"):
        body["history_to"] = _day_end(p, form["history_to"], "to")
    return body


def _day_end(p: Page, value: str | None, name: str) -> int:
    """The end of a day chosen in a date input (inclusive), in the display time zone."""
    start = datetime.fromtimestamp(p.time_input(value, name) / 1000, p.t.tz)
    return int((start + timedelta(days=1)).timestamp() * 1000) - 1


@router.post("/sharing/tokens")
async def create_token(request: Request) -> Response:
    p = await page(request)
    data = await request.form()
    form = await p.form()
    selected = [v for v in data.getlist("category") if isinstance(v, str)]
    vins = [v for v in data.getlist("vin") if isinstance(v, str)]
    echo = {**form, "category": selected, "vin": vins}
    catalogue = await p.get_json("/api/v1/signals")
    try:
        body = token_request(p, form, selected, vins, catalogue)
    except FormError as e:
        return await _page(p, 400, str(e), form=echo)
    r = await p.api("POST", "/api/v1/grants/tokens", json_body=body)
    if r.status_code != 201:
        return await _page(p, 400, token_error(p, r), form=echo)
    # Shown on this response only (never in a URL, never stored in the clear).
    return await _page(p, created=r.json())


def token_error(p: Page, r: httpx.Response) -> str:
    """The API's refusal in the page's language where the page knows the case, else the API's own message."""
    try:
        err = r.json().get("error", {})
    except ValueError:
        return api_message(r)
    if err.get("code") == NotShareable.code:
        return p.t("sharing.error_not_shareable")
    key = {"expires": "sharing.error_expires", "window": "sharing.error_window", "signals": "sharing.error_signals"}
    field = err.get("field")
    return p.t(key[field], n=MAX_GRANT_DAYS) if field in key else api_message(r)
