"""What the live frame path reads when many cars start streaming at once (issue 10: server CPU per frame)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from carvault.ingest.live import POLICY_TTL_MS, now_ms
from carvault.protocol.live import encode_frame
from carvault.provisioning import provision
from carvault.region import Region
from carvault.vehicle.identity import VehicleIdentity
from tests.factories import vin_for

SPEED = "Vehicle.Speed"


@pytest.fixture
def cars(region: Region, tmp_path: Path) -> list[VehicleIdentity]:
    return [provision(region, vin_for(n), tmp_path / "vehicles") for n in (31, 32, 33, 34)]


def frame(car: VehicleIdentity, counter: int) -> bytes:
    return encode_frame(car.vin, "cn", counter, now_ms(), {SPEED: 12.5}, car.key)


@pytest.mark.slow  # provisions four cars (an argon2 hash each)
def test_connected_cars_first_frames_share_one_policy_read_and_are_checked_inline(
    region: Region, cars: list[VehicleIdentity]
) -> None:
    channel = region.live_channel
    for car in cars:  # as the car channel's route does when each car connects
        channel.admit(car.vin)
        channel.opened(car.vin)
    assert channel.connections == len(cars)
    assert channel.inline(cars[0].vin, frame(cars[0], 1)) is None  # nothing read yet: the first frame reads
    assert channel.check(cars[0].vin, frame(cars[0], 1)) is not None
    assert channel.policy_reads == 1
    for car in cars[1:]:  # the others' policies came with that read: no read, no thread hop
        data = frame(car, 1)
        decoded = channel.inline(car.vin, data)
        assert decoded is not None
        assert channel.check(car.vin, data, decoded) is not None
    assert channel.policy_reads == 1


@pytest.mark.slow
def test_a_closed_channel_leaves_the_reads(region: Region, cars: list[VehicleIdentity]) -> None:
    channel = region.live_channel
    a, b = cars[0], cars[1]
    for car in (a, b):
        channel.admit(car.vin)
        channel.opened(car.vin)
    channel.opened(b.vin)  # a second channel of b (a reconnect overlapping the old one)
    channel.closed(b.vin)
    assert channel.connections == 2
    channel.closed(b.vin)
    assert channel.connections == 1
    assert channel.check(a.vin, frame(a, 1)) is not None
    assert b.vin not in channel._policies  # b is no longer read with the others
    channel.closed(a.vin)
    assert channel.connections == 0 and a.vin not in channel._policies


@pytest.mark.slow
def test_a_renewal_takes_connected_cars_that_have_not_streamed_yet(region: Region, cars: list[VehicleIdentity]) -> None:
    """Cars start streaming anywhere in their second: one renewal must take them all, not one read each."""
    channel = region.live_channel
    a, b, c = cars[0], cars[1], cars[2]
    for car in (a, b, c):
        channel.admit(car.vin)
        channel.opened(car.vin)
    assert channel.check(a.vin, frame(a, 1)) is not None  # reads all three
    time.sleep(POLICY_TTL_MS * 0.55 / 1000)  # b's and c's policies are past half their age
    assert channel.inline(b.vin, frame(b, 1)) is None
    assert channel.check(b.vin, frame(b, 1)) is not None  # renews a and c along with b
    assert channel.policy_reads == 2
    data = frame(c, 1)
    decoded = channel.inline(c.vin, data)
    assert decoded is not None and channel.check(c.vin, data, decoded) is not None
    assert channel.policy_reads == 2
