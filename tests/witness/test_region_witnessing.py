"""A region with real witness processes: checkpoints cosigned as uploads arrive, a witness down then back, a
witness that saw another tree refusing, and nothing on the receipt's path waiting for any of them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from carvault.ledger.checkpoint import format_vkey, parse_checkpoint, parse_vkey, sign_checkpoint, verify_cosignatures
from carvault.ledger.merkle import leaf_hash, root_from_leaf_hashes
from carvault.ledger.tiles import latest_checkpoint
from carvault.ledger.witnessing import parse_witnesses
from carvault.provisioning import provision
from carvault.region import Region, load_or_create_key, log_origin
from carvault.server import BackgroundServer, free_port
from carvault.settings import Settings
from carvault.vehicle.agent import VehicleAgent
from tests.factories import BASE_MS, drive_table, vin_for
from tests.witness.conftest import WitnessProcess, make_witness

pytestmark = pytest.mark.slow

PATHS = ["Vehicle.Speed", "Vehicle.Chassis.Brake.PedalPosition"]  # on by default: no consent needed


def wait_for(check: Callable[[], object], timeout: float = 30.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def region_with_witnesses(tmp_path: Path, count: int, quorum: int) -> tuple[Settings, list[WitnessProcess]]:
    """Settings for region cn whose log ``count`` fresh witness processes witness (started)."""
    data_dir = tmp_path / "region-cn"
    log_key = load_or_create_key(data_dir / "keys" / "log-ed25519.pem")  # the key Region will load
    vkey = format_vkey(log_origin("cn"), log_key.public_key())
    witnesses = [make_witness(tmp_path, f"w{i}", [vkey]).start() for i in range(1, count + 1)]
    port = free_port()
    settings = Settings(
        data_dir=data_dir,
        region="cn",
        port=port,
        region_endpoints={"cn": f"http://127.0.0.1:{port}"},
        witnesses=";".join(w.entry for w in witnesses),
        witness_quorum=quorum,
    )
    return settings, witnesses


@pytest.fixture
def stop_all() -> Iterator[list[WitnessProcess]]:
    started: list[WitnessProcess] = []
    yield started
    for w in started:
        w.stop()


def cosigners(note: str, witnesses: list[WitnessProcess]) -> set[str]:
    return {c.name for c in verify_cosignatures(note, [parse_vkey(w.vkey) for w in witnesses])}


def test_uploads_are_cosigned_by_a_quorum_and_published(tmp_path: Path, stop_all: list[WitnessProcess]) -> None:
    settings, witnesses = region_with_witnesses(tmp_path, 3, 2)
    stop_all += witnesses
    with Region(settings) as region, BackgroundServer(region, port=settings.port) as server:
        vehicle = provision(region, vin_for(1), tmp_path / "vehicles")
        agent = VehicleAgent(vehicle, tmp_path / "vehicles" / vehicle.vin, server.url)
        for round_ in range(3):
            agent.record(drive_table(BASE_MS + round_ * 60_000, seconds=30, paths=PATHS), batch_seconds=10)
            receipts = agent.upload_pending()
            assert len(receipts) == 3
            size = region.log.size

            def cosigned(size: int = size) -> str | None:
                note = region.witnessing.latest_cosigned()
                return note if note and parse_checkpoint(note).size >= size else None

            note = str(wait_for(cosigned))
            assert len(cosigners(note, witnesses)) >= 2
            # The log's own signature is still on it, and the published checkpoint carries the cosignatures.
            region.log.checkpoint()  # noqa: B018 - the log answers while witnessing runs
            published = str(wait_for(lambda: latest_checkpoint(region.blobs)))
            assert parse_checkpoint(published).size >= parse_checkpoint(note).size
        exact = region.witnessing.cosigned_for(parse_checkpoint(note).size)
        assert exact == note or exact is not None
        tlog = httpx.get(server.url + "/tlog/checkpoint", timeout=10).text
        assert len(cosigners(tlog, witnesses)) >= 2
        status = region.witnessing.status
        assert all(s.last_success_ms > 0 and s.cosigned_size > 0 for s in status.values())


def test_a_witness_down_stalls_nothing_and_catches_up(tmp_path: Path, stop_all: list[WitnessProcess]) -> None:
    settings, witnesses = region_with_witnesses(tmp_path, 2, 2)
    stop_all += witnesses
    with Region(settings) as region:
        region.log.append([b"first"])
        first = wait_for(lambda: region.witnessing.cosigned_for(1))
        assert cosigners(str(first), witnesses) == {w.name for w in witnesses}
        witnesses[1].stop()
        started = time.monotonic()
        for i in range(5):
            region.log.append([f"while-down-{i}".encode()])  # appends do not wait for any witness
        assert time.monotonic() - started < 2
        wait_for(lambda: region.witnessing.status["w1"].cosigned_size == 6)
        wait_for(lambda: region.witnessing.status["w2"].failures > 0)
        assert region.witnessing.cosigned_for(6) is None  # one of two cosignatures: below the quorum
        assert region.witnessing.lag()["w2"] == 5
        witnesses[1].start()
        note = wait_for(lambda: region.witnessing.cosigned_for(6), timeout=60)
        assert cosigners(str(note), witnesses) == {w.name for w in witnesses}
        assert region.witnessing.status["w2"].last_error == ""
        metrics = region.metrics.exposition().decode()
        assert 'carvault_witness_lag_leaves{witness="w2"}' in metrics
        assert 'carvault_witness_failures{witness="w2"}' in metrics
        assert 'carvault_witness_last_success_seconds{witness="w1"}' in metrics


def test_a_witness_that_saw_another_tree_refuses(tmp_path: Path, stop_all: list[WitnessProcess]) -> None:
    """Split view: the log key signed a different tree of size 3 for witness w2 (say, an attacker holding the key
    showed it a fork). w2 refuses the region's real tree; w1 still cosigns; quorum 1 is met by w1 alone."""
    settings, witnesses = region_with_witnesses(tmp_path, 2, 1)
    stop_all += witnesses
    log_key = load_or_create_key(settings.data_dir / "keys" / "log-ed25519.pem")
    fork = [leaf_hash(b"fork-%d" % i) for i in range(3)]
    forged = sign_checkpoint(log_origin("cn"), 3, root_from_leaf_hashes(fork), log_key, log_origin("cn"))
    r = httpx.post(witnesses[1].url + "/add-checkpoint", content=b"old 0\n\n" + forged.encode(), timeout=10)
    assert r.status_code == 200
    with Region(settings) as region:
        region.log.append([b"a", b"b", b"c", b"d"])
        note = wait_for(lambda: region.witnessing.cosigned_for(4))
        assert cosigners(str(note), witnesses) == {witnesses[0].name}
        wait_for(lambda: region.witnessing.status["w2"].failures > 0)
        assert "422" in region.witnessing.status["w2"].last_error
        assert region.witnessing.status["w2"].cosigned_size < 4


def test_witnesses_setting_is_checked() -> None:
    with pytest.raises(ValueError, match="not 'name=vkey@"):
        parse_witnesses("w1=nothing")
    with pytest.raises(ValueError, match="bad vkey"):
        parse_witnesses("w1=a+b+c@http://127.0.0.1:1")
    log_vkey = format_vkey("x.example/log", load_or_create_key_tmp().public_key())
    with pytest.raises(ValueError, match="cosignature/v1"):
        parse_witnesses(f"w1={log_vkey}@http://127.0.0.1:1")
    with pytest.raises(ValueError, match="witness_quorum"):
        Settings.from_env({"CARVAULT_WITNESS_QUORUM": "1"})
    assert parse_witnesses("") == [] and parse_witnesses(" ; ") == []


def load_or_create_key_tmp():  # noqa: ANN201 - a throwaway key
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()
