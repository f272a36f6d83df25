"""The Arrow compute kernels the wire format, the window and the EDR code use, called without ``pyarrow.compute``.

``import pyarrow.compute`` builds a Python wrapper, with its docstring, for each of Arrow's ~290 kernels: about 35 ms,
holding the GIL, the largest single import left in `carvault verify` (its target is the whole process in 0.3 s).
The kernels themselves live in ``pyarrow._compute``, which ``pyarrow.compute`` wraps and which loads in about 5 ms;
these functions call them there by name, with the defaults ``pyarrow.compute`` gives, so results are the same.

Methods such as ``Array.cast``, ``Table.take`` or ``DictionaryArray.dictionary_decode`` import ``pyarrow.compute``
on first use: code on the verifier's path calls these instead (a test checks the verifier never loads it).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from pyarrow._compute import CastOptions, SetLookupOptions, StrftimeOptions, call_function


def cast(values: Any, target: pa.DataType) -> Any:
    """``values.cast(target)``: a safe cast (overflow and truncation refused)."""
    return call_function("cast", [values], CastOptions.safe(target))


def take(data: Any, indices: Any) -> Any:
    """``data.take(indices)`` for an array, chunked array or table."""
    return call_function("take", [data, indices])


def dictionary_decode(values: pa.DictionaryArray) -> pa.Array:
    """The dictionary's values taken by the indices: a plain array of the value type.

    A ``take`` of the dictionary by the indices, as ``DictionaryArray.dictionary_decode`` does: 3.9 µs for 50 rows,
    where Arrow's ``dictionary_decode`` kernel takes 9.0 (payload decoding does this for every text column).
    """
    return take(values.dictionary, values.indices)


def fill_null(values: Any, fill: Any) -> Any:
    """``values`` with every null replaced by ``fill`` (a Python value of the values' type)."""
    return call_function("coalesce", [values, pa.scalar(fill, type=values.type)])


def is_valid(values: Any) -> Any:
    """Booleans: which entries are not null."""
    return call_function("is_valid", [values])


def is_in(values: Any, value_set: pa.Array) -> Any:
    """Booleans: which entries are among ``value_set`` (a null entry is False)."""
    return call_function("is_in", [values], SetLookupOptions(value_set))


def binary_length(values: Any) -> Any:
    """Byte length of each string or binary entry."""
    return call_function("binary_length", [values])


def total(values: Any) -> int:
    """Sum of an integer array's non-null entries (0 for none)."""
    return int(call_function("sum", [values]).as_py() or 0)


def strftime(values: Any, fmt: str) -> Any:
    """Timestamps as text in ``fmt`` (C/C++ strftime codes; ``%S`` with the fraction the unit holds)."""
    return call_function("strftime", [values], StrftimeOptions(format=fmt))
