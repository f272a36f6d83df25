"""Trouble codes and warning lamps first-class: the gateway checks the records, the owner reads them in plain words
(English and Chinese) through GET /api/v1/vehicles/{vin}/diagnostics, and a grant sees them only if it covers them."""

from __future__ import annotations

import csv
import io
import json
import re

import httpx
import pyarrow as pa
import pytest

from carvault.dtc import DTC_COUNT_SIGNAL, DTC_SIGNAL, LAMP_BRANCH, DtcRecord, encode_dtcs, meanings, parse_dtcs
from carvault.errors import ValueOutOfRange
from carvault.ingest.validation import validate_payload
from carvault.protocol import BatchHeader
from carvault.region import Region
from carvault.signals import catalogue
from carvault.vehicle.agent import VehicleAgent
from carvault.vehicle.identity import VehicleIdentity
from carvault.web.i18n import LANG_COOKIE
from tests.conftest import OwnerClient
from tests.factories import BASE_MS, vin_for

LAMP = LAMP_BRANCH + "HighVoltageSystem"
MIL = LAMP_BRANCH + "MalfunctionIndicator"
VERSION = "Vehicle.CarVault.Software.Version"
DUE = "Vehicle.Service.DistanceToService"
PATHS = ["Vehicle.Speed", DTC_SIGNAL, DTC_COUNT_SIGNAL, LAMP, MIL, VERSION, DUE]


def health_table(seconds: int = 120) -> pa.Table:
    """A parked car whose HV isolation fault (P0AA6) is pending, confirmed (lamps on), then gone (stored); an unknown
    manufacturer code (B1A2F) sits stored throughout. On-change signals appear only where they change."""
    n = seconds * 10
    t = [BASE_MS + 100 * i for i in range(n)]
    first, confirm, gone = BASE_MS + 10_000, BASE_MS + 40_000, BASE_MS + 90_000
    other = DtcRecord("B1A2F", "stored", "BCM", BASE_MS - 86_400_000, BASE_MS - 86_000_000)

    def codes(status: str, last: int) -> str:
        return encode_dtcs([DtcRecord("P0AA6", status, "BMS", first, last), other])

    dtcs: list[str | None] = [None] * n
    count: list[int | None] = [None] * n
    lamp: list[str | None] = [None] * n
    dtcs[0], count[0], lamp[0] = encode_dtcs([other]), 0, "OFF"
    for at, status, last, k, state in (
        (first, "pending", first, 0, "OFF"),
        (confirm, "active", confirm, 1, "ON"),
        (gone, "stored", gone, 0, "OFF"),
    ):
        i = (at - BASE_MS) // 100
        dtcs[i], count[i], lamp[i] = codes(status, last), k, state
    every_s = [0.0 if i % 10 == 0 else None for i in range(n)]
    cols = {
        "Vehicle.Speed": [0.0] * n,
        DTC_SIGNAL: dtcs,
        DTC_COUNT_SIGNAL: count,
        LAMP: lamp,
        MIL: lamp,
        VERSION: ["2026.32.1"] + [None] * (n - 1),
        DUE: [4321 if v is not None else None for v in every_s],
    }
    cat = catalogue()
    return pa.Table.from_arrays(
        [pa.array(t, pa.int64()).cast(pa.timestamp("ms", tz="UTC"))]
        + [pa.array(cols[p], cat[p].arrow_type) for p in PATHS],
        schema=cat.arrow_schema(PATHS),
    )


def _validate(table: pa.Table) -> None:
    t = table.column("t").cast(pa.int64())
    header = BatchHeader(
        vin=vin_for(1), region="cn", seq=1, prev="0" * 64, t0=t[0].as_py(), t1=t[-1].as_py(), rows=table.num_rows
    )
    validate_payload(
        header, table, catalogue(), now_ms=BASE_MS + 3_600_000, max_future_skew_ms=300_000, max_rows=100_000
    )


@pytest.mark.parametrize(
    "bad",
    [
        "not json",
        '{"code": "P0A80"}',
        '[{"code": "P0A80", "status": "active", "ecu": "BMS", "first_seen": 1}]',
        '[{"code": "X0A80", "status": "active", "ecu": "BMS", "first_seen": 1, "last_seen": 2}]',
        '[{"code": "P0A80", "status": "broken", "ecu": "BMS", "first_seen": 1, "last_seen": 2}]',
        '[{"code": "P0A80", "status": "active", "ecu": "BMS", "first_seen": 5, "last_seen": 2}]',
        '[{"code": "P0A80", "status": "active", "ecu": "BMS", "first_seen": true, "last_seen": 2}]',
        '[{"code": "P0A80", "status": "active", "ecu": "", "first_seen": 1, "last_seen": 2}]',
        json.dumps([{"code": "P0A80", "status": "active", "ecu": "BMS", "first_seen": 1, "last_seen": 2}] * 2),
    ],
)
def test_the_gateway_refuses_a_malformed_code_list(bad: str) -> None:
    table = health_table()
    values = table.column(DTC_SIGNAL).to_pylist()
    values[5] = bad
    i = table.schema.get_field_index(DTC_SIGNAL)
    table = table.set_column(i, table.schema.field(i), pa.array(values, pa.string()))
    with pytest.raises(ValueOutOfRange) as e:
        _validate(table)
    assert e.value.code == "value_out_of_range" and DTC_SIGNAL in str(e.value)


def test_a_sound_code_list_passes_and_round_trips() -> None:
    table = health_table()
    _validate(table)
    value = next(v for v in table.column(DTC_SIGNAL).to_pylist() if v and "P0AA6" in v)
    assert encode_dtcs(parse_dtcs(value)) == value


def test_the_meanings_table_is_complete_in_both_languages() -> None:
    table = meanings()
    assert len(table) >= 25
    lamps = {p[len(LAMP_BRANCH) :] for p in catalogue().paths if p.startswith(LAMP_BRANCH)}
    for m in table.values():
        assert m.meaning_en and m.meaning_zh and m.advice_en and m.advice_zh, m.code
        assert not m.lamp or m.lamp in lamps, m.code
        assert any("\u4e00" <= ch <= "\u9fff" for ch in m.meaning_zh), m.code


@pytest.fixture
def uploaded(region: Region, agent: VehicleAgent, http: httpx.Client, owner: OwnerClient) -> VehicleIdentity:
    agent.record(health_table(), batch_seconds=60)
    receipts = agent.upload_pending()
    assert len(receipts) == 2 and all("error" not in r for r in receipts), receipts
    v = agent.identity
    r = http.post("/api/v1/vehicles/claim", headers=owner.headers, json={"vin": v.vin, "pairing_code": v.pairing_code})
    assert r.status_code == 201, r.text
    return v


def test_the_owner_reads_codes_and_lamps_in_plain_words(
    http: httpx.Client, owner: OwnerClient, uploaded: VehicleIdentity
) -> None:
    url = f"/api/v1/vehicles/{uploaded.vin}/diagnostics"
    while_on = http.get(url, headers=owner.headers, params={"end": BASE_MS + 60_000, "days": 1}).json()
    assert while_on["covered"] and while_on["active_count"] == 1
    hv = while_on["codes"][0]
    assert (hv["code"], hv["status"], hv["current"], hv["ecu"]) == ("P0AA6", "active", True, "BMS")
    assert hv["first_seen"] == BASE_MS + 10_000 and hv["known"] and hv["severity"] == "high"
    assert "Insulation" in hv["meaning"]["en"] and "绝缘" in hv["meaning"]["zh-CN"] and hv["advice"]["zh-CN"]
    lit = {lamp["name"]: lamp for lamp in while_on["lamps"] if lamp["state"] != "OFF"}
    assert set(lit) == {"HighVoltageSystem", "MalfunctionIndicator"}
    assert lit["HighVoltageSystem"]["since_ms"] == BASE_MS + 40_000
    assert "高压" in lit["HighVoltageSystem"]["description"]["zh-CN"]
    assert while_on["software"]["Version"] == "2026.32.1" and while_on["service"]["DistanceToService"] == 4321

    later = http.get(url, headers=owner.headers, params={"end": BASE_MS + 200_000, "days": 1}).json()
    assert later["active_count"] == 0 and all(lamp["state"] == "OFF" for lamp in later["lamps"])
    by_code = {c["code"]: c for c in later["codes"]}
    assert by_code["P0AA6"]["status"] == "stored" and by_code["P0AA6"]["last_seen"] == BASE_MS + 90_000
    unknown = by_code["B1A2F"]
    assert unknown["known"] is False and unknown["meaning"] is None and unknown["system"] == "body"


def test_bad_requests_and_other_owners(http: httpx.Client, owner: OwnerClient, uploaded: VehicleIdentity) -> None:
    url = f"/api/v1/vehicles/{uploaded.vin}/diagnostics"
    for params in ({"days": 0}, {"days": 401}, {"end": "yesterday"}):
        r = http.get(url, headers=owner.headers, params=params)
        assert r.status_code in (400, 422) and r.json()["error"]["code"], params
    from tests.conftest import make_owner

    stranger = make_owner(http)
    r = http.get(url, headers=stranger.headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_a_grant_sees_diagnostics_only_when_it_covers_them(
    http: httpx.Client, owner: OwnerClient, uploaded: VehicleIdentity
) -> None:
    def token(signals: list[str]) -> dict[str, str]:
        r = http.post(
            "/api/v1/grants/tokens",
            headers=owner.headers,
            json={
                "label": "workshop",
                "vins": [uploaded.vin],
                "signals": signals,
                "history_from": BASE_MS - 86_400_000,
                "history_to": BASE_MS + 86_400_000,
            },
        )
        assert r.status_code == 201, r.text
        return {"Authorization": f"Bearer {r.json()['token']}"}

    url = f"/api/v1/vehicles/{uploaded.vin}/diagnostics"
    params = {"end": BASE_MS + 60_000, "days": 1}
    workshop = http.get(
        url,
        headers=token(["Vehicle.CarVault.Diagnostics", "Vehicle.CarVault.WarningLamp", "Vehicle.CarVault.Software"]),
        params=params,
    ).json()
    assert workshop["covered"] and [c["code"] for c in workshop["codes"]][0] == "P0AA6"
    assert {lamp["name"] for lamp in workshop["lamps"]} == {"HighVoltageSystem", "MalfunctionIndicator"}
    assert workshop["software"]["Version"] == "2026.32.1" and workshop["service"]["DistanceToService"] is None
    insurer = http.get(url, headers=token(["Vehicle.Speed"]), params=params).json()
    assert not insurer["covered"] and insurer["codes"] == [] and insurer["lamps"] == []
    log = http.get("/api/v1/audit", headers=owner.headers, params={"action": "diagnostics.read"}).json()
    assert len(log["events"]) == 2


def _login(http: httpx.Client, o: OwnerClient) -> None:
    token = re.search(r'name="csrf_token" value="([^"]+)"', http.get("/login").text)
    assert token
    form = {"email": o.email, "password": o.password, "csrf_token": token.group(1), "next": "/vehicles"}
    assert http.post("/login", data=form).status_code == 303


@pytest.mark.parametrize(
    ("lang", "expect"),
    [
        ("en", ("Health and diagnostics", "Insulation fault", "On", "Active", "2026.32.1", "4321 km")),
        ("zh-CN", ("车况与诊断", "高压系统绝缘故障", "常亮", "当前有效", "2026.32.1", "4321 公里")),
    ],
)
def test_the_health_page_in_both_languages(
    http: httpx.Client, owner: OwnerClient, uploaded: VehicleIdentity, lang: str, expect: tuple[str, ...]
) -> None:
    _login(http, owner)
    http.cookies.set(LANG_COOKIE, lang)
    page = http.get(f"/vehicles/{uploaded.vin}/diagnostics", params={"end": BASE_MS + 60_000, "days": 1})
    assert page.status_code == 200, page.text
    html = page.text
    for text in expect:
        assert text in html, (lang, text)
    assert 'data-code="P0AA6"' in html and 'data-lamp="HighVoltageSystem"' in html
    assert f'href="/vehicles/{uploaded.vin}/diagnostics" aria-current="page"' in html  # the vehicle's tab
    later = http.get(f"/vehicles/{uploaded.vin}/diagnostics", params={"end": BASE_MS + 200_000, "days": 1}).text
    assert 'data-testid="no-lamps"' in later and 'data-code="B1A2F"' in later


def test_new_signals_reach_the_data_sheet_and_exports_in_both_languages(
    http: httpx.Client, owner: OwnerClient, uploaded: VehicleIdentity
) -> None:
    for lang, hood in (("en", "Bonnet (front hood) is open"), ("zh-CN", "前机舱盖打开")):
        http.cookies.set(LANG_COOKIE, lang)
        sheet = http.get("/data-sheet")
        assert sheet.status_code == 200 and "Vehicle.Body.Hood.IsOpen" in sheet.text and hood in sheet.text, lang
    csv_text = http.get(
        f"/api/v1/vehicles/{uploaded.vin}/telemetry",
        headers=owner.headers,
        params={"start": BASE_MS, "end": BASE_MS + 120_000, "format": "csv"},
    ).text
    header = next(csv.reader(io.StringIO(csv_text)))
    assert {DTC_SIGNAL, LAMP, VERSION} <= set(header)
    assert "P0AA6" in csv_text
