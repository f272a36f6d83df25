"""Evaluation of in-car de-identification on a labelled image set: detection rates, false positives, time.

``labelled_set`` yields the labelled photos of a ``labels.json`` and the synthetic variants its recipes
describe (scaled, rotated, darkened, noisy, green new-energy plates painted over blue ones, full frames
tiled from the photos); ``measure`` runs a ``Deidentifier`` over them and reports what it found. The
labelled sets themselves are test assets; this module only reads the path it is given.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from carvault.vehicle.deidentify import (
    FACE,
    PLATE,
    Box,
    Deidentifier,
    Redaction,
    box_iou,
    clip_box,
    default_deidentifier,
    int_box,
)


@dataclass
class Sample:
    """One labelled frame of the evaluation set."""

    name: str
    bgr: np.ndarray
    objects: list[dict[str, Any]] = field(default_factory=list)  # {"kind", "colour"?, "box"}


def _variant(
    bgr: np.ndarray, objects: list[dict[str, Any]], v: dict[str, Any], rng: np.random.Generator
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Apply one recipe of labels.json (scale, rotate, gain/bias, colour cast, noise, blur, jpeg) to an image."""
    img, objs = bgr, [dict(o) for o in objects]
    if "scale" in v:
        s = float(v["scale"])
        img = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        for o in objs:
            o["box"] = [round(c * s) for c in o["box"]]
    if "rotate" in v:
        h, w = img.shape[:2]
        m = cv2.getRotationMatrix2D((w / 2, h / 2), float(v["rotate"]), 1.0)
        img = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        for o in objs:
            x, y, bw, bh = o["box"]
            corners = np.array([[x, y, 1], [x + bw, y, 1], [x, y + bh, 1], [x + bw, y + bh, 1]], float) @ m.T
            lo, hi = corners.min(axis=0), corners.max(axis=0)
            o["box"] = list(clip_box(int_box((lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1])), w, h))
    if "gain" in v:
        img = cv2.convertScaleAbs(img, alpha=float(v["gain"]), beta=float(v.get("bias", 0)))
    if "channel_gain" in v:  # a colour cast (sodium street light, shade), per BGR channel
        img = np.clip(img * np.array(v["channel_gain"], float), 0, 255).astype(np.uint8)
    if "noise" in v:
        img = np.clip(img + rng.normal(0, float(v["noise"]), img.shape), 0, 255).astype(np.uint8)
    if "blur" in v:
        img = cv2.GaussianBlur(img, (0, 0), float(v["blur"]))
    if "jpeg" in v:
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(v["jpeg"])])
        decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else None
        img = img if decoded is None else np.asarray(decoded)
    return img, objs


def _glyph(ch: str, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """A condensed black-on-white glyph (plate fonts are narrow); '#' draws a block standing for a hanzi."""
    canvas = np.full((120, 100), 255, np.uint8)
    if ch == "#":
        for _ in range(5):  # a few bold strokes inside a square, like a Chinese character's silhouette
            x0, y0 = rng.integers(12, 70, 2)
            if rng.random() < 0.5:
                cv2.line(canvas, (12, int(y0 + 10)), (88, int(y0 + 10)), 0, 9)
            else:
                cv2.line(canvas, (int(x0 + 10), 12), (int(x0 + 10), 108), 0, 9)
        cv2.rectangle(canvas, (12, 12), (88, 108), 0, 8)
    else:
        cv2.putText(canvas, ch, (10, 105), cv2.FONT_HERSHEY_SIMPLEX, 3.4, 0, 12, cv2.LINE_AA)
    ys, xs = np.nonzero(canvas < 128)
    ink = canvas[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    return cv2.resize(ink, (w, h), interpolation=cv2.INTER_AREA)


def render_green_plate(text: str, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A small new-energy plate (GA 36-2018 layout, 480x140 mm): gradient white-to-green, 8 black glyphs."""
    pw, ph = 480, 140
    t = np.linspace(0, 1, ph)[:, None, None]
    top, bottom = np.array([245, 252, 245], float), np.array([75, 185, 60], float)  # BGR
    plate = ((1 - t) * top + t * bottom).repeat(pw, axis=1).astype(np.uint8)
    cv2.rectangle(plate, (3, 3), (pw - 4, ph - 4), (40, 40, 40), 2)
    chars = "#" + text  # province, letter, then six more
    x = 15
    for i, ch in enumerate(chars):
        gw = 43
        g = _glyph(ch, gw, 90, rng)
        region = plate[25:115, x : x + gw]
        region[:] = np.minimum(region, cv2.cvtColor(g, cv2.COLOR_GRAY2BGR))
        if i == 1:
            cv2.circle(plate, (x + gw + 17, 70), 5, (20, 20, 20), -1)  # the dot after the issuing office
        x += gw + (34 if i == 1 else 11)
    return cv2.resize(plate, (width, height), interpolation=cv2.INTER_AREA)


def _paint_plate(bgr: np.ndarray, box: list[int], plate: np.ndarray) -> np.ndarray:
    """Lay a rendered plate over ``box`` (covering the old plate), dimmed to the old plate's brightness."""
    out = bgr.copy()
    x, y, w, h = box
    x0, y0, x1, y1 = max(0, x - 2), max(0, y - 2), min(out.shape[1], x + w + 2), min(out.shape[0], y + h + 2)
    old = cv2.cvtColor(out[y0:y1, x0:x1], cv2.COLOR_BGR2HSV)[:, :, 2].mean()
    p = cv2.resize(plate, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA).astype(np.float64)
    p *= float(np.clip(old / 200.0, 0.35, 1.1))
    out[y0:y1, x0:x1] = cv2.GaussianBlur(np.clip(p, 0, 255).astype(np.uint8), (0, 0), 0.8)
    return out


def labelled_set(labels_path: Path, variants: Collection[str] | None = None) -> Iterator[Sample]:
    """The labelled images of ``labels.json`` and the synthetic variants its recipes describe (deterministic).

    ``variants`` restricts the recipes used (by name); the 1280x720 frames are always included.
    """
    spec = json.loads(Path(labels_path).read_text(encoding="utf-8"))
    folder = Path(labels_path).parent
    rng = np.random.default_rng(20261124)
    recipes = {v["name"]: v for v in spec["variants"]}
    chosen = [v for v in spec["variants"] if variants is None or v["name"] in variants]
    base: dict[str, tuple[np.ndarray, list[dict[str, Any]]]] = {}
    for item in spec["images"]:
        img = cv2.imread(str(folder / item["file"]), cv2.IMREAD_COLOR)
        if img is None:
            raise FileNotFoundError(folder / item["file"])
        base[item["file"]] = (img, item["objects"])
        for v in chosen:
            im, objs = _variant(img, item["objects"], v, rng)
            yield Sample(f"{item['file']}:{v['name']}", im, objs)

    plated = [(f, img, objs) for f, (img, objs) in base.items() if any(o["kind"] == PLATE for o in objs)]
    faces = [(img, o["box"]) for img, objs in base.values() for o in objs if o["kind"] == FACE]
    green_spec = spec["green_plates"]
    green: dict[str, tuple[np.ndarray, list[dict[str, Any]]]] = {}
    for (f, img, objs), text in zip(plated, green_spec["texts"], strict=False):
        out, new_objs = img, []
        for o in objs:
            x, y, w, h = o["box"]
            out = _paint_plate(out, o["box"], render_green_plate(text, w, h, rng))
            new_objs.append({"kind": PLATE, "colour": "green", "box": [x, y, w, h]})
        green[f] = (out, new_objs)
        for name in green_spec["variants"]:
            if variants is not None and name not in variants:
                continue
            im, o2 = _variant(out, new_objs, recipes[name], rng)
            yield Sample(f"green:{f}:{name}", im, o2)

    fr = spec["frames"]
    fw, fh = fr["size"]
    s = float(fr["tile_scale"])
    for colour in fr["plates"]:
        source = [(img, objs) for _, img, objs in plated] if colour == "blue" else list(green.values())
        for j, face_h in enumerate(fr["face_heights"]):
            frame = np.zeros((fh, fw, 3), np.uint8)
            objects: list[dict[str, Any]] = []
            x, k = 0, 0
            while x < fw:  # photos side by side until the frame is full; the last one is cut
                img, objs = source[(j + k) % len(source)]
                tile = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)[:fh, : fw - x]
                y = ((j + k) % 3) * (fh - tile.shape[0]) // 2  # short tiles sit high, low or centred
                frame[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
                for o in objs:
                    b = [round(c * s) for c in o["box"]]
                    if b[0] + b[2] <= tile.shape[1] and b[1] + b[3] <= tile.shape[0]:
                        objects.append({**o, "box": [b[0] + x, b[1] + y, b[2], b[3]]})
                x += tile.shape[1]
                k += 1
            img, fb = faces[j % len(faces)]
            objects.append(_paste_face(frame, img, fb, face_h, (160 + 230 * j, 560 - face_h)))
            yield Sample(f"frame-{colour}-{j}", frame, objects)


def _paste_face(
    frame: np.ndarray, img: np.ndarray, face: list[int], height: int, at: tuple[int, int]
) -> dict[str, Any]:
    """Paste a head (the face box with room for hair and neck) scaled to ``height`` px of face at ``at``."""
    x, y, w, h = face
    x0, y0 = max(0, x - w // 2), max(0, y - h // 2)
    x1, y1 = min(img.shape[1], x + w + w // 2), min(img.shape[0], y + h + h // 3)
    f = height / h
    head = cv2.resize(img[y0:y1, x0:x1], None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
    ax, ay = at
    hh, hw = head.shape[:2]
    frame[ay : ay + hh, ax : ax + hw] = head[: frame.shape[0] - ay, : frame.shape[1] - ax]
    return {"kind": FACE, "box": [ax + round((x - x0) * f), ay + round((y - y0) * f), round(w * f), round(h * f)]}


def _match(objects: list[dict[str, Any]], found: list[Redaction], iou: float) -> tuple[list[bool], int]:
    """Which labels were found (greedy by IoU within a kind), and how many detections matched nothing."""
    used: set[int] = set()
    hits = []
    for o in objects:
        best, best_iou = -1, iou
        for i, r in enumerate(found):
            if i in used or r.kind != o["kind"]:
                continue
            v = box_iou(r.box, o["box"])
            if v >= best_iou:
                best, best_iou = i, v
        if best >= 0:
            used.add(best)
        hits.append(best >= 0)
    return hits, len(found) - len(used)


def _covered(shape: tuple[int, ...], box: list[int], blurred: list[Box], need: float = 0.9) -> bool:
    mask = np.zeros(shape[:2], np.uint8)
    for x, y, w, h in blurred:
        mask[y : y + h, x : x + w] = 1
    x, y, w, h = box
    region = mask[max(0, y) : y + h, max(0, x) : x + w]
    return bool(region.size and region.mean() >= need)


def measure(
    labels_path: Path | str,
    deidentifier: Deidentifier | None = None,
    *,
    variants: Collection[str] | None = None,
    timing_frames: int = 3,
) -> dict[str, Any]:
    """Detection rate per kind, false positives per image and ms per frame on the labelled set.

    A label counts as detected when a detection of its kind overlaps it with IoU >= ``iou_threshold``
    (labels.json: 0.3); ``covered_by_blur`` is the share of labels at least 90% inside a blurred region.
    """
    deid = deidentifier or default_deidentifier()
    iou = float(json.loads(Path(labels_path).read_text(encoding="utf-8"))["iou_threshold"])
    counts: dict[str, list[int]] = {}
    fp = {FACE: 0, PLATE: 0}
    misses: list[str] = []
    labelled = images = 0
    by_size: dict[str, list[np.ndarray]] = {}
    for sample in labelled_set(Path(labels_path), variants):
        images += 1
        found = deid.detect(sample.bgr)
        hits, _ = _match(sample.objects, found, iou)
        h, w = sample.bgr.shape[:2]
        blurred = [deid.blur_box(r, w, h) for r in found]
        for kind in (FACE, PLATE):
            labels = [o for o in sample.objects if o["kind"] == kind]
            fp[kind] += _match(labels, [r for r in found if r.kind == kind], iou)[1]
        for o, hit in zip(sample.objects, hits, strict=True):
            key = o["kind"] if o["kind"] == FACE else f"plate_{o['colour']}"
            c = counts.setdefault(key, [0, 0, 0])
            c[0] += 1
            c[1] += hit
            c[2] += _covered(sample.bgr.shape, o["box"], blurred)
            labelled += 1
            if not hit:
                misses.append(f"{sample.name} {key} {o['box']}")
        by_size.setdefault(f"{w}x{h}", []).append(sample.bgr)
    kinds = {
        k: {"labelled": n, "detected": d, "rate": round(d / n, 3), "covered_by_blur": round(c / n, 3)}
        for k, (n, d, c) in sorted(counts.items())
    }
    covered = sum(c[2] for c in counts.values())
    plates = [counts[k] for k in counts if k.startswith("plate")]
    n_pl, d_pl = sum(c[0] for c in plates), sum(c[1] for c in plates)
    timing, cpu = {}, {}
    for size in ("720x1160", "1280x720"):
        walls, cpus = [], []
        for bgr in by_size.get(size, [])[:timing_frames]:
            data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
            deid(data)  # warm-up: the first run of a shape allocates onnxruntime buffers
            wall0, cpu0 = time.perf_counter(), time.process_time()
            deid(data)
            walls.append((time.perf_counter() - wall0) * 1000)
            cpus.append((time.process_time() - cpu0) * 1000)
        if walls:
            # Wall time depends on what else runs; CPU time (both onnxruntime threads) on this code only.
            timing[size], cpu[size] = round(float(np.median(walls)), 1), round(float(np.median(cpus)), 1)
    return {
        "iou_threshold": iou,
        "images": images,
        "objects": labelled,
        "by_kind": kinds,
        "plates": {"labelled": n_pl, "detected": d_pl, "rate": round(d_pl / n_pl, 3) if n_pl else None},
        "faces": kinds.get(FACE),
        "all": {
            "labelled": labelled,
            "detected": sum(c[1] for c in counts.values()),
            "rate": round(sum(c[1] for c in counts.values()) / labelled, 3) if labelled else None,
        },
        "covered_by_blur": round(covered / labelled, 3) if labelled else None,
        "false_positives": {**fp, "per_image": round((fp[FACE] + fp[PLATE]) / images, 3) if images else None},
        "ms_per_frame": timing,
        "cpu_ms_per_frame": cpu,
        "detectors": deid.detectors,
        "misses": misses,
    }
