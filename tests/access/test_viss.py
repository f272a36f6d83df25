"""The VISS v3 message layer without a server: requests, paths, filters, triggers, values, errors, precision."""

from __future__ import annotations

import json
from typing import Any

import h3
import pytest

from carvault.access.viss import (
    MAX_MESSAGE_CHARS,
    Change,
    Checks,
    Range,
    TimeBased,
    data_member,
    decode,
    error_object,
    head,
    iso,
    parse_path,
    parse_request,
    select,
    served,
    value_text,
)
from carvault.compliance.sharing import Scope, ScopedView
from carvault.errors import (
    BadRequest,
    CarVaultError,
    DataFrozen,
    NotFound,
    OutOfScope,
    TooManyRequests,
    Unauthenticated,
    Unavailable,
    ValueOutOfRange,
    WrongSignalType,
)
from carvault.ingest.live import LiveValue
from carvault.location import ALT, LAT, LON
from carvault.signals import catalogue

CAT = catalogue()
SPEED = "Vehicle.Speed"
DOOR = "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen"


def req(**doc: Any) -> dict[str, Any]:
    return {"action": "get", "requestId": "7", **doc}


def test_get_request() -> None:
    r = parse_request(req(path="Vehicle/Cabin/Door", authorization=" tok "))
    assert (r.action, r.request_id, r.path, r.paths, r.trigger, r.authorization) == (
        "get",
        "7",
        "Vehicle.Cabin.Door",
        (),
        None,
        "tok",
    )
    r = parse_request(req(path="Vehicle", filter={"variant": "paths", "parameter": ["Speed", "Cabin.Door.*.*.IsOpen"]}))
    assert r.paths == ("Speed", "Cabin.Door.*.*.IsOpen")
    r = parse_request(req(path="Vehicle", filter={"variant": "paths", "parameter": "Speed"}))
    assert r.paths == ("Speed",)


def test_subscribe_filters() -> None:
    def sub(f: Any) -> Any:
        return parse_request({"action": "subscribe", "requestId": "1", "path": SPEED, "filter": f}).trigger

    assert sub({"variant": "timebased", "parameter": {"period": "500"}}) == TimeBased(500)
    assert sub({"variant": "timebased", "parameter": {"period": 1000}}) == TimeBased(1000)
    assert sub({"variant": "change", "parameter": {"logic-op": "gt", "diff": "10"}}) == Change("gt", 10.0)
    assert sub({"variant": "range", "parameter": {"logic-op": "lte", "boundary": "-2.5"}}) == Range((("lte", -2.5),))
    two = [{"logic-op": "lt", "boundary": "5", "combination-op": "OR"}, {"logic-op": "gt", "boundary": "10"}]
    assert sub({"variant": "range", "parameter": two}) == Range((("lt", 5.0), ("gt", 10.0)), "OR")
    both = [
        {"variant": "paths", "parameter": ["Speed"]},
        {"variant": "change", "parameter": {"logic-op": "ne", "diff": "0"}},
    ]
    r = parse_request({"action": "subscribe", "requestId": "1", "path": "Vehicle", "filter": both})
    assert r.paths == ("Speed",) and r.trigger == Change("ne", 0.0)


@pytest.mark.parametrize(
    "doc",
    [
        {"requestId": "1", "path": SPEED},  # no action
        {"action": "get", "path": SPEED},  # no requestId
        {"action": "get", "requestId": 7, "path": SPEED},  # requestId is a string
        {"action": "get", "requestId": "x" * 65, "path": SPEED},
        {"action": "get", "requestId": "1"},  # no path
        {"action": "get", "requestId": "1", "path": "Vehicle.*"},
        {"action": "get", "requestId": "1", "path": "Vehicle.Cabin/Door"},
        {"action": "get", "requestId": "1", "path": "Vehicle..Speed"},
        {"action": "get", "requestId": "1", "path": SPEED, "authorization": 5},
        {"action": "get", "requestId": "1", "path": SPEED, "filter": "paths"},
        {"action": "get", "requestId": "1", "path": SPEED, "filter": {"variant": "paths"}},
        {"action": "get", "requestId": "1", "path": SPEED, "filter": {"variant": "paths", "parameter": []}},
        {"action": "get", "requestId": "1", "path": SPEED, "filter": {"variant": "paths", "parameter": ["a b"]}},
        {"action": "get", "requestId": "1", "path": SPEED, "filter": {"variant": "magic", "parameter": 1}},
        {"action": "get", "requestId": "1", "path": SPEED, "filter": {"variant": "timebased", "parameter": {}}},
        {"action": "subscribe", "requestId": "1", "path": SPEED},  # subscribe needs a trigger
        {"action": "subscribe", "requestId": "1", "path": SPEED, "filter": {"variant": "paths", "parameter": "Speed"}},
        {"action": "subscribe", "requestId": "1", "path": SPEED, "filter": {"variant": "timebased", "parameter": {}}},
        *[
            {"action": "subscribe", "requestId": "1", "path": SPEED, "filter": f}
            for f in (
                {"variant": "timebased", "parameter": {"period": "99"}},
                {"variant": "timebased", "parameter": {"period": "3600001"}},
                {"variant": "timebased", "parameter": {"period": "250.5"}},
                {"variant": "timebased", "parameter": {"period": True}},
                {"variant": "change", "parameter": {"logic-op": "approx", "diff": "1"}},
                {"variant": "change", "parameter": {"logic-op": "gt", "diff": "NaN"}},
                {"variant": "change", "parameter": {"logic-op": "gt", "diff": "1e999"}},
                {"variant": "change", "parameter": {"logic-op": "gt"}},
                {"variant": "range", "parameter": []},
                {"variant": "range", "parameter": [{"logic-op": "gt", "boundary": "1"}] * 3},
                {"variant": "range", "parameter": {"logic-op": "gt"}},
                {"variant": "range", "parameter": [{"logic-op": "gt", "boundary": "1", "combination-op": "XOR"}, {}]},
                [
                    {"variant": "timebased", "parameter": {"period": "500"}},
                    {"variant": "change", "parameter": {"logic-op": "ne", "diff": "0"}},
                ],
                [{"variant": "paths", "parameter": "Speed"}, {"variant": "paths", "parameter": "Speed"}],
                [{"variant": "paths", "parameter": "Speed"}] * 3,
            )
        ],
        {"action": "unsubscribe", "requestId": "1"},
        {"action": "unsubscribe", "requestId": "1", "subscriptionId": 3},
    ],
)
def test_malformed_requests_are_bad_requests(doc: dict[str, Any]) -> None:
    with pytest.raises(BadRequest) as e:
        parse_request(doc)
    assert error_object(e.value)["number"] == "400"


def test_set_is_invalid_data_and_unsupported_variants_unavailable() -> None:
    with pytest.raises(ValueOutOfRange) as e:
        parse_request({"action": "set", "requestId": "1", "path": SPEED, "value": "1"})
    assert error_object(e.value)["reason"] == "invalid_data"
    for variant in ("history", "metadata", "curvelog"):
        with pytest.raises(NotFound):
            parse_request(req(path=SPEED, filter={"variant": variant, "parameter": "1"}))
    with pytest.raises(NotFound):
        parse_path("Cabin.Door")  # VSS paths start at the root
    with pytest.raises(NotFound):
        parse_request(req(path=SPEED, dc="2+1"))  # no data compression: said, not silently ignored


def test_decode_and_head() -> None:
    for text in ("nope", "[1]", "1", '"get"', "x" * (MAX_MESSAGE_CHARS + 1)):
        with pytest.raises(BadRequest):
            decode(text)
    assert head({"action": "get", "requestId": "9"}) == ("get", "9")
    assert head({"action": "fly", "requestId": 9}) == (None, None)
    assert decode(json.dumps(req(path=SPEED)).encode()) == req(path=SPEED)


def test_selection() -> None:
    s = select(CAT, "Vehicle.Cabin.Door", (), None)
    doors = [p for p in CAT.paths if p.startswith("Vehicle.Cabin.Door.")]  # open, locked, windows, child locks
    assert list(s.leaves) == doors and len(doors) >= 4 and s.explicit == frozenset() and s.trigger is None
    s = select(CAT, "Vehicle", ("Speed", "Cabin.Door.*.DriverSide", "Cabin.Door.Row1.DriverSide.IsOpen"), None)
    driver_side = {p for p in doors if p.split(".")[4] == "DriverSide"}
    assert s.leaves[0] == SPEED and set(s.leaves[1:]) == driver_side and DOOR in driver_side
    assert s.explicit == frozenset({SPEED, DOOR})
    assert list(s.leaves) == [p for p in CAT.paths if p in s.leaves]  # catalogue order, no duplicates
    s = select(CAT, "Vehicle", ("Speed", "Cabin.Door"), Change("ne", 0))
    assert s.trigger == SPEED
    for path, paths in (("Vehicle.Warp", ()), ("Vehicle", ("Speed", "Nothing.*")), ("Vehicle.Spee", ())):
        with pytest.raises(NotFound):
            select(CAT, path, paths, None)


def test_change_and_range_watch_one_leaf_of_a_fitting_type() -> None:
    with pytest.raises(BadRequest):
        select(CAT, "Vehicle.Cabin.Door", (), Change("ne", 0))  # a branch: which signal?
    with pytest.raises(BadRequest):
        select(CAT, "Vehicle", ("Cabin.Door.*.*.IsOpen", "Speed"), Range((("gt", 1),)))  # wildcard first
    with pytest.raises(WrongSignalType):
        select(CAT, DOOR, (), Range((("gt", 0),)))
    with pytest.raises(WrongSignalType):
        select(CAT, DOOR, (), Change("gt", 1))
    text = next(s.path for s in CAT if s.datatype == "string")
    with pytest.raises(WrongSignalType):
        select(CAT, text, (), Change("gt", 0))
    assert select(CAT, text, (), Change("ne", 0)).trigger == text
    assert select(CAT, DOOR, (), Change("lt", 0)).trigger == DOOR


def test_change_semantics() -> None:
    assert not Change("gt", 10).fires(None, 50)  # no baseline yet
    assert Change("gt", 10).fires(10, 20.5) and not Change("gt", 10).fires(10, 20) and not Change("gt", 10).fires(30, 0)
    assert Change("lt", -5).fires(10, 4) and not Change("lt", -5).fires(10, 6)
    assert Change("gte", 0).fires(3, 3) and Change("eq", 2).fires(1, 3)
    assert Change("gt", 0).fires(False, True) and not Change("gt", 0).fires(True, False)
    assert Change("lt", 0).fires(True, False) and Change("ne", 0).fires(True, False)
    assert not Change("ne", 0).fires(True, True)
    assert Change("ne", 0).fires("a", "b") and not Change("ne", 0).fires("a", "a")


def test_range_semantics() -> None:
    inside = Range((("gt", 49), ("lt", 51)))
    assert inside.fires(50) and not inside.fires(51) and not inside.fires(10)
    outside = Range((("lt", 5), ("gt", 10)), "OR")
    assert outside.fires(4) and outside.fires(11) and not outside.fires(7)
    assert Range((("eq", 5),)).fires(5.0) and Range((("ne", 5),)).fires(4)
    assert not Range((("gt", 0),)).fires(True)


def test_values_and_times_as_viss_writes_them() -> None:
    assert iso(0) == "1970-01-01T00:00:00.000Z"
    assert iso(1_764_720_000_123) == "2025-12-03T00:00:00.123Z"
    assert [value_text(v) for v in (True, False, 3, -1, 2.5, 0.1, "P")] == [
        "true",
        "false",
        "3",
        "-1",
        "2.5",
        "0.1",
        "P",
    ]
    assert value_text(150.12345123291016, 0.01) == "150.12" and value_text(12345.6, 10) == "12346.0"
    assert value_text(31.2304123, 0.0000001) == "31.2304123" and value_text(7, 0.01) == "7"
    one = data_member([LiveValue(SPEED, 0, 1.5, 0)])
    assert one == {"path": SPEED, "dp": {"value": "1.5", "ts": "1970-01-01T00:00:00.000Z"}}
    two = data_member([LiveValue(SPEED, 0, 1.5, 0), LiveValue(DOOR, 1000, True, 0)])
    assert isinstance(two, list) and two[1] == {"path": DOOR, "dp": {"value": "true", "ts": "1970-01-01T00:00:01.000Z"}}
    assert data_member([LiveValue(SPEED, 0, 88.40000152587891, 0)], CAT)["dp"]["value"] == "88.4"  # type: ignore[call-overload]


@pytest.mark.parametrize(
    ("error", "number", "reason"),
    [
        (BadRequest("x"), "400", "bad_request"),
        (WrongSignalType("x"), "400", "invalid_data"),
        (Unauthenticated("x"), "401", "invalid_token"),
        (OutOfScope("x"), "403", "forbidden_request"),
        (DataFrozen("x"), "403", "forbidden_request"),
        (NotFound("x"), "404", "unavailable_data"),
        (TooManyRequests("x"), "429", "too_many_requests"),
        (Unavailable("x"), "503", "service_unavailable"),
        (CarVaultError("x"), "503", "service_unavailable"),
    ],
)
def test_error_objects(error: CarVaultError, number: str, reason: str) -> None:
    assert error_object(error) == {"number": number, "reason": reason, "description": "x", "code": error.code}


def test_location_at_the_grants_precision() -> None:
    lat, lon = 31.2304123, 121.4737456
    values = {
        LAT: LiveValue(LAT, 5, lat, 6),
        LON: LiveValue(LON, 5, lon, 6),
        ALT: LiveValue(ALT, 5, 12.0, 6),
        SPEED: LiveValue(SPEED, 5, 30.0, 6),
    }
    assert served(values, ScopedView(CAT, "V", None)) is values  # the owner: exact
    scope = Scope(("V",), ("Vehicle",), None, None, True, False, "personal", 2**40)
    coarse = served(values, ScopedView(CAT, "V", scope))
    centre = h3.cell_to_latlng(h3.latlng_to_cell(lat, lon, 8))
    assert coarse[LAT].value == pytest.approx(centre[0], abs=1e-7) and coarse[LON].value == pytest.approx(
        centre[1], abs=1e-7
    )
    assert coarse[LAT].t_ms == 5 and ALT not in coarse and coarse[SPEED] == values[SPEED]
    assert LAT not in served({LAT: values[LAT]}, ScopedView(CAT, "V", scope))  # no cell without both
    precise = Scope(("V",), ("Vehicle",), None, None, True, True, "personal", 2**40)
    assert served(values, ScopedView(CAT, "V", precise))[LAT].value == lat


def test_checks_share_reads_for_a_while_refusals_included() -> None:
    reads: list[str] = []

    def read() -> str:
        reads.append("x")
        return "value"

    def refuse() -> None:
        reads.append("refused")
        raise OutOfScope("no")

    checks = Checks(ttl_s=60)
    assert checks.once("a", read) == "value" and checks.once("a", read) == "value"
    for _ in range(2):
        with pytest.raises(OutOfScope):
            checks.once("b", refuse)
    assert reads == ["x", "refused"]
    stale = Checks(ttl_s=0)
    stale.once("a", read)
    stale.once("a", read)
    assert reads.count("x") == 3
    small = Checks(ttl_s=0, limit=2)
    for k in range(5):
        small.once(k, read)
    assert len(small._memo) <= 2  # expired entries are dropped rather than kept without bound
