"""Charging sessions, tariffs, costs and battery health, checked where the true answer is known.

Sessions come from the simulator (which records what it charged) or are built here with a known power and
capacity; costs are worked out by hand for sessions that cross tariff boundaries.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pytest
from sqlalchemy import func, select

from carvault.access.charging import (
    ENERGY,
    MIN_HEALTH_DSOC,
    SIGNALS,
    Tariff,
    analyse,
    battery_health,
    forget,
    monthly_totals,
    price,
    tariff_of,
)
from carvault.access.trips import DC_CURRENT, IS_CHARGING, POWER, SOC, TIMELINE_SIGNALS
from carvault.errors import NotFound, TariffOverlap, ValidationFailed
from carvault.provisioning import provision
from carvault.region import Region
from carvault.server import BackgroundServer
from carvault.signals import catalogue
from carvault.store.metadata import ChargingDay, ChargingSession
from carvault.vehicle.agent import VehicleAgent
from carvault.vehicle.simulator import SimulatedDay, fleet_vins, simulate_day
from tests.factories import opt_in

SHANGHAI = ZoneInfo("Asia/Shanghai")
DAY = dt.date(2026, 11, 20)
PATHS = [p for p in dict.fromkeys([*TIMELINE_SIGNALS, *SIGNALS]) if p in catalogue()]


def local_ms(y: int, m: int, d: int, hh: int, mm: int = 0, zone: dt.tzinfo = SHANGHAI) -> int:
    return int(dt.datetime(y, m, d, hh, mm, tzinfo=zone).timestamp() * 1000)


def session_table(
    start_ms: int, seconds: int, power_kw: float, soc0: float, capacity_kwh: float, *, dc: bool = False
) -> pa.Table:
    """A 1 Hz charging session at constant power into a battery of known capacity (plus a minute either side)."""
    n = seconds + 120
    t = start_ms - 60_000 + np.arange(n, dtype=np.int64) * 1000
    on = (np.arange(n) >= 60) & (np.arange(n) < 60 + seconds)
    p = np.where(on, power_kw * 1000.0, 0.0)
    soc = soc0 + np.cumsum(p) / 3.6e6 / capacity_kwh * 100.0
    soc = np.r_[soc0, soc[:-1]]  # SOC at the start of each second
    cat = catalogue()
    cols = {
        IS_CHARGING: pa.array(on),
        POWER: pa.array(p),
        SOC: pa.array(soc),
        DC_CURRENT: pa.array(np.where(on & dc, power_kw * 1000 / 400, 0.0)),
    }
    schema = cat.arrow_schema(list(cols))
    arrays = [pa.array(t).cast(pa.timestamp("ms", tz="UTC"))]
    arrays += [cols[f.name].cast(f.type) for f in schema if f.name != "t"]
    return pa.Table.from_arrays(arrays, schema=schema)


@pytest.fixture(scope="module")
def days() -> list[SimulatedDay]:
    vins = fleet_vins(2, 5)
    out = []
    for i, vin in enumerate(vins):
        for k in range(2):
            out.append(simulate_day(vin, 5 + i, DAY + dt.timedelta(days=k), signals=PATHS))
    return out


def test_sessions_match_what_the_simulator_charged(days: list[SimulatedDay]) -> None:
    kinds = set()
    for day in days:
        found = analyse(day.table)
        assert len(found) == len(day.charges), day.vin
        for got, want in zip(found, day.charges, strict=True):
            kinds.add(want.kind)
            assert abs(got.start_ms - want.start_ms) <= 1000 and abs(got.end_ms - want.end_ms) <= 1000
            assert got.energy_method == "integrated_power"
            assert got.energy_kwh == pytest.approx(want.energy_kwh, rel=0.005)
            assert got.current == want.kind
            assert got.soc_start == pytest.approx(want.soc_start, abs=0.1)
            assert got.soc_end == pytest.approx(want.soc_end, abs=0.1)
            assert got.range_added_km is not None and got.range_added_km > 0
            assert got.soh_pct == pytest.approx(day.vehicle.soh_pct, abs=0.05)
            # Energy per minute adds up to the session's energy; the curve is at most 300 points and peaks at max.
            assert sum(got.minute_kwh) == pytest.approx(got.energy_kwh, rel=1e-3)
            assert 2 <= len(got.curve["t_s"]) <= 300
            assert max(v for v in got.curve["power_kw"] if v is not None) <= got.max_power_kw + 1e-6
            # Usable capacity = energy / rise in SOC: the simulator's pack at its state of health, within 0.5 %.
            cap = got.energy_kwh / (got.soc_end - got.soc_start) * 100
            assert cap == pytest.approx(day.vehicle.usable_kwh, rel=0.005)
    assert kinds == {"AC", "DC"}


def test_a_car_that_sends_only_stored_energy_gets_its_difference() -> None:
    table = session_table(local_ms(2026, 11, 2, 10), 3600, 10.0, 40.0, 60.0).drop_columns([POWER])
    stored = 24.0 + np.arange(table.num_rows) * 0.0  # start at 24 kWh, end at 34 kWh (in the charging hour)
    stored[60:] = 24.0 + np.minimum(np.arange(table.num_rows - 60), 3600) * 10.0 / 3600
    cat = catalogue()
    table = table.append_column(pa.field(ENERGY, cat[ENERGY].arrow_type), pa.array(stored).cast(cat[ENERGY].arrow_type))
    (s,) = analyse(table)
    assert s.energy_method == "battery_energy"
    assert s.energy_kwh == pytest.approx(10.0, abs=0.05)
    assert sum(s.minute_kwh) == pytest.approx(s.energy_kwh, rel=1e-6)


def _tariffs(*bodies: dict) -> list[Tariff]:
    return [tariff_of(b, tariff_id=i + 1) for i, b in enumerate(bodies)]


DAY_RATE = {"name": "day", "start": "07:00", "end": "22:00", "price_per_kwh": "0.85", "session_fee": "1.50"}
NIGHT_LATE = {"name": "night", "start": "22:00", "end": "24:00", "price_per_kwh": "0.30"}
NIGHT_EARLY = {"name": "night", "start": "00:00", "end": "07:00", "price_per_kwh": "0.30"}


def test_a_session_across_tariff_boundaries_pays_each_tariff_for_its_energy() -> None:
    # 7 kW from 21:30 to 23:30 China time: 30 min at the day rate, 90 min at night. Fee of the day rate (start).
    tariffs = _tariffs(*({**b, "currency": "CNY"} for b in (DAY_RATE, NIGHT_LATE, NIGHT_EARLY)))
    (s,) = analyse(session_table(local_ms(2026, 11, 3, 21, 30), 7200, 7.0, 30.0, 60.0))
    assert s.energy_kwh == pytest.approx(14.0, rel=1e-4)
    cost = price(s.minute0_ms, s.minute_kwh, None, tariffs, SHANGHAI)
    assert cost.amounts["CNY"] == pytest.approx(3.5 * 0.85 + 10.5 * 0.30 + 1.50, abs=0.005)
    assert cost.kwh["CNY"] == pytest.approx(14.0, rel=1e-4) and cost.unpriced_kwh == pytest.approx(0, abs=1e-9)
    by_name = {(x["name"], "fee" in x): x for x in cost.slices}
    assert by_name[("day", False)]["kwh"] == pytest.approx(3.5, abs=0.01)
    assert by_name[("night", False)]["kwh"] == pytest.approx(10.5, abs=0.01)
    assert by_name[("day", True)]["fee"] == 1.5
    # Past midnight into the early-night slice and a weekday-only tariff that does not cover Sunday.
    (late,) = analyse(session_table(local_ms(2026, 11, 8, 23, 0), 7200, 6.0, 30.0, 60.0))  # Sunday 23:00-01:00
    weekdays = _tariffs(
        {**NIGHT_LATE, "currency": "CNY", "weekdays": [1, 2, 3, 4, 5]}, {**NIGHT_EARLY, "currency": "CNY"}
    )
    c = price(late.minute0_ms, late.minute_kwh, None, weekdays, SHANGHAI)
    assert c.unpriced_kwh == pytest.approx(6.0, abs=0.01)  # Sunday 23:00-24:00: no tariff
    assert c.amounts["CNY"] == pytest.approx(6.0 * 0.30, abs=0.005)  # Monday 00:00-01:00


def test_a_place_tariff_wins_over_anywhere_and_validity_limits_a_tariff() -> None:
    (s,) = analyse(session_table(local_ms(2026, 11, 4, 12), 3600, 11.0, 20.0, 75.0))
    anywhere = {"name": "public", "price_per_kwh": "1.20", "currency": "CNY"}
    home = {"name": "home", "place_id": 7, "price_per_kwh": "0.50", "currency": "CNY"}
    tariffs = _tariffs(anywhere, home)
    assert price(s.minute0_ms, s.minute_kwh, 7, tariffs, SHANGHAI).amounts["CNY"] == pytest.approx(5.5, abs=0.01)
    assert price(s.minute0_ms, s.minute_kwh, 8, tariffs, SHANGHAI).amounts["CNY"] == pytest.approx(13.2, abs=0.01)
    # A new price from 12:30 on: the first half hour at the old one.
    half = local_ms(2026, 11, 4, 12, 30)
    changed = _tariffs(
        {**anywhere, "valid_to_ms": half},
        {**anywhere, "name": "public 2027", "price_per_kwh": "2", "valid_from_ms": half},
    )
    c = price(s.minute0_ms, s.minute_kwh, None, changed, SHANGHAI)
    assert c.amounts["CNY"] == pytest.approx(5.5 * 1.2 + 5.5 * 2.0, abs=0.01)


def test_local_times_follow_summer_time() -> None:
    brussels = ZoneInfo("Europe/Brussels")
    # 2026-03-29: clocks go from 02:00 to 03:00. A session 01:00-04:00 local (two hours of real time) at 6 kW.
    start = local_ms(2026, 3, 29, 1, 0, brussels)
    (s,) = analyse(session_table(start, 7200, 6.0, 20.0, 60.0))
    early = _tariffs({"name": "until 3", "start": "00:00", "end": "03:00", "price_per_kwh": "1", "currency": "EUR"})
    c = price(s.minute0_ms, s.minute_kwh, None, early, brussels)
    assert c.kwh["EUR"] == pytest.approx(6.0, abs=0.01)  # 01:00-02:00 local is the only hour before 03:00
    assert c.unpriced_kwh == pytest.approx(6.0, abs=0.01)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"price_per_kwh": "1", "currency": "CNY"}, "name"),
        ({"name": "x", "price_per_kwh": "-1", "currency": "CNY"}, "price_per_kwh"),
        ({"name": "x", "price_per_kwh": "0.1234567", "currency": "CNY"}, "price_per_kwh"),
        ({"name": "x", "price_per_kwh": "NaN", "currency": "CNY"}, "price_per_kwh"),
        ({"name": "x", "price_per_kwh": True, "currency": "CNY"}, "price_per_kwh"),
        ({"name": "x", "price_per_kwh": "1", "currency": "yuan"}, "currency"),
        ({"name": "x", "price_per_kwh": "1", "currency": "CNY", "start": "22:00", "end": "06:00"}, "end"),
        ({"name": "x", "price_per_kwh": "1", "currency": "CNY", "start": "25:00"}, "start"),
        ({"name": "x", "price_per_kwh": "1", "currency": "CNY", "weekdays": []}, "weekdays"),
        ({"name": "x", "price_per_kwh": "1", "currency": "CNY", "weekdays": [0, 8]}, "weekdays"),
        ({"name": "x", "price_per_kwh": "1", "currency": "CNY", "place_id": "home"}, "place_id"),
        ({"name": "x", "price_per_kwh": "1", "currency": "CNY", "valid_from_ms": 5, "valid_to_ms": 5}, "valid_to_ms"),
        ({"name": "x", "price_per_kwh": "1", "currency": "CNY", "colour": "red"}, "colour"),
    ],
)
def test_bad_tariffs_are_refused_naming_the_field(body: dict, field: str) -> None:
    with pytest.raises(ValidationFailed) as e:
        tariff_of(body)
    assert e.value.details.get("field") == field


def test_monthly_totals_split_ac_dc_and_average_the_price() -> None:
    sessions = [
        {"start_ms": local_ms(2026, 10, 31, 23, 30), "energy_kwh": 10.0, "duration_s": 3600, "current": "AC"}
        | {"cost": {"amounts": {"CNY": 3.0}, "priced_kwh": {"CNY": 10.0}}},
        {"start_ms": local_ms(2026, 11, 1, 0, 30), "energy_kwh": 20.0, "duration_s": 1200, "current": "DC"}
        | {"cost": {"amounts": {"CNY": 30.0}, "priced_kwh": {"CNY": 20.0}}},
        {"start_ms": local_ms(2026, 11, 5, 8), "energy_kwh": 5.0, "duration_s": 600, "current": "AC", "cost": None},
    ]
    oct_, nov = monthly_totals(sessions, SHANGHAI)  # 23:30 on 31 October China time is still October
    assert oct_["month"] == "2026-10" and oct_["sessions"] == 1 and oct_["avg_price_per_kwh"] == {"CNY": 0.3}
    assert nov["sessions"] == 2 and nov["energy_kwh"] == 25.0 and nov["dc_kwh"] == 20.0 and nov["ac_kwh"] == 5.0
    assert nov["cost"] == {"CNY": 30.0} and nov["avg_price_per_kwh"] == {"CNY": 1.5}  # the unpriced session is out


def test_battery_health_follows_a_fading_pack_month_by_month() -> None:
    sessions = []
    truth = {"2026-08": 60.0, "2026-09": 59.4, "2026-10": 58.8}
    for k, cap in enumerate(truth.values()):
        for d, (soc0, hours) in enumerate(((20.0, 3.0), (35.0, 2.0), (50.0, 0.5))):  # the last adds < 20 points
            start = local_ms(2026, 8 + k, 3 + 7 * d, 1)
            (f,) = analyse(session_table(start, int(hours * 3600), 7.0, soc0, cap))
            sessions.append(f.summary() | {"gross_capacity_kwh": 62.0})
    health = battery_health(sessions, SHANGHAI)
    assert [m["month"] for m in health["months"]] == list(truth)
    for m in health["months"]:
        assert m["sessions"] == 2  # only sessions adding at least MIN_HEALTH_DSOC points count
        assert m["capacity_kwh"] == pytest.approx(truth[m["month"]], rel=0.005)
        assert m["of_nominal_pct"] == pytest.approx(truth[m["month"]] / 62 * 100, abs=0.6)
    assert health["nominal_capacity_kwh"] == 62.0
    assert all(e["soc_added"] >= MIN_HEALTH_DSOC for e in health["estimates"])


# ------------------------------------------------------------------------------------------ the service
@pytest.fixture
def uploaded(region: Region, server: BackgroundServer, tmp_path: Path) -> tuple[str, int, list[SimulatedDay]]:
    """A car with two simulated days uploaded through the real gateway, claimed by an owner."""
    vin = fleet_vins(1, 21)[0]
    car = provision(region, vin, tmp_path / "vehicles")
    owner = region.accounts.register("charging-owner@example.com", "correct horse battery")
    region.vehicles.claim(owner.id, vin, car.pairing_code)
    opt_in(region, vin, "location", "battery_charging")
    sims = [simulate_day(vin, 21, DAY + dt.timedelta(days=k), signals=PATHS) for k in range(2)]
    agent = VehicleAgent(car, tmp_path / "vehicles" / vin, server.url)
    agent.fetch_policy()
    for sim in sims:
        agent.process(sim.table, 300)
    agent.finish()
    while agent.pending():
        agent.upload_pending(limit=50)
    return vin, owner.id, sims


@pytest.mark.slow
def test_sessions_are_derived_once_kept_and_forgotten_with_the_data(
    region: Region, uploaded: tuple[str, int, list[SimulatedDay]]
) -> None:
    vin, owner_id, sims = uploaded
    lo = min(c.start_ms for s in sims for c in s.charges) - 86_400_000
    hi = lo + 4 * 86_400_000
    facts = region.charging.facts(vin, lo, hi)
    want = [c for s in sims for c in s.charges]
    assert [f["current"] for f in facts] == [c.kind for c in want]
    for f, c in zip(facts, want, strict=True):
        assert f["energy_kwh"] == pytest.approx(c.energy_kwh, rel=0.005)
    assert region.charging.refresh(vin, lo, hi) == 0  # nothing changed: nothing derived again
    with region.db.session() as s:
        assert s.scalar(select(func.count()).select_from(ChargingSession).where(ChargingSession.vin == vin)) == len(
            want
        )
        forget(s, vin)
    with region.db.session() as s:
        assert s.scalar(select(func.count()).select_from(ChargingDay).where(ChargingDay.vin == vin)) == 0
    assert region.charging.facts(vin, lo, hi) == facts  # derived again from the evidence, the same
    curve = region.charging.curve(vin, facts[0]["start_ms"])
    assert len(curve["t_s"]) == len(curve["power_kw"]) == len(curve["soc"]) > 10
    with pytest.raises(NotFound):
        region.charging.curve(vin, facts[0]["start_ms"] + 1)
    # An erasure request takes the derived sessions with the batches.
    region.deletions.request(owner_id, vin, "selling the car", immediately=True)
    with region.db.session() as s:
        assert s.scalar(select(func.count()).select_from(ChargingSession).where(ChargingSession.vin == vin)) == 0
    assert region.charging.facts(vin, lo, hi) == []


def test_tariffs_refuse_overlaps_and_store_nothing_partial(region: Region) -> None:
    owner = region.accounts.register("tariffs@example.com", "correct horse battery")
    ch = region.charging
    ch.add_tariff(owner.id, {**NIGHT_LATE, "currency": "CNY"})
    ch.add_tariff(owner.id, {**NIGHT_EARLY, "currency": "CNY"})  # touching at midnight is no overlap
    ch.add_tariff(owner.id, {**DAY_RATE, "currency": "CNY", "weekdays": [1, 2, 3, 4, 5]})
    with pytest.raises(TariffOverlap) as e:
        ch.add_tariff(owner.id, {**DAY_RATE, "name": "weekend+fri", "currency": "CNY", "weekdays": [5, 6, 7]})
    assert e.value.code == "tariff_overlap" and e.value.details["tariff_id"] == 3
    ch.add_tariff(
        owner.id, {**DAY_RATE, "name": "weekend", "currency": "CNY", "weekdays": [6, 7], "valid_from_ms": 10**12}
    )
    # Validity periods that do not meet do not overlap.
    ch.add_tariff(owner.id, {**DAY_RATE, "name": "old", "currency": "CNY", "weekdays": [6], "valid_to_ms": 10**12})
    with pytest.raises(ValidationFailed):
        ch.add_tariff(owner.id, {**DAY_RATE, "currency": "CNY", "place_id": 999})  # not one of the owner's places
    assert [t.name for t in ch.tariffs(owner.id)] == ["night", "night", "day", "weekend", "old"]
    t = ch.update_tariff(owner.id, 3, {**DAY_RATE, "currency": "CNY", "price_per_kwh": "0.9", "weekdays": [1, 2, 3]})
    assert t.price_micros == 900_000 and t.to_json()["weekdays"] == [1, 2, 3]
    with pytest.raises(TariffOverlap):  # all week would meet the weekend tariff
        ch.update_tariff(owner.id, 3, {**DAY_RATE, "currency": "CNY"})
    other = region.accounts.register("someone-else@example.com", "correct horse battery")
    with pytest.raises(NotFound):
        ch.update_tariff(other.id, 3, {**DAY_RATE, "currency": "CNY"})
    with pytest.raises(NotFound):
        ch.delete_tariff(other.id, 3)
    ch.delete_tariff(owner.id, 3)
    assert [t.name for t in ch.tariffs(owner.id)] == ["night", "night", "weekend", "old"]


@pytest.mark.slow
def test_a_retention_purge_drops_the_sessions_derived_from_what_it_removes(
    region: Region, uploaded: tuple[str, int, list[SimulatedDay]]
) -> None:
    vin, _, sims = uploaded
    lo = min(c.start_ms for s in sims for c in s.charges) - 86_400_000
    hi = lo + 4 * 86_400_000
    assert len(region.charging.facts(vin, lo, hi)) == sum(len(s.charges) for s in sims)
    # Ten years on, every category's period has ended: the purge erases or withholds every batch.
    run = region.retention.run(now=hi + 10 * 365 * 86_400_000)
    assert run is not None
    with region.db.session() as s:
        assert s.scalar(select(func.count()).select_from(ChargingSession).where(ChargingSession.vin == vin)) == 0
        # Days that saw the erased batches are gone too; only days that saw none may stay (no data of the car).
        left = s.scalars(select(ChargingDay.fingerprint).where(ChargingDay.vin == vin)).all()
        assert all(fp.startswith("0:") for fp in left), left
    assert region.charging.facts(vin, lo, hi) == []  # and nothing is derived again from what is gone


def test_day_fingerprints_name_exactly_the_batches_overlapping_each_days_window() -> None:
    from carvault.access.charging import DAY_MS, PAD_AFTER_MS, PAD_BEFORE_MS, _fingerprints

    rng = np.random.default_rng(1)
    t0 = np.sort(rng.integers(0, 30 * DAY_MS, 500))
    batches = np.stack([np.arange(1, 501), t0, t0 + rng.integers(0, 900_000, 500)], 1).astype(np.int64)
    days = np.arange(-2 * DAY_MS, 33 * DAY_MS, DAY_MS, dtype=np.int64)
    for day, fp in zip(days.tolist(), _fingerprints(batches, days), strict=True):
        inside = (batches[:, 1] < day + DAY_MS + PAD_AFTER_MS) & (batches[:, 2] >= day - PAD_BEFORE_MS)
        seqs = [int(x) for x in batches[inside, 0]]
        assert fp == f"{len(seqs)}:{sum(seqs)}:{sum(x * x for x in seqs)}:{sum(x**3 for x in seqs)}"
    # Dropping one batch changes the fingerprint of every day that saw it.
    fewer = _fingerprints(np.delete(batches, 250, axis=0), days)
    saw = (batches[250, 1] < days + DAY_MS + PAD_AFTER_MS) & (batches[250, 2] >= days - PAD_BEFORE_MS)
    assert [a != b for a, b in zip(_fingerprints(batches, days), fewer, strict=True)] == saw.tolist()
