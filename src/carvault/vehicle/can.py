"""Raw CAN logs to decoded DBC signals, vectorised (contract 7: CAN import).

Reading: candump ``-L`` text (``(1533226488.434433) can0 0AA#0102...``, plain or gzipped) is parsed with
numpy a chunk at a time: lines are grouped by layout (same length, same field offsets), and each group's
fields are read as fixed-width columns. Every other format python-can reads (ASC, BLF, TRC, ...) goes
through ``can.LogReader``. Either way a log becomes blocks of ``Frames``: times (µs since the epoch),
arbitration IDs, lengths and payloads as little-endian ``uint64``.

Decoding: ``MessageDecoder`` compiles each wanted DBC signal (start bit, length, byte order, sign,
scale, offset, multiplexer) from cantools into shifts and masks and decodes all frames of a message at
once; a frame too short for a signal, or whose multiplexer selects another signal, yields NaN.
``import_can`` runs the whole chain: read, decode, map to VSS (``can_mapping``), and returns the table
the vehicle agent signs and uploads.
"""

from __future__ import annotations

import gzip
import importlib.util
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

import cantools
import numpy as np
import pyarrow as pa

from carvault.errors import BadRequest, CarVaultError, NotFound

EXTENDED = np.uint32(1 << 31)  # set in a frame key for 29-bit identifiers
CHUNK_BYTES = 16 << 20  # candump text read per step: big enough to amortise numpy calls, small enough for RAM
PYCAN_CHUNK = 200_000  # python-can messages per block
EARLIEST_US = 946_684_800_000_000  # 2000-01-01: anything older is a relative (time-since-boot) clock
Progress = Callable[[int, int], None]  # (done, total) in bytes of the log file


@dataclass(frozen=True)
class Frames:
    """A block of CAN frames in log order.

    ``key`` is the arbitration ID with bit 31 set for 29-bit IDs; ``data`` holds payload byte i in
    bits 8i..8i+7 (``int.from_bytes(payload, "little")``), zero beyond ``dlc``.
    """

    t_us: np.ndarray
    key: np.ndarray
    dlc: np.ndarray
    data: np.ndarray

    def __len__(self) -> int:
        return len(self.t_us)

    @classmethod
    def empty(cls) -> Frames:
        """No frames."""
        return cls(np.zeros(0, np.int64), np.zeros(0, np.uint32), np.zeros(0, np.uint8), np.zeros(0, np.uint64))

    @classmethod
    def concat(cls, blocks: Sequence[Frames]) -> Frames:
        """One block from several, in the given order."""
        if not blocks:
            return cls.empty()
        return cls(*(np.concatenate([getattr(b, f) for b in blocks]) for f in ("t_us", "key", "dlc", "data")))

    def take(self, sel: np.ndarray) -> Frames:
        """The frames picked by a boolean mask or an index array."""
        return Frames(self.t_us[sel], self.key[sel], self.dlc[sel], self.data[sel])

    def payload(self, i: int) -> bytes:
        """Frame ``i``'s payload bytes."""
        return int(self.data[i]).to_bytes(8, "little")[: int(self.dlc[i])]


def frame_key(frame_id: int, extended: bool) -> int:
    """The key a frame with this ID has in ``Frames.key``."""
    return frame_id | (1 << 31) if extended else frame_id


# ----------------------------------------------------------------------------------------- candump text
_HEX = np.full(256, 255, np.uint8)
for _i, _c in enumerate(b"0123456789ABCDEF"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"abcdef"):
    _HEX[_c] = 10 + _i
_LINE = re.compile(rb"\((\d+)\.(\d+)\) (\S+) ([0-9A-Fa-f]+)#(.*)")


def _malformed(source: str, line_no: int, line: bytes, reason: str) -> BadRequest:
    text = line.decode("utf-8", "replace")
    return BadRequest(
        f"{source}:{line_no}: {reason}: {text[:120]!r}", kind="malformed_can_log", path=source, line=line_no
    )


def _explain(line: bytes) -> str | None:
    """Why a candump ``-L`` line is malformed, or None if it is fine."""
    if b"##" in line:
        return "CAN FD frames (##) are not supported"
    m = _LINE.fullmatch(line)
    if not m:
        return "not a candump -L line '(seconds.micros) interface ID#DATA'"
    ident, data = m.group(4), m.group(5)
    if len(ident) not in (3, 8):
        return "the CAN ID must have 3 (11-bit) or 8 (29-bit) hex digits"
    if len(ident) == 3 and int(ident, 16) > 0x7FF:
        return "an 11-bit CAN ID is at most 7FF"
    if len(ident) == 8 and int(ident, 16) > 0x1FFFFFFF:
        return "a 29-bit CAN ID is at most 1FFFFFFF"
    if len(m.group(2)) > 9:
        return "the timestamp has more than 9 decimals"
    if re.fullmatch(rb"R\d?", data):
        return None
    if not re.fullmatch(rb"[0-9A-Fa-f]*", data):
        return "the payload must be hex digits"
    if len(data) % 2 or len(data) > 16:
        return "the payload must be 0 to 8 whole bytes"
    return None


def _first_bad(data: bytes, first_line: int, source: str) -> BadRequest:
    """The error for the first malformed line of a chunk (slow path, taken only when a chunk fails)."""
    for i, line in enumerate(data.split(b"\n")):
        line = line.rstrip(b"\r")
        if line and (reason := _explain(line)):
            return _malformed(source, first_line + i, line, reason)
    return BadRequest(
        f"{source}: lines {first_line}.. are not candump -L text",
        kind="malformed_can_log",
        path=source,
        line=first_line,
    )


def _swar8(word: np.ndarray) -> np.ndarray:
    """Eight ASCII digits per uint64 (first digit in the lowest byte) to their value, all words at once."""
    x = word - np.uint64(0x3030303030303030)
    x = (x * np.uint64(10) + (x >> np.uint64(8))) & np.uint64(0x00FF00FF00FF00FF)
    x = (x * np.uint64(100) + (x >> np.uint64(16))) & np.uint64(0x0000FFFF0000FFFF)
    return (x * np.uint64(10000) + (x >> np.uint64(32))) & np.uint64(0xFFFFFFFF)


def _decimal(cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values, bad rows) of up to 16 ASCII decimal digits per row."""
    n, k = cols.shape
    wrong = (cols - np.uint8(48)) > 9
    # A whole-block check first: per-row reductions over a few columns are slow in numpy.
    bad = np.asarray(wrong.any(axis=1)) if wrong.any() else np.zeros(n, bool)
    buf = np.full((n, 16), 48, np.uint8)
    buf[:, 16 - k :] = cols
    words = buf.view("<u8")
    return (_swar8(words[:, 0]) * np.uint64(100_000_000) + _swar8(words[:, 1])).astype(np.int64), bad


def _field_offsets(b: np.ndarray, starts: np.ndarray, nl: np.ndarray) -> tuple[np.ndarray, ...] | None:
    """Per-line positions of '.', ')', the second space and '#', assuming every line has the first line's
    timestamp and interface widths (true of nearly every log); None if any line does not."""
    first = bytes(b[starts[0] : nl[0]])
    m = _LINE.fullmatch(first)
    if not m:
        return None
    o_dp, o_cp = m.start(2) - 1, m.end(2)
    o_sp2 = m.end(3)
    dp, cp, sp2 = starts + o_dp, starts + o_cp, starts + o_sp2
    ok = (b[starts] == 40) & (b[dp] == 46) & (b[cp] == 41) & (b[cp + 1] == 32) & (b[sp2] == 32) & (nl > sp2 + 4)
    if not ok.all():
        return None
    std = b[sp2 + 4] == 35  # 3-digit ID
    ext = (nl > sp2 + 9) & (b[np.minimum(sp2 + 9, len(b) - 1)] == 35)
    if not (std | ext).all():
        return None
    hp = np.where(std, sp2 + 4, sp2 + 9)
    return dp, cp, sp2, hp


def _search_offsets(b: np.ndarray, starts: np.ndarray, nl: np.ndarray) -> tuple[np.ndarray, ...] | None:
    """Per-line positions of '.', ')', the second space and '#', found by searching (any widths)."""
    n = len(starts)
    # Each line holds exactly one '.', ')', '#' and two spaces, so the sorted positions line up with
    # the lines; the order checks catch any line that breaks the pattern.
    cp = np.flatnonzero(b == 41)
    hp = np.flatnonzero(b == 35)
    sp = np.flatnonzero(b == 32)
    dp = np.flatnonzero(b == 46)
    if not (len(cp) == n and len(hp) == n and len(sp) == 2 * n and len(dp) == n):
        return None
    sp1, sp2 = sp[0::2], sp[1::2]
    if not (
        (b[starts] == 40).all()
        and (sp1 == cp + 1).all()
        and (dp > starts + 1).all()
        and (cp > dp + 1).all()
        and (sp2 > sp1 + 1).all()
        and (hp > sp2 + 1).all()
        and (nl > hp).all()
    ):
        return None
    return dp, cp, sp2, hp


def parse_candump(data: bytes, *, first_line: int = 1, source: str = "<log>") -> Frames:
    """Parse candump ``-L`` lines (whole lines only); remote frames are skipped, blank lines ignored."""
    if b"\r" in data:
        data = data.replace(b"\r", b"")
    if data and not data.endswith(b"\n"):
        data += b"\n"
    b = np.frombuffer(data, np.uint8)
    nl = np.flatnonzero(b == 10)
    starts = np.empty_like(nl)
    starts[:1] = 0
    starts[1:] = nl[:-1] + 1
    line_no = np.arange(len(nl), dtype=np.int64) + first_line
    keep = nl > starts
    if not keep.all():
        starts, nl, line_no = starts[keep], nl[keep], line_no[keep]
    if len(starts) == 0:
        return Frames.empty()
    found = _field_offsets(b, starts, nl) or _search_offsets(b, starts, nl)
    if found is None:
        raise _first_bad(data, first_line, source)
    dp, cp, sp2, hp = found

    # Remote frames ("123#R") carry no data: skip them.
    rtr = (b[hp + 1] == 82) & (nl - hp <= 3)
    if rtr.any():
        keep = ~rtr
        starts, nl, line_no, dp, cp, sp2, hp = (a[keep] for a in (starts, nl, line_no, dp, cp, sp2, hp))
        if len(starts) == 0:
            return Frames.empty()

    n = len(starts)
    t_us = np.empty(n, np.int64)
    key = np.empty(n, np.uint32)
    dlc = np.empty(n, np.uint8)
    payload = np.zeros(n, np.uint64)
    bad = np.zeros(n, bool)
    # Lines of one layout (same length and field offsets) form a 2-D block read column by column.
    length = nl - starts
    layout = ((length.astype(np.int64) * 64 + (dp - starts)) * 64 + (cp - dp)) * 64 + (hp - sp2)
    # A sliding-window view turns "the L bytes from each line start" into one row gather, with no index matrix.
    widest = int(length.max())
    window = np.lib.stride_tricks.sliding_window_view(np.concatenate([b, np.zeros(widest, np.uint8)]), widest)
    for lay in np.unique(layout):
        sel = np.flatnonzero(layout == lay)
        i0 = sel[0]
        L, o_dp, o_cp = int(length[i0]), int(dp[i0] - starts[i0]), int(cp[i0] - starts[i0])
        o_id, o_hash = int(sp2[i0] - starts[i0]) + 1, int(hp[i0] - starts[i0])
        nid, nd, nf = o_hash - o_id, L - o_hash - 1, o_cp - o_dp - 1
        if nid not in (3, 8) or nd % 2 or nd > 16 or nf > 9 or o_dp > 17:
            bad[sel] = True
            continue
        rows = window[starts[sel], :L]
        sec, bad_s = _decimal(rows[:, 1:o_dp])
        frac, bad_f = _decimal(rows[:, o_dp + 1 : o_cp])
        ident = _HEX[rows[:, o_id:o_hash]]
        nib = _HEX[rows[:, o_hash + 1 : L]]
        bad_rows = bad_s | bad_f
        for hexes in (ident, nib):
            wrong = hexes == 255
            if wrong.any():
                bad_rows |= wrong.any(axis=1)
        us = sec * 1_000_000 + (frac * 10 ** (6 - nf) if nf <= 6 else frac // 10 ** (nf - 6))
        t_us[sel] = us
        k = np.zeros(len(sel), np.uint32)
        for j in range(nid):
            k = (k << np.uint32(4)) | ident[:, j]
        bad_rows |= k > (0x1FFFFFFF if nid == 8 else 0x7FF)
        key[sel] = k | EXTENDED if nid == 8 else k
        dlc[sel] = nd // 2
        if nd:
            by = np.zeros((len(sel), 8), np.uint8)
            by[:, : nd // 2] = (nib[:, 0::2] << 4) | nib[:, 1::2]
            payload[sel] = by.view("<u8")[:, 0]
        bad[sel] = bad_rows
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        line = data[int(starts[i]) : int(nl[i])]
        raise _malformed(source, int(line_no[i]), line, _explain(line) or "malformed line")
    return Frames(t_us, key, dlc, payload)


def _open_bytes(path: Path) -> tuple[IO[bytes], BinaryIO]:
    """(stream of the log's bytes, the raw file whose position measures progress)."""
    raw = open(path, "rb")  # noqa: SIM115 - closed by the caller
    if raw.read(2) == b"\x1f\x8b":
        raw.seek(0)
        return cast(IO[bytes], gzip.GzipFile(fileobj=raw)), raw
    raw.seek(0)
    return raw, raw


def read_candump(path: Path, *, chunk_bytes: int = CHUNK_BYTES, progress: Progress | None = None) -> Iterator[Frames]:
    """Blocks of frames from a candump ``-L`` log (plain or gzipped), in file order."""
    total = path.stat().st_size
    stream, raw = _open_bytes(path)
    source = str(path)
    line = 1
    rest = b""
    try:
        while True:
            chunk = stream.read(chunk_bytes)
            if not chunk:
                break
            buf = rest + chunk
            cut = buf.rfind(b"\n") + 1
            if cut == 0:
                rest = buf
                continue
            rest = buf[cut:]
            body = buf[:cut]
            yield parse_candump(body, first_line=line, source=source)
            line += body.count(b"\n")
            if progress:
                progress(raw.tell(), total)
        if rest.strip():
            yield parse_candump(rest, first_line=line, source=source)
        if progress:
            progress(total, total)
    except (OSError, EOFError) as e:
        raise BadRequest(f"cannot read {path}: {e}", kind="unreadable_can_log", path=source) from None
    finally:
        stream.close()
        raw.close()


def read_python_can(path: Path, *, progress: Progress | None = None, chunk: int = PYCAN_CHUNK) -> Iterator[Frames]:
    """Blocks of frames from any log python-can reads (ASC, BLF, TRC, CSV, ...); error and remote frames skipped."""
    import can

    kwargs: dict[str, Any] = {}
    if path.name.lower().removesuffix(".gz").endswith(".asc"):
        kwargs["relative_timestamp"] = False  # absolute times from the file's "date" header
    try:
        reader = can.LogReader(str(path), **kwargs)
    except (ValueError, OSError) as e:
        raise BadRequest(
            f"cannot read {path} with python-can: {e}", kind="unreadable_can_log", path=str(path)
        ) from None
    total = path.stat().st_size
    t: list[float] = []
    keys: list[int] = []
    dlcs: list[int] = []
    datas: list[int] = []

    def block() -> Frames:
        us = np.round(np.asarray(t, np.float64) * 1e6).astype(np.int64)
        return Frames(us, np.asarray(keys, np.uint32), np.asarray(dlcs, np.uint8), np.asarray(datas, np.uint64))

    try:
        for i, msg in enumerate(reader):
            if msg.is_error_frame or msg.is_remote_frame:
                continue
            payload = bytes(msg.data)
            if len(payload) > 8:
                raise BadRequest(
                    f"{path}: message {i + 1} has {len(payload)} bytes; CAN FD payloads over 8 bytes are not supported",
                    kind="malformed_can_log",
                    path=str(path),
                    line=i + 1,
                )
            t.append(msg.timestamp)
            keys.append(frame_key(msg.arbitration_id, msg.is_extended_id))
            dlcs.append(len(payload))
            datas.append(int.from_bytes(payload, "little"))
            if len(t) >= chunk:
                yield block()
                for acc in (t, keys, dlcs, datas):
                    acc.clear()
        if t:
            yield block()
        if progress:
            progress(total, total)
    except CarVaultError:
        raise
    except Exception as e:  # python-can's readers raise assorted exceptions on bad input
        raise BadRequest(
            f"{path}: python-can could not parse the log: {e}", kind="malformed_can_log", path=str(path)
        ) from None
    finally:
        stop = getattr(reader, "stop", None)
        if stop:
            stop()


def is_candump(path: Path) -> bool:
    """True if the file (plain or gzipped) starts like a candump ``-L`` log."""
    stream, raw = _open_bytes(path)
    try:
        head = stream.read(4096)
    except (OSError, EOFError):
        return False
    finally:
        stream.close()
        raw.close()
    for line in head.splitlines():
        if line.strip():
            return line.lstrip().startswith(b"(")
    return False


def read_log(path: Path, *, start_us: int | None = None, progress: Progress | None = None) -> Iterator[Frames]:
    """Blocks of frames from a CAN log in any supported format; ``start_us`` dates logs with relative times."""
    if not path.is_file():
        raise NotFound(f"CAN log {path} does not exist", kind="can_log_missing", path=str(path))
    blocks = read_candump(path, progress=progress) if is_candump(path) else read_python_can(path, progress=progress)
    shift: int | None = None
    for blk in blocks:
        if len(blk) == 0:
            continue
        if shift is None:
            first = int(blk.t_us[0])
            if start_us is not None:
                shift = start_us - first
            elif first < EARLIEST_US:
                raise BadRequest(
                    f"{path}: timestamps start at {first / 1e6:.3f} s, which is not a date (the log "
                    "counts from boot or from its start); give the UTC start time (--start)",
                    kind="relative_can_log",
                    path=str(path),
                )
            else:
                shift = 0
        yield blk if shift == 0 else Frames(blk.t_us + shift, blk.key, blk.dlc, blk.data)


# --------------------------------------------------------------------------------------------- DBC
def load_dbc(spec: str | Path) -> Any:
    """A DBC from a path, or ``opendbc:NAME`` for one shipped in (or generated by) the opendbc package."""
    text: str | None = None
    name = str(spec)
    if name.startswith("opendbc:"):
        stem = name.removeprefix("opendbc:").removesuffix(".dbc")
        found = importlib.util.find_spec("opendbc")
        if found is None or not found.submodule_search_locations:
            raise NotFound("the opendbc package is not installed (pip install opendbc)", kind="dbc_missing", dbc=name)
        path = Path(list(found.submodule_search_locations)[0]) / "dbc" / f"{stem}.dbc"
        if path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
        else:
            # Toyota, Honda ... DBCs are generated from templates when opendbc is built; it can do so in memory.
            import opendbc

            text = opendbc.get_generated_dbcs().get(stem)
            if text is None:
                raise NotFound(f"opendbc has no DBC named {stem!r}", kind="dbc_missing", dbc=name)
    else:
        path = Path(name)
        if not path.is_file():
            raise NotFound(f"DBC file {path} does not exist", kind="dbc_missing", dbc=name)
        text = path.read_text(encoding="utf-8", errors="replace")
    try:
        # strict=False: opendbc's DBCs have overlapping placeholder signals that cantools otherwise refuses.
        return cantools.database.load_string(text, database_format="dbc", strict=False)
    except Exception as e:  # cantools raises its own ParseError/Error types
        raise BadRequest(f"{name} is not a readable DBC: {e}", kind="bad_dbc", dbc=name) from None


# ------------------------------------------------------------------------------------------ decoding
@dataclass(frozen=True)
class _Field:
    """One signal compiled to shifts and masks."""

    name: str
    lsb: int  # bit of the least significant bit, in the little- or big-endian 64-bit view
    length: int
    big_endian: bool
    signed: bool
    is_float: bool
    scale: float
    offset: float
    min_bytes: int
    mux: tuple[str, frozenset[int]] | None  # (multiplexer signal, ids that select this signal)


def _compile(sig: Any) -> _Field:
    if sig.byte_order == "little_endian":
        lsb = sig.start
        top = sig.start + sig.length - 1
        min_bytes = top // 8 + 1
    else:
        # DBC numbers a big-endian signal by its MSB in "sawtooth" order (bit 7 of byte 0 is bit 7).
        msb = (7 - sig.start // 8) * 8 + sig.start % 8
        lsb = msb - sig.length + 1
        min_bytes = 8 - lsb // 8
    if lsb < 0 or lsb + sig.length > 64:
        raise BadRequest(f"signal {sig.name} does not fit in 8 bytes", kind="bad_dbc", signal=sig.name)
    mux = (sig.multiplexer_signal, frozenset(sig.multiplexer_ids)) if sig.multiplexer_ids else None
    return _Field(
        sig.name,
        lsb,
        sig.length,
        sig.byte_order == "big_endian",
        bool(sig.is_signed),
        bool(sig.is_float),
        float(sig.scale),
        float(sig.offset),
        min_bytes,
        mux,
    )


class MessageDecoder:
    """Decodes chosen signals of one DBC message for many frames at once."""

    def __init__(self, message: Any, signals: Iterable[str] | None = None) -> None:
        self.message = message
        names = list(signals) if signals is not None else [s.name for s in message.signals]
        known = {s.name: s for s in message.signals}
        for n in names:
            if n not in known:
                raise BadRequest(
                    f"message {message.name} has no signal {n!r}",
                    kind="unknown_dbc_signal",
                    dbc_message=message.name,
                    signal=n,
                )
        self.fields: dict[str, _Field] = {}
        todo = list(names)
        while todo:  # multiplexers are decoded too, to know which frames carry each signal
            n = todo.pop()
            if n in self.fields:
                continue
            f = _compile(known[n])
            self.fields[n] = f
            if f.mux:
                todo.append(f.mux[0])
        self.names = names
        self.key = frame_key(message.frame_id, message.is_extended_frame)

    def decode_raw(self, frames: Frames) -> dict[str, np.ndarray]:
        """Raw (unscaled) values per signal as float64, NaN where a frame does not carry the signal."""
        le = frames.data
        be = le.byteswap() if any(f.big_endian for f in self.fields.values()) else le
        raw: dict[str, np.ndarray] = {}
        for name, f in self.fields.items():
            word = be if f.big_endian else le
            mask = np.uint64((1 << f.length) - 1) if f.length < 64 else np.uint64(0xFFFFFFFFFFFFFFFF)
            bits = (word >> np.uint64(f.lsb)) & mask
            if f.is_float:
                vals = bits.astype(np.uint32).view(np.float32) if f.length == 32 else bits.view(np.float64)
                v = vals.astype(np.float64)
            elif f.signed:
                s = bits.astype(np.int64)
                if f.length < 64:
                    s = np.where(s >= (1 << (f.length - 1)), s - (1 << f.length), s)
                v = s.astype(np.float64)
            else:
                v = bits.astype(np.float64)
            short = frames.dlc < f.min_bytes
            if short.any():
                v[short] = np.nan
            raw[name] = v
        for name, f in self.fields.items():
            sel = f
            valid = np.ones(len(frames), bool)
            while sel.mux:  # nested (extended) multiplexing: every level must select this signal
                mux_name, ids = sel.mux
                m = raw[mux_name]
                valid &= np.isin(m, np.fromiter(ids, np.float64))
                sel = self.fields[mux_name]
            if not valid.all():
                raw[name] = np.where(valid, raw[name], np.nan)
        return {n: raw[n] for n in self.names}

    def decode(self, frames: Frames) -> dict[str, np.ndarray]:
        """Physical values (raw * scale + offset) per signal, NaN where a frame does not carry the signal."""
        raw = self.decode_raw(frames)
        out = {}
        for n, v in raw.items():
            f = self.fields[n]
            out[n] = v * f.scale + f.offset if not f.is_float or f.scale != 1 or f.offset != 0 else v
        return out


def decode_with_cantools(message: Any, frames: Frames, signals: Iterable[str]) -> dict[str, np.ndarray]:
    """Per-frame decoding with cantools (the reference the vectorised decoder is tested against)."""
    names = list(signals)
    out = {n: np.full(len(frames), np.nan) for n in names}
    for i in range(len(frames)):
        try:
            d = message.decode(frames.payload(i), decode_choices=False, allow_truncated=True, allow_excess=True)
        except Exception:  # noqa: S112 - a frame cantools cannot decode carries no values
            continue
        for n in names:
            if n in d:
                out[n][i] = float(d[n])
    return out


# ------------------------------------------------------------------------------------------ the chain
@dataclass
class DecodedMessage:
    """All frames of one message in a log: times (µs) and physical values per signal."""

    name: str
    t_us: np.ndarray
    values: dict[str, np.ndarray]


@dataclass
class DecodedLog:
    """The wanted messages of a log, decoded, with counts of what the log held."""

    messages: dict[str, DecodedMessage]
    ticks: np.ndarray  # grid ticks (ms) with at least one frame of any ID in (tick - step, tick]
    frames: int = 0
    frames_by_key: dict[int, int] = field(default_factory=dict)
    first_us: int | None = None
    last_us: int | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    decoded_keys: tuple[int, ...] = ()

    def ids_outside(self, keys: Iterable[int]) -> dict[int, int]:
        """Frame counts of the log's IDs that are not among ``keys``."""
        known = set(keys)
        return {k: n for k, n in self.frames_by_key.items() if k not in known}


def _count_keys(key: np.ndarray, into: dict[int, int]) -> None:
    std = key < 2048
    counts = np.bincount(key[std].astype(np.int64), minlength=2048)
    for k in np.flatnonzero(counts).tolist():
        into[k] = into.get(k, 0) + int(counts[k])
    if not std.all():
        ks, ns = np.unique(key[~std], return_counts=True)
        for k, n in zip(ks.tolist(), ns.tolist(), strict=True):
            into[k] = into.get(k, 0) + n


def decode_log(
    blocks: Iterable[Frames], db: Any, wanted: Mapping[str, Iterable[str]], *, tick_ms: int = 100
) -> DecodedLog:
    """Decode the ``wanted`` {message: signals} of every block; note which grid ticks the bus was alive."""
    decoders = []
    for msg_name, sigs in wanted.items():
        try:
            msg = db.get_message_by_name(msg_name)
        except KeyError:
            raise BadRequest(
                f"the DBC has no message {msg_name!r}", kind="unknown_dbc_message", dbc_message=msg_name
            ) from None
        decoders.append(MessageDecoder(msg, sorted(set(sigs))))
    parts: dict[str, list[tuple[np.ndarray, dict[str, np.ndarray]]]] = {d.message.name: [] for d in decoders}
    tick_parts: list[np.ndarray] = []
    counts: dict[int, int] = {}
    n = 0
    first = last = None
    t_read = t_dec = 0.0
    clock = time.perf_counter()
    step_us = tick_ms * 1000
    for blk in blocks:
        t_read += time.perf_counter() - clock
        clock = time.perf_counter()
        if len(blk) == 0:
            continue
        n += len(blk)
        first = int(blk.t_us.min()) if first is None else min(first, int(blk.t_us.min()))
        last = int(blk.t_us.max()) if last is None else max(last, int(blk.t_us.max()))
        _count_keys(blk.key, counts)
        ticks = -(-blk.t_us // step_us)
        ticks = ticks[np.r_[True, ticks[1:] != ticks[:-1]]]  # logs are nearly sorted: cheap first dedupe
        tick_parts.append(np.unique(ticks))
        for d in decoders:
            sel = np.flatnonzero(blk.key == np.uint32(d.key))
            if len(sel):
                sub = blk.take(sel)
                parts[d.message.name].append((sub.t_us, d.decode(sub)))
        t_dec += time.perf_counter() - clock
        clock = time.perf_counter()
    t_read += time.perf_counter() - clock
    messages: dict[str, DecodedMessage] = {}
    for d in decoders:
        got = parts[d.message.name]
        t = np.concatenate([p[0] for p in got]) if got else np.zeros(0, np.int64)
        vals = {s: (np.concatenate([p[1][s] for p in got]) if got else np.zeros(0)) for s in d.names}
        if len(t) > 1 and (np.diff(t) < 0).any():  # logs merged from several buses can be out of order
            order = np.argsort(t, kind="stable")
            t = t[order]
            vals = {s: v[order] for s, v in vals.items()}
        messages[d.message.name] = DecodedMessage(d.message.name, t, vals)
    all_ticks = np.unique(np.concatenate(tick_parts)) * tick_ms if tick_parts else np.zeros(0, np.int64)
    return DecodedLog(
        messages,
        all_ticks.astype(np.int64),
        frames=n,
        frames_by_key=counts,
        first_us=first,
        last_us=last,
        seconds={"read": t_read, "decode": t_dec},
        decoded_keys=tuple(d.key for d in decoders),
    )


@dataclass
class CanImport:
    """The result of importing a CAN log: the VSS table and what happened on the way."""

    table: pa.Table
    frames: int
    decoded_frames: int
    unknown_ids: dict[int, int]  # IDs the DBC does not describe, with their frame counts
    samples: dict[str, int]
    out_of_range: dict[str, int]
    seconds: dict[str, float]
    first_us: int | None
    last_us: int | None

    @property
    def frames_per_s(self) -> float:
        """Frames imported per second of wall time (read, decode and map)."""
        total = sum(self.seconds.values())
        return self.frames / total if total else float("inf")

    def summary(self) -> dict[str, Any]:
        """Counts and timings as plain JSON-able values."""
        return {
            "frames": self.frames,
            "decoded_frames": self.decoded_frames,
            "unknown_ids": len(self.unknown_ids),
            "rows": self.table.num_rows,
            "samples": sum(self.samples.values()),
            "out_of_range": {k: v for k, v in self.out_of_range.items() if v},
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "frames_per_s": round(self.frames_per_s),
        }


def import_can(
    log: Path,
    *,
    dbc: str | Path | None = None,
    mapping: str | Path,
    start_us: int | None = None,
    progress: Progress | None = None,
) -> CanImport:
    """Read, decode and map a CAN log to a catalogue-typed VSS table (``t`` + one column per mapped signal)."""
    from carvault.vehicle.can_mapping import load_mapping

    m = load_mapping(mapping)
    dbc_spec = dbc if dbc is not None else m.dbc
    if dbc_spec is None:
        raise BadRequest(f"mapping {m.name} names no DBC; give one (--dbc)", kind="dbc_missing")
    clock = time.perf_counter()
    db = load_dbc(dbc_spec)
    bound = m.bind(db, source=str(dbc_spec))
    t_load = time.perf_counter() - clock
    decoded = decode_log(
        read_log(Path(log), start_us=start_us, progress=progress), db, bound.wanted, tick_ms=bound.tick_ms
    )
    decoded_frames = sum(len(d.t_us) for d in decoded.messages.values())
    if decoded.frames and not decoded_frames:
        unknown = decoded.ids_outside(frame_key(m.frame_id, m.is_extended_frame) for m in db.messages)
        raise BadRequest(
            f"none of the {decoded.frames:,} frames in {log} belongs to a message the mapping reads "
            f"({', '.join(bound.wanted)}); {len(unknown)} of the log's {len(decoded.frames_by_key)} IDs are not "
            f"in {dbc_spec} either: is this the right DBC, and the right bus?",
            kind="nothing_mapped",
        )
    clock = time.perf_counter()
    mapped = bound.apply(decoded)
    t_map = time.perf_counter() - clock
    return CanImport(
        table=mapped.table,
        frames=decoded.frames,
        decoded_frames=decoded_frames,
        unknown_ids=decoded.ids_outside(frame_key(m.frame_id, m.is_extended_frame) for m in db.messages),
        samples=mapped.samples,
        out_of_range=mapped.out_of_range,
        seconds={"load": t_load, **decoded.seconds, "map": t_map},
        first_us=decoded.first_us,
        last_us=decoded.last_us,
    )


def describe_ids(ids: Mapping[int, int], limit: int = 8) -> str:
    """The most frequent IDs as 'ID (count)' text, for messages to the user."""
    top = sorted(ids.items(), key=lambda kv: -kv[1])[:limit]
    return ", ".join(f"{k & 0x1FFFFFFF:X} ({n})" for k, n in top) + (" ..." if len(ids) > limit else "")


__all__ = [
    "CanImport",
    "DecodedLog",
    "DecodedMessage",
    "Frames",
    "MessageDecoder",
    "decode_log",
    "decode_with_cantools",
    "frame_key",
    "import_can",
    "is_candump",
    "load_dbc",
    "parse_candump",
    "read_candump",
    "read_log",
    "read_python_can",
]
