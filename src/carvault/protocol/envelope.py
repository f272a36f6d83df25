"""Vehicle upload protocol v1: the batch envelope, shared by the vehicle agent and the gateway.

A batch is one byte string (docs/protocol.md is the normative description)::

    offset      size  field
    0           4     magic b"CVB1"
    4           4     H = header length, uint32 big-endian
    8           H     header, a UTF-8 JSON object (fields in ``BatchHeader``)
    8+H         8     P = payload length, uint64 big-endian
    16+H        P     payload: a Parquet file (column ``t`` + one column per VSS signal path)
    16+H+P      64    Ed25519 signature by the vehicle key over bytes [0, 16+H+P)

The batch hash is SHA-256 over the whole envelope, signature included; the next batch of the same
vehicle names it in ``prev`` (a per-vehicle hash chain). The gateway keeps these exact bytes.
This module depends only on ``cryptography`` and ``pyarrow`` so the verifier can use it offline.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
from dataclasses import dataclass
from functools import cached_property

import pyarrow as pa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

# The reader pyarrow.parquet re-exports, taken from its own module: pyarrow.parquet also loads pyarrow's file
# systems (pyarrow.fs and its S3 and TLS layers), about 10 ms of the offline verifier's start-up, and payloads are
# read from memory. The writer (the car's side) imports pyarrow.parquet where it writes.
from pyarrow._parquet import ParquetReader

from carvault.errors import BadSignature, MalformedBatch, PayloadTooLarge, TimestampInFuture, TimestampOutOfSpan
from carvault.protocol import kernels
from carvault.protocol.json import JSONRejected, strict_loads

MAGIC = b"CVB1"
VERSION = 1
SIGNATURE_LEN = 64
GENESIS_PREV = "0" * 64
BATCH_MEDIA_TYPE = "application/vnd.carvault.batch.v1"
PAYLOAD_FORMAT = "parquet"
BATCH_KINDS = ("telemetry", "event", "media")
_HEADER_FIELDS = {"v", "vin", "region", "seq", "prev", "t0", "t1", "rows", "payload", "kind"}
# The live extension (docs/protocol.md §8): all three or none; a header without them is signed exactly as before.
LIVE_FIELDS = ("live_first", "live_last", "live_root")
# The region-attestation extension (docs/protocol.md §9): a batch the region built from records a car did not sign
# (Fleet Telemetry) names the attesting region here and is signed by the region's attestation key. A header without
# it is a car-signed batch, serialised exactly as before.
ATTESTED_FIELD = "attested_by"
# The software-version extension (docs/protocol.md §10): the software the car (or, for an attested batch, the car
# as its records say) ran when the batch was made. Provenance only: the region stores it and trusts it for nothing.
SOFTWARE_FIELD = "software_version"
MAX_SOFTWARE_LEN = 64
_OPTIONAL_FIELDS = (*LIVE_FIELDS, ATTESTED_FIELD, SOFTWARE_FIELD)
_MAX_HEADER = 64 * 1024
# Integer bounds of the header (docs/protocol.md §2.1). Every one fits a signed 64-bit database column and
# is read exactly by every JSON parser (I-JSON, at most 2^53 - 1).
MAX_SEQ = 2**53 - 1
MAX_ROWS = 2**31 - 1
EARLIEST_MS = 946_684_800_000  # 2000-01-01T00:00:00Z, as ingest.validation: nothing older is plausible telemetry
LATEST_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last instant ISO 8601 can spell
MAX_REGION_LEN = 32

MAX_PAYLOAD_ROWS = 1_000_000  # far above any region's max_batch_rows; refused before anything is decoded
MAX_DECODED_BYTES = 256 * 1024 * 1024  # what one payload may take in memory once decoded


def sha256_hex(data: bytes | memoryview) -> str:
    """Lower-case hex SHA-256."""
    return hashlib.sha256(data).hexdigest()


def valid_software_version(text: str) -> bool:
    """A software version as §10 allows it: 1 to ``MAX_SOFTWARE_LEN`` printable ASCII characters, no edge spaces."""
    return 1 <= len(text) <= MAX_SOFTWARE_LEN and text.isascii() and text.isprintable() and text == text.strip()


@dataclass(frozen=True)
class BatchHeader:
    """The signed header of a batch."""

    vin: str
    region: str
    seq: int
    prev: str
    t0: int
    t1: int
    rows: int
    kind: str = "telemetry"
    payload: str = PAYLOAD_FORMAT
    v: int = VERSION
    live_first: int | None = None  # §8: the live-frame counters this batch commits to, and their Merkle root
    live_last: int | None = None
    live_root: str | None = None
    attested_by: str | None = None  # §9: the region that built and signed this batch; None for a car-signed batch
    software_version: str | None = None  # §10: the car's software version when the batch was made; None if unsaid

    @property
    def region_attested(self) -> bool:
        """Whether the batch was built and signed by a region, not by the car (§9)."""
        return self.attested_by is not None

    def to_json_bytes(self) -> bytes:
        """Serialised header (sorted keys, no spaces); the optional members (§8, §9) only when the batch has them."""
        doc = {k: v for k, v in self.__dict__.items() if v is not None or k not in _OPTIONAL_FIELDS}
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json_bytes(cls, data: bytes) -> BatchHeader:
        """Parse and check a header: ``MalformedBatch`` for any defect of form, the time codes for its span.

        The JSON is strict (``carvault.protocol.json``): no duplicate members, no floats, NaN or
        out-of-range integers, so the signed header has one reading for every parser.
        """
        try:
            obj = strict_loads(data)
        except JSONRejected as e:
            raise MalformedBatch(f"batch header is not strict UTF-8 JSON: {e}") from None
        if not isinstance(obj, dict):
            raise MalformedBatch("batch header must be a JSON object")
        missing = _HEADER_FIELDS - obj.keys()
        extra = obj.keys() - _HEADER_FIELDS - set(_OPTIONAL_FIELDS)
        live = [k for k in LIVE_FIELDS if k in obj]
        if live and len(live) != len(LIVE_FIELDS):
            missing |= set(LIVE_FIELDS) - set(live)
        if missing or extra:
            raise MalformedBatch(
                "batch header fields are wrong",
                missing=sorted(missing),
                unexpected=[k[:40] for k in sorted(extra)[:10]],
            )
        for k in ("v", "seq", "t0", "t1", "rows"):
            if type(obj[k]) is not int:
                raise MalformedBatch(f"header field {k!r} must be an integer", field=k)
        for k in ("vin", "region", "prev", "payload", "kind"):
            if not isinstance(obj[k], str):
                raise MalformedBatch(f"header field {k!r} must be a string", field=k)
        if live and (type(obj["live_first"]) is not int or type(obj["live_last"]) is not int):
            raise MalformedBatch("header fields live_first and live_last must be integers", field="live_first")
        if live and not isinstance(obj["live_root"], str):
            raise MalformedBatch("header field 'live_root' must be a string", field="live_root")
        if ATTESTED_FIELD in obj and not isinstance(obj[ATTESTED_FIELD], str):
            raise MalformedBatch("header field 'attested_by' must be a string", field=ATTESTED_FIELD)
        if SOFTWARE_FIELD in obj and not isinstance(obj[SOFTWARE_FIELD], str):
            raise MalformedBatch("header field 'software_version' must be a string", field=SOFTWARE_FIELD)
        h = cls(**obj)
        h.check()
        return h

    def check(self) -> None:
        """Check the values against the protocol's bounds (types are the caller's or the parser's)."""
        if self.v != VERSION:
            raise MalformedBatch(
                f"protocol version {self.v} is not supported (this gateway speaks v{VERSION})", field="v"
            )
        if self.payload != PAYLOAD_FORMAT:
            raise MalformedBatch(
                f"payload format {self.payload[:40]!r} is not supported (use 'parquet')", field="payload"
            )
        if self.kind not in BATCH_KINDS:
            raise MalformedBatch(f"batch kind {self.kind[:40]!r} is not one of {', '.join(BATCH_KINDS)}", field="kind")
        v = self.vin
        if not (len(v) == 17 and v.isascii() and v.isalnum() and v.upper() == v):
            raise MalformedBatch("vin must be 17 upper-case letters and digits", field="vin")
        r = self.region
        if not (1 <= len(r) <= MAX_REGION_LEN and r.isascii() and r.isprintable() and " " not in r):
            raise MalformedBatch(
                f"region must be a name of 1 to {MAX_REGION_LEN} printable ASCII characters", field="region"
            )
        if not 1 <= self.seq <= MAX_SEQ:
            raise MalformedBatch(f"seq must lie in 1..{MAX_SEQ} (it starts at 1)", field="seq")
        if len(self.prev) != 64 or any(c not in "0123456789abcdef" for c in self.prev):
            raise MalformedBatch("prev must be 64 lower-case hex digits", field="prev")
        if not 1 <= self.rows <= MAX_ROWS:
            raise MalformedBatch(f"rows must lie in 1..{MAX_ROWS} (a batch holds at least one row)", field="rows")
        self._check_live()
        if self.attested_by is not None and (self.attested_by != self.region or self.kind != "telemetry"):
            raise MalformedBatch(
                "attested_by names the batch's own region, on a telemetry batch only (§9)", field=ATTESTED_FIELD
            )
        if self.software_version is not None and not valid_software_version(self.software_version):
            raise MalformedBatch(
                f"software_version must be 1 to {MAX_SOFTWARE_LEN} printable ASCII characters (§10)",
                field=SOFTWARE_FIELD,
            )
        if self.t0 < EARLIEST_MS:
            raise TimestampOutOfSpan("batch span starts before 2000-01-01", t0=self.t0)
        if self.t1 > LATEST_MS:
            raise TimestampInFuture("batch span ends after 9999-12-31", t1=self.t1)
        if self.t1 < self.t0:
            raise TimestampOutOfSpan(
                f"the header span is empty: t1 {self.t1} is before t0 {self.t0}", t0=self.t0, t1=self.t1
            )

    def _check_live(self) -> None:
        """The live extension's members (§8): all or none, counters in order, the root 64 lower-case hex digits."""
        given = [getattr(self, k) is not None for k in LIVE_FIELDS]
        if not any(given):
            return
        if not all(given):
            raise MalformedBatch("live_first, live_last and live_root come together", field="live_root")
        first, last, root = int(self.live_first or 0), int(self.live_last or 0), str(self.live_root)
        if not 1 <= first <= last <= MAX_SEQ or last - first >= MAX_ROWS:
            raise MalformedBatch(
                f"live_first..live_last must be a counter range within 1..{MAX_SEQ} of at most {MAX_ROWS} frames",
                field="live_first",
            )
        if self.kind != "telemetry":
            raise MalformedBatch("only a telemetry batch commits to live frames", field="live_root")
        if len(root) != 64 or any(c not in "0123456789abcdef" for c in root):
            raise MalformedBatch("live_root must be 64 lower-case hex digits", field="live_root")

    @property
    def live_size(self) -> int:
        """How many live frames the batch commits to (0 without the extension)."""
        if self.live_first is None or self.live_last is None:
            return 0
        return self.live_last - self.live_first + 1


@dataclass(frozen=True)
class Envelope:
    """A decoded batch: the header, the payload bytes, the signature and the exact original bytes."""

    header: BatchHeader
    payload: bytes
    signature: bytes
    raw: bytes

    @property
    def signed_part(self) -> bytes:
        """The bytes the signature covers."""
        return self.raw[: len(self.raw) - SIGNATURE_LEN]

    @cached_property
    def batch_hash(self) -> str:
        """SHA-256 (hex) of the whole envelope."""
        return sha256_hex(self.raw)

    def verify(self, public_key: Ed25519PublicKey) -> None:
        """Check the Ed25519 signature; raise ``BadSignature`` if it fails."""
        try:
            public_key.verify(self.signature, self.signed_part)
        except InvalidSignature:
            raise BadSignature(
                "batch signature does not verify against the vehicle's registered key",
                vin=self.header.vin,
                seq=self.header.seq,
            ) from None

    def table(self, *, max_rows: int = MAX_PAYLOAD_ROWS, max_bytes: int = MAX_DECODED_BYTES) -> pa.Table:
        """Decode the Parquet payload within bounds (``decode_payload``)."""
        return decode_payload(self.payload, max_rows=max_rows, max_bytes=max_bytes)


def encode_envelope(header: BatchHeader, payload: bytes, key: Ed25519PrivateKey) -> bytes:
    """Frame and sign a batch."""
    hb = header.to_json_bytes()
    body = MAGIC + struct.pack(">I", len(hb)) + hb + struct.pack(">Q", len(payload)) + payload
    return body + key.sign(body)


def decode_envelope(data: bytes) -> Envelope:
    """Split a batch into its parts, checking the framing, then the header.

    Any defect of form raises ``MalformedBatch``; a header span outside 2000..9999 or inverted raises the time
    codes ``TimestampOutOfSpan`` / ``TimestampInFuture`` (``BatchHeader.check``). All are ``BadRequest``.
    """
    n = len(data)
    if n < 4 + 4 + 8 + SIGNATURE_LEN:
        raise MalformedBatch(f"batch is truncated: {n} bytes is shorter than an empty envelope")
    if data[:4] != MAGIC:
        raise MalformedBatch("batch does not start with the magic bytes 'CVB1'")
    (hlen,) = struct.unpack_from(">I", data, 4)
    if hlen > _MAX_HEADER or 8 + hlen + 8 + SIGNATURE_LEN > n:
        raise MalformedBatch(f"batch is truncated or its header length ({hlen}) is wrong")
    (plen,) = struct.unpack_from(">Q", data, 8 + hlen)
    start = 16 + hlen
    if start + plen + SIGNATURE_LEN != n:
        raise MalformedBatch(
            f"batch length does not add up: payload says {plen} bytes, envelope has "
            f"{n - start - SIGNATURE_LEN} (truncated or trailing bytes)"
        )
    header = BatchHeader.from_json_bytes(bytes(data[8 : 8 + hlen]))
    raw = bytes(data)
    return Envelope(header=header, payload=raw[start : start + plen], signature=raw[n - SIGNATURE_LEN :], raw=raw)


def payload_view(envelope: bytes) -> memoryview:
    """The payload inside envelope bytes already checked by ``decode_envelope`` (stored batches): no copy."""
    (hlen,) = struct.unpack_from(">I", envelope, 4)
    (plen,) = struct.unpack_from(">Q", envelope, 8 + hlen)
    return memoryview(envelope)[16 + hlen : 16 + hlen + plen]


#: zstd level of the agent's payloads. From 12 on, zstd's longer matches find the repeats of quantised floats written
#: plain. On the bench's drives, level 12 with each float column's smaller layout makes a 5-minute batch 19 % smaller
#: than level 9 with every float byte-stream-split (a 1-minute one 12 %), where level 12 alone gives 2 % and plain
#: floats at level 9 alone 7 %; the region decodes it in the same time, the car encodes it in about five times as long
#: (its trial files included: 9-15 ms for a 1-minute batch on the bench machine, 2 ms before; docs/benchmarks.md).
PAYLOAD_ZSTD_LEVEL = 12
#: What a column chunk's codec costs the region each time the chunk is read, in the bytes a chunk must save to be
#: worth it: a chunk takes the form (codec, and for floats plain or byte-stream-split) whose stored bytes plus this
#: charge are least. Arrow's zstd makes and frees a decompression context for every page (~7-9 µs on the bench
#: machine, issue 10), LZ4_RAW needs none and decodes at memory speed. On the bench's drives, charging zstd 128 bytes
#: makes the payloads 0.7-1.5 % larger than zstd wherever it saved 32 bytes, and decodes them 17-29 % faster
#: (5-second batches 612 -> 476 µs, 1-minute 976 -> 695, 5-minute 1,165 -> 966; docs/benchmarks.md): the chunks zstd
#: shrinks far more than LZ4 (noisy floats, long minutes) keep zstd, the rest take LZ4_RAW or stay uncompressed.
CODEC_CHARGE = {"none": 0, "lz4_raw": 16, "zstd": 128}


def encode_payload(table: pa.Table) -> bytes:
    """Write a batch table as the compact Parquet payload: each column chunk in the form that costs least (its bytes
    plus ``CODEC_CHARGE``), text through a dictionary.

    Numbers and flags are written plain: zstd finds their repeats as well as a dictionary page does (a one-minute
    batch comes out ~3 % smaller without them), and every dictionary page is one more page for the region to
    decompress (issue 10).

    Byte-stream-split helps a float column whose values are noisy and hurts one of quantised values, which plain
    repeats byte for byte; which a signal is depends on the car and the drive. Each column chunk is compressed on
    its own, so the choices are made chunk by chunk from trial files, each codec with floats plain and split (a
    chunk's uncompressed size is in every trial's footer). The file is written once more only when the choices differ
    from every trial.
    """
    metadata = table.schema.metadata or {}
    table = table.replace_schema_metadata(None)
    names = table.schema.names
    floats = [f.name for f in table.schema if pa.types.is_floating(f.type)]
    if table.num_rows == 0:
        return _write_payload(table, metadata, split=[], codecs={})
    trials = [
        (codec, split, _write_payload(table, metadata, split=split, codecs=dict.fromkeys(names, codec)))
        for codec in ("zstd", "lz4_raw")
        for split in (([], floats) if floats else ([],))
    ]
    best: dict[str, tuple[int, str, bool]] = {}  # column: (bytes + charge, codec, split)
    for codec, split, payload in trials:
        for name, (stored, raw) in _chunk_sizes(payload).items():
            is_split = name in split
            for form, size in ((codec, stored), ("none", raw)):
                cost = (size + CODEC_CHARGE[form], form, is_split and form != "none")
                if name not in best or cost[0] < best[name][0]:
                    best[name] = cost
    codecs = {name: form for name, (_, form, _) in best.items() if form != "none"}
    split = [name for name, (_, _, is_split) in best.items() if is_split]
    for codec, trial_split, payload in trials:
        if codecs == dict.fromkeys(names, codec) and split == trial_split:
            return payload
    return _write_payload(table, metadata, split=split, codecs=codecs)


def _write_payload(table: pa.Table, metadata: dict[bytes, bytes], *, split: list[str], codecs: dict[str, str]) -> bytes:
    """The payload file of ``table`` (schema metadata removed): ``split`` float columns byte-stream-split, each column
    compressed with its codec in ``codecs`` (zstd at ``PAYLOAD_ZSTD_LEVEL``), the others not."""
    sink = io.BytesIO()
    # No stored Arrow schema: every catalogue type maps to a Parquet logical type that reads back as the same
    # Arrow type, and the schema blob was ~40% of a one-minute batch's bytes. Our own metadata (an event's
    # description) goes in the file's key-value metadata, which readers return as schema metadata.
    import pyarrow.parquet as pq

    with pq.ParquetWriter(
        sink,
        table.schema,
        compression={name: codecs.get(name, "none") for name in table.schema.names},
        compression_level={name: PAYLOAD_ZSTD_LEVEL for name, c in codecs.items() if c == "zstd"} or None,
        use_dictionary=[f.name for f in table.schema if _is_text(f.type)] or False,
        use_byte_stream_split=split or False,
        column_encoding={"t": "DELTA_BINARY_PACKED"},
        write_statistics=["t"],
        store_schema=False,
    ) as writer:
        writer.write_table(table, row_group_size=max(table.num_rows, 1))
        if metadata:
            writer.add_key_value_metadata({k.decode(): v.decode() for k, v in metadata.items()})
    return sink.getvalue()


def _chunk_sizes(payload: bytes) -> dict[str, tuple[int, int]]:
    """Bytes of each column chunk of a one-row-group payload as stored and uncompressed (page headers included), by
    column name."""
    reader = ParquetReader()
    reader.open(pa.BufferReader(payload), pre_buffer=False)
    rg = reader.metadata.row_group(0)
    return {
        (c := rg.column(i)).path_in_schema: (c.total_compressed_size, c.total_uncompressed_size)
        for i in range(rg.num_columns)
    }


def read_payload(payload: bytes | memoryview) -> pa.Table:
    """Every column of a payload the region has already accepted (``decode_payload`` checked it on the way in).

    Arrow's Parquet reader itself, on one thread: ``ParquetFile`` around it maps every column's path in Python first
    (~55 µs of a one-minute bench batch's 0.88 ms), once per batch of every window over days not yet compacted.
    """
    reader = ParquetReader()
    reader.open(pa.BufferReader(payload), pre_buffer=False, arrow_extensions_enabled=True)
    return reader.read_all(use_threads=False)


def decode_payload(
    payload: bytes | memoryview, *, max_rows: int = MAX_PAYLOAD_ROWS, max_bytes: int = MAX_DECODED_BYTES
) -> pa.Table:
    """Read a Parquet payload within bounds; ``MalformedBatch`` if it is not one, ``PayloadTooLarge`` if too big.

    A few hundred bytes of Parquet can describe gigabytes (one long string repeated through a dictionary, or a
    page that inflates a thousandfold), so the footer's row count and uncompressed sizes are checked first, string
    columns are read as dictionaries, and their size once expanded is computed before any is expanded.

    This runs for every uploaded batch, so it avoids work that grows with the column count (issue 10): the footer
    is parsed once, the decoded size is the sum of the buffers read (``get_total_buffer_size``, an upper bound of
    ``nbytes`` that costs no per-column walk), and only the text columns are touched after the read.
    """
    try:
        # Arrow's Parquet reader itself: ``read_metadata`` and ``ParquetFile`` each wrap it in a ParquetFile, which
        # maps every column's path in Python (~50 µs for 41 columns, holding the GIL every upload shares).
        reader = ParquetReader()
        reader.open(pa.BufferReader(payload), pre_buffer=False, arrow_extensions_enabled=True)
        md = reader.metadata
        if md.num_rows > max_rows:
            raise PayloadTooLarge(f"payload has {md.num_rows} rows; the limit is {max_rows}", limit=max_rows)
        stored = sum(md.row_group(i).total_byte_size for i in range(md.num_row_groups))
        if stored > max_bytes:
            raise PayloadTooLarge(f"payload expands to {stored} bytes; the limit is {max_bytes}", limit=max_bytes)
        arrow_schema = md.schema.to_arrow_schema()  # a stored Arrow schema may ask for dictionary columns
        texts = [i for i, t in enumerate(arrow_schema.types) if _is_text(t)]
        # Columns named by their index when the file is flat (one Parquet column per field, as a payload is): by
        # name, pyarrow builds a map of every column's path for each file opened.
        flat = md.num_columns == len(arrow_schema)
        if texts:  # the text columns are read as dictionaries: an option of opening, so open again (footer kept)
            reader = ParquetReader()
            reader.open(
                pa.BufferReader(payload),
                metadata=md,
                read_dictionary=texts if flat else [arrow_schema[i].name for i in texts],
                pre_buffer=False,  # the bytes are in memory: coalescing their ranges first only costs (~0.15 ms)
                arrow_extensions_enabled=True,
            )
        # One read without threads: ~35% faster than read_table for small batch files.
        table = reader.read_all(use_threads=False)
        size = table.get_total_buffer_size()
        if size > max_bytes:
            raise PayloadTooLarge(f"payload decodes to {size} bytes; the limit is {max_bytes}", limit=max_bytes)
        return _expand_dictionaries(table, arrow_schema, texts, max_bytes - size)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise MalformedBatch(f"batch payload is not a readable Parquet file: {e}") from None


def _is_text(t: pa.DataType) -> bool:
    """Strings or bytes, plain or (as a stored Arrow schema may declare) through a dictionary."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_binary(t)


def _expand_dictionaries(table: pa.Table, schema: pa.Schema, texts: list[int], budget: int) -> pa.Table:
    """Turn the dictionary-read text columns (by index) back into plain ones, refusing if they would outgrow ``budget``.

    Columns the file itself declares as dictionaries (a stored Arrow schema) stay so, and payload validation
    refuses them.
    """
    if not texts:
        return table
    plain = []
    for i in texts:
        chunked = table.column(i)
        plain.append((i, chunked.chunk(0) if chunked.num_chunks == 1 else chunked.combine_chunks()))
    # Each row expands to at most its dictionary's bytes: when even that fits for every column (a batch's few short
    # values), the exact sizes need no computing; else they are summed column by column, as the limit says.
    most = 0
    for _, col in plain:
        if isinstance(col, pa.DictionaryArray):
            values = col.dictionary.buffers()[-1]
            most += len(col) * (values.size if values is not None else 0)
    if most > budget:
        for i, col in plain:
            if isinstance(col, pa.DictionaryArray):
                budget -= kernels.total(kernels.take(kernels.binary_length(col.dictionary), col.indices))
                if budget < 0:
                    raise PayloadTooLarge("payload text columns expand beyond the decode limit", signal=schema[i].name)
    for i, col in plain:
        # ``dictionary_decode`` (the dictionary taken by the indices): 7.5 µs for 600 rows, where the cast took 12.6.
        if isinstance(col, pa.DictionaryArray) and not pa.types.is_dictionary(schema[i].type):
            col = kernels.dictionary_decode(col)
        table = table.set_column(i, schema[i], col if col.type == schema[i].type else kernels.cast(col, schema[i].type))
    return table


def make_batch(
    *,
    vin: str,
    region: str,
    seq: int,
    prev: str,
    table: pa.Table,
    key: Ed25519PrivateKey,
    kind: str = "telemetry",
    t0: int | None = None,
    t1: int | None = None,
    live: tuple[int, int, str] | None = None,
    attested_by: str | None = None,
    software_version: str | None = None,
) -> bytes:
    """Build a signed batch from a table (``t`` column first); the span defaults to the table's.

    ``live`` is (first counter, last counter, hex Merkle root) of the live frames the batch commits to (§8);
    ``attested_by`` the region that attests a batch it built and signs with its attestation key (§9);
    ``software_version`` the software the car ran (§10).
    """
    ts = table.column("t").cast(pa.int64())
    lo = int(ts[0].as_py()) if t0 is None else t0
    hi = int(ts[-1].as_py()) if t1 is None else t1
    first, last, root = live if live is not None else (None, None, None)
    header = BatchHeader(
        vin=vin,
        region=region,
        seq=seq,
        prev=prev,
        t0=lo,
        t1=hi,
        rows=table.num_rows,
        kind=kind,
        live_first=first,
        live_last=last,
        live_root=root,
        attested_by=attested_by,
        software_version=software_version,
    )
    if attested_by is not None or software_version is not None:
        header.check()
    if live is not None:
        header._check_live()
    return encode_envelope(header, encode_payload(table), key)
