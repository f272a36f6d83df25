"""The "Live" page of a vehicle: its latest values updating in place, over the same VISS endpoint any app uses.

The page itself holds no data: ``static/live.js`` opens ``/api/v1/viss/{vin}`` with the owner's session cookie
(same origin only, see ``web/routes/viss.py``), subscribes per group of tiles, and draws the values, their age,
a tile-free trail of recent positions and "car offline since …". A group whose collection is stopped shows why.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from carvault.location import LAT, LON
from carvault.web.views.base import page
from carvault.web.views.vehicles import vehicle

router = APIRouter(include_in_schema=False)

SPEED = "Vehicle.Speed"
GEAR = "Vehicle.Powertrain.Transmission.SelectedGear"
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
POWER = "Vehicle.Powertrain.TractionBattery.CurrentPower"
CHARGING = "Vehicle.Powertrain.TractionBattery.Charging.IsCharging"
RANGE = "Vehicle.Powertrain.Range"
DOORS = tuple(f"Vehicle.Cabin.Door.Row{r}.{s}.IsOpen" for r in (1, 2) for s in ("DriverSide", "PassengerSide"))
# Tile groups: each is one VISS subscription, so a stopped category empties only its own tiles.
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("position", (LAT, LON)),
    ("driving", (SPEED, GEAR)),
    ("battery", (SOC, CHARGING, POWER, RANGE)),
    ("doors", DOORS),
)
# Tiles: id, message key, the signals it shows, and how live.js formats them.
TILES: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("speed", "live.speed", (SPEED,), "speed"),
    ("gear", "live.gear", (GEAR,), "gear"),
    ("soc", "live.soc", (SOC,), "percent"),
    ("charging", "live.charging", (CHARGING, POWER), "charging"),
    ("range", "live.range", (RANGE,), "range"),
    *((f"door{i}", f"live.door.{i}", (p,), "door") for i, p in enumerate(DOORS)),
)
OFFLINE_AFTER_MS = 15_000  # no new value for this long: the car is shown offline
TEXT_KEYS = (
    "live.connected",
    "live.reconnecting",
    "live.session_ended",
    "live.offline_since",
    "live.no_value",
    "live.age",
    "live.seconds",
    "live.minutes",
    "live.hours",
    "live.unavailable",
    "live.open",
    "live.closed",
    "live.charging_at",
    "live.not_charging",
    "live.gear.park",
    "live.gear.drive",
    "live.gear.reverse",
    "live.gear.neutral",
    "live.gear.forward",
    "live.position_at",
)


@router.get("/vehicles/{vin}/live")
async def live(vin: str, request: Request) -> Response:
    p = await page(request)
    car = await vehicle(p, vin)
    config: dict[str, Any] = {
        "vin": car["vin"],
        "endpoint": f"/api/v1/viss/{car['vin']}",
        "groups": [{"id": g, "paths": list(paths)} for g, paths in GROUPS],
        "tiles": [{"id": i, "paths": list(paths), "format": f} for i, _, paths, f in TILES],
        "lat": LAT,
        "lon": LON,
        "offline_after_ms": OFFLINE_AFTER_MS,
        "lang": p.t.language,
        "tz": p.t.tz_name,
        "texts": {k.removeprefix("live."): p.t(k) for k in TEXT_KEYS},
    }
    tiles = [{"id": i, "label": p.t(key)} for i, key, _, _ in TILES]
    return p.render("live.html", title=p.t("live.title"), car=car, tab="live", tiles=tiles, config=config)
