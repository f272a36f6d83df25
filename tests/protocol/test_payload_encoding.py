"""The agent's payload encoding, chosen chunk by chunk: each chunk in the form (zstd, LZ4_RAW or none; a float column
plain or byte-stream-split) whose bytes plus the codec's ``CODEC_CHARGE`` are least for the batch; the payload always
reads back as the same table."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from carvault.protocol import TIME_TYPE, decode_payload, encode_payload, read_payload
from carvault.protocol.envelope import CODEC_CHARGE, _write_payload
from tests.factories import BASE_MS

ROWS = 3_000
NOISY = "Vehicle.Acceleration.Vertical"  # full-precision noise: the bytes of a float barely repeat
QUANTISED = "Vehicle.Speed"  # a slow signal in 0.1 steps, as CAN scaling makes it: plain repeats byte for byte
ON_CHANGE = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"  # mostly null


def _table(seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    speed = np.round(np.cumsum(rng.normal(0, 0.3, ROWS)).clip(0, 60) * 10) / 10
    soc = np.full(ROWS, np.nan)
    soc[::100] = np.round(80 - np.arange(ROWS // 100) * 0.1, 1)
    return pa.table(
        {
            "t": pa.array(range(BASE_MS, BASE_MS + ROWS * 100, 100), pa.int64()).cast(TIME_TYPE),
            NOISY: pa.array(rng.normal(0, 1, ROWS).astype(np.float32)),
            QUANTISED: pa.array(speed.astype(np.float32)),
            ON_CHANGE: pa.array(soc.astype(np.float32), from_pandas=True),
            "Vehicle.IsMoving": pa.array(speed > 0),
        }
    )


def _encodings(payload: bytes) -> dict[str, set[str]]:
    rg = pq.read_metadata(pa.BufferReader(payload)).row_group(0)
    return {rg.column(i).path_in_schema: set(rg.column(i).encodings) for i in range(rg.num_columns)}


def _chunks(payload: bytes) -> dict[str, tuple[str, int]]:
    """Each column chunk's codec and stored bytes."""
    rg = pq.read_metadata(pa.BufferReader(payload)).row_group(0)
    return {
        rg.column(i).path_in_schema: (rg.column(i).compression, rg.column(i).total_compressed_size)
        for i in range(rg.num_columns)
    }


CHARGE = {"UNCOMPRESSED": CODEC_CHARGE["none"], "LZ4": CODEC_CHARGE["lz4_raw"], "ZSTD": CODEC_CHARGE["zstd"]}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_each_float_column_takes_the_smaller_layout(seed: int) -> None:
    table = _table(seed)
    payload = encode_payload(table)
    encodings = _encodings(payload)
    assert "BYTE_STREAM_SPLIT" in encodings[NOISY]
    assert "BYTE_STREAM_SPLIT" not in encodings[QUANTISED]
    floats, names = [NOISY, QUANTISED, ON_CHANGE], table.schema.names
    # Every form a chunk could take, written whole: each codec with the floats plain and split, and uncompressed.
    trials = [
        _chunks(_write_payload(table, {}, split=split, codecs=dict.fromkeys(names, codec)))
        for codec in ("zstd", "lz4_raw")
        for split in ([], floats)
    ] + [_chunks(_write_payload(table, {}, split=[], codecs={}))]
    codecs = set()
    for name, (codec, size) in _chunks(payload).items():
        cheapest = min(size + CHARGE[form] for trial in trials for form, size in [trial[name]])
        # within a few bytes: an uncompressed chunk's page header differs by a byte or two from a trial's count
        assert size + CHARGE[codec] <= cheapest + 4, name
        codecs.add(codec)
    assert "ZSTD" in codecs and len(codecs) > 1  # 3,000 rows of noise pay for zstd, not every chunk does
    assert decode_payload(payload).equals(table)


def test_small_chunks_stay_uncompressed() -> None:
    """Five seconds of a car: most chunks are too small for any codec to pay for its cost in the region."""
    table = _table(5).slice(0, 50)
    chunks = _chunks(encode_payload(table))
    assert chunks["Vehicle.IsMoving"][0] == "UNCOMPRESSED"  # 50 flags: a handful of bytes
    assert chunks[ON_CHANGE][0] == "UNCOMPRESSED"  # one value in 50 rows
    noisy = _table(5).slice(0, 600)
    assert _chunks(encode_payload(noisy))[NOISY][0] == "ZSTD"  # a minute of noise: zstd saves hundreds of bytes more
    steady = pa.table({"t": noisy["t"], QUANTISED: pa.array(np.repeat(np.arange(12, dtype=np.float32), 50))})
    # long repeats, which LZ4 gets nearly all of (pyarrow names the LZ4_RAW codec "LZ4")
    assert _chunks(encode_payload(steady))[QUANTISED][0] == "LZ4"
    assert decode_payload(encode_payload(table)).equals(table)


def test_uniform_choices_and_metadata_survive() -> None:
    """All noisy, all quantised, no floats at all: one layout for every column; the event description is kept."""
    rng = np.random.default_rng(7)
    times = pa.array(range(BASE_MS, BASE_MS + ROWS), pa.int64()).cast(TIME_TYPE)
    noisy = pa.table({"t": times, NOISY: pa.array(rng.normal(0, 1, ROWS).astype(np.float32))})
    flat = pa.table({"t": times, QUANTISED: pa.array(np.full(ROWS, 12.5, np.float32))})
    flags = pa.table({"t": times, "Vehicle.IsMoving": pa.array(rng.random(ROWS) > 0.5)})
    assert "BYTE_STREAM_SPLIT" in _encodings(encode_payload(noisy))[NOISY]
    assert "BYTE_STREAM_SPLIT" not in _encodings(encode_payload(flat))[QUANTISED]
    described = flags.replace_schema_metadata({"carvault.event": "crash"})
    back = decode_payload(encode_payload(described))
    assert back.schema.metadata == {b"carvault.event": b"crash"}
    assert back.replace_schema_metadata(None).equals(flags)


def test_an_accepted_payload_reads_back_as_it_decodes() -> None:
    """``read_payload`` (stored batches, already checked) gives the table ``decode_payload`` gave on the way in."""
    table = _table(4).append_column("Vehicle.Body.Lights.Brake.IsActive", pa.array(["ACTIVE", "INACTIVE", None] * 1000))
    payload = encode_payload(table.replace_schema_metadata({"carvault.event": "crash"}))
    read, decoded = read_payload(payload), decode_payload(payload)
    assert read.equals(decoded) and read.schema.metadata == decoded.schema.metadata
    assert read.replace_schema_metadata(None).equals(table)
