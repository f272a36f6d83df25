"""Who accessed my data: the owner's audit log, filterable by actor, action and time."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from carvault.access.audit import AuditAction
from carvault.web.views.base import FormError, Page, page

router = APIRouter(include_in_schema=False)
PAGE_SIZE = 50  # rows shown per page
FETCH = 500  # events read to fill them: the owner's page views fold into a few rows
HOUR_MS = 3_600_000
# The basis of a read under a case, as compliance/cases.case_basis writes it.
CASE_BASIS = re.compile(r"case (?P<id>\d+) \((?P<kind>[a-z_]+)\): (?P<basis>.*)", re.DOTALL)


def actor_label(p: Page, actor: str, apps: dict[str, str] | None = None) -> str:
    """ "You" for the owner, an app by its name, else the kind of actor and its id."""
    kind, _, ident = actor.partition(":")
    if p.me and kind == "owner" and ident == str(p.owner_id):
        return p.t("access.you")
    if kind == "app" and apps and ident in apps:
        return f"{p.t('actor.app')} {apps[ident]}"
    if kind == "token":
        return f"{p.t('actor.token')} #{ident}"
    if kind == "staff":  # an operator's staff member, named by role (compliance/roles.py) and username
        role, _, username = ident.partition(":")
        return f"{p.t('actor.staff')} ({p.t.maybe(f'console.role.{role}', role)}) {username}"
    return f"{p.t.maybe(f'actor.{kind}', kind)} {ident}".strip()


def grant_of(e: dict[str, Any], grants: dict[int, dict[str, Any]]) -> dict[str, Any] | None:
    """The owner's grant an audit event names (reads under a grant carry its id), if it is one of theirs."""
    grant_id = (e.get("detail") or {}).get("grant_id")
    return grants.get(grant_id) if isinstance(grant_id, int) else None


def reader_label(p: Page, e: dict[str, Any], grants: dict[int, dict[str, Any]]) -> str | None:
    """A personal access token's reads named by the token's label (its grant says which)."""
    g = grant_of(e, grants)
    if g is None or not e["actor"].startswith("token:"):
        return None
    return f"{p.t('actor.token')} “{g['label'] or p.t('sharing.unnamed_token')}”"


def basis_label(p: Page, e: dict[str, Any], grants: dict[int, dict[str, Any]]) -> str:
    """The legal basis in the reader's language: for a read under a grant, whose consent, for whom and why."""
    d = e.get("detail") or {}
    g = grant_of(e, grants)
    if g is None or not d.get("purpose") or e["actor"].partition(":")[0] not in ("app", "token"):
        return basis_text(p, e["legal_basis"])
    who = g["app"]["name"] if g["app"] else g["label"] or p.t("sharing.unnamed_token")
    purpose = p.t.maybe(f"purpose.{d['purpose']}", str(d["purpose"]))
    return f"{p.t('access.basis_grant', app=who, purpose=purpose)} ({p.t('access.via_grant', id=g['id'])})"


def basis_text(p: Page, basis: str) -> str:
    """A recorded legal basis in the reader's language: the whole text if the catalogue has it, else its kind
    ("legal obligation: <the law or order>") translated and the law or order as recorded."""
    whole = p.t.maybe(f"basis.{basis}", "")
    if whole:
        return whole
    case = CASE_BASIS.fullmatch(basis)  # a staff member's read under a case (compliance/cases.py)
    if case:
        kind = p.t.maybe(f"console.cases.kind.{case['kind']}", case["kind"])
        return p.t("a11y.basis.case", id=case["id"], kind=kind, basis=case["basis"])
    head, sep, rest = basis.partition(": ")
    named = p.t.maybe(f"basis.{head}", "") if sep else ""
    return f"{named}{'：' if p.t.zh else ': '}{rest}" if named else basis


def summary(p: Page, e: dict[str, Any]) -> str:
    """A short line on what was accessed."""
    d = e.get("detail") or {}
    parts = []
    if "start_ms" in d and "end_ms" in d:
        parts.append(f"{p.t.dt(d['start_ms'], 'datetime_s')} – {p.t.dt(d['end_ms'], 'datetime_s')}")
    if d.get("format"):
        parts.append(str(d["format"]).upper())
    if d.get("rows") is not None:
        parts.append(p.t.count(int(d["rows"]), "row"))
    if d.get("category"):
        parts.append(p.t.maybe(f"category.{d['category']}", str(d["category"])))
    if d.get("package_id"):
        parts.append(p.t("access.package", id=d["package_id"]))
    if d.get("export_id"):
        parts.append(p.t("access.export", id=d["export_id"]))
    if d.get("signals") and d["signals"] != "*":
        n = len(str(d["signals"]).split(","))
        parts.append(p.t.count(n, "signal"))
    if d.get("case_id") is not None:  # a staff member's read under a case (compliance/cases.py)
        parts.append(p.t("access.case", id=d["case_id"]))
    transfer = d.get("transfer")
    if isinstance(transfer, dict) and transfer.get("record_id") is not None:  # a read from abroad (transfers.py)
        route = p.t.maybe(f"transfer.route.{transfer.get('route')}", str(transfer.get("route")))
        where = str(transfer.get("destination", ""))
        parts.append(p.t("access.transfer_abroad", destination=where, id=transfer["record_id"], route=route))
    return " · ".join(parts)


def group_key(p: Page, e: dict[str, Any]) -> tuple[str, str | None, int] | None:
    """The group an event folds into: the owner's own reads made for a portal page, by page kind, vehicle and
    hour (everyone else's reads, and everything not a read, stand alone)."""
    d = e.get("detail") or {}
    kind, _, ident = e["actor"].partition(":")
    if not (kind == "owner" and ident == str(p.owner_id) and isinstance(d.get("page"), str) and d.get("view")):
        return None
    return d["page"], e.get("vin"), e["at_ms"] // HOUR_MS


def fold(p: Page, events: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int | None]:
    """Events (newest first) as rows: the owner's page views grouped per page kind, vehicle and hour, with how
    many views; returns the rows (at most ``PAGE_SIZE``) and the id of the last event they cover."""
    rows: list[dict[str, Any]] = []
    groups: dict[tuple[str, str | None, int], dict[str, Any]] = {}
    last = None
    for e in events:
        key = group_key(p, e)
        if key is not None and key in groups:
            g = groups[key]
            g["views"].add(e["detail"]["view"])
            g["first_ms"] = e["at_ms"]
            g["reads"] += 1
            last = e["id"]
            continue
        if len(rows) == PAGE_SIZE:
            break
        row = {**e, "group": key is not None}
        if key is not None:
            row.update(views={e["detail"]["view"]}, first_ms=e["at_ms"], last_ms=e["at_ms"], reads=1)
            groups[key] = row
        rows.append(row)
        last = e["id"]
    return rows, last


def page_summary(p: Page, row: dict[str, Any]) -> str:
    """What a group of page views says: how many views and the span of time they fall in."""
    span = p.t.dt(row["first_ms"], "time")
    if p.t.dt(row["last_ms"], "time") != span:
        span += f"–{p.t.dt(row['last_ms'], 'time')}"
    return f"{p.t.count(len(row['views']), 'view')} · {span}"


@router.get("/access")
async def access(request: Request) -> Response:
    p = await page(request)
    q = request.query_params
    params: dict[str, Any] = {"limit": FETCH}
    error = None
    for name in ("actor", "action"):
        if q.get(name):
            params[name] = q[name]
    try:
        if q.get("since"):
            params["since"] = p.time_input(q["since"], "since")
        if q.get("until"):
            until = datetime.fromtimestamp(p.time_input(q["until"], "until") / 1000, p.t.tz) + timedelta(days=1)
            params["until"] = int(until.timestamp() * 1000)
    except FormError as e:
        error = str(e)
    if q.get("before", "").isascii() and q.get("before", "").isdigit() and len(q["before"]) <= 19:
        params["before_id"] = int(q["before"])
    events = (await p.get_json("/api/v1/audit", params=params))["events"]
    recent = (await p.get_json("/api/v1/audit", params={"limit": 1000}))["events"]
    actors = sorted({e["actor"] for e in recent} | ({q["actor"]} if q.get("actor") else set()))
    actions = sorted({a.value for a in AuditAction} | {e["action"] for e in recent})
    # Third-party reads are named by app, purpose and legal basis: the owner's grants say who is behind each.
    grants = {g["id"]: g for g in (await p.get_json("/api/v1/grants", params={"all": "true"}))["grants"]}
    apps = {g["app"]["client_id"]: g["app"]["name"] for g in grants.values() if g["app"]}
    folded, last = fold(p, events)
    cars = {v["vin"]: v["display_name"] for v in await p.get_json("/api/v1/vehicles")}
    rows = [
        {
            **e,
            "who": reader_label(p, e, grants) or actor_label(p, e["actor"], apps),
            "what": (
                p.t.maybe(f"edges.page.{e['detail']['page']}", p.t("edges.page.other"))
                if e["group"]
                else p.t.maybe(f"action.{e['action']}", e["action"])
            ),
            "summary": page_summary(p, e) if e["group"] else summary(p, e),
            "basis": basis_label(p, e, grants),
            "car": cars.get(e["vin"]) if e.get("vin") else None,
        }
        for e in folded
    ]
    older = None
    if last is not None and (len(events) == FETCH or last != events[-1]["id"]):
        keep = {k: v for k, v in q.items() if k not in ("before", "notice")}
        older = "&".join(f"{k}={v}" for k, v in {**keep, "before": last}.items())
    return p.render(
        "access.html",
        title=p.t("access.title"),
        rows=rows,
        error=error,
        actors=actors,
        actor_labels={a: actor_label(p, a, apps) for a in actors},
        actions=actions,
        filters={k: q.get(k, "") for k in ("actor", "action", "since", "until")},
        older=older,
    )
