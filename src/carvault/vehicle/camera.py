"""Exterior camera frames in the car: de-identified, hashed, bound to a signed media batch, then uploaded.

A frame never leaves the car as it was shot. ``frame_rows`` blurs faces and plates in every frame
(``carvault.vehicle.deidentify``), hashes the de-identified JPEG and describes it in the
``Vehicle.CarVault.Camera.*`` columns: ``FrameHash`` (SHA-256 hex of the exact bytes that will be
uploaded), ``Position``, ``DeIdentified`` (true), ``Redactions`` and ``Detectors`` (JSON text). The agent
signs those rows as a ``kind="media"`` batch; the platform then accepts a frame only if an accepted
batch of that vehicle names its hash (``POST /api/v1/ingest/frames``).

``spool_frames`` keeps the de-identified frames on disk (fsynced) *before* the batch naming them is
signed, so a crash never leaves a signed batch that points at a frame the car no longer has.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from carvault.compliance.consent import COLLECTING
from carvault.durable import write_durably
from carvault.protocol import CAMERA, CAMERA_COLUMNS
from carvault.signals import ALLOWED_VALUES, catalogue
from carvault.vehicle.agent import UploadRefused, VehicleAgent
from carvault.vehicle.deidentify import Deidentifier, default_deidentifier

FRAME_UPLOAD_PATH = "/api/v1/ingest/frames"
FRAME_MEDIA_TYPE = "image/jpeg"
VIN_HEADER = "CarVault-Vin"

Frame = tuple[int, str, bytes]  # (t in UTC ms, camera position, JPEG bytes as shot)


class ConsentMissing(Exception):
    """The owner has not consented to exterior camera frames leaving the car."""


def frame_rows(frames: Sequence[Frame], deidentifier: Deidentifier | None = None) -> tuple[pa.Table, list[bytes]]:
    """De-identify every frame; return the Camera.* rows (``t`` first, by time) and the JPEGs to upload."""
    if not frames:
        raise ValueError("no frames given")
    ordered = sorted(frames, key=lambda f: f[0])
    times = [int(t) for t, _, _ in ordered]
    if len(set(times)) != len(times):
        # A batch has one row per timestamp: frames shot in the same millisecond go in separate batches.
        raise ValueError("two frames share a timestamp; put them in separate media batches")
    allowed = ALLOWED_VALUES[CAMERA + "Position"]
    deid = deidentifier or default_deidentifier()
    hashes, positions, redactions, detectors, blobs = [], [], [], [], []
    for _, position, jpeg in ordered:
        if position not in allowed:
            raise ValueError(f"camera position {position!r} is not one of {', '.join(allowed)}")
        result = deid(jpeg)
        blobs.append(result.image_bytes)
        hashes.append(hashlib.sha256(result.image_bytes).hexdigest())
        positions.append(position)
        redactions.append(result.redactions_json())
        detectors.append(result.detectors_json())
    schema = catalogue().arrow_schema(CAMERA_COLUMNS)
    columns = [
        pa.array(times, pa.int64()).cast(schema.field("t").type),
        pa.array(hashes, pa.string()),
        pa.array(positions, pa.string()),
        pa.array([True] * len(blobs), pa.bool_()),
        pa.array(redactions, pa.string()),
        pa.array(detectors, pa.string()),
    ]
    return pa.Table.from_arrays(columns, schema=schema), blobs


def frame_spool(agent: VehicleAgent) -> Path:
    """The folder where de-identified frames wait for upload."""
    path = agent.state_dir / "frames"
    path.mkdir(parents=True, exist_ok=True)
    return path


def spool_frames(
    agent: VehicleAgent, frames: Sequence[Frame], deidentifier: Deidentifier | None = None
) -> tuple[bytes, list[bytes]]:
    """De-identify frames, keep them in the frame spool, then sign their rows as one media batch.

    Returns the signed batch (already in the agent's batch spool) and the de-identified frames.
    """
    when = max(f[0] for f in frames) if frames else 0
    if agent.policy.status("exterior_camera", int(when), agent._ignition_on) != COLLECTING:
        raise ConsentMissing("exterior camera frames leave the car only while the owner consents to them")
    table, blobs = frame_rows(frames, deidentifier)
    folder = frame_spool(agent)
    for blob in blobs:
        write_durably(folder / f"{hashlib.sha256(blob).hexdigest()}.jpg", blob)
    t = table.column("t").cast(pa.int64())
    batch = agent.spool(table, t0=int(t[0].as_py()), t1=int(t[-1].as_py()), kind="media")
    return batch, blobs


def pending_frames(agent: VehicleAgent) -> list[Path]:
    """De-identified frames not yet taken by the platform."""
    return sorted(frame_spool(agent).glob("*.jpg"))


def upload_frame(agent: VehicleAgent, blob: bytes) -> dict[str, Any]:
    """POST one de-identified frame; return the platform's answer or raise ``UploadRefused``."""
    r = agent.client.post(
        agent.endpoint + FRAME_UPLOAD_PATH,
        content=blob,
        headers={"Content-Type": FRAME_MEDIA_TYPE, VIN_HEADER: agent.identity.vin},
    )
    try:
        body = r.json()
    except ValueError:
        body = {"error": {"code": "http_error", "message": r.text[:200]}}
    if r.status_code != 200:
        raise UploadRefused(r.status_code, body)
    return body


def upload_frames(agent: VehicleAgent, blobs: Iterable[bytes] | None = None) -> list[dict[str, Any]]:
    """Upload frames (default: every spooled one) after their batch; each leaves the spool once stored.

    Upload the media batch first (``agent.upload_pending()``): until the platform holds a batch naming a
    frame it answers 409 ``unknown_frame`` and the frame stays in the spool for the next try.
    """
    items = list(blobs) if blobs is not None else [p.read_bytes() for p in pending_frames(agent)]
    answers = []
    for blob in items:
        answers.append(upload_frame(agent, blob))
        (frame_spool(agent) / f"{hashlib.sha256(blob).hexdigest()}.jpg").unlink(missing_ok=True)
    return answers
