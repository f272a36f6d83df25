"""check_tables decodes the signed batches on a thread of its own (``_Decoding``): same tables, same budget, same
errors as decoding them one after the other in the checking thread."""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import carvault.protocol
from carvault.errors import MalformedBatch, PayloadTooLarge
from carvault.protocol import GENESIS_PREV, decode_envelope, encode_envelope, make_batch
from carvault.verify.container import ContainerError, read_container
from carvault.verify.package import _Decoding, open_package
from carvault.verify.prefetch import Prefetch
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
    monkeypatch.setattr(carvault.protocol, "MAX_DECODED_BYTES", sizes[0] + sizes[1] + sizes[2] // 2)
    with pytest.raises(PayloadTooLarge):
        _Decoding(envs).tables()
    monkeypatch.setattr(carvault.protocol, "MAX_DECODED_BYTES", sum(sizes) * 2)
    assert len(_Decoding(envs).tables()) == 3


def _other(env):
    """A batch like ``env`` with other values."""
    table = drive_table(BASE_MS + env.header.seq * 60_000, seconds=60, seed=1000 + env.header.seq)
    h = env.header
    return decode_envelope(make_batch(vin=h.vin, region=h.region, seq=h.seq, prev=h.prev, table=table, key=KEY))


def _package(path: Path, envs: list, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for env in envs:
            z.writestr(f"batches/{env.header.seq:012d}.cvb", env.raw)
        for name, data in (extra or {}).items():
            z.writestr(name, data)
    return path


def test_prefetch_reads_the_members_and_decodes_the_batches_in_seq_order(tmp_path: Path) -> None:
    envs = _batches(3)
    path = _package(tmp_path / "p.zip", list(reversed(envs)), {"coverage.json": b"{}"})
    ahead = Prefetch(path)
    assert ahead.container() == read_container(path)
    tables = ahead.tables(envs)
    assert tables is not None and [t.equals(e.table()) for t, e in zip(tables, envs, strict=True)] == [True] * 3
    assert [t.equals(e.table()) for t, e in zip(ahead.tables(envs[:2]), envs, strict=False)] == [True] * 2


@pytest.mark.parametrize(
    "accepted",
    [
        pytest.param(lambda envs: [envs[0], envs[2]], id="a batch left out in the middle"),
        pytest.param(lambda envs: envs + _batches(4)[3:], id="more batches than the package"),
        pytest.param(lambda envs: [envs[0], _other(envs[1])], id="another payload"),
    ],
)
def test_prefetched_tables_are_used_only_for_the_same_batches(tmp_path: Path, accepted) -> None:
    envs = _batches(3)
    ahead = Prefetch(_package(tmp_path / "p.zip", envs))
    chosen = accepted(envs)
    assert ahead.tables(chosen) is None
    # The checks then decode on their own: the tables are those of the batches they accepted.
    got = _Decoding(chosen, ahead).tables()
    assert [t.equals(e.table()) for t, e in zip(got, chosen, strict=True)] == [True] * len(chosen)


def test_a_bad_batch_stops_the_prefetch_and_the_checks_report_it(tmp_path: Path) -> None:
    envs = _batches(2)
    bad = decode_envelope(encode_envelope(dataclasses.replace(envs[1].header), b"not parquet at all", KEY))
    ahead = Prefetch(_package(tmp_path / "p.zip", [envs[0], bad]))
    assert ahead.tables([envs[0], bad]) is None
    assert ahead.tables([envs[0]]) is not None
    with pytest.raises(MalformedBatch, match="not a readable Parquet file"):
        _Decoding([envs[0], bad], ahead).tables()


def test_prefetch_of_a_broken_archive_raises_what_reading_it_raises(tmp_path: Path) -> None:
    path = tmp_path / "broken.zip"
    path.write_bytes(b"PK\x03\x04 not an archive")
    ahead = Prefetch(path)
    with pytest.raises(ContainerError) as expected:
        read_container(path)
    with pytest.raises(ContainerError) as got:
        ahead.container()
    assert got.value.detail == expected.value.detail
    with pytest.raises(ValueError, match="not of"):
        open_package(tmp_path / "other.zip", prefetch=ahead)
