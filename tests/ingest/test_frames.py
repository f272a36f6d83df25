"""Camera frames over real HTTP: only de-identified frames bound to an accepted signed batch are stored."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import httpx
import pyarrow as pa
import pytest
from sqlalchemy import func, select

from carvault.ingest.frames import FrameRecord
from carvault.protocol import BATCH_MEDIA_TYPE, GENESIS_PREV, make_batch
from carvault.region import Region
from carvault.signals import catalogue
from carvault.vehicle.agent import UploadRefused, VehicleAgent
from carvault.vehicle.camera import (
    CAMERA,
    CAMERA_COLUMNS,
    FRAME_UPLOAD_PATH,
    VIN_HEADER,
    frame_rows,
    pending_frames,
    spool_frames,
    upload_frames,
)
from carvault.vehicle.identity import VehicleIdentity
from tests.conftest import OwnerClient, make_owner
from tests.factories import BASE_MS, opt_in

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "images"
PLATE_PHOTO = (ASSETS / "ccpd_demo_3.jpg").read_bytes()
FACE_PHOTO = (ASSETS / "skimage_astronaut.png").read_bytes()


def blobs_on_disk(region: Region) -> list[Path]:
    return sorted(p for p in (region.settings.data_dir / "blobs").rglob("*") if p.is_file())


def frames_indexed(region: Region) -> int:
    with region.db.session() as s:
        return s.scalar(select(func.count()).select_from(FrameRecord).where(FrameRecord.stored_ms.is_not(None))) or 0


def post_frame(http: httpx.Client, body: bytes, vin: str | None, content_type: str = "image/jpeg") -> httpx.Response:
    headers = {"Content-Type": content_type}
    if vin is not None:
        headers[VIN_HEADER] = vin
    return http.post(FRAME_UPLOAD_PATH, content=body, headers=headers)


@pytest.fixture(scope="module")
def rows() -> tuple[pa.Table, list[bytes]]:
    """One plate frame and one face frame, de-identified once for the whole module (it takes ~0.3 s each)."""
    return frame_rows([(BASE_MS, "FRONT", PLATE_PHOTO), (BASE_MS + 1000, "REAR", FACE_PHOTO)])


def consent_to_camera(region: Region, vehicle: VehicleIdentity, agent: VehicleAgent, owner: OwnerClient) -> None:
    """The owner opted in to exterior camera frames (before the recorded time), and the car fetched it."""
    region.consents.decide(
        vehicle.vin,
        owner.owner_id,
        "exterior_camera",
        enabled=True,
        purpose="incident evidence",
        ends_ms=int(time.time() * 1000) + 86_400_000,
        lasting=True,
        at_ms=BASE_MS - 60_000,
    )
    agent.fetch_policy()


def test_frames_need_the_owners_consent(
    region: Region, vehicle: VehicleIdentity, agent: VehicleAgent, owner: OwnerClient
) -> None:
    from carvault.vehicle.camera import ConsentMissing

    with pytest.raises(ConsentMissing):
        spool_frames(agent, [(BASE_MS, "FRONT", PLATE_PHOTO)])
    assert agent.pending() == [] and pending_frames(agent) == []


def test_the_car_uploads_the_batch_then_the_frames_and_the_owner_gets_the_blurred_frame(
    http: httpx.Client,
    region: Region,
    vehicle: VehicleIdentity,
    agent: VehicleAgent,
    owner: OwnerClient,
) -> None:
    consent_to_camera(region, vehicle, agent, owner)
    batch, blobs = spool_frames(agent, [(BASE_MS, "FRONT", PLATE_PHOTO), (BASE_MS + 1000, "REAR", FACE_PHOTO)])
    assert len(pending_frames(agent)) == 2
    # Frames sent before their batch are refused and stay in the car's spool.
    with pytest.raises(UploadRefused) as refused:
        upload_frames(agent)
    assert refused.value.status == 409 and refused.value.code == "unknown_frame"
    assert len(pending_frames(agent)) == 2 and blobs_on_disk(region) == []

    receipts = agent.upload_pending()
    assert [r["seq"] for r in receipts] == [1]
    answers = upload_frames(agent)
    assert sorted(a["sha256"] for a in answers) == sorted(hashlib.sha256(b).hexdigest() for b in blobs)
    assert all(a["seq"] == 1 and not a["duplicate"] for a in answers) and pending_frames(agent) == []
    # Content-addressed, durable blobs: blobs/ab/<sha256>.jpg.
    sha = hashlib.sha256(blobs[0]).hexdigest()
    assert (region.settings.data_dir / "blobs" / sha[:2] / f"{sha}.jpg").read_bytes() == blobs[0]
    # Re-sending is answered the same way and stores nothing new.
    again = upload_frames(agent, blobs[:1])[0]
    assert again["duplicate"] and again["sha256"] == sha and len(blobs_on_disk(region)) == 2

    assert (
        http.post(
            "/api/v1/vehicles/claim",
            headers=owner.headers,
            json={"vin": vehicle.vin, "pairing_code": vehicle.pairing_code},
        ).status_code
        == 201
    )
    for blob, raw in zip(blobs, (PLATE_PHOTO, FACE_PHOTO), strict=True):
        digest = hashlib.sha256(blob).hexdigest()
        r = http.get(f"/api/v1/vehicles/{vehicle.vin}/frames/{digest}", headers=owner.headers)
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        assert r.content == blob and r.content != raw  # the de-identified frame, never what the camera shot
    events = http.get("/api/v1/audit", headers=owner.headers, params={"action": "frame.read"}).json()["events"]
    assert len(events) == 2 and {e["detail"]["sha256"] for e in events} == {
        hashlib.sha256(b).hexdigest() for b in blobs
    }
    # The batch that binds the frames is in the transparency log like any other.
    assert receipts[0]["log_index"] >= 0

    # Other owners' vehicles answer 404 exactly like vehicles that do not exist; so do unknown frames.
    stranger = make_owner(http)
    for vin, digest in (
        (vehicle.vin, sha),
        ("LRWNOSUCHVIN00000", sha),
        (vehicle.vin, "0" * 64),
        (vehicle.vin, "not-a-hash"),
    ):
        r = http.get(
            f"/api/v1/vehicles/{vin}/frames/{digest}", headers=owner.headers if digest != sha else stranger.headers
        )
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (vin, digest)
    assert http.get(f"/api/v1/vehicles/{vehicle.vin}/frames/{sha}").status_code == 401


def test_frames_without_the_de_identification_mark_are_refused(
    http: httpx.Client,
    region: Region,
    vehicle: VehicleIdentity,
    rows: tuple[pa.Table, list[bytes]],
) -> None:
    table, blobs = rows
    mark = table.column_names.index(CAMERA + "DeIdentified")
    unmarked = table.set_column(mark, pa.field(CAMERA + "DeIdentified", pa.bool_()), pa.array([True, False]))
    without = table.drop_columns([CAMERA + "Redactions"])
    for bad in (unmarked, without):
        blob = make_batch(
            vin=vehicle.vin, region="cn", seq=1, prev=GENESIS_PREV, table=bad, key=vehicle.key, kind="media"
        )
        r = http.post("/api/v1/ingest/batches", content=blob, headers={"Content-Type": BATCH_MEDIA_TYPE})
        assert r.status_code == 422 and r.json()["error"]["code"] == "deidentification_missing", r.text
    # Nothing binds the frames, so they are refused too, and nothing is written.
    for blob in blobs:
        r = post_frame(http, blob, vehicle.vin)
        assert r.status_code == 409 and r.json()["error"]["code"] == "unknown_frame"
    assert blobs_on_disk(region) == [] and frames_indexed(region) == 0


def test_unreferenced_and_malformed_frames_are_refused_and_nothing_is_stored(
    http: httpx.Client,
    region: Region,
    vehicle: VehicleIdentity,
    rows: tuple[pa.Table, list[bytes]],
) -> None:
    table, blobs = rows
    opt_in(region, vehicle.vin, "exterior_camera")  # the gateway takes frames only under the owner's consent
    batch = make_batch(
        vin=vehicle.vin, region="cn", seq=1, prev=GENESIS_PREV, table=table, key=vehicle.key, kind="media"
    )
    assert (
        http.post("/api/v1/ingest/batches", content=batch, headers={"Content-Type": BATCH_MEDIA_TYPE}).status_code
        == 200
    )
    cases = [
        # The photo as shot: its hash is not the de-identified frame's, so no batch names it.
        ("raw photo", PLATE_PHOTO, vehicle.vin, "image/jpeg", 409, "unknown_frame"),
        ("another vehicle's claim", blobs[0], "LRWNOSUCHVIN00000", "image/jpeg", 401, "unknown_vehicle"),
        ("no VIN header", blobs[0], None, "image/jpeg", 400, "bad_request"),
        ("wrong content type", blobs[0], vehicle.vin, "image/png", 415, "unsupported_media_type"),
        ("not a JPEG", b"GIF89a" + bytes(100), vehicle.vin, "image/jpeg", 415, "unsupported_media_type"),
        ("too big", b"\xff\xd8\xff" + bytes(4 * 1024 * 1024), vehicle.vin, "image/jpeg", 413, "payload_too_large"),
    ]
    for name, body, vin, ctype, status, code in cases:
        r = post_frame(http, body, vin, ctype)
        assert r.status_code == status and r.json()["error"]["code"] == code, (name, r.text)
        assert r.json()["error"]["message"]
        assert blobs_on_disk(region) == [] and frames_indexed(region) == 0, name
    # The frames the batch names are still taken afterwards.
    assert [post_frame(http, b, vehicle.vin).status_code for b in blobs] == [200, 200]
    assert len(blobs_on_disk(region)) == 2 and frames_indexed(region) == 2


def test_camera_columns_are_the_catalogue_overlay() -> None:
    cat = catalogue()
    assert all(cat[c].category == "exterior_camera" for c in CAMERA_COLUMNS)
