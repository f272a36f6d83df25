"""Property tests of the live-frame codec (docs/protocol.md §8.2): one encoding, and only typed refusals."""

from __future__ import annotations

import string

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from carvault.errors import BadSignature, MalformedFrame
from carvault.protocol.live import decode_frame, encode_frame

KEY = Ed25519PrivateKey.generate()
VIN = "LRWTEST0000000001"
paths = st.text(alphabet=string.ascii_letters + ".", min_size=1, max_size=60)
scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=50),
)
values = st.dictionaries(paths, scalars, min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(values, st.integers(min_value=1, max_value=2**53 - 1), st.integers(min_value=0, max_value=2**62))
def test_round_trip(vals: dict, counter: int, t_ms: int) -> None:
    raw = encode_frame(VIN, "cn", counter, t_ms, vals, KEY)
    f = decode_frame(raw)
    assert (f.vin, f.region, f.counter, f.t_ms) == (VIN, "cn", counter, t_ms)
    assert f.values == vals and all(type(f.values[k]) is type(v) for k, v in vals.items())
    f.verify(KEY.public_key())
    assert encode_frame(VIN, "cn", counter, t_ms, f.values, KEY) == raw


@settings(max_examples=300, deadline=None)
@given(values, st.data())
def test_any_change_is_refused_with_a_typed_error(vals: dict, data: st.DataObject) -> None:
    raw = bytearray(encode_frame(VIN, "cn", 1, 1_763_000_000_000, vals, KEY))
    kind = data.draw(st.sampled_from(["flip", "cut", "append"]))
    if kind == "flip":
        i = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
        raw[i] ^= data.draw(st.integers(min_value=1, max_value=255))
    elif kind == "cut":
        raw = raw[: data.draw(st.integers(min_value=0, max_value=len(raw) - 1))]
    else:
        raw += data.draw(st.binary(min_size=1, max_size=8))
    try:
        decode_frame(bytes(raw)).verify(KEY.public_key())
    except (MalformedFrame, BadSignature):
        return
    raise AssertionError("a changed frame was accepted")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_escape_as_raw_errors(tail: bytes) -> None:
    for data in (tail, b"CVL1" + tail, b"CVL1" + VIN.encode() + b"\x02cn" + tail):
        try:
            decode_frame(data)
        except MalformedFrame:
            pass
