"""VISS v3 over the real WebSocket endpoint: a client written with ``websockets`` as owner and as grant holder.

Live values are injected as the car channel does after accepting a frame (``region.live.publish_local``).
"""

from __future__ import annotations

import itertools
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h3
import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from carvault.access.viss import iso
from carvault.ingest.live import LiveUpdate, LiveValue
from carvault.location import LAT, LON
from carvault.provisioning import provision
from carvault.region import Region
from carvault.server import BackgroundServer, free_port
from carvault.settings import Settings
from carvault.store.metadata import now_ms
from carvault.vehicle.agent import VehicleAgent
from carvault.vehicle.identity import VehicleIdentity
from carvault.vehicle.live import LiveLink, LiveSender
from tests.conftest import OwnerClient, make_owner
from tests.factories import BASE_MS, drive_table, opt_in, run_coroutine, vin_for

SPEED = "Vehicle.Speed"
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
DOOR = "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen"
GEAR = "Vehicle.Powertrain.Transmission.CurrentGear"
_seq = itertools.count(1)


def publish(region: Region, vin: str, values: dict[str, Any], t_ms: int | None = None) -> int:
    """Inject one accepted live frame, as the car channel would; returns its sample time."""
    t = t_ms or now_ms()
    update = LiveUpdate(vin, next(_seq), t, {p: LiveValue(p, t, v, now_ms()) for p, v in values.items()})
    run_coroutine(region.live.publish_local(update))
    return t


def ws_url(server: BackgroundServer, vin: str) -> str:
    return server.url.replace("http://", "ws://") + f"/api/v1/viss/{vin}"


def token_of(o: OwnerClient) -> str:
    return o.headers["Authorization"].removeprefix("Bearer ")


class Client:
    """A small VISS client: request ids, waiting for the answer to one request, events kept aside."""

    def __init__(self, ws: ClientConnection, token: str | None = None) -> None:
        self.ws = ws
        self.token = token
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    def request(self, action: str, **members: Any) -> dict[str, Any]:
        rid = str(next(self.ids))
        doc = {"action": action, "requestId": rid, **members}
        if self.token and "authorization" not in members:
            doc["authorization"] = self.token
        self.ws.send(json.dumps(doc))
        return self.answer(rid)

    def answer(self, rid: str, timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if msg.get("requestId") == rid:
                return msg
            self.events.append(msg)

    def event(self, sub_id: str, timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for i, e in enumerate(self.events):
                if e.get("subscriptionId") == sub_id and e.get("action") == "subscription":
                    return self.events.pop(i)
            self.events.append(json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic()))))

    def no_event(self, sub_id: str, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                self.events.append(json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic()))))
            except TimeoutError:
                break
        assert not [e for e in self.events if e.get("subscriptionId") == sub_id and "data" in e]


@pytest.fixture
def car(http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity) -> str:
    r = http.post(
        "/api/v1/vehicles/claim", headers=owner.headers, json={"vin": vehicle.vin, "pairing_code": vehicle.pairing_code}
    )
    assert r.status_code in (200, 201), r.text
    return vehicle.vin


@pytest.fixture
def viss(server: BackgroundServer, owner: OwnerClient, car: str) -> Iterator[Client]:
    with connect(ws_url(server, car), subprotocols=["VISSv3"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "VISSv3"
        yield Client(ws, token_of(owner))


def dp(data: Any) -> dict[str, dict[str, str]]:
    """path -> dp of a data member (object or array)."""
    items = data if isinstance(data, list) else [data]
    return {d["path"]: d["dp"] for d in items}


# ------------------------------------------------------------------------------------------------ get
def test_get_latest_values(region: Region, viss: Client, car: str) -> None:
    t = publish(region, car, {SPEED: 42.5, DOOR: True, GEAR: 3})
    r = viss.request("get", path=SPEED)
    assert r["action"] == "get" and "error" not in r, r
    assert r["data"] == {"path": SPEED, "dp": {"value": "42.5", "ts": r["data"]["dp"]["ts"]}}
    assert r["data"]["dp"]["ts"].endswith("Z") and r["ts"].endswith("Z")
    assert abs(_ms(r["data"]["dp"]["ts"]) - t) < 1
    # A branch and a paths filter with a wildcard; '/' as delimiter.
    r = viss.request("get", path="Vehicle/Cabin", filter={"variant": "paths", "parameter": ["Door.*.DriverSide"]})
    assert dp(r["data"]) == {DOOR: {"value": "true", "ts": r["data"]["dp"]["ts"]}}
    r = viss.request("get", path="Vehicle", filter={"variant": "paths", "parameter": ["Speed", "Powertrain"]})
    assert set(dp(r["data"])) == {SPEED, GEAR}
    assert dp(r["data"])[GEAR]["value"] == "3"


def _ms(ts: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000)


BAD_REQUESTS = [
    ("not json", "400", "bad_request"),
    ("[" + " " * 20_000 + "]", "400", "bad_request"),  # longer than a request may be
    ('["get"]', "400", "bad_request"),
    ('{"action": "get", "path": "Vehicle.Speed"}', "400", "bad_request"),  # no requestId
    ('{"action": "fly", "path": "Vehicle.Speed", "requestId": "1"}', "400", "bad_request"),
    ('{"action": "set", "path": "Vehicle.Speed", "value": "1", "requestId": "1"}', "400", "invalid_data"),
    ('{"action": "get", "path": "Vehicle.*", "requestId": "1"}', "400", "bad_request"),
    ('{"action": "get", "path": "Vehicle.Speed/X", "requestId": "1"}', "400", "bad_request"),
    ('{"action": "get", "path": "Vehicle.Warp.Drive", "requestId": "1"}', "404", "unavailable_data"),
    ('{"action": "get", "path": "Aircraft.Speed", "requestId": "1"}', "404", "unavailable_data"),
    (
        '{"action": "get", "path": "Vehicle", "requestId": "1", "filter": {"variant": "paths", "parameter": "No.*"}}',
        "404",
        "unavailable_data",
    ),
    (
        '{"action": "get", "path": "Vehicle.Speed", "requestId": "1",'
        ' "filter": {"variant": "timebased", "parameter": {"period": "500"}}}',
        "400",
        "bad_request",
    ),
    (
        '{"action": "get", "path": "Vehicle.Speed", "requestId": "1",'
        ' "filter": {"variant": "history", "parameter": "P1D"}}',
        "404",
        "unavailable_data",
    ),
    ('{"action": "subscribe", "path": "Vehicle.Speed", "requestId": "1"}', "400", "bad_request"),
    (
        '{"action": "subscribe", "path": "Vehicle.Speed", "requestId": "1",'
        ' "filter": {"variant": "timebased", "parameter": {"period": "5"}}}',
        "400",
        "bad_request",
    ),
    (
        '{"action": "subscribe", "path": "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen", "requestId": "1",'
        ' "filter": {"variant": "range", "parameter": {"logic-op": "gt", "boundary": "1"}}}',
        "400",
        "invalid_data",
    ),
    (
        '{"action": "subscribe", "path": "Vehicle.Cabin", "requestId": "1",'
        ' "filter": {"variant": "change", "parameter": {"logic-op": "ne", "diff": "0"}}}',
        "400",
        "bad_request",
    ),
    ('{"action": "unsubscribe", "subscriptionId": "999", "requestId": "1"}', "404", "unavailable_data"),
]


def test_bad_requests_get_the_spec_errors_and_the_connection_goes_on(region: Region, viss: Client, car: str) -> None:
    for message, number, reason in BAD_REQUESTS:
        doc = json.loads(message) if message.startswith("{") else None
        if doc is not None and "requestId" in doc:
            doc["authorization"] = viss.token
            message = json.dumps(doc)
        viss.ws.send(message)
        r = json.loads(viss.ws.recv(timeout=10))
        assert r["error"]["number"] == number and r["error"]["reason"] == reason, (message, r)
        assert r["error"]["description"] and r["error"]["code"]
        assert r["ts"].endswith("Z")
        if doc is not None and "requestId" in doc:
            assert r["requestId"] == "1"
    viss.ws.send(b"\xff\xfe")  # a binary frame that is not UTF-8 JSON
    assert json.loads(viss.ws.recv(timeout=10))["error"]["reason"] == "bad_request"
    publish(region, car, {SPEED: 7.0})
    assert viss.request("get", path=SPEED)["data"]["dp"]["value"] == "7.0"  # still serving


def test_get_without_a_value_or_token(server: BackgroundServer, viss: Client, car: str) -> None:
    r = viss.request("get", path=SOC)
    assert r["error"]["number"] == "404" and r["error"]["reason"] == "unavailable_data"
    with connect(ws_url(server, car)) as ws:
        anonymous = Client(ws)
        r = anonymous.request("get", path=SPEED)
        assert (r["error"]["number"], r["error"]["reason"]) == ("401", "invalid_token")
        r = anonymous.request("get", path=SPEED, authorization="cvt_not-a-token")
        assert (r["error"]["number"], r["error"]["reason"]) == ("401", "invalid_token")


def test_another_owners_vehicle_is_unknown(server: BackgroundServer, http: httpx.Client, car: str) -> None:
    stranger = make_owner(http)
    with connect(ws_url(server, car)) as ws:
        r = Client(ws, token_of(stranger)).request("get", path=SPEED)
        assert (r["error"]["number"], r["error"]["code"]) == ("404", "not_found")


def test_token_at_the_upgrade(region: Region, server: BackgroundServer, owner: OwnerClient, car: str) -> None:
    publish(region, car, {SPEED: 12.0})
    with connect(ws_url(server, car), additional_headers=owner.headers) as ws:
        assert Client(ws).request("get", path=SPEED)["data"]["dp"]["value"] == "12.0"
    # The session cookie only from a page of this site: another origin is refused at the upgrade.
    cookie = {"Cookie": f"carvault_session={token_of(owner)}"}
    with connect(ws_url(server, car), additional_headers={**cookie, "Origin": server.url}) as ws:
        assert Client(ws).request("get", path=SPEED)["data"]["dp"]["value"] == "12.0"
    for refused in (
        {**cookie, "Origin": "http://evil.example"},
        {**cookie, "Origin": "null"},
        cookie,  # a browser always sends Origin; a cookie without one is not from our page
        {"Authorization": f"Basic {token_of(owner)}"},
    ):
        with pytest.raises(InvalidStatus) as e:
            connect(ws_url(server, car), additional_headers=refused)
        assert e.value.response.status_code == 403


# ----------------------------------------------------------------------------------------- subscribe
def test_timebased_subscription_and_unsubscribe(region: Region, viss: Client, car: str) -> None:
    publish(region, car, {SPEED: 30.0, SOC: 80.0})
    r = viss.request(
        "subscribe",
        path="Vehicle",
        filter=[
            {"variant": "paths", "parameter": ["Speed", "Powertrain.TractionBattery.StateOfCharge.Current"]},
            {"variant": "timebased", "parameter": {"period": "200"}},
        ],
    )
    sub = r["subscriptionId"]
    assert r["action"] == "subscribe" and isinstance(sub, str) and r["ts"].endswith("Z")
    e = viss.event(sub)
    assert {p: d["value"] for p, d in dp(e["data"]).items()} == {SPEED: "30.0", SOC: "80.0"}
    publish(region, car, {SPEED: 31.0})
    deadline = time.monotonic() + 5
    while dp(viss.event(sub)["data"])[SPEED]["value"] != "31.0":
        assert time.monotonic() < deadline
    r = viss.request("unsubscribe", subscriptionId=sub)
    assert r["action"] == "unsubscribe" and "error" not in r
    viss.events.clear()
    viss.no_event(sub, 0.8)
    r = viss.request("unsubscribe", subscriptionId=sub)
    assert r["error"]["number"] == "404"


def test_change_subscription(region: Region, viss: Client, car: str) -> None:
    publish(region, car, {SPEED: 10.0})
    sub = viss.request(
        "subscribe", path=SPEED, filter={"variant": "change", "parameter": {"logic-op": "gt", "diff": "5"}}
    )["subscriptionId"]
    publish(region, car, {SPEED: 12.0})  # +2 from the last event's value: nothing
    publish(region, car, {SOC: 50.0})  # not the watched signal
    publish(region, car, {SPEED: 20.0})  # +10: an event
    e = viss.event(sub)
    assert e["data"]["path"] == SPEED and e["data"]["dp"]["value"] == "20.0"
    publish(region, car, {SPEED: 22.0})  # +2 from 20
    publish(region, car, {SPEED: 5.0})  # a fall: gt does not fire
    publish(region, car, {SPEED: 11.0})  # +6 from 20? no: from 20 it is -9
    publish(region, car, {SPEED: 27.0})  # +7 from 20
    assert viss.event(sub)["data"]["dp"]["value"] == "27.0"
    # Booleans: gt 0 is false -> true.
    publish(region, car, {DOOR: False})
    door = viss.request(
        "subscribe", path=DOOR, filter={"variant": "change", "parameter": {"logic-op": "gt", "diff": "0"}}
    )
    publish(region, car, {DOOR: False})
    publish(region, car, {DOOR: True})
    assert viss.event(door["subscriptionId"])["data"]["dp"]["value"] == "true"


def test_range_subscription_with_paths(region: Region, viss: Client, car: str) -> None:
    publish(region, car, {SOC: 40.0, SPEED: 1.0})
    r = viss.request(
        "subscribe",
        path="Vehicle",
        filter=[
            {"variant": "paths", "parameter": ["Powertrain.TractionBattery.StateOfCharge.Current", "Speed"]},
            {
                "variant": "range",
                "parameter": [
                    {"logic-op": "lt", "boundary": "20", "combination-op": "OR"},
                    {"logic-op": "gte", "boundary": "90"},
                ],
            },
        ],
    )
    sub = r["subscriptionId"]
    publish(region, car, {SOC: 50.0})
    publish(region, car, {SOC: 95.0})
    e = viss.event(sub)
    values = dp(e["data"])
    assert e["data"][0]["path"] == SOC  # the watched signal first
    assert values[SOC]["value"] == "95.0" and values[SPEED]["value"] == "1.0"
    publish(region, car, {SOC: 15.0})
    assert dp(viss.event(sub)["data"])[SOC]["value"] == "15.0"


# ------------------------------------------------------------------------------------- grant holders
def test_grant_holder_sees_exactly_the_grant(
    region: Region, server: BackgroundServer, owner: OwnerClient, car: str
) -> None:
    opt_in(region, car, "location", at_ms=now_ms() - 60_000)
    secret, _ = region.grants.personal_token(
        owner.owner_id, label="live", vins=[car], signals=[SPEED, "Vehicle.CurrentLocation"], live=True
    )
    no_live, _ = region.grants.personal_token(owner.owner_id, label="history only", vins=[car], signals=[SPEED])
    lat, lon = 31.2304123, 121.4737456
    publish(region, car, {SPEED: 55.0, SOC: 70.0, LAT: lat, LON: lon})
    with connect(ws_url(server, car)) as ws:
        c = Client(ws, secret)
        assert c.request("get", path=SPEED)["data"]["dp"]["value"] == "55.0"
        assert c.request("get", path=SPEED)["data"]["dp"]["value"] == "55.0"  # recorded once per connection
        r = c.request("get", path=SOC)
        assert (r["error"]["number"], r["error"]["reason"], r["error"]["code"]) == (
            "403",
            "forbidden_request",
            "out_of_scope",
        )
        r = c.request("subscribe", path="Vehicle", filter={"variant": "timebased", "parameter": {"period": "500"}})
        assert r["error"]["code"] == "out_of_scope"  # a branch reaching beyond the grant is refused, not narrowed
        # Location at the grant's precision: H3 cell centres.
        r = c.request("get", path="Vehicle.CurrentLocation")
        assert "data" in r, r
        got = {p: float(d["value"]) for p, d in dp(r["data"]).items()}
        centre = h3.cell_to_latlng(h3.latlng_to_cell(lat, lon, 8))
        assert got[LAT] == pytest.approx(centre[0], abs=1e-6) and got[LON] == pytest.approx(centre[1], abs=1e-6)
        assert abs(got[LAT] - lat) > 1e-5 or abs(got[LON] - lon) > 1e-5
        # A token without live access is refused.
        r = c.request("get", path=SPEED, authorization=no_live)
        assert (r["error"]["number"], r["error"]["code"]) == ("403", "out_of_scope")
        assert "live" in r["error"]["description"]
    # Another vehicle of the same owner is outside the grant.
    with connect(ws_url(server, "LRWTEST0000000099")) as ws:
        r = Client(ws, secret).request("get", path=SPEED)
        assert r["error"]["code"] == "out_of_scope"
    # The owner sees the precise position.
    with connect(ws_url(server, car)) as ws:
        r = Client(ws, token_of(owner)).request("get", path="Vehicle.CurrentLocation")
        assert float(dp(r["data"])[LAT]["value"]) == lat
    reads = region.audit.list(owner.owner_id, action="live.read")
    by_token = [e for e in reads if e.actor.startswith("token:")]
    assert len(by_token) == 2 and any(e.actor.startswith("owner:") for e in reads)  # speed, then the location
    assert all(json.loads(e.detail)["purpose"] == "personal" for e in by_token)
    assert region.audit.list(owner.owner_id, action="live.subscribe") == []  # the subscription was refused


@pytest.mark.slow  # waits for the re-check of grants, consent and holds
def test_revocation_ends_the_subscription(
    region: Region, server: BackgroundServer, owner: OwnerClient, car: str
) -> None:
    secret, grant = region.grants.personal_token(owner.owner_id, label="live", vins=[car], signals=[SPEED], live=True)
    with connect(ws_url(server, car)) as ws:
        c = Client(ws, secret)
        sub = c.request(
            "subscribe", path=SPEED, filter={"variant": "change", "parameter": {"logic-op": "ne", "diff": "0"}}
        )["subscriptionId"]
        publish(region, car, {SPEED: 1.0})
        publish(region, car, {SPEED: 2.0})
        assert c.event(sub)["data"]["dp"]["value"] == "2.0"
        region.grants.revoke(owner.owner_id, grant.id)
        e = c.event(sub, timeout=5)
        assert "data" not in e and (e["error"]["number"], e["error"]["reason"]) == ("401", "invalid_token")
        publish(region, car, {SPEED: 3.0})
        c.no_event(sub, 1.0)
        r = c.request("unsubscribe", subscriptionId=sub)
        assert r["error"]["number"] == "404"  # the server ended it


@pytest.mark.slow  # waits for the re-check of grants, consent and holds
def test_consent_stop_and_legal_hold_end_the_subscription(
    region: Region, viss: Client, owner: OwnerClient, car: str
) -> None:
    publish(region, car, {SPEED: 5.0, SOC: 60.0})
    speed = viss.request("subscribe", path=SPEED, filter={"variant": "timebased", "parameter": {"period": "200"}})
    soc = viss.request("subscribe", path=SOC, filter={"variant": "timebased", "parameter": {"period": "200"}})
    viss.event(speed["subscriptionId"])
    region.consents.decide(car, owner.owner_id, "driving_dynamics", enabled=False)
    deadline = time.monotonic() + 5
    while "error" not in (e := viss.event(speed["subscriptionId"])):
        assert time.monotonic() < deadline
    assert (e["error"]["number"], e["error"]["code"]) == ("403", "consent_not_given")
    r = viss.request("get", path=SPEED)
    assert r["error"]["code"] == "consent_not_given"
    # A branch leaves the stopped category out rather than failing.
    r = viss.request("get", path="Vehicle")
    assert SPEED not in dp(r["data"]) and SOC in dp(r["data"]), r
    # A legal hold after a deletion request freezes the data: the other subscription ends too.
    region.deletions.place_hold(car, "court", "dispute")
    region.deletions.request(owner.owner_id, car, "please delete", immediately=True)
    deadline = time.monotonic() + 5
    while "error" not in (e := viss.event(soc["subscriptionId"])):
        assert time.monotonic() < deadline
    assert e["error"]["code"] == "data_frozen"


@pytest.mark.slow  # waits for the re-check of grants, consent and holds
def test_suspended_app_loses_its_stream(region: Region, server: BackgroundServer, owner: OwnerClient, car: str) -> None:
    app, _ = region.apps.register(
        name="Wallbox",
        legal_entity="Wallbox Ltd",
        jurisdiction="cn",
        contact="dev@wallbox.example",
        purposes=["charging"],
        redirect_uris=["https://wallbox.example/cb"],
    )
    region.apps.decide(app.client_id, "approved", by="operator")
    grant = region.grants.create(
        owner.owner_id, kind="app", client_id=app.client_id, vins=[car], signals=[SOC], purpose="charging", live=True
    )
    token, _ = region.accounts.issue(owner.owner_id, "access", grant_id=grant.id, client_id=app.client_id)
    publish(region, car, {SOC: 50.0})
    with connect(ws_url(server, car), additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        c = Client(ws)
        r = c.request("subscribe", path=SOC, filter={"variant": "timebased", "parameter": {"period": "200"}})
        c.event(r["subscriptionId"])
        region.apps.decide(app.client_id, "suspended", by="operator")
        deadline = time.monotonic() + 5
        while "error" not in (e := c.event(r["subscriptionId"])):
            assert time.monotonic() < deadline
        assert (e["error"]["number"], e["error"]["code"]) == ("403", "app_not_approved")
    assert region.audit.list(owner.owner_id, action="live.subscribe")[0].actor == f"app:{app.client_id}"


@pytest.mark.slow  # a real car streaming over its own signed WebSocket
def test_values_from_the_car_reach_a_subscriber(
    region: Region, server: BackgroundServer, viss: Client, car: str, vehicle: VehicleIdentity, tmp_path: Path
) -> None:
    agent = VehicleAgent(vehicle, tmp_path / "car", server.url)
    agent.fetch_policy()
    sender = LiveSender(agent, signals=[SPEED])
    table = drive_table(BASE_MS, seconds=4, paths=[SPEED])
    frames = sender.frames(table)
    assert len(frames) == 4
    sub = viss.request(
        "subscribe", path=SPEED, filter={"variant": "change", "parameter": {"logic-op": "ne", "diff": "0"}}
    )
    assert "error" not in sub, sub

    async def stream() -> None:
        link = LiveLink(sender, server.url)
        await link.open()
        assert all(a["type"] == "ack" for a in await link.send(frames))
        await link.close()

    run_coroutine(stream())
    sent = {
        t: v for t, v in zip(table.column("t").cast("int64").to_pylist(), table.column(SPEED).to_pylist(), strict=True)
    }
    got: list[dict[str, str]] = []
    while len(got) < 3:  # the first frame sets the baseline; each later one changes speed
        got.append(viss.event(sub["subscriptionId"])["data"]["dp"])
    for dp_ in got:
        t = _ms(dp_["ts"])
        assert dp_["ts"] == iso(t) and float(dp_["value"]) == pytest.approx(
            sent[t], abs=0.005
        )  # the catalogue resolution: 0.01
    assert [d["ts"] for d in got] == [iso(BASE_MS + k * 1000) for k in (1, 2, 3)]
    assert viss.request("get", path=SPEED)["data"]["dp"]["ts"] == iso(BASE_MS + 3000)


def _nats_server() -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not Path(exe).exists():
        pytest.fail("nats-server is not installed (scripts/install-system-deps.sh installs it)")
    port = free_port()
    proc = subprocess.Popen([exe, "-a", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"nats://127.0.0.1:{port}"
        assert time.monotonic() < deadline, "nats-server did not start"
        time.sleep(0.05)


@pytest.mark.slow  # two replicas and a NATS server
def test_subscriber_on_another_replica_than_the_car(settings: Settings, tmp_path: Path) -> None:
    proc, url = _nats_server()
    a = Region(settings.with_(live_broker=url))
    b = Region(settings.with_(live_broker=url))  # the same data folder and metadata database: a second replica
    try:
        vehicle = provision(a, vin_for(1), tmp_path / "vehicles")
        with (
            BackgroundServer(a) as server_a,
            BackgroundServer(b) as server_b,
            httpx.Client(base_url=server_a.url) as http,
        ):
            owner = make_owner(http)
            r = http.post(
                "/api/v1/vehicles/claim",
                headers=owner.headers,
                json={"vin": vehicle.vin, "pairing_code": vehicle.pairing_code},
            )
            assert r.status_code in (200, 201), r.text
            agent = VehicleAgent(vehicle, tmp_path / "car", server_a.url)
            agent.fetch_policy()
            sender = LiveSender(agent, signals=[SPEED])
            frames = sender.frames(drive_table(BASE_MS, seconds=3, paths=[SPEED]))
            with connect(ws_url(server_b, vehicle.vin)) as ws:
                c = Client(ws, token_of(owner))
                sub = c.request(
                    "subscribe",
                    path=SPEED,
                    filter={"variant": "range", "parameter": {"logic-op": "gt", "boundary": "-100"}},
                )
                assert "error" not in sub, sub

                async def stream() -> None:
                    link = LiveLink(sender, server_a.url)
                    await link.open()
                    assert all(x["type"] == "ack" for x in await link.send(frames))
                    await link.close()

                run_coroutine(stream())
                got = [c.event(sub["subscriptionId"])["data"]["dp"]["ts"] for _ in frames]
                assert got == [iso(BASE_MS + k * 1000) for k in range(3)]
                assert c.request("get", path=SPEED)["data"]["dp"]["ts"] == iso(BASE_MS + 2000)  # B's last-value store
    finally:
        a.close()
        b.close()
        proc.terminate()
        proc.wait(10)


@pytest.mark.slow  # waits for the re-check
def test_a_category_turned_back_on_joins_a_branch_subscription(
    region: Region, viss: Client, owner: OwnerClient, car: str
) -> None:
    publish(region, car, {SOC: 60.0, DOOR: True})
    region.consents.decide(car, owner.owner_id, "body", enabled=False)
    r = viss.request(
        "subscribe",
        path="Vehicle",
        filter=[
            {"variant": "paths", "parameter": ["Cabin.Door.*", "Powertrain.TractionBattery.StateOfCharge"]},
            {"variant": "timebased", "parameter": {"period": "200"}},
        ],
    )
    sub = r["subscriptionId"]
    assert set(dp(viss.event(sub)["data"])) == {SOC}  # doors left out while body data is stopped
    region.consents.decide(
        car, owner.owner_id, "body", enabled=True, purpose="diagnostics", ends_ms=now_ms() + 86_400_000
    )
    deadline = time.monotonic() + 5
    while DOOR not in dp((e := viss.event(sub))["data"]):
        assert "error" not in e and time.monotonic() < deadline
    assert dp(e["data"])[DOOR]["value"] == "true"
