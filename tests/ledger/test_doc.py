"""docs/transparency-log.md: its examples are real (leaf, checkpoint, verifier key, proofs)."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from carvault.ledger import merkle
from carvault.ledger.checkpoint import parse_vkey, verify_checkpoint
from carvault.protocol import leaf_data_v1, leaf_data_v2, leaf_salt

DOC = (Path(__file__).resolve().parents[2] / "docs" / "transparency-log.md").read_text()


def _blocks() -> list[str]:
    return re.findall(r"```text\n(.*?)```", DOC, flags=re.S)


def _leaves() -> list[bytes]:
    return [
        leaf_data_v1(
            region="cn",
            vin="LRW3E7FA0NC000001",
            seq=i,
            batch_hash=hashlib.sha256(b"batch %d" % i).hexdigest(),
            received_ms=1_700_000_000_000 + i,
        )
        for i in range(5)
    ]


def test_the_v1_leaf_example_is_what_protocol_leaf_data_v1_makes() -> None:
    leaf = _leaves()[2]
    assert leaf.decode() in _blocks()
    assert f"That is the {len(leaf)} bytes" in DOC
    assert merkle.leaf_hash(leaf).hex() in DOC


def test_the_v2_leaf_example_opens_with_the_documented_key_and_salt() -> None:
    key = hashlib.sha256(b"carvault example log key").digest()
    salt = leaf_salt(key, 2)
    leaf = leaf_data_v2(
        salt=salt,
        region="cn",
        vin="LRW3E7FA0NC000001",
        seq=2,
        batch_hash=hashlib.sha256(b"batch 2").hexdigest(),
        received_ms=1_700_000_000_002,
    )
    assert key.hex() in DOC and salt.hex() in DOC and base64.b64encode(salt).decode() in DOC
    assert leaf.decode() in _blocks() and f"{len(leaf)} bytes, whose leaf hash is" in DOC
    assert merkle.leaf_hash(leaf).hex() in DOC


def test_the_checkpoint_example_verifies_with_the_documented_vkey() -> None:
    note = next(b for b in _blocks() if b.startswith("cn.carvault.example/log\n"))
    vkey = parse_vkey(next(b for b in _blocks() if b.startswith("cn.carvault.example/log+")).strip())
    checkpoint = verify_checkpoint(note, vkey.public_key, vkey.name, origin="cn.carvault.example/log")
    hashes = [merkle.leaf_hash(leaf) for leaf in _leaves()]
    assert checkpoint.size == 5
    assert checkpoint.root == merkle.root_from_leaf_hashes(hashes)
    assert f"root(5) = {checkpoint.root.hex()}" in DOC
    assert f"root(3) = {merkle.root_from_leaf_hashes(hashes[:3]).hex()}" in DOC
    shown = [p.hex()[:8] + "…" for p in merkle.inclusion_proof(hashes, 2, 5)]
    assert f"inclusion_proof(2, 5)     = [{', '.join(shown)}]" in DOC
    shown = [p.hex()[:8] + "…" for p in merkle.consistency_proof(hashes, 3, 5)]
    assert f"consistency_proof(3, 5)   = [{', '.join(shown)}]" in DOC
