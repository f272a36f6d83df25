"""The package's JSON documents are read strictly: one reading, documented shapes and types, a named error."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest

from carvault.verify.documents import (
    DocumentError,
    load_json,
    parse_consistency,
    parse_coverage,
    parse_manifest,
    parse_proofs,
    parse_trust,
)

HASH = "ab" * 32
B64_32 = base64.b64encode(bytes(range(32))).decode()


def manifest(**changes: Any) -> bytes:
    doc = {
        "format": "carvault-incident-package",
        "version": 1,
        "region": "cn",
        "vin": "LRWTEST0000000001",
        "window": {"start_ms": 1, "end_ms": 2},
        "event": {"kind": "crash", "t_ms": 1},
        "created_ms": 3,
        "log_origin": "cn.carvault.example/log",
        "tree_size": 9,
        "files": {"data/window.csv": HASH},
    }
    doc.update(changes)
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


def proofs(**changes: Any) -> bytes:
    entry = {"seq": 1, "batch_hash": HASH, "received_ms": 5, "leaf_index": 0, "proof": [B64_32]}
    entry.update(changes)
    return json.dumps({"tree_size": 9, "proofs": [{k: v for k, v in entry.items() if v is not ...}]}).encode()


def test_well_formed_documents_parse() -> None:
    m = parse_manifest(manifest())
    assert (m.vin, m.start_ms, m.end_ms, m.event_ms, m.tree_size) == ("LRWTEST0000000001", 1, 2, 1, 9)
    assert parse_manifest(manifest(event=None)).event_ms is None
    size, entries = parse_proofs(proofs())
    assert size == 9 and entries[1].leaf_version == 1 and entries[1].leaf_salt is None
    v2 = parse_proofs(proofs(leaf_version=2, leaf_salt=B64_32))[1][1]
    assert v2.leaf_version == 2 and v2.leaf_salt == bytes(range(32))
    assert parse_consistency(b'{"proofs": [{"old_size": 1, "new_size": 2, "proof": []}]}')[0].new_size == 2
    assert parse_coverage(b'{"batches": 2, "chain": "continuous", "gaps": []}').batches == 2
    assert parse_trust({"log_vkey": "k", "ca_pem": "p"}, "trust").ca_sha256 is None


def twice(doc: bytes) -> bytes:
    d = json.loads(doc)
    d["proofs"] *= 2
    return json.dumps(d).encode()


BAD: list[tuple[str, Callable[[], object], str]] = [
    # (case, parse, words the error must hold)
    ("not UTF-8", lambda: load_json(b'{"a": "\xff"}', "x.json"), "not UTF-8"),
    ("not JSON", lambda: load_json(b"{", "x.json"), "not JSON"),
    ("duplicate member", lambda: load_json(b'{"a": 1, "a": 2}', "x.json"), "'a' occurs more than once"),
    ("nested duplicate", lambda: load_json(b'{"b": {"a": 1, "a": 1}}', "x.json"), "occurs more than once"),
    ("NaN", lambda: load_json(b'{"a": NaN}', "x.json"), "NaN"),
    ("Infinity", lambda: load_json(b"[-Infinity]", "x.json"), "Infinity"),
    ("deep nesting", lambda: load_json(b"[" * 100_000 + b"]" * 100_000, "x.json"), "nested deeper"),
    ("manifest a list", lambda: parse_manifest(b"[]"), "must be a JSON object, not a list"),
    ("manifest version 2", lambda: parse_manifest(manifest(version=2)), "version 1"),
    ("manifest version true", lambda: parse_manifest(manifest(version=True)), "version 1"),
    ("no vin", lambda: parse_manifest(manifest(vin=...)), "no 'vin'"),
    ("vin a number", lambda: parse_manifest(manifest(vin=7)), "'vin' must be a string"),
    ("window a list", lambda: parse_manifest(manifest(window=[1, 2])), "'window' must be an object"),
    ("start_ms a string", lambda: parse_manifest(manifest(window={"start_ms": "1", "end_ms": 2})), "integer"),
    ("tree_size a boolean", lambda: parse_manifest(manifest(tree_size=True)), "integer, not a boolean"),
    ("tree_size a float", lambda: parse_manifest(manifest(tree_size=9.0)), "integer, not a number"),
    ("tree_size negative", lambda: parse_manifest(manifest(tree_size=-1)), "between 0 and 2^63-1"),
    ("tree_size 2^63", lambda: parse_manifest(manifest(tree_size=2**63)), "more than 16 digits"),
    ("event a string", lambda: parse_manifest(manifest(event="crash")), "'event' must be an object or null"),
    ("event without t_ms", lambda: parse_manifest(manifest(event={"kind": "crash"})), "no 't_ms'"),
    ("file hash upper case", lambda: parse_manifest(manifest(files={"a": HASH.upper()})), "SHA-256 hex"),
    ("file hash a number", lambda: parse_manifest(manifest(files={"a": 1})), "SHA-256 hex"),
    ("proofs a list", lambda: parse_proofs(b"[]"), "must be a JSON object"),
    ("no tree_size", lambda: parse_proofs(b'{"proofs": []}'), "no 'tree_size'"),
    ("leaf_index a string", lambda: parse_proofs(proofs(leaf_index="0")), "'leaf_index' must be an integer"),
    ("proof hash short", lambda: parse_proofs(proofs(proof=[base64.b64encode(b"x").decode()])), "32 bytes"),
    ("proof hash not base64", lambda: parse_proofs(proofs(proof=["%%"])), "not base64"),
    ("proof hash a number", lambda: parse_proofs(proofs(proof=[1])), "must be a string"),
    ("proof too long", lambda: parse_proofs(proofs(proof=[B64_32] * 65)), "longer than any log"),
    ("batch_hash not hex", lambda: parse_proofs(proofs(batch_hash="zz")), "SHA-256 hex"),
    ("leaf_version 3", lambda: parse_proofs(proofs(leaf_version=3)), "not one of [1, 2]"),
    ("v2 without salt", lambda: parse_proofs(proofs(leaf_version=2)), "no 'leaf_salt'"),
    ("v2 salt of 16 bytes", lambda: parse_proofs(proofs(leaf_version=2, leaf_salt="AAAAAAAAAAAAAAAAAAAAAA==")), "32"),
    ("two proofs for a seq", lambda: parse_proofs(twice(proofs())), "two proofs for seq 1"),
    ("consistency sizes as text", lambda: parse_consistency(b'{"proofs": [{"old_size": "1"}]}'), "integer"),
    ("coverage gaps an object", lambda: parse_coverage(b'{"batches": 1, "chain": "x", "gaps": {}}'), "must be a list"),
    ("trust without ca_pem", lambda: parse_trust({"log_vkey": "k"}, "trust"), "no 'ca_pem'"),
    ("trust vkey a number", lambda: parse_trust({"log_vkey": 1, "ca_pem": "p"}, "trust"), "must be a string"),
    ("trust a list", lambda: parse_trust([], "trust"), "must be a JSON object"),
]


@pytest.mark.parametrize(("case", "parse", "words"), BAD, ids=[b[0] for b in BAD])
def test_malformed_documents_are_named_errors(case: str, parse: Callable[[], object], words: str) -> None:
    with pytest.raises(DocumentError) as e:
        parse()
    assert words in e.value.detail
