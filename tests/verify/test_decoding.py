"""check_tables decodes the signed batches on a thread of its own (``_Decoding``): same tables, same budget, same
errors as decoding them one after the other in the checking thread."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import carvault.verify.package as package
from carvault.errors import MalformedBatch, PayloadTooLarge
from carvault.protocol import GENESIS_PREV, decode_envelope, encode_envelope, make_batch
from carvault.verify.package import _Decoding
from tests.factories import BASE_MS, drive_table, vin_for

KEY = Ed25519PrivateKey.generate()


def _batches(n: int) -> list:
    out, prev = [], GENESIS_PREV
    for seq in range(1, n + 1):
        table = drive_table(BASE_MS + seq * 60_000, seconds=60, seed=seq)
        env = decode_envelope(make_batch(vin=vin_for(1), region="eu", seq=seq, prev=prev, table=table, key=KEY))
        out.append(env)
        prev = env.batch_hash
    return out


def test_decoded_tables_are_the_batches_tables_in_order() -> None:
    envs = _batches(4)
    assert [t.equals(e.table()) for t, e in zip(_Decoding(envs).tables(), envs, strict=True)] == [True] * 4


def test_an_unreadable_payload_raises_in_the_checking_thread() -> None:
    envs = _batches(2)
    bad = decode_envelope(encode_envelope(dataclasses.replace(envs[1].header), b"not parquet at all", KEY))
    with pytest.raises(MalformedBatch, match="not a readable Parquet file"):
        _Decoding([envs[0], bad]).tables()


def test_one_budget_for_all_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each batch fits the budget alone; together they do not, and the batch that goes over is refused."""
    envs = _batches(3)
    sizes = [e.table().nbytes for e in envs]
    monkeypatch.setattr(package, "MAX_DECODED_BYTES", sizes[0] + sizes[1] + sizes[2] // 2)
    with pytest.raises(PayloadTooLarge):
        _Decoding(envs).tables()
    monkeypatch.setattr(package, "MAX_DECODED_BYTES", sum(sizes) * 2)
    assert len(_Decoding(envs).tables()) == 3
