"""Strict JSON for signed evidence and protocol messages: one reading for every parser.

RFC 8259 lets parsers differ on duplicate member names (first wins, last wins, error), on numbers
(64-bit integers, doubles, bignums) and on unpaired surrogates. A signed document that two parsers read
differently is not evidence, so everything CarVault signs or verifies as JSON goes through
``strict_loads``, which accepts only the I-JSON subset (RFC 7493) and refuses:

- bytes that are not UTF-8 (a byte-order mark included);
- a member name that occurs twice in one object (compared after unescaping, so ``"seq"`` and
  ``"s\\u0065q"`` are the same name);
- an integer outside ``±(2**53 - 1)``, the range every JSON parser reads exactly (RFC 7493 §2.2); longer
  literals are refused by their length, before Python converts them to an ``int``;
- ``NaN``, ``Infinity`` and ``-Infinity`` (not JSON at all);
- a number with a fraction or an exponent (``1.0``, ``1e2``), unless the caller allows floats, and then
  only finite ones (``1e400`` is refused);
- a string holding an unpaired surrogate escape (``"\\ud800"``), which is no Unicode text (RFC 7493 §2.1);
- nesting deeper than ``max_depth``.

Every refusal is a ``JSONRejected`` (a ``ValueError``), so callers map one exception to their error code.
This module depends only on the standard library (the offline verifier uses it).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_SAFE_INT = 2**53 - 1  # I-JSON: exactly representable as an IEEE 754 double, so every parser agrees
_MAX_INT_DIGITS = len(str(MAX_SAFE_INT))  # 16: a longer literal is out of range, whatever its digits
_SURROGATE = re.compile("[\ud800-\udfff]")


class JSONRejected(ValueError):
    """The text is not strict JSON (malformed, ambiguous, or outside the I-JSON subset)."""


def _short(s: str, n: int = 40) -> str:
    r = repr(s)
    return r if len(r) <= n else r[: n - 3] + "..."


def _parse_int(literal: str) -> int:
    if len(literal.lstrip("-")) > _MAX_INT_DIGITS:
        raise JSONRejected(f"integer {literal[:24]}... has more than {_MAX_INT_DIGITS} digits")
    value = int(literal)
    if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
        raise JSONRejected(f"integer {literal} is outside ±(2^53-1), the range every JSON parser reads exactly")
    return value


def _refuse_float(literal: str) -> float:
    raise JSONRejected(f"number {literal[:24]} has a fraction or exponent; only integers are allowed here")


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise JSONRejected(f"number {literal[:24]} is too large for a double")
    return value


def _refuse_constant(name: str) -> Any:
    raise JSONRejected(f"{name} is not JSON")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise JSONRejected(f"member name {_short(k)} occurs more than once in an object")
            seen.add(k)
    return obj


def _check_tree(value: Any, max_depth: int) -> None:
    """Unpaired surrogates in any string (member names included) and the nesting depth, without recursion."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, str):
            if not v.isascii() and _SURROGATE.search(v):
                raise JSONRejected(f"string {_short(v)} holds an unpaired surrogate escape; it is not Unicode text")
        elif isinstance(v, dict | list):
            if depth >= max_depth:
                raise JSONRejected(f"JSON is nested deeper than {max_depth} levels")
            if isinstance(v, dict):
                stack.extend((k, depth + 1) for k in v)
                stack.extend((x, depth + 1) for x in v.values())
            else:
                stack.extend((x, depth + 1) for x in v)


def strict_loads(data: bytes | bytearray | memoryview | str, *, allow_floats: bool = False, max_depth: int = 32) -> Any:
    """Parse strict JSON (see the module docstring); raise ``JSONRejected`` for anything else."""
    if isinstance(data, bytes | bytearray | memoryview):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as e:
            raise JSONRejected(f"JSON text is not UTF-8: {e}") from None
    else:
        text = data
    try:
        value = json.loads(
            text,
            object_pairs_hook=_object,
            parse_int=_parse_int,
            parse_float=_finite_float if allow_floats else _refuse_float,
            parse_constant=_refuse_constant,
        )
    except JSONRejected:
        raise
    except json.JSONDecodeError as e:
        raise JSONRejected(f"not JSON: {e}") from None
    except RecursionError:
        raise JSONRejected(f"JSON is nested deeper than {max_depth} levels") from None
    except ValueError as e:  # anything else the standard parser refuses
        raise JSONRejected(f"not JSON: {e}") from None
    _check_tree(value, max_depth)
    return value
