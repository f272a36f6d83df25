"""The consent policies of streaming cars: one read renews those of every car streaming here (``LiveChannel``)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from carvault.errors import ConsentNotGiven, UnknownVehicle
from carvault.ingest.live import POLICY_TTL_MS, now_ms
from carvault.protocol.live import encode_frame
from carvault.provisioning import provision
from carvault.region import Region
from carvault.vehicle.identity import VehicleIdentity
from tests.factories import opt_in, vin_for

LAT = "Vehicle.CurrentLocation.Latitude"
SPEED = "Vehicle.Speed"


@pytest.fixture
def cars(region: Region, tmp_path: Path) -> list[VehicleIdentity]:
    return [provision(region, vin_for(n), tmp_path / "vehicles") for n in (21, 22, 23)]


def frame(car: VehicleIdentity, counter: int, values: dict) -> bytes:
    return encode_frame(car.vin, "cn", counter, now_ms(), values, car.key)


@pytest.mark.slow  # provisions three cars and waits for policies to age
def test_one_read_renews_every_streaming_cars_policy_and_a_stop_still_counts_within_a_second(
    region: Region, cars: list[VehicleIdentity]
) -> None:
    channel = region.live_channel
    for car in cars:
        opt_in(region, car.vin, "location", at_ms=now_ms() - 60_000)
    counter = {car.vin: 0 for car in cars}

    def send(car: VehicleIdentity, values: dict) -> None:
        counter[car.vin] += 1
        assert channel.check(car.vin, frame(car, counter[car.vin], values)) is not None

    for car in cars:
        send(car, {LAT: 31.2})
    assert channel.policy_reads == 3  # each car's first frame reads its own
    reads = channel.policy_reads
    for _ in range(4):  # a second of streaming, a frame of every car each quarter of the TTL
        time.sleep(POLICY_TTL_MS / 4000)
        for car in cars:
            send(car, {LAT: 31.2})
    # Renewals took every car past half its age with them: far fewer reads than one a car each time one aged.
    assert channel.policy_reads - reads <= 2

    owner = region.accounts.register("stopper@example.com", "correct horse battery")
    region.consents.decide(cars[2].vin, owner.id, "location", enabled=False)
    time.sleep(POLICY_TTL_MS / 1000 + 0.05)
    send(cars[0], {LAT: 31.2})  # renews cars[2]'s policy too, in the same read
    with pytest.raises(ConsentNotGiven):
        channel.check(cars[2].vin, frame(cars[2], counter[cars[2].vin] + 1, {LAT: 31.2}))
    send(cars[1], {LAT: 31.2})  # the others' consent is theirs
    send(cars[2], {SPEED: 3.0})  # and the stopped car's other categories still stream


def test_a_car_no_longer_provisioned_is_unknown(region: Region, cars: list[VehicleIdentity]) -> None:
    with pytest.raises(UnknownVehicle):
        region.live_channel._policy(vin_for(99), now_ms())
