"""Retention from the outside: withheld before erased, erased as deletion erases, holds, dry runs, crashes, races."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pyarrow as pa
import pytest
from sqlalchemy import select

from carvault.compliance.retention import DAY_MS, RECORD_CONTEXT, lease_holder, period_ms
from carvault.errors import RetentionRunning
from carvault.ingest.live import LiveValue
from carvault.ledger import merkle
from carvault.ledger.checkpoint import parse_vkey, verify_checkpoint
from carvault.region import Region
from carvault.signals import CATEGORIES
from carvault.store.metadata import BatchRecord, RetentionErasure, RetentionRun, RetentionWithheld
from carvault.vehicle.agent import VehicleAgent
from carvault.vehicle.identity import VehicleIdentity
from tests.conftest import OwnerClient
from tests.factories import BASE_MS, drive_table

SPEED = "Vehicle.Speed"  # driving_dynamics: 3 years
VOLTAGE = "Vehicle.LowVoltageBattery.CurrentVoltage"  # body: 1 year
PATHS = [SPEED, VOLTAGE]
LATER_MS = BASE_MS + 30 * DAY_MS  # a batch a month younger than the first ones

# Times of the runs, from the periods themselves (signals.CATEGORIES is their one home).
BODY_GONE = BASE_MS + period_ms("body") + 2 * DAY_MS  # body withheld; nothing erased yet
ALL_GONE = BASE_MS + period_ms("driving_dynamics") + 2 * DAY_MS  # the first batches erased; LATER's kept


def _upload(http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent) -> None:
    """Two one-minute batches at BASE_MS and one a month later, all carrying SPEED and VOLTAGE; claimed by owner."""
    agent.record(drive_table(BASE_MS, seconds=120, paths=PATHS), batch_seconds=60)
    agent.record(drive_table(LATER_MS, seconds=60, paths=PATHS, seed=1), batch_seconds=60)
    agent.upload_pending()
    r = http.post(
        "/api/v1/vehicles/claim", headers=owner.headers, json={"vin": vehicle.vin, "pairing_code": vehicle.pairing_code}
    )
    assert r.status_code == 201, r.text


def _records(region: Region, vin: str) -> list[BatchRecord]:
    with region.db.session() as s:
        return list(s.scalars(select(BatchRecord).where(BatchRecord.vin == vin).order_by(BatchRecord.seq)))


def _bytes_of(region: Region, rec: BatchRecord) -> bytes:
    with open(region.settings.data_dir / "segments" / rec.segment, "rb") as f:
        f.seek(rec.offset)
        return f.read(rec.length)


def _tree(root: Path) -> dict[str, str]:
    """SHA-256 of every file under a folder (what a dry run must leave as it was)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def _read(region: Region, vin: str, start: int, end: int) -> pa.Table:
    return region.telemetry.window(vin, start, end, [region.catalogue[p] for p in PATHS])


def _verify_record(record: dict) -> None:
    body = {k: v for k, v in record.items() if k not in ("signature", "signed_by")}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    parse_vkey(record["signed_by"]).public_key.verify(base64.b64decode(record["signature"]), RECORD_CONTEXT + canonical)


def test_a_category_is_withheld_before_its_batch_is_erased(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent, region: Region
) -> None:
    _upload(http, owner, vehicle, agent)
    recs = _records(region, vehicle.vin)
    before = _read(region, vehicle.vin, BASE_MS, BASE_MS + 120_000)  # builds the query copies
    assert before.column(VOLTAGE).null_count < before.num_rows
    evidence = [_bytes_of(region, r) for r in recs]
    voltage_samples = before.num_rows - before.column(VOLTAGE).null_count

    run = region.retention.run(now=BODY_GONE)
    summary = json.loads(run.summary)
    body = summary["categories"]["body"]
    assert body["withheld_batches"] == 2 and body["withheld_samples"] == voltage_samples
    assert body["erased_batches"] == 0 and summary["batches_erased"] == 0
    assert summary["categories"]["driving_dynamics"]["withheld_batches"] == 0

    # Reads withhold the expired category (owner API included); the other category is served whole.
    after = _read(region, vehicle.vin, BASE_MS, BASE_MS + 120_000)
    assert after.column(VOLTAGE).null_count == after.num_rows
    assert after.column(SPEED).to_pylist() == before.column(SPEED).to_pylist()
    r = http.get(
        f"/api/v1/vehicles/{vehicle.vin}/telemetry",
        headers=owner.headers,
        params={"start": BASE_MS, "end": BASE_MS + 120_000, "signals": VOLTAGE},
    )
    assert r.status_code == 200 and r.json()["rows"] > 0
    assert set(r.json()["signals"][VOLTAGE]) == {None}
    # The query copies lost the column; the batch a month younger is untouched; evidence bytes stay whole.
    for rec in recs[:2]:
        copy = region.derived.read(vehicle.vin, rec.batch_hash)
        assert copy is None or VOLTAGE not in copy.column_names
    young = _read(region, vehicle.vin, LATER_MS, LATER_MS + 60_000)
    assert young.column(VOLTAGE).null_count < young.num_rows
    assert [_bytes_of(region, r) for r in recs] == evidence
    # A copy rebuilt from the evidence leaves the column out too.
    region.derived.delete(vehicle.vin, recs[0].batch_hash)
    _read(region, vehicle.vin, BASE_MS, BASE_MS + 60_000)
    rebuilt = region.derived.read(vehicle.vin, recs[0].batch_hash)
    assert rebuilt is not None and VOLTAGE not in rebuilt.column_names
    # Nothing more to withhold at the same time.
    again = json.loads(region.retention.run(now=BODY_GONE).summary)
    assert again["batches_withheld"] == 0 and again["categories"]["body"]["withheld_batches"] == 0


def test_purge_erases_expired_batches_and_the_log_stays_consistent(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent, region: Region
) -> None:
    _upload(http, owner, vehicle, agent)
    recs = _records(region, vehicle.vin)
    _read(region, vehicle.vin, BASE_MS, LATER_MS + 60_000)
    assert all(region.derived.path(vehicle.vin, r.batch_hash).exists() for r in recs)
    old_checkpoint = region.log.checkpoint()

    run = region.retention.run(now=ALL_GONE)
    assert run.status == "done" and not run.dry_run
    summary = json.loads(run.summary)
    dd = summary["categories"]["driving_dynamics"]
    assert summary["batches_erased"] == 2 and dd["erased_batches"] == 2 and dd["erased_samples"] > 0
    assert summary["categories"]["body"]["erased_batches"] == 2
    assert summary["bytes_overwritten"] == recs[0].length + recs[1].length

    # Erased like a deletion: zeroed bytes, index rows and query copies gone; the younger batch kept whole.
    for rec in recs[:2]:
        assert _bytes_of(region, rec) == bytes(rec.length)
        assert not region.derived.path(vehicle.vin, rec.batch_hash).exists()
    assert [r.seq for r in _records(region, vehicle.vin)] == [recs[2].seq]
    assert _read(region, vehicle.vin, BASE_MS, BASE_MS + 120_000).num_rows == 0
    assert _read(region, vehicle.vin, LATER_MS, LATER_MS + 60_000).num_rows == 600

    # The log keeps every leaf: the old checkpoint is a prefix of a newer one, and the kept batch is provable.
    agent.record(drive_table(LATER_MS + 120_000, seconds=60, paths=PATHS, seed=2), batch_seconds=60)
    agent.upload_pending()
    new_checkpoint = region.log.checkpoint()
    vkey = parse_vkey(region.log.vkey)
    old = verify_checkpoint(old_checkpoint, vkey.public_key, vkey.name)
    new = verify_checkpoint(new_checkpoint, vkey.public_key, vkey.name)
    assert new.size > old.size
    merkle.verify_consistency(old.size, new.size, old.root, new.root, region.log.consistency_proof(old.size, new.size))
    kept = recs[2]
    assert kept.leaf_hash is not None and kept.log_index is not None
    proof = region.log.inclusion_proof(kept.log_index, new.size)
    merkle.verify_inclusion(kept.leaf_hash, kept.log_index, new.size, proof, new.root)
    erased = recs[0]  # its leaf is still in the tree, so every proof around it still holds
    assert erased.leaf_hash is not None and erased.log_index is not None
    merkle.verify_inclusion(
        erased.leaf_hash, erased.log_index, new.size, region.log.inclusion_proof(erased.log_index, new.size), new.root
    )

    # The record is signed by the region's log key; the run and the purge are audited.
    record = json.loads(run.record or "{}")
    _verify_record(record)
    assert record["run_id"] == run.id and record["batches_erased"] == 2
    events = http.get("/api/v1/audit", headers=owner.headers).json()["events"]
    purge = [e for e in events if e["action"] == "retention.purge"]
    assert len(purge) == 1 and purge[0]["vin"] == vehicle.vin
    assert purge[0]["detail"]["batches_erased"] == 2 and purge[0]["legal_basis"].startswith("storage limitation")
    assert region.audit.verify_chain(owner.owner_id) > 0
    region_events = [e.action for e in region.audit.list(None, limit=1000)]  # type: ignore[arg-type]
    assert "retention.run" in region_events

    # Idempotent: the next run finds nothing more to do.
    again = json.loads(region.retention.run(now=ALL_GONE).summary)
    assert again["batches_erased"] == 0 and again["errors"] == [] and again["bytes_overwritten"] == 0


def test_a_legal_hold_keeps_the_data_until_it_is_released(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent, region: Region
) -> None:
    _upload(http, owner, vehicle, agent)
    recs = _records(region, vehicle.vin)
    hold = region.deletions.place_hold(vehicle.vin, "Shenzhen Intermediate Court", "case (2026) 123")
    due = region.retention.policy(now=ALL_GONE, due=True)["due_now"]
    assert due["batches_held"] == 3 and due["holds"] == [hold.id] and due["batches_to_erase"] == 0
    summary = json.loads(region.retention.run(now=ALL_GONE).summary)
    assert summary["batches_erased"] == 0
    assert summary["skipped_by_hold"] == [{"vin": vehicle.vin, "holds": [hold.id]}]
    assert summary["categories"]["driving_dynamics"]["held_batches"] == 2
    assert len(_records(region, vehicle.vin)) == 3 and _bytes_of(region, recs[0]) != bytes(recs[0].length)

    region.deletions.release_hold(hold.id)
    summary = json.loads(region.retention.run(now=ALL_GONE).summary)
    assert summary["batches_erased"] == 2 and summary["skipped_by_hold"] == []
    assert _bytes_of(region, recs[0]) == bytes(recs[0].length)


def test_a_dry_run_plans_the_same_and_changes_nothing(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent, region: Region
) -> None:
    _upload(http, owner, vehicle, agent)
    _read(region, vehicle.vin, BASE_MS, LATER_MS + 60_000)
    # The log publishes its tiles in the background (at most every 0.2 s): let it catch up with the upload first,
    # so what the comparison below sees is the dry run's doing alone.
    assert region.tiles.wait_published(region.log.size, timeout=60)
    stores = region.settings.data_dir
    files = {d: _tree(stores / d) for d in ("segments", "derived", "log")}
    dry = region.retention.run(now=ALL_GONE, dry_run=True)
    summary = json.loads(dry.summary)
    assert dry.dry_run and summary["batches_planned"]["erase"] == 2
    assert summary["categories"]["driving_dynamics"]["erased_batches"] == 2  # what a real run would erase
    assert summary["batches_erased"] == 0 and summary["bytes_overwritten"] == 0
    assert json.loads(dry.record or "{}")["dry_run"] is True
    assert {d: _tree(stores / d) for d in files} == files
    assert len(_records(region, vehicle.vin)) == 3
    assert region.retention.category_cutoffs() == {}  # a dry run publishes no cutoffs to the read path
    events = http.get("/api/v1/audit", headers=owner.headers).json()["events"]
    assert not [e for e in events if e["action"] == "retention.purge"]
    # The real run then does exactly what the dry run counted.
    real = json.loads(region.retention.run(now=ALL_GONE).summary)
    assert real["categories"]["driving_dynamics"] == summary["categories"]["driving_dynamics"]


def test_a_run_stopped_midway_is_finished_by_the_next(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent, region: Region
) -> None:
    _upload(http, owner, vehicle, agent)
    recs = _records(region, vehicle.vin)
    region.segment_reader.read(recs[0].segment, 0, 1)  # the reader holds the segment open, as a busy server's does
    segment = region.settings.data_dir / "segments" / recs[0].segment
    aside = segment.with_name(segment.name + ".aside")
    segment.rename(aside)
    segment.mkdir()  # overwriting now fails after the batch's row was swapped for an erasure row
    try:
        summary = json.loads(region.retention.run(now=ALL_GONE).summary)
    finally:
        segment.rmdir()
        aside.rename(segment)
    assert summary["errors"] and summary["batches_erased"] == 0, summary["errors"]
    with region.db.session() as s:
        pending = list(s.scalars(select(RetentionErasure.batch_id)))
    assert pending == [recs[0].id, recs[1].id]  # both batches sit in that segment
    # The index no longer names the half-erased batch: reads never meet its bytes.
    assert recs[0].seq not in [r.seq for r in _records(region, vehicle.vin)]

    summary = json.loads(region.retention.run(now=ALL_GONE).summary)
    assert summary["finished_from_earlier_runs"] == 2 and summary["errors"] == []
    assert [r.seq for r in _records(region, vehicle.vin)] == [recs[2].seq]
    for rec in recs[:2]:
        assert _bytes_of(region, rec) == bytes(rec.length)
    with region.db.session() as s:
        assert not list(s.scalars(select(RetentionErasure.batch_id)))


def test_two_runs_at_once_never_purge_twice(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent, region: Region
) -> None:
    _upload(http, owner, vehicle, agent)
    second = Region(region.settings)  # another replica over the same stores
    try:
        start = threading.Barrier(2)
        outcomes: list[object] = []

        def purge(r: Region) -> None:
            start.wait()
            try:
                outcomes.append(json.loads(r.retention.run(now=ALL_GONE).summary))
            except RetentionRunning as e:
                outcomes.append(e)

        threads = [threading.Thread(target=purge, args=(r,)) for r in (region, second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        second.close()
    done = [o for o in outcomes if isinstance(o, dict)]
    assert done and sum(o["batches_erased"] for o in done) == 2
    assert all(o["errors"] == [] for o in done) and len(outcomes) == 2
    with pytest.raises(RetentionRunning):  # a lease held by a live run refuses another
        region.retention._acquire("someone-else")  # noqa: SLF001 - the guard itself, taken while free
        region.retention._acquire("a-third")  # noqa: SLF001


def test_policy_names_every_category_with_its_period(region: Region) -> None:
    policy = region.retention.policy(now=BASE_MS, due=True)
    assert {c["category"]: c["retention_days"] for c in policy["categories"]} == {
        n: c.retention_days for n, c in CATEGORIES.items()
    }
    assert policy["last_run"] is None and policy["next_due_ms"] == BASE_MS and policy["interval_s"] == 3600
    assert policy["due_now"] == {
        "now_ms": BASE_MS,
        "batches_to_erase": 0,
        "batches_to_withhold": 0,
        "batches_held": 0,
        "holds": [],
        "more_due": False,
    }
    run = region.retention.run(now=BASE_MS)
    policy = region.retention.policy()
    assert policy["last_run"]["id"] == run.id
    assert run.finished_ms is not None and policy["next_due_ms"] == run.finished_ms + 3600 * 1000
    body = next(c for c in policy["categories"] if c["category"] == "body")
    assert body["withheld_before_ms"] == BASE_MS - period_ms("body")


def test_live_last_values_past_their_period_are_not_served(vehicle: VehicleIdentity, region: Region) -> None:
    values = {p: LiveValue(p, BASE_MS, 12.5, BASE_MS + 1) for p in PATHS}
    region.live.store.save({vehicle.vin: (values, BASE_MS + 1)})  # type: ignore[union-attr]
    assert set(region.live.latest(vehicle.vin)) == set(PATHS)
    region.retention.run(now=BODY_GONE)
    assert set(region.live.latest(vehicle.vin)) == {SPEED}  # the body value is a year and more old


@pytest.mark.postgres
@pytest.mark.slow
def test_purge_on_postgres_one_replica_at_a_time(tmp_path: Path) -> None:
    from carvault.bench.pg_cluster import TemporaryPostgres
    from carvault.provisioning import provision
    from carvault.server import BackgroundServer
    from carvault.settings import Settings
    from tests.factories import vin_for

    with TemporaryPostgres(fsync=False) as pg:
        settings = Settings(data_dir=tmp_path / "cn", region="cn", database_url=pg.create_database("region_cn"))
        region, second = Region(settings), Region(settings)
        try:
            car = provision(region, vin_for(3), tmp_path / "vehicles")
            with BackgroundServer(region) as server:
                agent = VehicleAgent(car, tmp_path / "vehicles" / car.vin, server.url)
                agent.record(drive_table(BASE_MS, seconds=120, paths=PATHS), batch_seconds=60)
                agent.upload_pending()
            second.retention._acquire("replica-b")  # noqa: SLF001 - the other replica's purge is under way
            with pytest.raises(RetentionRunning):
                region.retention.run(now=ALL_GONE)
            second.retention._release("replica-b")  # noqa: SLF001
            summary = json.loads(region.retention.run(now=ALL_GONE).summary)
            assert summary["batches_erased"] == 2 and summary["errors"] == []
            assert not _records(region, car.vin)
            assert json.loads(second.retention.run(now=ALL_GONE).summary)["batches_erased"] == 0
            assert second.retention.category_cutoffs()["body"] == ALL_GONE - period_ms("body")
        finally:
            second.close()
            region.close()


@pytest.mark.slow
def test_the_purge_bench_measures_all_three_runs(tmp_path: Path) -> None:
    from carvault.bench.retention_bench import NOTES_END, NOTES_START, RetentionBenchConfig, retention_figures, splice

    fig = retention_figures(RetentionBenchConfig.quick(), work=tmp_path)
    total = fig["store"]["batches"]
    assert total > 0 and fig["store"]["evidence_bytes"] > 0
    assert fig["dry_run"]["batches"] == total and fig["dry_run"]["batches_erased"] == 0
    assert fig["withhold"]["batches_withheld"] == total and fig["withhold"]["query_copy_bytes_removed"] > 0
    assert fig["purge"]["batches_erased"] == total and fig["purge"]["errors"] == 0
    assert fig["purge"]["bytes_overwritten"] == fig["store"]["evidence_bytes"]
    page = splice("# Benchmarks\n\n## Targets missed\n", fig)
    assert page.index("## Retention purge") < page.index("## Targets missed")
    kept = page.replace("_No notes yet._", "hand-written")
    again = splice(kept, fig)
    assert again.count("## Retention purge") == 1 and f"{NOTES_START}\nhand-written\n{NOTES_END}" in again


def test_packages_holding_an_erased_batch_go_with_it(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent, region: Region
) -> None:
    _upload(http, owner, vehicle, agent)
    made = []
    for start, end in ((BASE_MS, BASE_MS + 120_000), (LATER_MS, LATER_MS + 60_000)):
        r = http.post(
            f"/api/v1/vehicles/{vehicle.vin}/packages", headers=owner.headers, json={"start": start, "end": end}
        )
        assert r.status_code == 201, r.text
        made.append(r.json())
    folder = region.settings.data_dir / "packages"
    assert len(list(folder.glob("*.zip"))) == 2
    summary = json.loads(region.retention.run(now=ALL_GONE).summary)
    assert summary["packages_erased"] == 1 and summary["batches_erased"] == 2
    left = list(folder.glob("*.zip"))
    assert len(left) == 1 and str(LATER_MS) in left[0].name  # the package over the kept batch stays
    listed = http.get(f"/api/v1/vehicles/{vehicle.vin}/packages", headers=owner.headers)
    assert listed.status_code == 200 and [p["id"] for p in listed.json()] == [made[1]["id"]]


def test_a_deletion_takes_the_withholding_marks_of_its_batches(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent, region: Region
) -> None:
    _upload(http, owner, vehicle, agent)
    region.retention.run(now=BODY_GONE)
    with region.db.session() as s:
        assert len(list(s.scalars(select(RetentionWithheld).where(RetentionWithheld.vin == vehicle.vin)))) == 2
    assert region.deletions.request(owner.owner_id, vehicle.vin, "sold the car", immediately=True).status == "completed"
    with region.db.session() as s:  # no stale mark can match a batch that later reuses a row id
        assert not list(s.scalars(select(RetentionWithheld).where(RetentionWithheld.vin == vehicle.vin)))


def test_a_lease_left_by_a_killed_run_on_this_machine_is_taken_over(region: Region) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    region.retention._acquire(lease_holder(gone.pid))  # noqa: SLF001 - as a run killed midway leaves it
    with region.db.session() as s:
        s.add(RetentionRun(started_ms=BASE_MS, now_ms=BASE_MS, actor="system:retention", cutoffs="{}"))
    run = region.retention.run(now=BASE_MS)
    assert run.status == "done"
    assert [r.status for r in region.retention.runs()] == ["done", "interrupted"]
    region.retention._acquire(lease_holder())  # noqa: SLF001 - a live process of this machine holds it
    with pytest.raises(RetentionRunning):
        region.retention.run(now=BASE_MS)


def test_a_backlog_larger_than_a_run_is_worked_through_by_the_next(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent, region: Region
) -> None:
    _upload(http, owner, vehicle, agent)
    first = json.loads(region.retention.run(now=ALL_GONE, limit=1).summary)
    assert first["batches_erased"] == 1 and first["more_due"] is True
    second = json.loads(region.retention.run(now=ALL_GONE, limit=1).summary)
    assert second["batches_erased"] == 1 and second["more_due"] is True  # the kept batch's withholding waits
    third = json.loads(region.retention.run(now=ALL_GONE).summary)
    assert third["batches_erased"] == 0 and third["batches_withheld"] == 1 and third["more_due"] is False
    assert [r.seq for r in _records(region, vehicle.vin)] == [3]
