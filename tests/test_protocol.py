"""The batch envelope: round trip, signature, strict header parsing, and a decoder that never fails but cleanly.

The header case table gives every defect its exact error code (docs/protocol.md §2.1, §2.3, §3.1); a few of them,
the transport rules (§3.3) and the time rules across batches (§2.4) go through a real server too.
"""

from __future__ import annotations

import gzip
import io
import json
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from carvault.errors import (
    BadRequest,
    BadSignature,
    CarVaultError,
    MalformedBatch,
    TimestampInFuture,
    TimestampOutOfSpan,
)
from carvault.ingest import validation
from carvault.protocol import (
    BATCH_MEDIA_TYPE,
    EVENT_META_KEY,
    GENESIS_PREV,
    BatchHeader,
    decode_envelope,
    encode_envelope,
    encode_payload,
    make_batch,
    sha256_hex,
)
from carvault.protocol.envelope import EARLIEST_MS, LATEST_MS, MAX_ROWS, MAX_SEQ
from carvault.protocol.json import MAX_SAFE_INT, JSONRejected, strict_loads
from carvault.region import Region
from carvault.store.metadata import BatchRecord
from carvault.vehicle.identity import VehicleIdentity
from tests.factories import BASE_MS, drive_table, vin_for

KEY = Ed25519PrivateKey.generate()
TABLE = drive_table(seconds=5, paths=["Vehicle.Speed", "Vehicle.ADAS.ABS.IsEngaged"])
BLOB = make_batch(vin=vin_for(1), region="cn", seq=1, prev=GENESIS_PREV, table=TABLE, key=KEY)
# What decoding may raise: a defect of form, or a header span outside 2000..9999 or inverted.
DECODE_ERRORS = (MalformedBatch, TimestampOutOfSpan, TimestampInFuture)


def test_round_trip_keeps_header_payload_and_table() -> None:
    env = decode_envelope(BLOB)
    assert env.header.vin == vin_for(1) and env.header.seq == 1 and env.header.rows == TABLE.num_rows
    assert env.raw == BLOB and env.batch_hash == sha256_hex(BLOB)
    assert env.table().equals(TABLE)
    env.verify(KEY.public_key())


def test_signature_is_deterministic_so_resends_are_identical() -> None:
    again = make_batch(vin=vin_for(1), region="cn", seq=1, prev=GENESIS_PREV, table=TABLE, key=KEY)
    assert again == BLOB


@pytest.mark.parametrize("position", [0, 10, len(BLOB) // 2, len(BLOB) - 70, len(BLOB) - 1])
def test_any_flipped_byte_is_caught(position: int) -> None:
    bad = bytearray(BLOB)
    bad[position] ^= 0x01
    with pytest.raises((*DECODE_ERRORS, BadSignature)):
        env = decode_envelope(bytes(bad))
        env.verify(KEY.public_key())


def test_other_key_fails() -> None:
    with pytest.raises(BadSignature):
        decode_envelope(BLOB).verify(Ed25519PrivateKey.generate().public_key())


def test_header_fields_are_type_checked() -> None:
    h = BatchHeader(vin=vin_for(1), region="cn", seq=1, prev=GENESIS_PREV, t0=BASE_MS, t1=BASE_MS + 1, rows=1)
    body = h.to_json_bytes().replace(b'"seq":1', b'"seq":"1"')
    blob = b"CVB1" + struct.pack(">I", len(body)) + body + struct.pack(">Q", 0) + KEY.sign(b"x")
    with pytest.raises(MalformedBatch, match="seq"):
        decode_envelope(blob)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_decoder_rejects_random_bytes_cleanly(data: bytes) -> None:
    try:
        env = decode_envelope(data)
    except DECODE_ERRORS:
        return
    with pytest.raises((*DECODE_ERRORS, BadSignature)):
        env.verify(KEY.public_key())
        env.table()


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(min_value=0, max_value=len(BLOB) - 1))
def test_every_truncation_is_malformed(cut: int) -> None:
    with pytest.raises(MalformedBatch):
        decode_envelope(BLOB[:cut])


@settings(max_examples=200, deadline=None)
@given(pos=st.integers(min_value=0, max_value=len(BLOB) - 1), byte=st.integers(0, 255))
def test_mutations_never_verify(pos: int, byte: int) -> None:
    bad = bytearray(BLOB)
    if bad[pos] == byte:
        return
    bad[pos] = byte
    with pytest.raises((*DECODE_ERRORS, BadSignature)):
        decode_envelope(bytes(bad)).verify(KEY.public_key())


def test_payload_written_by_vehicle_reads_back_with_exact_types() -> None:
    env = decode_envelope(
        encode_envelope(
            BatchHeader(
                vin=vin_for(2), region="cn", seq=3, prev="a" * 64, t0=BASE_MS, t1=BASE_MS + 1, rows=TABLE.num_rows
            ),
            b"not parquet",
            KEY,
        )
    )
    with pytest.raises(MalformedBatch, match="Parquet"):
        env.table()


# --------------------------------------------------------------------------- the header, case by case
PAYLOAD = encode_payload(TABLE)
H0: dict[str, Any] = {
    "v": 1,
    "vin": vin_for(1),
    "region": "cn",
    "seq": 1,
    "prev": GENESIS_PREV,
    "t0": BASE_MS,
    "t1": BASE_MS + 4900,
    "rows": TABLE.num_rows,
    "payload": "parquet",
    "kind": "telemetry",
}


def _frame(header: bytes, key: Ed25519PrivateKey, payload: bytes = PAYLOAD) -> bytes:
    body = b"CVB1" + struct.pack(">I", len(header)) + header + struct.pack(">Q", len(payload)) + payload
    return body + key.sign(body)


def _json(**changes: Any) -> bytes:
    """H0 with some members changed; a value of ``...`` drops the member."""
    obj = {k: v for k, v in {**H0, **changes}.items() if v is not ...}
    return json.dumps(obj, separators=(",", ":")).encode()


def _lit(name: str, literal: str) -> bytes:
    """H0 with one member's value spelled as a raw JSON literal (which json.dumps would never write)."""
    return _json(**{name: "@@"}).replace(b'"@@"', literal.encode())


MALFORMED, SPAN, FUTURE = "malformed_batch", "timestamp_out_of_span", "timestamp_in_future"
# (case, header bytes, the code it is refused with, or None if it decodes)
HEADER_CASES: list[tuple[str, bytes, str | None]] = [
    ("valid", _json(), None),
    # integers: bounds
    ("seq 0", _json(seq=0), MALFORMED),
    ("seq negative", _json(seq=-1), MALFORMED),
    ("seq largest", _json(seq=MAX_SEQ), None),
    ("seq 2^53", _json(seq=2**53), MALFORMED),
    ("seq 2^63 (was a 500: database overflow)", _json(seq=2**63), MALFORMED),
    ("seq 2^63-1", _json(seq=2**63 - 1), MALFORMED),
    ("seq 20 digits", _lit("seq", "9" * 20), MALFORMED),
    ("seq 5000 digits (was a 500: int conversion limit)", _lit("seq", "1" * 5000), MALFORMED),
    ("t0 5000 digits", _lit("t0", "1" * 5000), MALFORMED),
    ("rows 60000 digits", _lit("rows", "9" * 60_000), MALFORMED),
    ("rows 0", _json(rows=0), MALFORMED),
    ("rows negative", _json(rows=-5), MALFORMED),
    ("rows largest", _json(rows=MAX_ROWS), None),
    ("rows 2^31", _json(rows=MAX_ROWS + 1), MALFORMED),
    ("v 0", _json(v=0), MALFORMED),
    ("v 2", _json(v=2), MALFORMED),
    # integers: only integers
    ("seq 1.0", _lit("seq", "1.0"), MALFORMED),
    ("seq 1e0", _lit("seq", "1e0"), MALFORMED),
    ("t0 as float", _lit("t0", f"{BASE_MS}.0"), MALFORMED),
    ("t1 1e400", _lit("t1", "1e400"), MALFORMED),
    ("rows -0.0", _lit("rows", "-0.0"), MALFORMED),
    ("seq true", _json(seq=True), MALFORMED),
    ("seq false", _json(seq=False), MALFORMED),
    ("seq null", _json(seq=None), MALFORMED),
    ("seq as string", _json(seq="1"), MALFORMED),
    ("seq as list", _json(seq=[1]), MALFORMED),
    ("seq NaN", _lit("seq", "NaN"), MALFORMED),
    ("t1 Infinity", _lit("t1", "Infinity"), MALFORMED),
    ("t0 -Infinity", _lit("t0", "-Infinity"), MALFORMED),
    # the span
    ("t0 = t1", _json(t0=BASE_MS, t1=BASE_MS), None),
    ("t0 > t1", _json(t0=BASE_MS + 5000, t1=BASE_MS), SPAN),
    ("t0 before 2000", _json(t0=EARLIEST_MS - 1), SPAN),
    ("t0 at 2000-01-01", _json(t0=EARLIEST_MS), None),
    ("t0 negative", _json(t0=-1), SPAN),
    ("t0 0", _json(t0=0), SPAN),
    ("t0 and t1 before 2000", _json(t0=0, t1=1), SPAN),
    ("t1 at 9999-12-31", _json(t1=LATEST_MS), None),
    ("t1 after 9999", _json(t1=LATEST_MS + 1), FUTURE),
    ("t1 2^53-1", _json(t1=MAX_SAFE_INT), FUTURE),
    ("t1 2^63-1", _json(t1=2**63 - 1), MALFORMED),
    # members
    ("duplicate seq", _json().replace(b'"seq":1', b'"seq":1,"seq":1'), MALFORMED),
    ("duplicate seq, other value", _json().replace(b'"seq":1', b'"seq":1,"seq":2'), MALFORMED),
    ("duplicate region via escape", _json().replace(b'"region":"cn"', b'"region":"cn","r\\u0065gion":"eu"'), MALFORMED),
    ("extra member", _json(note="hi"), MALFORMED),
    ("missing member", _json(kind=...), MALFORMED),
    ("missing everything", b"{}", MALFORMED),
    ("array", b"[]", MALFORMED),
    ("string", b'"header"', MALFORMED),
    ("number", b"1", MALFORMED),
    ("not JSON", b"{{{", MALFORMED),
    ("trailing garbage", _json() + b"x", MALFORMED),
    ("empty", b"", MALFORMED),
    ("UTF-8 BOM", b"\xef\xbb\xbf" + _json(), MALFORMED),
    ("UTF-16", json.dumps(H0).encode("utf-16"), MALFORMED),
    ("not UTF-8", _json().replace(b'"cn"', b'"c\xff"'), MALFORMED),
    ("deep nesting in an extra member", _json()[:-1] + b',"x":' + b"[" * 20_000 + b"]" * 20_000 + b"}", MALFORMED),
    ("lone surrogate in a member name", _json()[:-1] + b',"\\ud800":1}', MALFORMED),
    # strings
    ("vin lower case", _json(vin=vin_for(1).lower()), MALFORMED),
    ("vin 16 characters", _json(vin=vin_for(1)[:16]), MALFORMED),
    ("vin non-ASCII digits", _json(vin=vin_for(1)[:16] + "\u0661"), MALFORMED),
    ("vin with NUL", _json(vin=vin_for(1)[:16] + "\u0000"), MALFORMED),
    ("vin as number", _json(vin=12345678901234567), MALFORMED),
    ("region empty", _json(region=""), MALFORMED),
    ("region 33 characters", _json(region="c" * 33), MALFORMED),
    ("region 4096 characters", _json(region="c" * 4096), MALFORMED),
    ("region non-ASCII", _json(region="\u00e9u"), MALFORMED),
    ("region with a space", _json(region="c n"), MALFORMED),
    ("region with NUL", _json(region="c\u0000"), MALFORMED),
    ("region lone surrogate (was a 500: response encoding)", _lit("region", '"\\ud800"'), MALFORMED),
    ("prev upper-case hex", _json(prev="AB" * 32), MALFORMED),
    ("prev 63 digits", _json(prev="0" * 63), MALFORMED),
    ("kind unknown", _json(kind="Telemetry"), MALFORMED),
    ("kind lone surrogate", _lit("kind", '"\\udfff"'), MALFORMED),
    ("payload arrow", _json(payload="arrow"), MALFORMED),
]


@pytest.mark.parametrize(("case", "header", "code"), HEADER_CASES, ids=[c[0] for c in HEADER_CASES])
def test_header_case_table(case: str, header: bytes, code: str | None) -> None:
    started = time.perf_counter()
    try:
        env = decode_envelope(_frame(header, KEY))
    except CarVaultError as e:
        assert code is not None, f"{case}: refused with {e.code}: {e.message}"
        assert isinstance(e, BadRequest) and e.status == 400
        assert e.code == code, f"{case}: {e.code} ({e.message}), expected {code}"
        assert e.message and len(e.message) < 400  # says why, without echoing what was sent
        assert len(json.dumps(e.to_json())) < 1000
    else:
        assert code is None, f"{case}: decoded, expected {code}"
        assert env.header == BatchHeader(**json.loads(header))
    assert time.perf_counter() - started < 1.0  # oversized literals are refused by their length, not converted


def test_header_to_json_round_trips_through_the_strict_parser() -> None:
    h = BatchHeader(**H0)
    assert BatchHeader.from_json_bytes(h.to_json_bytes()) == h


def test_header_span_constants_agree_with_the_payload_validator() -> None:
    assert validation.EARLIEST_MS == EARLIEST_MS
    assert LATEST_MS == 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
    assert MAX_SEQ <= MAX_SAFE_INT < 2**63 and MAX_ROWS == 2**31 - 1


# --------------------------------------------------------------------------- strict JSON
@pytest.mark.parametrize(
    ("text", "allow_floats", "match"),
    [
        ('{"a":1,"a":1}', False, "more than once"),
        ('{"a":{"b":1,"b":2}}', False, "more than once"),
        ('[{"x":1},{"y":1,"y":1}]', False, "more than once"),
        ('{"a":1,"\\u0061":2}', False, "more than once"),
        ("9007199254740992", False, "outside"),
        ("-9007199254740992", False, "outside"),
        ("12345678901234567", False, "more than 16 digits"),
        ("1" * 100_000, False, "more than 16 digits"),
        ("1.5", False, "fraction or exponent"),
        ("1e3", False, "fraction or exponent"),
        ("1e400", True, "too large"),
        ("-1e400", True, "too large"),
        ("NaN", True, "not JSON"),
        ("Infinity", True, "not JSON"),
        ("[-Infinity]", True, "not JSON"),
        ('"\\ud800"', False, "surrogate"),
        ('["ok", "\\udc00"]', False, "surrogate"),
        ("[" * 33 + "]" * 33, False, "nested deeper"),
        ("[" * 100_000 + "]" * 100_000, False, "nested deeper"),
        ("{'a': 1}", False, "not JSON"),
        ('{"a":1,}', False, "not JSON"),
        ("\ufeff{}", False, "not JSON"),
    ],
)
def test_strict_loads_refuses_what_parsers_read_differently(text: str, allow_floats: bool, match: str) -> None:
    with pytest.raises(JSONRejected, match=match):
        strict_loads(text, allow_floats=allow_floats)
    with pytest.raises(ValueError):  # callers that catch ValueError keep working
        strict_loads(text.encode("utf-8", "surrogatepass"), allow_floats=allow_floats)


def test_strict_loads_reads_plain_json_exactly() -> None:
    doc = '{"n": -9007199254740991, "m": 9007199254740991, "z": -0, "s": "\\u00e9\\ud83d\\ude97", "l": [true, null]}'
    assert strict_loads(doc) == {
        "n": -MAX_SAFE_INT,
        "m": MAX_SAFE_INT,
        "z": 0,
        "s": "\u00e9\U0001f697",
        "l": [True, None],
    }
    assert strict_loads(b'{"pre_s": 30.0, "g": 1e-3}', allow_floats=True) == {"pre_s": 30.0, "g": 0.001}
    assert strict_loads("[" * 32 + "]" * 32) is not None
    with pytest.raises(JSONRejected, match="not UTF-8"):
        strict_loads(b'{"a": "\xff"}')


def _event_table(meta: bytes) -> pa.Table:
    return TABLE.replace_schema_metadata({EVENT_META_KEY: meta})


@pytest.mark.parametrize(
    ("meta", "ok"),
    [
        (b'{"kind":"crash","trigger_ms":%d,"legal_basis":"GB 39732","pre_s":30.0,"post_s":10.0}', True),
        (b'{"kind":"crash","trigger_ms":%d,"legal_basis":"GB 39732","kind":"aeb"}', False),
        (b'{"kind":"crash","trigger_ms":%d,"legal_basis":"GB 39732","legal_basis":""}', False),
        (b'{"kind":"crash","trigger_ms":%d,"legal_basis":"GB 39732","pre_s":NaN}', False),
        (b'{"kind":"crash","trigger_ms":%d,"legal_basis":"GB 39732","pre_s":1e999}', False),
        (b'{"kind":"crash","trigger_ms":%d,"legal_basis":"GB 39732","n":99999999999999999999}', False),
        (b'{"kind":"crash","trigger_ms":%d.0,"legal_basis":"GB 39732"}', False),
        (b'{"kind":"crash","trigger_ms":%d,"legal_basis":"GB \\ud800"}', False),
    ],
)
def test_signed_event_metadata_has_one_reading(meta: bytes, ok: bool) -> None:
    header = BatchHeader(**{**H0, "kind": "event"})
    table = _event_table(meta % (BASE_MS + 1000))
    if ok:
        got = validation.event_meta(header, table)
        assert got is not None and got["pre_s"] == 30.0
    else:
        with pytest.raises(MalformedBatch, match="carvault.event"):
            validation.event_meta(header, table)


# --------------------------------------------------------------------------- the same, through a real server
UPLOAD = "/api/v1/ingest/batches"
HTTP_CASES = [
    "seq 2^63 (was a 500: database overflow)",
    "seq 5000 digits (was a 500: int conversion limit)",
    "region lone surrogate (was a 500: response encoding)",
    "seq 1.0",
    "seq true",
    "duplicate seq",
    "rows 0",
    "t0 > t1",
    "t0 before 2000",
    "t1 after 9999",
    "extra member",
    "missing member",
]
STATUS = {MALFORMED: 400, SPAN: 400, FUTURE: 400}


def _stored(region: Region) -> tuple[int, int]:
    with region.db.session() as s:
        return s.scalar(select(func.count()).select_from(BatchRecord)) or 0, region.log.size


def _post(http: httpx.Client, blob: bytes | Iterator[bytes], **headers: str) -> httpx.Response:
    return http.post(UPLOAD, content=blob, headers={"Content-Type": BATCH_MEDIA_TYPE, **headers})


@pytest.mark.parametrize("case", HTTP_CASES)
def test_header_refusals_over_http(http: httpx.Client, region: Region, vehicle: VehicleIdentity, case: str) -> None:
    header, code = next((h, c) for name, h, c in HEADER_CASES if name == case)
    assert code is not None and vehicle.vin == H0["vin"]
    r = _post(http, _frame(header, vehicle.key))
    assert r.status_code == STATUS[code], r.text
    assert r.json()["error"]["code"] == code
    assert _stored(region) == (0, 0)
    assert _post(http, _frame(_json(), vehicle.key)).status_code == 200  # and the car's real batch still goes in


def test_largest_seq_is_a_chain_question_not_a_crash(http: httpx.Client, vehicle: VehicleIdentity) -> None:
    r = _post(http, _frame(_json(seq=MAX_SEQ), vehicle.key))
    assert r.status_code == 409 and r.json()["error"]["code"] == "broken_chain"


# --------------------------------------------------------------------------- transport (§3.3)
def test_content_encoding_is_refused(http: httpx.Client, region: Region, vehicle: VehicleIdentity) -> None:
    blob = _frame(_json(), vehicle.key)
    for coding, body in (("gzip", gzip.compress(blob)), ("deflate", blob), ("br", blob), ("gzip, identity", blob)):
        r = _post(http, body, **{"Content-Encoding": coding})
        assert r.status_code == 415, (coding, r.text)
        assert r.json()["error"]["code"] == "unsupported_media_type"
    assert _stored(region) == (0, 0)
    r = _post(http, blob, **{"Content-Encoding": "identity"})
    assert r.status_code == 200, r.text


def test_chunked_body_is_read_like_any_other(http: httpx.Client, vehicle: VehicleIdentity) -> None:
    blob = _frame(_json(), vehicle.key)
    r = _post(http, iter([blob[:7], blob[7:1000], blob[1000:]]))  # no Content-Length: Transfer-Encoding chunked
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert r.status_code == 200, r.text
    assert r.json()["batch_hash"] == sha256_hex(blob)


def _small_limit(region: Region, limit: int) -> None:
    region.settings = region.settings.with_(max_batch_bytes=limit)
    region.gateway.settings = region.settings


def test_streamed_body_over_the_limit_is_refused(http: httpx.Client, region: Region, vehicle: VehicleIdentity) -> None:
    _small_limit(region, 4096)
    chunks = [b"\0" * 1024] * 4 + [b"\0"]  # one byte too many, only seen at the end of the stream
    r = _post(http, iter(chunks))
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    assert _stored(region) == (0, 0)


def test_announced_body_over_the_limit_is_refused_before_it_is_sent(server: Any, region: Region) -> None:
    _small_limit(region, 4096)
    request = (
        f"POST {UPLOAD} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {BATCH_MEDIA_TYPE}\r\n"
        "Content-Length: 1000000000\r\n\r\n"
    ).encode()
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(request)  # and not one byte of the gigabyte announced
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer[:200]
    assert json.loads(body)["error"]["code"] == "payload_too_large"


# --------------------------------------------------------------------------- time across batches (§2.4)
def _batch(v: VehicleIdentity, seq: int, prev: str, start_ms: int) -> bytes:
    table = drive_table(start_ms=start_ms, seconds=10, paths=["Vehicle.Speed"])
    return make_batch(vin=v.vin, region=v.region, seq=seq, prev=prev, table=table, key=v.key)


def test_spans_of_consecutive_batches_may_overlap_or_go_back(
    http: httpx.Client, region: Region, vehicle: VehicleIdentity
) -> None:
    """A car whose clock is corrected (GNSS fix, NTP step) keeps its chain: seq orders batches, not t0."""
    prev = GENESIS_PREV
    for seq, start in enumerate((BASE_MS, BASE_MS + 5_000, BASE_MS - 60_000), start=1):  # overlap, then back
        r = _post(http, _batch(vehicle, seq, prev, start))
        assert r.status_code == 200, r.text
        prev = r.json()["batch_hash"]
    assert _stored(region) == (3, 3)


# --------------------------------------------------------------------------- payload string columns (§2.2)
def _string_payload_table(kind: Callable[[pa.Array], pa.Array]) -> pa.Table:
    t = drive_table(seconds=2, paths=["Vehicle.Speed", "Vehicle.Body.Lights.Brake.IsActive"])
    name = "Vehicle.Body.Lights.Brake.IsActive"
    col = kind(t.column(name).combine_chunks())
    return t.set_column(t.column_names.index(name), pa.field(name, col.type), col)


@pytest.mark.parametrize(
    "kind",
    [lambda a: a.dictionary_encode(), lambda a: a.cast(pa.large_string()), lambda a: a.cast(pa.string_view())],
    ids=["dictionary", "large_string", "string_view"],
)
def test_string_columns_are_plain_utf8_only(
    http: httpx.Client, region: Region, vehicle: VehicleIdentity, kind: Callable[[pa.Array], pa.Array]
) -> None:
    table = _string_payload_table(kind)
    sink = io.BytesIO()
    pq.write_table(table, sink)  # with the Arrow schema stored, so it reads back with this Arrow type
    payload = sink.getvalue()
    assert pq.read_table(pa.BufferReader(payload)).schema.field(2).type != pa.string()
    ts = table.column("t").cast(pa.int64())
    header = _json(t0=ts[0].as_py(), t1=ts[-1].as_py(), rows=table.num_rows)
    r = _post(http, _frame(header, vehicle.key, payload))
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "wrong_signal_type"
    assert r.json()["error"]["signal"] == "Vehicle.Body.Lights.Brake.IsActive"
    assert _stored(region) == (0, 0)


def test_parquet_dictionary_encoding_of_a_plain_string_column_is_fine(
    http: httpx.Client, vehicle: VehicleIdentity
) -> None:
    table = _string_payload_table(lambda a: a)
    ts = table.column("t").cast(pa.int64())
    header = _json(t0=ts[0].as_py(), t1=ts[-1].as_py(), rows=table.num_rows)
    r = _post(http, _frame(header, vehicle.key, encode_payload(table)))  # the agent's writer dictionary-encodes it
    assert r.status_code == 200, r.text
