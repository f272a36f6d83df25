"""Every HTML page of the portal and the operator console, found from the app's routes, in Chromium: English and
Chinese, desktop and phone (390×844). Each page has zero axe-core (WCAG 2.1 A/AA) violations, is no wider than the
screen, and in Chinese shows no untranslated words; a screenshot of each goes to test-artifacts/screenshots/.

A new page is picked up without touching this file, as long as its path parameters are ones ``_prepare`` gives a
value (a new parameter fails the enumeration, asking to be added there with a real record from the world). Routes
among the views that answer data rather than HTML are left out by their answer's type."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
import pyotp
import pytest
from fastapi.routing import APIRoute

from carvault.compliance.incidents import FIELDS
from carvault.compliance.rights import Kind
from carvault.compliance.roles import Role, allows
from carvault.store.metadata import now_ms
from carvault.web.app import create_app
from carvault.web.deps import SESSION_COOKIE, STAFF_COOKIE
from tests.web.portal.a11y import axe_violations
from tests.web.portal.conftest import SCREENSHOTS, SIZES, api, new_context
from tests.web.portal.world import PASSWORD, World

pytestmark = pytest.mark.slow

# Pages that answer something other than HTML (files), by path suffix, and routes that answer a file whatever
# their path says (each with what it answers).
FILES = (".pdf", ".json", ".csv", ".zip")
FILE_ROUTES = {"/console/cases/{case_id}/read": "a window of a covered car's telemetry as a CSV or Parquet file"}
ROLES = (Role.DPO, Role.REGION_ADMIN, Role.AUDITOR, Role.SUPPORT, Role.LIAISON)
# Words a Chinese page may show in Latin letters: names, units, codes and standards that are not translated.
LATIN_WORDS = (
    # the product, brands, car models, software and the example data's names
    """CarVault Tesla Model EV Li Wei Fleetwise Swagger OpenAPI Apache Arrow Parquet COVESA WebSocket Leaflet
    OpenStreetMap Chrome Firefox Safari Edge Linux Windows macOS Android iOS iPhone English"""
    # units
    """ km h kWh kW Wh bar kPa Nm ms s min V A Hz rpm bpm m kB KB MB GB UTC GMT"""
    # codes, formats and standards, written the same way in Chinese texts
    """ VIN API CSV GPX JSON PDF ZIP PNG JPEG HTML URL URI HTTP HTTPS OAuth TOTP ID IP SHA Ed25519 PIPL GDPR GB/T
    DTC DTCs OBD SoC SOC AC DC CAN VSS VISS PKCE CN EU US QR SQL ISO RFC GPS TLS CA DPO WGS GCJ XYZ OSM C2SP
    NEDC WLTP CLTC OTA ABS AEB EDR LED SAE CFR H3 Art GET POST PUT DELETE Authorization Bearer CNY EUR USD
    GeoNames CC BY cn eu us http https localhost PARQUET EBA MIL II IsCharging v3"""
    # the browser names of the test's own HTTP client, shown as the sessions' browsers
    """ python httpx"""
    # database products (the operator's storage back end, named in the annual report)
    """ sqlite postgresql SQLite PostgreSQL"""
    # a word inside the official Chinese names of Chinese regulations (《App违法违规收集使用个人信息行为认定方法》)
    """ App"""
)
LATIN_OK = set(LATIN_WORDS.split())
# The visible text (and accessible names) of a page, leaving out what is data or code, not UI text: elements marked
# translate="no", code, pre, kbd, samp, .mono, and hidden elements.
UI_TEXT = r"""() => {
  const out = [];
  // Text in an element declared to be in another language (lang="en": an English original shown as such) is not
  // untranslated UI text; neither is data marked translate="no".
  const skip = el => el.getAttribute('translate') === 'no' || el.closest('[translate="no"]')
    || (el.closest('[lang]') && !el.closest('[lang]').lang.startsWith('zh'))
    || ['SCRIPT', 'STYLE', 'NOSCRIPT', 'CODE', 'PRE', 'KBD', 'SAMP', 'svg', 'TEMPLATE'].includes(el.tagName)
    || el.classList.contains('mono') || el.classList.contains('code');
  const shown = el => {
    const s = getComputedStyle(el);
    if (s.display === 'none' || s.visibility === 'hidden') return false;
    return !!(el.offsetWidth || el.offsetHeight || el.getClientRects().length)
      || el.classList.contains('visually-hidden');
  };
  const walk = node => {
    if (node.nodeType === Node.TEXT_NODE) { if (node.textContent.trim()) out.push(node.textContent.trim()); return; }
    if (node.nodeType !== Node.ELEMENT_NODE || skip(node)) return;
    if (node.tagName !== 'OPTION' && !shown(node) && !node.closest('details')) return;
    for (const a of ['aria-label', 'title', 'placeholder', 'alt']) {
      const v = node.getAttribute(a);
      if (v && v.trim()) out.push(v.trim());
    }
    node.childNodes.forEach(walk);
  };
  walk(document.body);
  out.push(document.title);
  return out;
}"""
WORD = re.compile(r"[A-Za-z][A-Za-z0-9/'’.-]*[A-Za-z0-9]|[A-Za-z]{2,}")
DATA = (
    re.compile(r"\b[A-HJ-NPR-Z0-9]{17}\b"),  # VINs
    re.compile(r"\S+@\S+"),  # e-mail addresses
    re.compile(r"https?://\S+"),  # addresses
    re.compile(r"\b[0-9a-f]{12,}\b"),  # hashes and ids
    re.compile(r"\b[a-z]+(?:[-.][a-z]+)*-[0-9a-f]{8}\b"),  # the staff members' usernames made here
    re.compile(r"\b[A-Z]{2,}(?:-[A-Z0-9]{2,})+\b"),  # user codes (WDJB-MJHT)
    re.compile(r"\b[A-Za-z][\w-]*/\d[\w.]*"),  # product/version tokens of browsers' user-agent strings
    re.compile(r"(?<![\w/])/?[a-z0-9_.{}-]+(?:/[a-z0-9_.{}-]+)*\.(?:md|py|json|csv)\b"),  # file paths
    re.compile(r"(?<![\w/])/[a-z0-9_.{}-]+(?:/[a-z0-9_.{}-]+)+"),  # URL paths (/api/v1/...)
    re.compile(r"\b(?=[A-Z0-9-]*[0-9])[A-Z][A-Z0-9-]{2,}\b"),  # trouble codes (P0A1F), references (SC-2026-1)
    re.compile(r"\b[a-z0-9-]+(?:\.[a-z0-9-]+)+/\S*"),  # host/path names (a log's origin)
    re.compile(r"\bcarvault(?: [a-z-]+)+"),  # carvault commands
    re.compile(r"\b[a-z]+(?:_[a-z0-9]+)+\b"),  # snake_case names: file columns (t_utc), codes
    re.compile(r"\b[A-Za-z][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+\b"),  # dotted names: signals, permissions
)
WIDER_THAN_SCREEN = "() => document.documentElement.scrollWidth - window.innerWidth"
STICKING_OUT = """() => [...document.querySelectorAll('body *')]
  .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1
    && !e.closest('.mainnav ul, .tabs ul, .table-wrap'))
  .slice(0, 5).map(e => e.tagName.toLowerCase() + '.' + e.className + ' ' + (e.textContent || '').trim().slice(0, 30))
"""


def untranslated(texts: list[str]) -> list[str]:
    """Latin words in Chinese UI texts that are not on the allow-list (data values removed first)."""
    words: set[str] = set()
    for text in texts:
        for pattern in DATA:
            text = pattern.sub(" ", text)
        for word in WORD.findall(text):
            core = word.strip(".-/’'")
            if core and core not in LATIN_OK and not all(part in LATIN_OK for part in re.split(r"[/.-]", core) if part):
                words.add(core)
    return sorted(words)


@dataclass
class Site:
    """The shared portal world, with an operator's records in it and the ids every page needs."""

    world: World
    owner_secret: str
    staff: dict[Role, str]  # role -> staff session secret
    ids: dict[str, str]
    queries: dict[str, str] = field(default_factory=dict)  # path template -> query a flow sends to it


def _prepare(world: World) -> Site:
    """Records behind every page: an export, a package, a rights request, a case, an incident told to the owner, a
    retention dry run; staff sessions of every role; the owner's own browser session."""
    region = world.region
    vin = world.cars[0].vin
    with httpx.Client(base_url=world.url, timeout=60) as http:
        r = http.post("/api/v1/auth/login", json={"email": world.email, "password": PASSWORD})
        assert r.status_code == 200, r.text
        owner_secret = r.json()["token"]
        headers = {"Authorization": f"Bearer {owner_secret}"}
        jobs = api(world, "/api/v1/exports", vin=vin).json()
        if not jobs:
            r = http.post("/api/v1/exports", headers=headers, json={"vin": vin, "format": "gpx"})
            assert r.status_code in (200, 201, 202), r.text
            jobs = [r.json()]
        packages = api(world, f"/api/v1/vehicles/{vin}/packages").json()
        if not packages:
            crash = next(e for e in api(world, f"/api/v1/vehicles/{vin}/events").json() if e["kind"] == "crash")
            body = {"event_time": crash["t_ms"], "event_kind": "crash", "minutes_before": 5}
            r = http.post(f"/api/v1/vehicles/{vin}/packages", headers=headers, json=body)
            assert r.status_code == 201, r.text
            packages = [r.json()]
        drive = api(world, f"/api/v1/vehicles/{vin}/timeline").json()["drives"][-1]
    staff = {}
    principals = {}
    for role in ROLES:  # display names in Chinese: the names are data the Chinese pages show as given
        username, password = f"{role.value.replace('_', '-')}-{secrets.token_hex(4)}", "staff password 1"
        _, totp = region.staff.create(username, password, role, None, f"测试员{ROLES.index(role) + 1}")
        staff[role], principals[role] = region.staff.login(username, password, pyotp.TOTP(totp).now())
    dpo = principals[Role.DPO]
    request = region.rights.file(region.rights.check(world.owner_id, Kind.COMPLAINT, details="请说明数据的用途"))
    case = region.cases.open(
        dpo, kind="rights_request", vins=[vin], legal_basis="PIPL Art. 45", ends_ms=now_ms() + 7 * 86_400_000
    )
    text = {
        "en": {f: f"The {f} in English." for f in FIELDS},
        "zh-CN": {f: f"中文的说明（{i}）" for i, f in enumerate(FIELDS)},
    }
    incident = region.incidents.record(
        dpo, title="客服笔记本电脑丢失", detected_ms=now_ms() - 60_000, content=text, owner_ids=[world.owner_id]
    )
    region.incidents.notify_owners(incident.id, dpo)
    notice = api(world, "/api/v1/notices").json()[0]
    httpx.post(f"{world.url}/api/v1/notices/{notice['id']}/read", headers=world.auth, timeout=30)  # no banner
    run = region.retention.run(dry_run=True, actor=dpo.actor)
    ids = {
        "vin": vin,
        "job_id": str(jobs[0]["id"]),
        "package_id": str(packages[0]["id"]),
        "notice_id": str(notice["id"]),
        "request_id": str(request.id),
        "case_id": str(case.id),
        "incident_id": str(incident.id),
        "run_id": str(run.id),
        "year": str(2026),
    }
    app, _ = region.apps.register(
        name="Fleetwise",
        legal_entity="上海快车物流有限公司",
        jurisdiction="cn",
        contact="privacy@fleetwise.example",
        purposes=["fleet"],
        redirect_uris=["http://127.0.0.1:9/fleetwise/callback"],
    )
    region.apps.decide(app.client_id, "approved", by="测试员")
    authorize = {
        "response_type": "code",
        "client_id": app.client_id,
        "redirect_uri": "http://127.0.0.1:9/fleetwise/callback",
        "scope": "vss:Vehicle.Speed history",
        "state": "every-page",
        "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        "code_challenge_method": "S256",
    }
    queries = {
        "/vehicles/{vin}/drive": urlencode({"start": drive["start_ms"], "end": drive["end_ms"]}),
        "/oauth/authorize": urlencode(authorize),
    }
    return Site(world=world, owner_secret=owner_secret, staff=staff, ids=ids, queries=queries)


@pytest.fixture(scope="module")
def site(world: World) -> Site:
    return _prepare(world)


@dataclass(frozen=True)
class Page:
    """One page to open: its URL, who opens it (owner, staff role, or nobody) and its name for screenshots."""

    url: str
    who: str  # "owner", "anonymous", or a staff Role value
    name: str
    status: int = 200


def _route_pages(site: Site) -> Iterator[Page]:
    """Every GET page of the portal and the console, from the app's routes, with path parameters filled."""
    from tests.web.test_route_access import _routes

    for path, route in _routes(create_app(site.world.region).routes):
        if not isinstance(route, APIRoute) or "GET" not in (route.methods or ()):
            continue
        module = route.endpoint.__module__
        if not module.startswith("carvault.web.views.") or path.endswith(FILES) or path in FILE_ROUTES:
            continue
        missing = [p for p in re.findall(r"\{(\w+)(?::\w+)?\}", path) if p not in site.ids]
        assert not missing, f"{path}: add a value for {missing} to the ids of test_every_page"
        url = re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: site.ids[m.group(1)], path)
        if path in site.queries:
            url += "?" + site.queries[path]
        name = re.sub(r"[^a-z0-9]+", "-", path.replace("{vin}", "car").lower()).strip("-") or "home"
        if path.startswith("/console"):
            guards = [d.call for d in route.dependant.dependencies if getattr(d.call, "console", False)]
            if not guards:
                yield Page(url, "anonymous", name)
                continue
            permission = getattr(guards[0], "permission")  # noqa: B009 (set by console_with)
            role = next(r for r in ROLES if permission is None or allows(r, permission))
            yield Page(url, role.value, name)
        else:
            yield Page(url, "owner", name)


def _is_page(site: Site, page: Page) -> bool:
    """Whether a route answers HTML (a page) rather than data (a JSON or file route among the views)."""
    cookie = SESSION_COOKIE if page.who == "owner" else STAFF_COOKIE
    value = site.owner_secret if page.who == "owner" else site.staff.get(Role(page.who)) if page.who in ROLES else ""
    cookies = {cookie: value} if value else {}
    r = httpx.get(site.world.url + page.url, cookies=cookies, timeout=60, follow_redirects=True)
    return r.status_code != 200 or r.headers.get("content-type", "").startswith("text/html")


def every_page(site: Site) -> list[Page]:
    """The routes' pages plus the error pages, the pages a flow reaches and the API reference."""
    vin = site.ids["vin"]
    return [
        *(p for p in _route_pages(site) if _is_page(site, p)),
        Page("/login", "anonymous", "login"),
        Page("/signup", "anonymous", "signup"),
        Page("/no-such-page", "owner", "error-404", 404),
        Page("/no-such-page", "anonymous", "error-404-anonymous", 404),
        Page(f"/vehicles/{vin}/drive?start=x&end=y", "owner", "error-400", 400),
        Page("/console/no-such-page", Role.DPO.value, "console-error-404", 404),
        Page("/console/staff", Role.SUPPORT.value, "console-error-403", 403),
        Page("/oauth/authorize?client_id=nobody", "owner", "oauth-error", 400),
        Page("/api/v1/docs", "anonymous", "api-docs"),
    ]


def test_every_page_with_a_path_parameter_gets_a_value(site: Site) -> None:
    """The enumeration sees the app: vehicle pages, console pages with ids, and no page left unfilled."""
    pages = list(_route_pages(site))
    urls = {p.url for p in pages}
    assert f"/vehicles/{site.ids['vin']}" in urls and f"/console/cases/{site.ids['case_id']}" in urls
    assert len(pages) >= 40
    assert not [u for u in urls if "{" in u]


def _open(ctx: Any, page: Any, site: Site, p: Page) -> Any:
    """Go to the page as its visitor; the response."""
    ctx.clear_cookies()
    if p.who == "owner":
        ctx.add_cookies([{"name": SESSION_COOKIE, "value": site.owner_secret, "url": site.world.url}])
    elif p.who != "anonymous":
        ctx.add_cookies([{"name": STAFF_COOKIE, "value": site.staff[Role(p.who)], "url": site.world.url}])
    return page.goto(p.url)


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("lang", ["en", "zh-CN"])
def test_every_page_is_accessible_and_translated(browser: Any, site: Site, lang: str, size: str) -> None:
    ctx = new_context(browser, site.world, size=size, lang=lang)
    page = ctx.new_page()
    js_errors: list[str] = []
    page.on("pageerror", lambda e: js_errors.append(f"{page.url}: {e}"))
    problems: dict[str, list[str]] = {}
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        only = os.environ.get("EVERY_PAGE_ONLY", "")  # a part of a URL: check only those pages (while fixing one)
        for p in every_page(site):
            if only not in p.url:
                continue
            response = _open(ctx, page, site, p)
            found: list[str] = []
            landed = page.url.split("?")[0]
            if p.status == 200 and landed != (site.world.url + p.url).split("?")[0]:
                if landed.endswith("/login"):  # a visitor who should be in was sent to log in: the page is broken
                    problems[f"{p.url} as {p.who}"] = [f"sent to {page.url}"]
                continue  # a page for someone else (the log-in page, for a logged-in owner): checked as its own entry
            if response is None or response.status != p.status:
                found.append(f"answered {response and response.status}, expected {p.status} (at {page.url})")
            if "text/html" not in ((response and response.headers.get("content-type")) or ""):
                found.append("not an HTML page")
            page.wait_for_load_state("load")
            if p.name == "api-docs":
                page.wait_for_selector(".opblock", timeout=15_000)
            found += axe_violations(page)
            if page.evaluate(WIDER_THAN_SCREEN) > 1:
                found.append(
                    f"wider than the screen by {page.evaluate(WIDER_THAN_SCREEN)} px: {page.evaluate(STICKING_OUT)}"
                )
            if lang == "zh-CN":
                texts = page.evaluate(UI_TEXT)
                words = untranslated(texts)
                if words:
                    where = {w: next((t[:80] for t in texts if w in t), "") for w in words[:12]}
                    found.append(f"untranslated: {words} in {where}")
            if found:
                problems[f"{p.url} as {p.who}"] = found
            page.evaluate("() => window.scrollTo(0, 0)")
            page.screenshot(path=str(SCREENSHOTS / f"every-{p.name}-{lang}-{size}.png"), full_page=True)
    finally:
        ctx.close()
    assert not problems, "\n".join(f"{k}:\n  " + "\n  ".join(v) for k, v in problems.items())
    assert not js_errors, js_errors


def test_the_untranslated_check_catches_english() -> None:
    """The Chinese check is not blind: English UI words are found, data values and allowed terms are not."""
    assert untranslated(["Not Found", "返回"]) == ["Found", "Not"]
    assert untranslated(["python-httpx/0.29.0 · /api/v1/docs · docs/sharing.md · Vehicle.Speed"]) == []
    assert untranslated(["单位：degrees", "batches"]) == ["batches", "degrees"]
    assert untranslated(["车辆 LRW3E7FS5PC000011 的 API 与 CSV", "li.wei@example.com", "12.5 km/h", "P0A1F"]) == []
    assert untranslated(["时区：Asia/Shanghai"]) == ["Asia/Shanghai"]


def _owner_page(browser: Any, site: Site, size: str = "desktop", lang: str = "en") -> tuple[Any, Any, list[str]]:
    ctx = new_context(browser, site.world, size=size, lang=lang)
    ctx.add_cookies([{"name": SESSION_COOKIE, "value": site.owner_secret, "url": site.world.url}])
    page = ctx.new_page()
    messages: list[str] = []
    page.on("console", lambda m: messages.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: messages.append(str(e)))
    return ctx, page, messages


def test_drive_charts_have_units_several_ticks_and_data_tables(browser: Any, site: Site) -> None:
    ctx, page, errors = _owner_page(browser, site)
    try:
        vin = site.ids["vin"]
        page.goto(f"/vehicles/{vin}/drive?" + site.queries["/vehicles/{vin}/drive"])
        page.wait_for_selector("#chart-soc[data-y-ticks]")
        units = {c: page.get_attribute(f"#chart-{c}", "data-y-unit") for c in ("speed", "pedals", "pressure", "soc")}
        assert units == {"speed": "km/h", "pedals": "%", "pressure": "bar", "soc": "%"}
        ticks = {c: int(page.get_attribute(f"#chart-{c}", "data-y-ticks") or 0) for c in units}
        assert all(n >= 3 for n in ticks.values()), ticks  # the battery chart among them: not one lonely tick
        # Each chart offers its numbers as a table: a header per series with its unit, rows of real values.
        tables = page.locator("details.chart-data")
        assert tables.count() == len(units) + 1  # the four charts and the route
        speed = page.locator("#chart-speed + details.chart-data")
        speed.locator("summary").click()
        assert "(km/h)" in speed.locator("thead").inner_text()
        rows = speed.locator("tbody tr")
        assert 5 <= rows.count() <= 61
        values = [r for r in speed.locator("tbody td").all_inner_texts() if r != "—"]
        top = float(api(site.world, f"/api/v1/vehicles/{vin}/timeline").json()["drives"][-1]["top_speed_kmh"])
        assert values and max(float(v.replace(",", "")) for v in values) <= top + 0.5
        route = page.locator("#route-svg + details.chart-data")
        assert route.count() == 1 and route.locator("tbody tr").count() >= 2  # start and end at least
        assert axe_violations(page) == []  # with the tables open
        assert not errors, errors
    finally:
        ctx.close()


def test_the_api_reference_renders_its_operations_under_the_portal_policy(browser: Any, site: Site) -> None:
    ctx = new_context(browser, site.world)
    page = ctx.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    try:
        response = page.goto("/api/v1/docs")
        assert response is not None and response.status == 200
        policy = response.headers["content-security-policy"]
        assert "script-src 'self';" in policy and "unsafe-inline" not in policy
        page.wait_for_selector(".opblock")
        operations = page.locator(".opblock").count()
        assert operations >= 50, operations
        assert page.locator(".opblock-summary-path", has_text="/api/v1/vehicles/{vin}/telemetry").count() >= 1
        # Opening an operation shows its parameters and answers, from the region's own OpenAPI document.
        page.locator(".opblock-summary-control").first.click()
        page.wait_for_selector(".opblock.is-open .responses-wrapper")
        scripts = page.locator("script[src]").evaluate_all("els => els.map(e => e.getAttribute('src'))")
        assert all(s.startswith("/static/") for s in scripts), scripts  # no CDN
        assert not problems, problems  # nothing refused by the policy, no script error
    finally:
        ctx.close()


def test_menus_stay_on_one_line_on_a_phone_and_every_entry_is_reachable(browser: Any, site: Site) -> None:
    ctx, page, errors = _owner_page(browser, site, size="phone", lang="zh-CN")
    try:
        page.goto(f"/vehicles/{site.ids['vin']}/consent")
        for menu in (".mainnav ul", ".tabs ul"):
            tops = page.locator(f"{menu} > li").evaluate_all("els => els.map(e => Math.round(e.offsetTop))")
            assert len(set(tops)) == 1, (menu, tops)  # one line, not two or three
            assert page.evaluate(f"() => document.querySelector('{menu}').scrollWidth") > 390  # it scrolls
        # The current tab is brought into view; the last one is reached by the keyboard and scrolled to.
        current = page.locator('.tabs a[aria-current="page"]').bounding_box()
        assert current is not None and current["x"] >= 0 and current["x"] + current["width"] <= 390
        last = page.locator(".tabs li:last-child a")
        last.focus()
        box = last.bounding_box()
        assert box is not None and box["x"] + box["width"] <= 391, box
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
        assert not errors, errors
    finally:
        ctx.close()


def test_error_pages_speak_the_pages_language(site: Site) -> None:
    """A 404 in Chinese says so in Chinese (no "Not Found" from the framework), readable number included."""
    for lang, title, status_text in (("zh-CN", "未找到", "错误 404"), ("en", "Not found", "Error 404")):
        r = httpx.get(site.world.url + "/no-such-page", headers={"Accept-Language": lang}, timeout=30)
        assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
        assert f"<h1>{title}</h1>" in r.text and status_text in r.text
        assert "Not Found" not in r.text
        r = httpx.get(site.world.url + "/console/no-such-page", headers={"Accept-Language": lang}, timeout=30)
        assert r.status_code == 404 and status_text in r.text and "Not Found" not in r.text
