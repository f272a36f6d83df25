"""Declarative DBC-to-VSS mapping files (TOML) and the engine that applies them (docs/can-import.md).

A mapping file has one ``[signals."<VSS path>"]`` table per VSS signal, naming its source (one DBC
signal, or an expression over several) and how to turn it into the catalogue's signal::

    value = signal | expr            (DBC physical values, resampled on the grid; null choices -> null)
          -> when                    (a condition; false -> null)
          -> map / default           (DBC value names or numbers -> VSS values)
          -> * scale + offset
          -> unit conversion         (from ``unit`` to the catalogue's unit)
          -> clip                    (declared clamps only; the engine never clamps on its own)
          -> catalogue type          (rounded to its resolution; outside its range -> null, counted)

Resampling: each signal is sampled on its rate's grid (``rate_hz``, by default the catalogue's: 10 Hz
-> every 100 ms, 1 Hz -> whole seconds, UTC) by taking the last frame at or before the grid time. A
grid time gets a row only if the bus carried some frame in the step before it (nothing is invented
while the car sleeps or before the first frame); a value whose message is older than ``stale_s``
(default 1 s; for messages sent less often, 1.5 times their median period in the log) is null.
"""

from __future__ import annotations

import ast
import difflib
import fnmatch
import math
import operator
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from carvault.errors import BadRequest, NotFound, UnknownSignal
from carvault.signals import Catalogue, Signal, catalogue

SHIPPED_PACKAGE = "carvault"
SHIPPED_FOLDER = "data/can"
RATES_HZ = (1, 2, 5, 10)
DEFAULT_STALE_S = 1.0

# Units: alias -> (dimension, factor, offset) with base = value * factor + offset.
_UNIT_TABLE: dict[str, tuple[str, float, float]] = {}


def _units(dim: str, factor: float, *names: str, offset: float = 0.0) -> None:
    for n in names:
        _UNIT_TABLE[n] = (dim, factor, offset)


_units("speed", 1.0, "km/h", "kph", "kmh", "kilometer/h")
_units("speed", 3.6, "m/s", "mps")
_units("speed", 1.609344, "mph")
_units("acceleration", 1.0, "m/s^2", "m/s2", "m/s²", "mps2")
_units("acceleration", 9.80665, "g")
_units("angle", 1.0, "degrees", "deg", "degree", "°")
_units("angle", 180.0 / math.pi, "rad", "radian")
# Rotation rates share one dimension: 1 rpm = 6 degrees/s.
_units("rotation", 1.0, "degrees/s", "deg/s", "°/s")
_units("rotation", 180.0 / math.pi, "rad/s")
_units("rotation", 6.0, "rpm", "RPM", "1/min")
_units("ratio", 1.0, "percent", "%", "pct")
_units("ratio", 100.0, "fraction", "ratio")
_units("torque", 1.0, "Nm", "N*m", "N.m")
_units("current", 1.0, "A")
_units("current", 0.001, "mA")
_units("voltage", 1.0, "V")
_units("voltage", 0.001, "mV")
_units("power", 1.0, "W")
_units("power", 1000.0, "kW")
_units("pressure", 1.0, "kPa")
_units("pressure", 100.0, "bar")
_units("pressure", 0.1, "hPa", "mbar")
_units("pressure", 0.001, "Pa")
_units("pressure", 6.894757293168361, "psi")
_units("temperature", 1.0, "Celsius", "degC", "°C", "C")
_units("temperature", 1.0, "K", offset=-273.15)
_units("temperature", 5.0 / 9.0, "Fahrenheit", "degF", "°F", "F", offset=-32.0 * 5.0 / 9.0)
_units("length", 1.0, "m")
_units("length", 0.001, "mm")
_units("length", 0.01, "cm")
_units("length", 1000.0, "km")
_units("length", 1609.344, "mi")
_units("frequency", 1.0, "bpm")
_units("time", 1.0, "s", "sec")
_units("time", 60.0, "min")
_units("time", 3600.0, "h", "hour")
_units("energy", 1.0, "kWh")
_units("energy", 0.001, "Wh")
_units("none", 1.0, "", "1")


def known_unit(name: str) -> bool:
    """True if the engine can convert from or to this unit name."""
    return name in _UNIT_TABLE


def convert_units(values: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Convert ``values`` from unit ``src`` to unit ``dst`` (both names from the unit table)."""
    if src == dst:
        return values
    d1, f1, o1 = _UNIT_TABLE[src]
    d2, f2, o2 = _UNIT_TABLE[dst]
    if d1 != d2:
        raise ValueError(f"cannot convert {src} to {dst}")
    return ((values * f1 + o1) - o2) / f2


def _mapping_error(message: str, **details: Any) -> BadRequest:
    return BadRequest(message, kind="invalid_can_mapping", **details)


# --------------------------------------------------------------------------------------- the file
_RULE_KEYS = {
    "message",
    "signal",
    "expr",
    "when",
    "map",
    "default",
    "scale",
    "offset",
    "unit",
    "clip",
    "rate_hz",
    "stale_s",
    "null",
    "note",
}
_HEAD_KEYS = {"name", "description", "dbc", "stale_s", "null_choices", "note"}


@dataclass(frozen=True)
class Rule:
    """How one VSS signal is made from DBC signals."""

    path: str
    message: str | None
    signal: str | None
    expr: str | None
    when: str | None
    map: dict[str, Any] | None
    default: Any
    scale: float
    offset: float
    unit: str | None
    clip: tuple[float, float] | None
    rate_hz: int
    stale_s: float
    null: tuple[Any, ...]


@dataclass(frozen=True)
class CanMapping:
    """A parsed, catalogue-checked mapping file (not yet bound to a DBC)."""

    name: str
    description: str
    dbc: str | None
    stale_s: float
    null_choices: tuple[str, ...]
    rules: tuple[Rule, ...]
    source: str

    def bind(self, db: Any, *, source: str = "the DBC") -> BoundMapping:
        """Check every rule against the DBC and compile it; raise a clear error for the first bad one."""
        return BoundMapping(self, db, source)


def shipped_mappings() -> list[str]:
    """Names of the mapping files CarVault ships (``carvault/data/can/*.toml``)."""
    folder = resources.files(SHIPPED_PACKAGE).joinpath(SHIPPED_FOLDER)
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def _read_source(spec: str | Path) -> tuple[str, str]:
    path = Path(spec)
    if path.is_file():
        return path.read_text(encoding="utf-8"), str(path)
    name = str(spec).removesuffix(".toml")
    shipped = resources.files(SHIPPED_PACKAGE).joinpath(SHIPPED_FOLDER, f"{name}.toml")
    if "/" not in name and shipped.is_file():
        return shipped.read_text(encoding="utf-8"), f"{name} (shipped)"
    raise NotFound(
        f"mapping {spec} not found: neither a file nor one of the shipped mappings ({', '.join(shipped_mappings())})",
        kind="mapping_missing",
        mapping=str(spec),
    )


def _num(value: Any, what: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _mapping_error(f"{where}: {what} must be a number, got {value!r}")
    return float(value)


def load_mapping(spec: str | Path, *, cat: Catalogue | None = None) -> CanMapping:
    """Read a mapping file (a path, or the name of a shipped one) and check it against the catalogue."""
    text, source = _read_source(spec)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise _mapping_error(f"{source} is not valid TOML: {e}", mapping=source) from None
    return parse_mapping(doc, source=source, cat=cat)


def parse_mapping(doc: dict[str, Any], *, source: str = "<mapping>", cat: Catalogue | None = None) -> CanMapping:
    """Check a decoded TOML mapping document against the catalogue."""
    cat = cat or catalogue()
    extra = set(doc) - {"mapping", "signals"}
    if extra:
        raise _mapping_error(f'{source}: unknown top-level tables {sorted(extra)} (use [mapping] and [signals."..."])')
    head = doc.get("mapping", {})
    bad = set(head) - _HEAD_KEYS
    if bad:
        raise _mapping_error(f"{source}: unknown keys in [mapping]: {sorted(bad)}")
    stale = _num(head.get("stale_s", DEFAULT_STALE_S), "stale_s", source)
    nulls = head.get("null_choices", [])
    if not isinstance(nulls, list) or not all(isinstance(x, str) for x in nulls):
        raise _mapping_error(f"{source}: null_choices must be a list of value-name patterns")
    signals = doc.get("signals")
    if not isinstance(signals, dict) or not signals:
        raise _mapping_error(f'{source}: no [signals."<VSS path>"] tables')
    rules = tuple(_parse_rule(path, body, cat, stale, source) for path, body in signals.items())
    return CanMapping(
        name=str(head.get("name", Path(source).stem)),
        description=str(head.get("description", "")),
        dbc=head.get("dbc"),
        stale_s=stale,
        null_choices=tuple(nulls),
        rules=rules,
        source=source,
    )


def _parse_rule(path: str, body: Any, cat: Catalogue, stale: float, source: str) -> Rule:
    where = f'{source} [signals."{path}"]'
    sig = cat.get(path)
    if sig is None:
        close = difflib.get_close_matches(path, cat.paths, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UnknownSignal(
            f"{where}: {path!r} is not a VSS path in the signal catalogue{hint}", signal=path, mapping=source
        )
    if not isinstance(body, dict):
        raise _mapping_error(f"{where} must be a table")
    bad = set(body) - _RULE_KEYS
    if bad:
        raise _mapping_error(f"{where}: unknown keys {sorted(bad)} (allowed: {sorted(_RULE_KEYS)})")
    if ("signal" in body) == ("expr" in body):
        raise _mapping_error(f"{where}: give exactly one of 'signal' or 'expr'")
    for k in ("message", "signal", "expr", "when", "unit"):
        if k in body and not isinstance(body[k], str):
            raise _mapping_error(f"{where}: {k} must be a string")
    if "message" in body and "signal" not in body:
        raise _mapping_error(f"{where}: 'message' goes with 'signal' (in an expr write Message.Signal)")
    mp = body.get("map")
    if mp is not None and (not isinstance(mp, dict) or not mp):
        raise _mapping_error(f"{where}: map must be a non-empty table of DBC value -> VSS value")
    if (mp is not None or sig.arrow_type == pa.string()) and ("scale" in body or "offset" in body):
        raise _mapping_error(f"{where}: scale/offset do not apply to mapped values (write the VSS values in the map)")
    if sig.arrow_type == pa.string() and mp is None:
        raise _mapping_error(f"{where}: {path} is an enumeration; give a map to its values {list(sig.allowed or ())}")
    if mp is not None:
        for v in [*mp.values(), *([body["default"]] if "default" in body else [])]:
            _check_vss_value(sig, v, where)
    elif "default" in body:
        raise _mapping_error(f"{where}: default only goes with a map")
    unit = body.get("unit")
    if unit is not None and unit not in _UNIT_TABLE:
        raise _mapping_error(f"{where}: unknown unit {unit!r} (known: {', '.join(sorted(_UNIT_TABLE))})")
    if sig.unit and unit is not None and sig.unit in _UNIT_TABLE and _UNIT_TABLE[unit][0] != _UNIT_TABLE[sig.unit][0]:
        raise _mapping_error(f"{where}: unit {unit} cannot be converted to {path}'s unit {sig.unit}")
    clip = body.get("clip")
    if clip is not None:
        if not (isinstance(clip, list) and len(clip) == 2):
            raise _mapping_error(f"{where}: clip must be [low, high]")
        clip = (_num(clip[0], "clip", where), _num(clip[1], "clip", where))
    rate = body.get("rate_hz", sig.rate_hz)
    if rate not in RATES_HZ:
        raise _mapping_error(f"{where}: rate_hz must be one of {RATES_HZ}")
    nulls = body.get("null", [])
    if not isinstance(nulls, list):
        raise _mapping_error(f"{where}: null must be a list of DBC value names or raw numbers")
    return Rule(
        path=path,
        message=body.get("message"),
        signal=body.get("signal"),
        expr=body.get("expr"),
        when=body.get("when"),
        map=mp,
        default=body.get("default"),
        scale=_num(body.get("scale", 1.0), "scale", where),
        offset=_num(body.get("offset", 0.0), "offset", where),
        unit=unit,
        clip=clip,
        rate_hz=int(rate),
        stale_s=_num(body.get("stale_s", stale), "stale_s", where),
        null=tuple(nulls),
    )


def _check_vss_value(sig: Signal, v: Any, where: str) -> None:
    if sig.arrow_type == pa.string():
        if v not in (sig.allowed or ()):
            raise _mapping_error(f"{where}: {v!r} is not one of {sig.path}'s values {list(sig.allowed or ())}")
    elif sig.datatype == "boolean":
        if not isinstance(v, bool):
            raise _mapping_error(f"{where}: {sig.path} is boolean; map to true/false, not {v!r}")
    elif isinstance(v, bool) or not isinstance(v, int | float):
        raise _mapping_error(f"{where}: {sig.path} is {sig.datatype}; map to numbers, not {v!r}")
    elif (sig.min is not None and v < sig.min) or (sig.max is not None and v > sig.max):
        raise _mapping_error(f"{where}: {v} is outside {sig.path}'s range {sig.min}..{sig.max}")


# ------------------------------------------------------------------------------------ expressions
Value = tuple[Any, Any]  # (float64 values or scalar, bool validity or scalar)
Env = Callable[[tuple[str, str]], np.ndarray]

_BIN: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_CMP: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
_FUNCS = ("abs", "min", "max", "clip", "where", "mean")


class _Resolver:
    """Finds DBC signals by ``Message.Signal`` or by a signal name unique in the DBC."""

    def __init__(self, db: Any, source: str) -> None:
        self.db = db
        self.source = source
        self.by_name: dict[str, list[Any]] = {}
        for m in db.messages:
            for s in m.signals:
                self.by_name.setdefault(s.name, []).append(m)

    def resolve(self, where: str, signal: str, message: str | None = None) -> tuple[Any, Any]:
        if message is None and "." in signal:
            message, signal = signal.split(".", 1)
        if message is not None:
            try:
                msg = self.db.get_message_by_name(message)
            except KeyError:
                close = difflib.get_close_matches(message, [m.name for m in self.db.messages], n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise BadRequest(
                    f"{where}: {self.source} has no message {message!r}{hint}",
                    kind="unknown_dbc_signal",
                    dbc_message=message,
                ) from None
            names = [s.name for s in msg.signals]
            if signal not in names:
                close = difflib.get_close_matches(signal, names, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise BadRequest(
                    f"{where}: message {message} in {self.source} has no signal {signal!r}{hint}",
                    kind="unknown_dbc_signal",
                    dbc_message=message,
                    signal=signal,
                )
            return msg, msg.get_signal_by_name(signal)
        found = self.by_name.get(signal, [])
        if not found:
            close = difflib.get_close_matches(signal, list(self.by_name), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise BadRequest(
                f"{where}: {self.source} has no signal {signal!r}{hint}", kind="unknown_dbc_signal", signal=signal
            )
        if len(found) > 1:
            raise BadRequest(
                f"{where}: signal {signal!r} is in several messages ({', '.join(m.name for m in found)});"
                " write Message.Signal",
                kind="unknown_dbc_signal",
                signal=signal,
            )
        return found[0], found[0].get_signal_by_name(signal)


def _choice_value(sig: Any, name: Any, where: str) -> float:
    """The physical value a DBC value name (or a number) stands for."""
    if isinstance(name, bool):
        return 1.0 if name else 0.0
    if isinstance(name, int | float):
        return float(name)
    if name in ("true", "false"):
        return 1.0 if name == "true" else 0.0
    for raw, label in (sig.choices or {}).items() if sig is not None else ():
        if str(label) == name:
            return float(raw) * float(sig.scale) + float(sig.offset)
    try:
        return float(name)
    except ValueError:
        pass
    choices = ", ".join(str(v) for v in (sig.choices or {}).values()) if sig is not None else ""
    raise BadRequest(
        f"{where}: {getattr(sig, 'name', 'the value')} has no value named {name!r}"
        + (f" (values: {choices})" if choices else ""),
        kind="invalid_can_mapping",
    )


def _kleene_and(a: Value, b: Value) -> Value:
    ta, tb = np.asarray(a[0]) != 0, np.asarray(b[0]) != 0
    oa, ob = np.asarray(a[1], bool), np.asarray(b[1], bool)
    false = (oa & ~ta) | (ob & ~tb)
    return np.where(false, 0.0, 1.0), false | (oa & ob)


def _kleene_or(a: Value, b: Value) -> Value:
    ta, tb = np.asarray(a[0]) != 0, np.asarray(b[0]) != 0
    oa, ob = np.asarray(a[1], bool), np.asarray(b[1], bool)
    true = (oa & ta) | (ob & tb)
    return np.where(true, 1.0, 0.0), true | (oa & ob)


class Expression:
    """A safe arithmetic/logical expression over DBC signals, evaluated on whole arrays."""

    def __init__(self, text: str, resolver: _Resolver, where: str) -> None:
        self.text = text
        self.where = where
        self.resolver = resolver
        self.refs: dict[tuple[str, str], Any] = {}
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except SyntaxError as e:
            raise _mapping_error(f"{where}: cannot parse expression {text!r}: {e.msg}") from None
        self.fn = self._compile(tree.body)

    def _fail(self, node: ast.AST, why: str) -> BadRequest:
        return _mapping_error(f"{self.where}: {why} in {self.text!r} (at {ast.unparse(node)!r})")

    def _ref(self, node: ast.AST) -> tuple[tuple[str, str], Any] | None:
        if isinstance(node, ast.Name) and node.id not in _FUNCS:
            msg, sig = self.resolver.resolve(self.where, node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            msg, sig = self.resolver.resolve(self.where, node.attr, node.value.id)
        else:
            return None
        key = (msg.name, sig.name)
        self.refs[key] = sig
        return key, sig

    def _constant(self, node: ast.AST, against: Any) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, str | int | float | bool):
            if isinstance(node.value, str) and against is None:
                raise self._fail(node, "a value name can only be compared with a signal")
            return _choice_value(against, node.value, self.where)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
            return -self._constant(node.operand, None)
        raise self._fail(node, "expected a constant")

    def _compile(self, node: ast.AST) -> Callable[[Env], Value]:
        ref = self._ref(node)
        if ref is not None:
            key = ref[0]

            def load(env: Env) -> Value:
                v = env(key)
                return v, ~np.isnan(v)

            return load
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool | int | float):
                c = float(node.value)
                return lambda env: (c, True)
            raise self._fail(node, "strings are only allowed in comparisons with a signal")
        if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
            op, left, right = _BIN[type(node.op)], self._compile(node.left), self._compile(node.right)

            def binop(env: Env) -> Value:
                (a, oa), (b, ob) = left(env), right(env)
                with np.errstate(all="ignore"):
                    v = op(np.asarray(a, np.float64), np.asarray(b, np.float64))
                return v, np.asarray(oa & ob) & np.isfinite(v)

            return binop
        if isinstance(node, ast.UnaryOp):
            inner = self._compile(node.operand)
            if isinstance(node.op, ast.USub):
                return lambda env: (lambda x: (-np.asarray(x[0], np.float64), x[1]))(inner(env))
            if isinstance(node.op, ast.UAdd):
                return inner
            if isinstance(node.op, ast.Not):
                return lambda env: (lambda x: ((np.asarray(x[0]) == 0).astype(np.float64), x[1]))(inner(env))
        if isinstance(node, ast.BoolOp):
            parts = [self._compile(v) for v in node.values]
            join = _kleene_and if isinstance(node.op, ast.And) else _kleene_or

            def boolop(env: Env) -> Value:
                acc = parts[0](env)
                for p in parts[1:]:
                    acc = join(acc, p(env))
                return acc

            return boolop
        if isinstance(node, ast.Compare):
            return self._compare(node)
        if isinstance(node, ast.IfExp):
            return self._where(self._compile(node.test), self._compile(node.body), self._compile(node.orelse))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS:
            if node.keywords:
                raise self._fail(node, "keyword arguments are not supported")
            args = [self._compile(a) for a in node.args]
            return self._call(node, node.func.id, args)
        raise self._fail(
            node,
            f"{type(node).__name__} is not allowed (use + - * / // % **, comparisons, and/or/not, "
            f"x if c else y, {', '.join(_FUNCS)})",
        )

    @staticmethod
    def _where(
        c: Callable[[Env], Value], a: Callable[[Env], Value], b: Callable[[Env], Value]
    ) -> Callable[[Env], Value]:
        def where(env: Env) -> Value:
            (cv, co), (av, ao), (bv, bo) = c(env), a(env), b(env)
            pick = np.asarray(cv) != 0
            out = np.asarray(np.where(pick, av, bv), np.float64)
            return out, np.asarray(co) & np.where(pick, ao, bo)

        return where

    def _call(self, node: ast.Call, name: str, args: list[Callable[[Env], Value]]) -> Callable[[Env], Value]:
        arity = {"abs": (1, 1), "clip": (3, 3), "where": (3, 3), "min": (2, 99), "max": (2, 99), "mean": (1, 99)}
        lo, hi = arity[name]
        if not lo <= len(args) <= hi:
            raise self._fail(node, f"{name}() takes {lo if lo == hi else f'{lo} or more'} arguments")
        if name == "where":
            return self._where(*args)

        def call(env: Env) -> Value:
            vals = [a(env) for a in args]
            ok = np.asarray(vals[0][1])
            for v in vals[1:]:
                ok = ok & np.asarray(v[1])
            xs = [np.asarray(v[0], np.float64) for v in vals]
            if name == "abs":
                out = np.abs(xs[0])
            elif name == "clip":
                out = np.clip(xs[0], xs[1], xs[2])
            elif name == "min":
                out = np.minimum.reduce(np.broadcast_arrays(*xs))
            elif name == "max":
                out = np.maximum.reduce(np.broadcast_arrays(*xs))
            else:
                out = np.add.reduce(np.broadcast_arrays(*xs)) / len(xs)
            return out, ok

        return call

    @staticmethod
    def _const_fn(c: float) -> Callable[[Env], Value]:
        return lambda env: (c, True)

    def _compare(self, node: ast.Compare) -> Callable[[Env], Value]:
        steps: list[Callable[[Env], Value]] = []
        left_node = node.left
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            lref, rref = self._ref(left_node), self._ref(right_node)
            if isinstance(op, ast.In | ast.NotIn):
                if not isinstance(right_node, ast.Tuple | ast.List | ast.Set):
                    raise self._fail(node, '\'in\' needs a literal list, e.g. X in ("A", "B")')
                against = lref[1] if lref else None
                values = np.array([self._constant(e, against) for e in right_node.elts], np.float64)
                left = self._compile(left_node)
                negate = isinstance(op, ast.NotIn)

                def member(env: Env, left: Any = left, values: Any = values, negate: bool = negate) -> Value:
                    v, ok = left(env)
                    hit = np.isin(np.asarray(v, np.float64), values)
                    return (~hit if negate else hit).astype(np.float64), ok

                steps.append(member)
            else:
                if isinstance(right_node, ast.Constant) and isinstance(right_node.value, str):
                    right = self._const_fn(self._constant(right_node, lref[1] if lref else None))
                else:
                    right = self._compile(right_node)
                if isinstance(left_node, ast.Constant) and isinstance(left_node.value, str):
                    left = self._const_fn(self._constant(left_node, rref[1] if rref else None))
                else:
                    left = self._compile(left_node)
                fn = _CMP[type(op)]

                def compare(env: Env, left: Any = left, right: Any = right, fn: Any = fn) -> Value:
                    (a, oa), (b, ob) = left(env), right(env)
                    return np.asarray(fn(np.asarray(a), np.asarray(b)), np.float64), np.asarray(oa) & np.asarray(ob)

                steps.append(compare)
            left_node = right_node

        def chain(env: Env) -> Value:
            acc = steps[0](env)
            for s in steps[1:]:
                acc = _kleene_and(acc, s(env))
            return acc

        return chain


# --------------------------------------------------------------------------------------- binding
@dataclass
class MappedTable:
    """The VSS table a mapping made, with per-signal sample counts and values refused as out of range."""

    table: pa.Table
    samples: dict[str, int]
    out_of_range: dict[str, int]


@dataclass(frozen=True)
class _Bound:
    rule: Rule
    sig: Signal
    value: Callable[[Env], Value]
    when: Callable[[Env], Value] | None
    inputs: dict[tuple[str, str], Any]
    nulls: dict[tuple[str, str], np.ndarray]
    map_keys: np.ndarray | None
    map_values: np.ndarray | None
    default: float | None
    src_unit: str | None


def _vss_code(sig: Signal, v: Any) -> float:
    """A VSS value as the float the engine carries (booleans 0/1, enumerations their index)."""
    if sig.arrow_type == pa.string():
        return float((sig.allowed or ()).index(v))
    return float(v)


class BoundMapping:
    """A mapping checked against one DBC: knows which messages and signals to decode, and applies itself."""

    def __init__(self, mapping: CanMapping, db: Any, source: str) -> None:
        self.mapping = mapping
        self.resolver = _Resolver(db, source)
        self.rules = [self._bind(r) for r in mapping.rules]
        wanted: dict[str, set[str]] = {}
        for b in self.rules:
            for msg, sig in b.inputs:
                wanted.setdefault(msg, set()).add(sig)
        self.wanted = {m: sorted(s) for m, s in wanted.items()}
        self.tick_ms = 1000 // max(b.rule.rate_hz for b in self.rules)

    def _bind(self, rule: Rule) -> _Bound:
        where = f'{self.mapping.source} [signals."{rule.path}"]'
        sig = catalogue()[rule.path]
        src_sig = None
        if rule.signal is not None:
            msg, src_sig = self.resolver.resolve(where, rule.signal, rule.message)
            key = (msg.name, src_sig.name)
            inputs = {key: src_sig}

            def load(env: Env, key: tuple[str, str] = key) -> Value:
                v = env(key)
                return v, ~np.isnan(v)

            value: Callable[[Env], Value] = load
        else:
            expr = Expression(rule.expr or "", self.resolver, where)
            inputs = dict(expr.refs)
            value = expr.fn
        when = None
        if rule.when:
            cond = Expression(rule.when, self.resolver, where + " when")
            inputs.update(cond.refs)
            when = cond.fn
        nulls: dict[tuple[str, str], np.ndarray] = {}
        used: set[int] = set()
        for key, s in inputs.items():
            vals = []
            for raw, label in (s.choices or {}).items():
                if any(fnmatch.fnmatchcase(str(label), pat) for pat in self.mapping.null_choices):
                    vals.append(float(raw) * float(s.scale) + float(s.offset))
            for i, item in enumerate(rule.null):
                # A name applies to the inputs that have it; a number to every input.
                try:
                    vals.append(_choice_value(s, item, where))
                    used.add(i)
                except BadRequest:
                    continue
            if vals:
                nulls[key] = np.array(sorted(set(vals)), np.float64)
        unused = [item for i, item in enumerate(rule.null) if i not in used]
        if unused:
            raise _mapping_error(f"{where}: null value {unused[0]!r} is not a value of any input signal")
        map_keys = map_values = None
        default = None
        if rule.map is not None:
            map_keys = np.array([_choice_value(src_sig, k, where) for k in rule.map], np.float64)
            map_values = np.array([_vss_code(sig, v) for v in rule.map.values()], np.float64)
            if rule.default is not None:
                default = _vss_code(sig, rule.default)
        src_unit = None
        if sig.unit and rule.map is None and sig.datatype != "boolean":
            src_unit = rule.unit or self._infer_unit(inputs, sig, where)
            if src_unit not in _UNIT_TABLE:
                raise _mapping_error(
                    f"{where}: the DBC unit {src_unit!r} is not one CarVault converts; "
                    f'say which unit the value is in (unit = "...")'
                )
            if sig.unit in _UNIT_TABLE and _UNIT_TABLE[src_unit][0] != _UNIT_TABLE[sig.unit][0]:
                raise _mapping_error(
                    f"{where}: cannot convert {src_unit} to {sig.unit}; scale the value and "
                    f'declare its unit (unit = "{sig.unit}")'
                )
        return _Bound(rule, sig, value, when, inputs, nulls, map_keys, map_values, default, src_unit)

    @staticmethod
    def _infer_unit(inputs: dict[tuple[str, str], Any], sig: Signal, where: str) -> str:
        """The common DBC unit of the inputs, or the catalogue's unit when the DBC gives none."""
        units = {(s.unit or "").strip() for s in inputs.values()} - {""}
        units = {u for u in units if not (u in _UNIT_TABLE and _UNIT_TABLE[u][0] == "none")}
        if len(units) > 1:
            raise _mapping_error(
                f"{where}: the inputs have different units {sorted(units)}; declare the unit of "
                f'the result (unit = "...")'
            )
        return units.pop() if units else sig.unit

    # ------------------------------------------------------------------------------------ apply
    def apply(self, decoded: Any) -> MappedTable:
        """Resample, evaluate and type every rule over a ``DecodedLog``; rows with no value are dropped."""
        ticks = np.asarray(decoded.ticks, np.int64)
        resampled = _Resampler(decoded, ticks)
        cat = catalogue()
        paths = [p for p in cat.paths if any(b.rule.path == p for b in self.rules)]
        by_path = {b.rule.path: b for b in self.rules}
        columns: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        out_of_range: dict[str, int] = {}
        for p in paths:
            vals, ok, inside = _evaluate(by_path[p], resampled, ticks)
            out_of_range[p] = int((ok & ~inside).sum())
            columns[p] = (vals, ok & inside)
        return _assemble(cat, paths, ticks, columns, out_of_range)


class _Resampler:
    """A decoded signal's last value at each output tick, or NaN when none is fresh enough."""

    def __init__(self, decoded: Any, ticks: np.ndarray) -> None:
        self.decoded = decoded
        self.ticks = ticks
        self.g_us = ticks * 1000
        self.placed: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # message -> (index, age µs)
        self.cache: dict[tuple[str, str, int], np.ndarray] = {}

    def slow_limit(self, msg: str) -> int:
        """How long a rarely sent message stays valid, in µs (0 for frequent ones)."""
        # Messages sent about once a second or less often (with jitter) would read as stale between
        # frames; they stay valid for 1.5 of their typical period (the median interval in the log).
        t = self.decoded.messages[msg].t_us
        return int(1.5 * np.median(np.diff(t))) if len(t) >= 3 else 0

    def __call__(self, msg: str, sig: str, stale_us: int) -> np.ndarray:
        """Signal ``sig`` of message ``msg`` at every tick, NaN where older than ``stale_us``."""
        ck = (msg, sig, stale_us)
        if ck in self.cache:
            return self.cache[ck]
        dm = self.decoded.messages.get(msg)
        if dm is None or len(dm.t_us) == 0:
            out = np.full(len(self.ticks), np.nan)
        else:
            if msg not in self.placed:
                idx = np.searchsorted(dm.t_us, self.g_us, side="right") - 1
                age = np.where(idx >= 0, self.g_us - dm.t_us[np.maximum(idx, 0)], np.iinfo(np.int64).max)
                self.placed[msg] = (idx, age)
            idx, age = self.placed[msg]
            limit = max(stale_us, self.slow_limit(msg))
            out = np.where((idx >= 0) & (age <= limit), dm.values[sig][np.maximum(idx, 0)], np.nan)
        self.cache[ck] = out
        return out


def _evaluate(b: _Bound, resampled: _Resampler, ticks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One rule's values at every tick, where they are valid, and where they fit the catalogue's type."""
    stale_us = int(round(b.rule.stale_s * 1e6))

    def env(key: tuple[str, str]) -> np.ndarray:
        v = resampled(key[0], key[1], stale_us)
        nv = b.nulls.get(key)
        return np.where(np.isin(v, nv), np.nan, v) if nv is not None else v

    vals, ok = b.value(env)
    vals = np.broadcast_to(np.asarray(vals, np.float64), ticks.shape).copy()
    ok = np.broadcast_to(np.asarray(ok, bool), ticks.shape) & np.isfinite(vals)
    if b.when is not None:
        wv, wo = b.when(env)
        ok &= np.broadcast_to(np.asarray(wo, bool) & (np.asarray(wv) != 0), ticks.shape)
    ok &= ticks % (1000 // b.rule.rate_hz) == 0
    if b.map_keys is not None and b.map_values is not None:
        mapped = np.full(len(ticks), np.nan if b.default is None else b.default)
        for k, v in zip(b.map_keys.tolist(), b.map_values.tolist(), strict=True):
            mapped[vals == k] = v
        vals = mapped
        ok &= ~np.isnan(vals)
    else:
        vals = vals * b.rule.scale + b.rule.offset
        if b.src_unit is not None and b.sig.unit in _UNIT_TABLE:
            vals = convert_units(vals, b.src_unit, b.sig.unit)
    if b.rule.clip is not None:
        vals = np.clip(vals, *b.rule.clip)
    vals, inside = _to_catalogue(b.sig, vals)
    return vals, ok, inside


def _assemble(
    cat: Catalogue,
    paths: list[str],
    ticks: np.ndarray,
    columns: dict[str, tuple[np.ndarray, np.ndarray]],
    out_of_range: dict[str, int],
) -> MappedTable:
    """The catalogue-typed table of every tick where at least one signal has a value."""
    keep = np.zeros(len(ticks), bool)
    for _, ok in columns.values():
        keep |= ok
    rows = np.flatnonzero(keep)
    schema = cat.arrow_schema(paths)
    arrays: list[pa.Array] = [pa.array(ticks[rows], pa.int64()).cast(schema.field("t").type)]
    samples = {}
    for p in paths:
        vals, ok = columns[p]
        arrays.append(_arrow(cat[p], vals[rows], ~ok[rows]))
        samples[p] = int(ok[rows].sum())
    return MappedTable(pa.Table.from_arrays(arrays, schema=schema), samples, out_of_range)


def quantise(sig: Signal, x: np.ndarray) -> np.ndarray:
    """Round to the catalogue resolution (the same rounding the simulator uses)."""
    res = sig.resolution
    if not res:
        return x
    inv = round(1.0 / res)
    # Dividing by an integer 1/res gives the nearest double to k*res; multiplying by res may not.
    return np.round(x * inv) / inv if res < 1 and abs(inv * res - 1) < 1e-12 else np.round(x / res) * res


def _to_catalogue(sig: Signal, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quantised values and where they lie inside the catalogue range (booleans and enumerations pass)."""
    if sig.datatype == "boolean" or sig.arrow_type == pa.string():
        return vals, np.ones(len(vals), bool)
    with np.errstate(invalid="ignore"):
        q = quantise(sig, vals)
        inside = np.isfinite(q)
        if sig.min is not None:
            inside &= q >= sig.min
        if sig.max is not None:
            inside &= q <= sig.max
    return q, inside


def _arrow(sig: Signal, vals: np.ndarray, mask: np.ndarray) -> pa.Array:
    """One column with the catalogue's type; ``mask`` marks nulls."""
    if sig.datatype == "boolean":
        return pa.array(np.nan_to_num(vals) != 0, mask=mask, type=pa.bool_())
    if sig.arrow_type == pa.string():
        allowed = np.array(list(sig.allowed or ()), dtype=object)
        codes = np.where(mask, 0, np.nan_to_num(vals)).astype(np.int64)
        return pa.array(allowed[codes], mask=mask, type=pa.string()) if len(codes) else pa.array([], pa.string())
    clean = np.where(mask, 0.0, vals)
    return pa.array(clean.astype(sig.arrow_type.to_pandas_dtype()), mask=mask, type=sig.arrow_type)
