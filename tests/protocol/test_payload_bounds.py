"""A payload is decoded within bounds: a few KB of Parquet that would expand to gigabytes is refused first."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from carvault.errors import MalformedBatch, PayloadTooLarge
from carvault.protocol import TIME_TYPE, decode_payload, encode_payload
from tests.factories import BASE_MS, drive_table

TEXT = "Vehicle.CarVault.Camera.Redactions"


def _times(n: int) -> pa.Array:
    return pa.array(range(BASE_MS, BASE_MS + n), pa.int64()).cast(TIME_TYPE)


def _parquet(table: pa.Table, **options: object) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", **options)  # type: ignore[arg-type]
    return sink.getvalue()


def dictionary_bomb() -> bytes:
    """20,000 rows of one 50 kB string through a dictionary: 60 kB of Parquet, 1 GB once expanded."""
    n = 20_000
    texts = pa.DictionaryArray.from_arrays(pa.array([0] * n, pa.int32()), pa.array(["x" * 50_000]))
    return _parquet(pa.table({"t": _times(n), TEXT: texts}))


def plain_bomb() -> bytes:
    """300 rows of 50 kB strings, plainly encoded (15 MB expanded), for a 10 MB decode limit."""
    n = 300
    return _parquet(pa.table({"t": _times(n), TEXT: pa.array(["y" * 50_000] * n)}), use_dictionary=False)


@pytest.mark.parametrize(
    ("payload", "limit"),
    [(dictionary_bomb, 256 * 1024 * 1024), (plain_bomb, 10 * 1024 * 1024)],
    ids=["dictionary", "plain"],
)
def test_payloads_that_expand_past_the_limit_are_refused(payload: object, limit: int) -> None:
    with pytest.raises(PayloadTooLarge):
        decode_payload(payload(), max_bytes=limit)  # type: ignore[operator]


def test_too_many_rows_are_refused_from_the_footer() -> None:
    data = encode_payload(drive_table(seconds=10, paths=["Vehicle.Speed"]))
    with pytest.raises(PayloadTooLarge):
        decode_payload(data, max_rows=50)
    assert decode_payload(data, max_rows=100).num_rows == 100


def test_text_columns_come_back_plain_and_equal() -> None:
    table = pa.table(
        {"t": _times(3), "Vehicle.CarVault.Camera.Position": pa.array(["FRONT", None, "REAR"])},
    ).replace_schema_metadata({b"carvault.event": b"{}"})
    got = decode_payload(encode_payload(table))
    assert got.equals(table) and got.schema.metadata == {b"carvault.event": b"{}"}
    assert pa.types.is_string(got.schema.field("Vehicle.CarVault.Camera.Position").type)


def test_not_parquet_is_malformed() -> None:
    with pytest.raises(MalformedBatch):
        decode_payload(b"PAR1 this is not parquet PAR1")
