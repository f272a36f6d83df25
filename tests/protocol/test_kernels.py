"""carvault.protocol.kernels calls Arrow's kernels without importing pyarrow.compute, and each gives what it gives.

Run in a fresh interpreter first, to see that none of them loads pyarrow.compute; then compared with pyarrow.compute
on random arrays with nulls, chunked arrays and tables.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from carvault.protocol import kernels

STRINGS = ["PRESSED", "RELEASED", "ON", "", "a,b", None]


def _arrays(seed: int) -> dict[str, pa.Array]:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 200))
    mask = rng.random(n) < 0.3
    return {
        "f32": pa.array(rng.normal(size=n).astype(np.float32), mask=mask),
        "i64": pa.array(rng.integers(-1000, 1000, n), mask=mask),
        "bool": pa.array(rng.random(n) < 0.5, mask=mask),
        "ts": pa.array(rng.integers(0, 2**41, n), mask=mask).cast(pa.timestamp("ms", tz="UTC")),
        "text": pa.array([STRINGS[i] for i in rng.integers(0, len(STRINGS), n)], pa.string()),
    }


def test_none_of_them_loads_pyarrow_compute() -> None:
    code = """
import json, sys
import pyarrow as pa
from carvault.protocol import kernels
a = pa.array([3, None, 1])
t = pa.array([1, None], pa.timestamp("ms", tz="UTC"))
d = pa.DictionaryArray.from_arrays(pa.array([0, 1, None], pa.int32()), pa.array(["x", "yz"]))
kernels.cast(t, pa.int64()); kernels.take(pa.table({"a": a}), pa.array([2, 0])); kernels.dictionary_decode(d)
kernels.fill_null(a, 0); kernels.is_valid(a); kernels.is_in(d.dictionary, pa.array(["x"]))
kernels.total(kernels.binary_length(d.dictionary)); kernels.strftime(t, "%Y")
print(json.dumps("pyarrow.compute" in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) is False


@pytest.mark.parametrize("seed", range(8))
def test_the_same_results_as_pyarrow_compute(seed: int) -> None:
    rng = np.random.default_rng(1000 + seed)
    arrays = _arrays(seed)
    n = len(arrays["i64"])
    table = pa.table(arrays)
    chunked = pa.chunked_array([arrays["i64"].slice(0, n // 2), arrays["i64"].slice(n // 2)], pa.int64())
    indices = pa.array(rng.integers(0, max(n, 1), n if n else 0), pa.int64())
    for name, arr in arrays.items():
        assert kernels.is_valid(arr).equals(pc.is_valid(arr)), name
        if name != "text":
            target = pa.int64() if name == "ts" else pa.float64()
            assert kernels.cast(arr, target).equals(pc.cast(arr, target)), name
        assert kernels.take(arr, indices).equals(pc.take(arr, indices)), name
    assert kernels.take(table, indices).equals(table.take(indices))
    assert kernels.take(chunked, indices).equals(chunked.take(indices))
    assert kernels.fill_null(chunked, 7).equals(pc.fill_null(chunked, 7))
    assert kernels.fill_null(arrays["f32"], 0.0).equals(pc.fill_null(arrays["f32"], 0.0))
    text = arrays["text"]
    value_set = pa.array(["PRESSED", "ON"], pa.string())
    assert kernels.is_in(text, value_set).equals(pc.is_in(text, value_set=value_set))
    encoded = text.dictionary_encode()
    assert kernels.dictionary_decode(encoded).equals(encoded.dictionary_decode())
    lengths = kernels.binary_length(encoded.dictionary)
    assert lengths.equals(pc.binary_length(encoded.dictionary))
    assert kernels.total(kernels.take(lengths, encoded.indices)) == (
        pc.sum(pc.take(lengths, encoded.indices)).as_py() or 0
    )
    ts = arrays["ts"]
    assert kernels.strftime(ts, "%Y-%m-%dT%H:%M:%SZ").equals(pc.strftime(ts, format="%Y-%m-%dT%H:%M:%SZ"))


def test_a_safe_cast_refuses_what_does_not_fit() -> None:
    with pytest.raises(pa.ArrowInvalid):
        kernels.cast(pa.array([1.5]), pa.int64())
    with pytest.raises(pa.ArrowInvalid):
        kernels.cast(pa.array([300]), pa.uint8())
