"""Statistics on data with known answers: a built two-day trace (a drive of known energy and distance, a parked
stretch with a known state-of-charge loss, known offline gaps, a charge) and the simulator's own record of a day."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pytest
from sqlalchemy import func, select

from carvault.access import statistics as st
from carvault.access.trips import IS_CHARGING, IS_MOVING, ODOMETER, POWER, SOC, SPEED
from carvault.compliance.retention import period_ms
from carvault.errors import InvalidQuery
from carvault.provisioning import provision
from carvault.region import Region
from carvault.server import BackgroundServer
from carvault.signals import catalogue
from carvault.store.metadata import StatisticsDay
from carvault.vehicle.agent import VehicleAgent
from carvault.vehicle.identity import VehicleIdentity
from carvault.vehicle.simulator import fleet_vins, simulate_day
from tests.conftest import OwnerClient, make_owner
from tests.factories import opt_in, vin_for

D0 = int(dt.datetime(2026, 11, 20, tzinfo=dt.UTC).timestamp() * 1000)  # a UTC midnight
H = 3_600_000
MIN = 60_000
PACK_KWH = 75.0
TYRE_KPA = (250, 251, 248, 249)


def segment(
    t0: int,
    seconds: int,
    *,
    speed: float = 0.0,
    power_w: float = -300.0,
    soc: tuple[float, float],
    charging: bool = False,
    odo0: float = 10_000.0,
    air: float = 10.0,
) -> dict[str, np.ndarray]:
    """One awake stretch at 1 Hz: constant speed and power, state of charge moving linearly."""
    n = seconds
    t = t0 + np.arange(n, dtype=np.int64) * 1000
    s = np.linspace(soc[0], soc[1], n)
    return {
        "t": t,
        SPEED: np.full(n, speed),
        IS_MOVING: np.full(n, speed > 0),
        ODOMETER: odo0 + np.arange(n) * speed / 3.6,
        SOC: s,
        st.ENERGY: s * PACK_KWH / 100,
        POWER: np.full(n, power_w),
        IS_CHARGING: np.full(n, charging),
        st.AIR: np.full(n, air),
        st.RANGE: s * 4.5 * 1000,  # 450 km at 100 %
        **{p: np.full(n, float(k)) for p, k in zip(st.TYRES, TYRE_KPA, strict=True)},
    }


def trace() -> pa.Table:
    """Two days (UTC) with known answers; see the expectations in the tests."""
    parts = [
        segment(D0 + 6 * H, 1800, soc=(80, 80)),  # 06:00 awake, parked
        segment(D0 + 6 * H + 30 * MIN, 1800, speed=60.0, power_w=-12_000.0, soc=(80, 70)),  # 30 km, 6 kWh
        segment(D0 + 7 * H, 300, soc=(70, 70), odo0=40_000.0),  # parked, then asleep at 07:05
        segment(D0 + 17 * H + 5 * MIN, 300, soc=(69, 69), odo0=40_000.0, air=14.0),  # wakes: 1 point lost
        segment(D0 + 17 * H + 10 * MIN, 1800, power_w=11_000.0, soc=(69, 79), charging=True, odo0=40_000.0),
        segment(D0 + 17 * H + 40 * MIN, 1200, soc=(79, 79), odo0=40_000.0),  # asleep from 18:00 ...
        segment(D0 + 30 * H, 600, soc=(78.2, 78.2), odo0=40_000.0, air=6.0),  # ... to 06:00 next day: 0.8 lost
        segment(D0 + 30 * H + 10 * MIN, 1200, speed=90.0, power_w=-20_000.0, soc=(78.2, 70), odo0=40_000.0, air=6.0),
        segment(D0 + 30 * H + 30 * MIN, 600, soc=(70, 70), odo0=70_000.0, air=6.0),
    ]
    cat = catalogue()
    paths = [p for p in st.DAY_SIGNALS if p in parts[0]]
    cols = {k: np.concatenate([p[k] for p in parts]) for k in ["t", *paths]}
    schema = cat.arrow_schema(paths)
    arrays = [pa.array(cols["t"]).cast(pa.timestamp("ms", tz="UTC"))]
    arrays += [pa.array(cols[p]).cast(schema.field(p).type, safe=False) for p in paths]
    return pa.Table.from_arrays(arrays, schema=schema)


def days_of(table: pa.Table, n: int = 2, tz: str = "UTC") -> st.Days:
    name, zone = st.zone(tz)
    t = table.column("t").cast(pa.int64()).to_numpy()
    out = []
    for _, a, b in st.local_days(D0, D0 + n * st.DAY_MS, zone):
        keep = (t >= a - st.LEAD_MS) & (t < b + st.TRAIL_MS)
        out.append(st.summarise(table.filter(pa.array(keep)), a, b))
    return st.Days(name, zone, out)


def test_states_timeline_has_the_known_intervals() -> None:
    days = days_of(trace())
    got = [(r[0], round((r[1] - D0) / MIN), round((r[2] - D0) / MIN)) for r in days.states()]
    assert got[:9] == [
        ("offline", 0, 360),
        ("parked", 360, 390),
        ("driving", 390, 420),
        ("parked", 420, 425),
        ("offline", 425, 1025),  # 07:05 to 17:05: asleep
        ("parked", 1025, 1030),
        ("charging", 1030, 1060),
        ("parked", 1060, 1080),
        ("offline", 1080, 1800),  # 18:00 to 06:00 the next day: one interval across midnight
    ]
    total = {k: 0 for k in st.STATES}
    for r in days.states():
        total[r[0]] += r[2] - r[1]
    assert sum(total.values()) == 2 * st.DAY_MS  # every moment has exactly one state


def test_drive_efficiency_from_energy_used() -> None:
    eff = st.efficiency(days_of(trace()))
    first, second = eff["drives"]
    assert first["distance_m"] == pytest.approx(30_000, rel=0.002)
    assert first["energy_kwh"] == pytest.approx(6.0, rel=0.002) and first["energy_source"] == "power"
    assert first["wh_per_km"] == pytest.approx(200.0, rel=0.005)
    assert first["outside_c"] == pytest.approx(10.0) and first["avg_speed_kmh"] == pytest.approx(60, rel=0.01)
    assert second["wh_per_km"] == pytest.approx(20_000 / 90, rel=0.005)  # 20 kW at 90 km/h
    assert [b["bin"] for b in eff["by_speed"]] == [60, 80]
    assert [b["bin"] for b in eff["by_temperature"]] == [5, 10]
    assert eff["wh_per_km"] == pytest.approx((6 + 20 / 3) * 1e6 / (30_000 + 30_000), rel=0.005)
    assert [m["bin"] for m in eff["by_month"]] == ["2026-11"]


def test_efficiency_falls_back_to_stored_energy_without_power() -> None:
    table = trace()
    no_power = table.set_column(
        table.column_names.index(POWER), POWER, pa.nulls(table.num_rows, table.schema.field(POWER).type)
    )
    first = st.efficiency(days_of(no_power))["drives"][0]
    assert first["energy_source"] == "battery_energy"
    assert first["energy_kwh"] == pytest.approx(10 * PACK_KWH / 100, abs=0.05)  # 10 points of a 75 kWh pack


def test_vampire_drain_per_standstill_and_per_day() -> None:
    drain = st.vampire_drain(days_of(trace()))
    kept = [p for p in drain["periods"] if p["excluded"] is None]
    assert len(kept) == 2  # 07:00 to 17:10 on day one, and the night
    p = kept[0]
    assert (p["start_ms"] - D0) // MIN == 420 and (p["end_ms"] - D0) // MIN == 1030
    assert p["soc_lost"] == pytest.approx(1.0, abs=0.01)
    assert p["pct_per_hour"] == pytest.approx(1.0 / (610 / 60), rel=0.01)
    assert p["kwh_lost"] == pytest.approx(0.75, abs=0.01)
    assert p["offline_hours"] == pytest.approx(10.0, abs=0.01)
    assert p["outside_c"] == pytest.approx(12.0, abs=0.05)  # 10 °C when it fell asleep, 14 °C when it woke
    # 17:40 to 06:10 the next day: 79 -> 78.2 over 12.5 h, across midnight.
    night = next(q for q in drain["periods"] if (q["start_ms"] - D0) // MIN == 1060)
    assert night["excluded"] is None and night["soc_lost"] == pytest.approx(0.8, abs=0.01)
    assert night["hours"] == pytest.approx(12.5, abs=0.01)
    # The first standstill starts at midnight with no sample near it: missing data, left out.
    assert drain["periods"][0]["excluded"] == "missing_soc"
    per_day = {d["day"]: d for d in drain["per_day"]}
    assert per_day["2026-11-20"]["soc_lost"] == pytest.approx(1.0 + 0.8 * (6 + 20 / 60) / 12.5, abs=0.01)
    assert per_day["2026-11-21"]["parked_hours"] == pytest.approx(6 + 10 / 60, abs=0.01)


def test_a_charge_that_was_not_recorded_is_not_drain() -> None:
    table = trace()
    t = table.column("t").cast(pa.int64()).to_numpy()
    soc = table.column(SOC).to_numpy(zero_copy_only=False).astype(float)
    soc[t >= D0 + 17 * H] += 5  # the car woke with more charge than it went to sleep with
    table = table.set_column(table.column_names.index(SOC), SOC, pa.array(soc, pa.float32()))
    drain = st.vampire_drain(days_of(table))
    p = next(q for q in drain["periods"] if (q["start_ms"] - D0) // MIN == 420)
    assert p["excluded"] == "soc_rose"


def test_a_gap_in_the_chain_is_missing_data_not_drain() -> None:
    table = trace()
    t = table.column("t").cast(pa.int64()).to_numpy()
    name, zone = st.zone("UTC")
    out = []
    for _, a, b in st.local_days(D0, D0 + 2 * st.DAY_MS, zone):
        keep = (t >= a - st.LEAD_MS) & (t < b + st.TRAIL_MS)
        # Batches sent between 09:00 and 10:00 on day one never arrived (their sequence numbers are missing).
        out.append(st.summarise(table.filter(pa.array(keep)), a, b, missing=[(D0 + 9 * H, D0 + 10 * H)]))
    days = st.Days(name, zone, out)
    flagged = [r for r in days.states() if r[8]]
    assert [(r[0], round((r[1] - D0) / MIN)) for r in flagged] == [("offline", 425)]
    drain = st.vampire_drain(days)
    p = next(q for q in drain["periods"] if round((q["start_ms"] - D0) / MIN) == 420)
    assert p["excluded"] == "missing_data"
    assert all(d["soc_lost"] < 0.8 for d in drain["per_day"])  # only the night is counted


def test_the_live_channel_shortens_offline_on_a_running_day() -> None:
    table = pa.Table.from_arrays(
        [pa.array(D0 + 6 * H + np.arange(600, dtype=np.int64) * 1000).cast(pa.timestamp("ms", tz="UTC"))],
        names=["t"],
    )
    now = D0 + 11 * H
    plain = st.summarise(table, D0, D0 + st.DAY_MS, now)
    seen = st.summarise(table, D0, D0 + st.DAY_MS, now, seen_ms=D0 + 10 * H)
    assert [r[0] for r in plain["states"]] == ["offline", "parked", "offline"]
    assert plain["states"][-1][2] == now  # nothing is said about the future
    assert round((plain["states"][-1][1] - D0) / MIN) == 370
    assert seen["states"][-1][1] == D0 + 10 * H  # heard from at 10:00: offline only after that


def test_totals_by_month_and_day() -> None:
    days = days_of(trace())
    (month,) = st.by_period(days, "month")
    assert month["period"] == "2026-11" and month["drives"] == 2 and month["charges"] == 1
    assert month["distance_m"] == pytest.approx(60_000, rel=0.002)
    assert month["charged_kwh"] == pytest.approx(5.5, rel=0.002)
    assert month["top_speed_kmh"] == pytest.approx(90.0)
    assert month["state_s"]["charging"] == pytest.approx(1800)
    assert month["state_s"]["driving"] == pytest.approx(3000, abs=2)
    assert [d["period"] for d in st.by_period(days, "day")] == ["2026-11-20", "2026-11-21"]
    with pytest.raises(InvalidQuery):
        st.by_period(days, "week")


def test_charging_sessions_from_the_charging_service_replace_the_days_own() -> None:
    days = days_of(trace())
    own = st.totals(days.days)["charged_kwh"]
    sessions = [
        {
            "start_ms": D0 + 17 * H + 10 * MIN,
            "end_ms": D0 + 17 * H + 40 * MIN,
            "energy_kwh": 5.9,
            "current": "AC",
            "soc_start": 69.0,
            "soc_end": 79.0,
        }
    ]
    merged = st.with_sessions(days, sessions)
    assert st.totals(merged.days)["charged_kwh"] == 5.9 and st.totals(merged.days)["charges"] == 1
    assert [p["charges"] for p in st.by_period(merged, "day")] == [1, 0]
    assert st.totals(days.days)["charged_kwh"] == own  # the kept days are untouched
    assert st.totals(st.with_sessions(days, []).days)["charges"] == 0


def test_days_are_cut_in_the_owners_time_zone() -> None:
    days = days_of(trace(), n=3, tz="Asia/Shanghai")
    assert days.days[0]["start_ms"] == D0 - 8 * H
    by_day = {d["period"]: d for d in st.by_period(days, "day")}
    # 06:30 UTC is 14:30 in Shanghai (20 Nov); 06:10 UTC the next day is 14:10 on the 21st.
    assert by_day["2026-11-20"]["drives"] == 1 and by_day["2026-11-21"]["drives"] == 1
    with pytest.raises(InvalidQuery):
        st.zone("Mars/Olympus_Mons")


def test_conditions_views() -> None:
    days = days_of(trace())
    allowed = set(st.CONDITION_SIGNALS)
    c = st.conditions(days, allowed, D0, D0 + 2 * st.DAY_MS)
    assert c["step_ms"] == st.BUCKET_MS
    assert c["series"][st.TYRES[0]][0] == pytest.approx(TYRE_KPA[0])
    assert c["series"][st.AIR][0] == pytest.approx(10.0)
    assert all(r == pytest.approx(soc * 4.5, abs=0.6) for soc, r in c["range_vs_soc"])
    assert c["t"] == sorted(c["t"]) and (c["t"][0] - D0) % st.BUCKET_MS == 0
    only_tyres = st.conditions(days, set(st.TYRES), D0, D0 + 2 * st.DAY_MS)
    assert set(only_tyres["series"]) == set(st.TYRES) and only_tyres["range_vs_soc"] == []


def test_simulated_day_matches_the_simulator() -> None:
    vin = fleet_vins(1, 21)[0]
    day = simulate_day(vin, 21, dt.date(2026, 11, 20), signals=list(st.DAY_SIGNALS))
    midnight = int(dt.datetime(2026, 11, 20, tzinfo=dt.timezone(dt.timedelta(hours=8))).timestamp() * 1000)
    summary = st.summarise(day.table, midnight, midnight + st.DAY_MS)
    days = st.Days("Asia/Shanghai", st.zone("Asia/Shanghai")[1], [summary])
    drives = st.efficiency(days)["drives"]
    assert len(drives) == len(day.drives)
    for got, want in zip(drives, day.drives, strict=True):
        assert got["wh_per_km"] == pytest.approx(want.energy_kwh * 1e6 / want.distance_m, rel=0.06)
        assert got["outside_c"] is not None
    totals = st.totals([summary])
    assert totals["charges"] == len(day.charges)
    assert totals["charged_kwh"] == pytest.approx(sum(c.energy_kwh for c in day.charges), rel=0.03)
    assert sum(totals["state_s"].values()) == pytest.approx(86_400, abs=1)


# ---------------------------------------------------------------------- the service: kept summaries
@dataclass
class Uploaded:
    """The built trace uploaded through the real gateway for a claimed car."""

    vin: str
    owner: OwnerClient


def upload(region: Region, server: BackgroundServer, folder: Path, table: pa.Table, n: int = 13) -> VehicleIdentity:
    car = provision(region, vin_for(n), folder / "vehicles")
    opt_in(region, car.vin, "driving_dynamics", "battery_charging", "body", at_ms=int(table["t"][0].value) - H)
    agent = VehicleAgent(car, folder / "vehicles" / car.vin, server.url)
    agent.fetch_policy()
    agent.record(table, 300)
    while agent.pending():
        agent.upload_pending(limit=100)
    return car


@pytest.fixture
def uploaded(region: Region, server: BackgroundServer, http: httpx.Client, tmp_path: Path) -> Uploaded:
    car = upload(region, server, tmp_path, trace())
    o = make_owner(http)
    r = http.post("/api/v1/vehicles/claim", headers=o.headers, json={"vin": car.vin, "pairing_code": car.pairing_code})
    assert r.status_code == 201, r.text
    return Uploaded(car.vin, o)


def _kept(region: Region, vin: str) -> int:
    with region.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(StatisticsDay).where(StatisticsDay.vin == vin)) or 0)


@pytest.mark.slow
def test_summaries_are_kept_reused_and_dropped_with_the_batches(region: Region, uploaded: Uploaded) -> None:
    vin = uploaded.vin
    first = region.statistics.days(vin, D0, D0 + 3 * st.DAY_MS)
    assert _kept(region, vin) == 2  # the third day has no batch in reach: nothing to keep
    assert st.totals(first.days)["drives"] == 2
    assert [r[0] for r in first.states()][:3] == ["offline", "parked", "driving"]
    with region.db.session() as s:  # a kept summary is what is served: change one and it shows
        row = s.scalar(select(StatisticsDay).where(StatisticsDay.vin == vin, StatisticsDay.start_ms == D0))
        row.body = row.body.replace('"charges":[{', '"charges":[{"marker":1,', 1)
    again = region.statistics.days(vin, D0, D0 + 2 * st.DAY_MS)  # another window: read from the table
    assert again.days[0]["charges"][0].get("marker") == 1
    with region.db.session() as s:  # a changed fingerprint (new batches, other cut-offs) means recompute
        s.scalar(select(StatisticsDay).where(StatisticsDay.vin == vin, StatisticsDay.start_ms == D0)).fingerprint = "x"
    assert "marker" not in region.statistics.days(vin, D0, D0 + 3 * st.DAY_MS).days[0]["charges"][0]
    assert _kept(region, vin) == 2
    # A retention purge drops the summaries of the days its batches reached.
    region.statistics.forget(vin, before_ms=D0 + 1)
    assert _kept(region, vin) == 1
    region.statistics.days(vin, D0, D0 + 2 * st.DAY_MS)
    assert _kept(region, vin) == 2
    # A deletion erases the batches and the summaries made from them.
    req = region.deletions.request(uploaded.owner.owner_id, vin, "sold the car", immediately=True)
    assert req.status == "completed"
    assert _kept(region, vin) == 0


@pytest.mark.slow
def test_retention_withholds_then_purges_the_summaries(region: Region, uploaded: Uploaded) -> None:
    vin = uploaded.vin
    before = region.statistics.days(vin, D0, D0 + 2 * st.DAY_MS)
    assert st.TYRES[0] in before.days[0]["conditions"]["series"] and _kept(region, vin) == 2
    # Body (tyres, outside temperature) past its period: withheld from reads, so the kept days are recomputed.
    region.retention.run(now=D0 + period_ms("body") + 3 * st.DAY_MS)
    withheld = region.statistics.days(vin, D0, D0 + 2 * st.DAY_MS)
    assert st.TYRES[0] not in withheld.days[0]["conditions"]["series"]
    assert withheld.days[0]["drives"][0]["outside_c"] is None
    assert st.totals(withheld.days)["drives"] == 2
    # Everything past its period: the batches are erased, and the summaries made from them go too.
    last = max(period_ms(c) for c in ("driving_dynamics", "battery_charging", "body"))
    run = region.retention.run(now=D0 + last + 3 * st.DAY_MS)
    assert run.status == "done", run.summary
    assert _kept(region, vin) == 0
    assert st.totals(region.statistics.days(vin, D0, D0 + 2 * st.DAY_MS).days)["drives"] == 0


@pytest.mark.slow
def test_a_year_of_history_answers_fast(region: Region, server: BackgroundServer, tmp_path: Path) -> None:
    """A year of days (a short drive and a parked spell each) is summarised once; then a year answers < 0.5 s."""
    start = D0 - 364 * st.DAY_MS
    parts = []
    for k in range(365):
        t0 = start + k * st.DAY_MS + 8 * H
        soc0 = 80 - (k % 7)
        odo = 10_000.0 + k * 2000.0
        parts += [
            segment(t0, 60, soc=(soc0, soc0), odo0=odo),
            segment(t0 + 60_000, 120, speed=50.0, power_w=-9000.0, soc=(soc0, soc0 - 0.5), odo0=odo),
            segment(t0 + 180_000, 60, soc=(soc0 - 0.5, soc0 - 0.5), odo0=odo + 120 * 50 / 3.6),
        ]
    cat = catalogue()
    paths = [p for p in st.DAY_SIGNALS if p in parts[0]]
    schema = cat.arrow_schema(paths)
    table = pa.Table.from_arrays(
        [pa.array(np.concatenate([p["t"] for p in parts])).cast(pa.timestamp("ms", tz="UTC"))]
        + [pa.array(np.concatenate([p[q] for p in parts])).cast(schema.field(q).type, safe=False) for q in paths],
        schema=schema,
    )
    car = upload(region, server, tmp_path, table, n=14)
    end = D0 + st.DAY_MS
    first = time.perf_counter()
    days = region.statistics.days(car.vin, start, end, "Asia/Shanghai")
    build_s = time.perf_counter() - first
    assert sum(len(d["drives"]) for d in days.days) == 365
    t0 = time.perf_counter()
    days = region.statistics.days(car.vin, start, end, "Asia/Shanghai")
    months = st.by_period(days, "month")
    eff = st.efficiency(days)
    st.vampire_drain(days)
    st.conditions(days, set(st.CONDITION_SIGNALS), start, end)
    elapsed = time.perf_counter() - t0
    print(f"a year: built in {build_s:.1f} s, answered in {elapsed * 1000:.0f} ms")
    assert len(months) == 13 and len(eff["drives"]) == 365
    assert elapsed < 0.5, elapsed


# ------------------------------------------------------------------------------------ the API, on a real server
def _get(http: httpx.Client, headers: dict[str, str], vin: str, view: str, **params: object) -> httpx.Response:
    return http.get(f"/api/v1/vehicles/{vin}/{view}", headers=headers, params=params)


@pytest.mark.slow
def test_api_for_the_owner(http: httpx.Client, uploaded: Uploaded) -> None:
    vin, h = uploaded.vin, uploaded.owner.headers
    window = {"start": D0, "end": D0 + 2 * st.DAY_MS}
    r = _get(http, h, vin, "statistics", granularity="day", **window)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [p["period"] for p in body["periods"]] == ["2026-11-20", "2026-11-21"]
    assert [p["drives"] for p in body["periods"]] == [1, 1]
    assert body["total"]["distance_m"] == pytest.approx(60_000, rel=0.002)
    assert body["total"]["charged_kwh"] == pytest.approx(5.5, rel=0.002)
    year = _get(http, h, vin, "statistics", granularity="year", tz="Asia/Shanghai", **window).json()
    assert [p["period"] for p in year["periods"]] == ["2026"] and year["tz"] == "Asia/Shanghai"
    states = _get(http, h, vin, "states", **window).json()
    assert states["intervals"][0]["state"] == "offline" and states["intervals"][0]["duration_s"] == 6 * 3600
    assert sum(states["totals_s"].values()) == pytest.approx(2 * 86_400)
    eff = _get(http, h, vin, "efficiency", **window).json()
    assert eff["drives"][0]["wh_per_km"] == pytest.approx(200, rel=0.005)
    drain = _get(http, h, vin, "vampire-drain", **window).json()
    assert [p["soc_lost"] for p in drain["periods"] if p["excluded"] is None] == pytest.approx([1.0, 0.8], abs=0.01)
    cond = _get(http, h, vin, "conditions", **window).json()
    assert cond["units"][st.TYRES[0]] == "kPa" and cond["units"][st.AIR] == "Celsius"
    assert cond["series"][st.TYRES[2]][0] == pytest.approx(TYRE_KPA[2])
    events = http.get("/api/v1/audit", headers=h).json()["events"]
    assert any(e["action"] == "statistics.read" for e in events)


VIEWS = ("statistics", "states", "efficiency", "vampire-drain", "conditions")


@pytest.mark.slow
def test_api_refuses_bad_input_with_stable_codes(http: httpx.Client, uploaded: Uploaded) -> None:
    vin, h = uploaded.vin, uploaded.owner.headers
    cases = [
        ("statistics", {"tz": "Mars/Olympus"}, 400, "invalid_query"),
        ("statistics", {"start": D0, "end": D0 - 1}, 400, "window_reversed"),
        ("statistics", {"start": D0 - 500 * st.DAY_MS, "end": D0}, 400, "window_too_long"),
        ("states", {"start": D0 - 100 * st.DAY_MS, "end": D0}, 400, "window_too_long"),
        ("statistics", {"start": "yesterday"}, 400, "invalid_query"),
        # the last instant parse_time takes: its day's end is no date (was a 500 in every view)
        *((view, {"end": "9999-12-31T23:59:59Z"}, 400, "invalid_query") for view in VIEWS),
    ]
    for view, params, status, code in cases:
        r = _get(http, h, vin, view, **params)
        assert r.status_code == status, (view, params, r.text)
        assert r.json()["error"]["code"] == code and r.json()["error"]["message"]
    r = _get(http, h, vin, "statistics", granularity="week")
    assert r.status_code in (400, 422) and r.json()["error"]["code"]
    r = _get(http, h, vin, "vampire-drain", min_hours=0)
    assert r.status_code in (400, 422) and r.json()["error"]["code"]
    assert _get(http, h, vin, "statistics").status_code == 200  # and keeps serving


@pytest.mark.slow
def test_api_for_a_stranger_and_a_grant_holder(region: Region, http: httpx.Client, uploaded: Uploaded) -> None:
    vin = uploaded.vin
    stranger = make_owner(http)
    for view in ("statistics", "states", "efficiency", "vampire-drain", "conditions"):
        r = _get(http, stranger.headers, vin, view)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", view
    token, _ = region.grants.personal_token(
        uploaded.owner.owner_id,
        label="my dashboard",
        vins=[vin],
        signals=[*st.CORE_SIGNALS, *st.TYRES],
        from_ms=D0,
        to_ms=D0 + st.DAY_MS,
        precise_location=False,
    )
    g = {"Authorization": f"Bearer {token}"}
    r = _get(http, g, vin, "statistics", granularity="day")  # the default window is cut to the grant's
    assert r.status_code == 200, r.text
    assert [p["period"] for p in r.json()["periods"]] == ["2026-11-20"]
    eff = _get(http, g, vin, "efficiency").json()
    assert len(eff["drives"]) == 1 and eff["drives"][0]["outside_c"] is None  # outside temperature not granted
    cond = _get(http, g, vin, "conditions").json()
    assert set(cond["series"]) <= {*st.TYRES, st.SOC} and st.TYRES[0] in cond["series"]
    r = _get(http, g, vin, "states", start=D0, end=D0 + 2 * st.DAY_MS)
    assert r.status_code == 403 and r.json()["error"]["code"] == "out_of_scope"
    narrow, _ = region.grants.personal_token(
        uploaded.owner.owner_id, label="speed only", vins=[vin], signals=[SPEED], from_ms=D0, to_ms=D0 + st.DAY_MS
    )
    r = _get(http, {"Authorization": f"Bearer {narrow}"}, vin, "vampire-drain")
    assert r.status_code == 403 and r.json()["error"]["code"] == "out_of_scope"
    r = _get(http, {"Authorization": f"Bearer {narrow}"}, vin, "conditions")
    assert r.status_code == 403 and r.json()["error"]["code"] == "out_of_scope"


def test_efficiency_without_battery_energy_hides_what_came_from_it() -> None:
    """A drive's energy read from the battery's stored energy (no power samples) is that signal's: a grant without
    StateOfCharge.CurrentEnergy gets neither it nor the Wh/km it gives."""
    import datetime as dt

    def drive(start_ms: int, kwh: float, source: str) -> dict:
        return {
            "start_ms": start_ms,
            "end_ms": start_ms + 600_000,
            "duration_s": 600.0,
            "distance_m": 10_000.0,
            "energy_kwh": kwh,
            "energy_source": source,
            "wh_per_km": kwh * 100,
            "avg_speed_kmh": 60.0,
            "top_speed_kmh": 80.0,
            "outside_c": 10.0,
            "soc_start": 80.0,
            "soc_end": 78.0,
        }

    days = st.Days("UTC", dt.UTC, [{"drives": [drive(D0, 1.5, "power"), drive(D0 + 3_600_000, 2.0, "battery_energy")]}])
    full = st.efficiency(days)
    assert [r["energy_kwh"] for r in full["drives"]] == [1.5, 2.0] and full["wh_per_km"] == 175.0
    scoped = st.efficiency(days, with_battery_energy=False)
    assert [r["energy_kwh"] for r in scoped["drives"]] == [1.5, None]
    assert scoped["drives"][1]["wh_per_km"] is None and scoped["drives"][1]["energy_source"] is None
    assert scoped["wh_per_km"] == 150.0
