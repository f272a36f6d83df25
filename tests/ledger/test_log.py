"""The disk-backed TransparencyLog: proofs against merkle.py, persistence, tail recovery, threads."""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carvault.errors import InvalidQuery
from carvault.ledger import merkle
from carvault.ledger.checkpoint import parse_vkey, verify_checkpoint
from carvault.ledger.log import LogError, TransparencyLog, node_count, node_position
from carvault.ledger.merkle import VerificationError
from tests.ledger.conftest import ORIGIN, log_key, open_log

MAX = 300
DATA = [b"carvault-leaf-v1\ncn\nVIN%014d\n%d\n" % (i, i) for i in range(MAX)]
HASHES = [merkle.leaf_hash(d) for d in DATA]


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TransparencyLog]:
    """A log of MAX leaves appended in uneven batches; proofs for any size <= MAX come from it."""
    with open_log(tmp_path_factory.mktemp("big")) as log:
        rng = random.Random(7)
        while log.size < MAX:
            n = min(MAX - log.size, rng.randint(1, 40))
            log.append(DATA[log.size : log.size + n])
        yield log


@pytest.fixture(scope="module")
def roots(big: TransparencyLog) -> list[bytes]:
    return [merkle.root_from_leaf_hashes(HASHES[:n]) for n in range(MAX + 1)]


def test_positions_are_post_order() -> None:
    # Tree of 4 leaves in post-order: l0 l1 n01 l2 l3 n23 n0123.
    assert [node_position(0, i) for i in range(4)] == [0, 1, 3, 4]
    assert (node_position(1, 0), node_position(1, 1), node_position(2, 0)) == (2, 5, 6)
    assert [node_count(n) for n in range(9)] == [0, 1, 3, 4, 7, 8, 10, 11, 15]


def test_empty_log(log: TransparencyLog) -> None:
    assert log.size == 0
    assert log.root() == merkle.EMPTY_ROOT
    checkpoint = verify_checkpoint(log.checkpoint(), log.public_key, ORIGIN, ORIGIN)
    assert (checkpoint.size, checkpoint.root) == (0, merkle.EMPTY_ROOT)
    assert log.consistency_proof(0) == []
    assert log.append([]) == 0


def test_append_returns_the_first_index_and_persists(tmp_path: Path) -> None:
    with open_log(tmp_path) as log:
        assert log.append(DATA[:3]) == 0
        assert log.append(DATA[3:10]) == 3
        assert log.append([bytearray(DATA[10]), memoryview(DATA[11])]) == 10
        root = log.root()
    with open_log(tmp_path) as log:
        assert log.size == 12
        assert log.root() == root == merkle.root_from_leaf_hashes(HASHES[:12])
        assert [log.leaf_hash(i) for i in range(12)] == HASHES[:12]
        assert log.check_integrity() == 12


def test_identity(log: TransparencyLog) -> None:
    vkey = parse_vkey(log.vkey)
    assert vkey.name == ORIGIN
    assert vkey.public_key.public_bytes_raw() == log.public_key.public_bytes_raw()
    log.append(DATA[:5])
    checkpoint = verify_checkpoint(log.checkpoint(), vkey.public_key, vkey.name, ORIGIN)
    assert (checkpoint.size, checkpoint.root) == (5, log.root())


def test_every_root_matches_merkle(big: TransparencyLog, roots: list[bytes]) -> None:
    assert [big.root(n) for n in range(MAX + 1)] == roots
    assert big.check_integrity() == MAX


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_inclusion_proofs_verify_and_mutations_fail(
    big: TransparencyLog, roots: list[bytes], data: st.DataObject
) -> None:
    size = data.draw(st.integers(1, MAX), label="size")
    index = data.draw(st.integers(0, size - 1), label="index")
    proof = big.inclusion_proof(index, size)
    assert proof == merkle.inclusion_proof(HASHES, index, size)
    leaf, root = HASHES[index], roots[size]
    merkle.verify_inclusion(leaf, index, size, proof, root)

    def fails(leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes) -> None:
        with pytest.raises(VerificationError):
            merkle.verify_inclusion(leaf, index, size, proof, root)

    if proof:
        at = data.draw(st.integers(0, len(proof) - 1), label="element")
        byte = data.draw(st.integers(0, 31), label="byte")
        flipped = bytearray(proof[at])
        flipped[byte] ^= 1 << data.draw(st.integers(0, 7))
        fails(leaf, index, size, [*proof[:at], bytes(flipped), *proof[at + 1 :]], root)
        fails(leaf, index, size, proof[:at] + proof[at + 1 :], root)
    extra = data.draw(st.binary(min_size=32, max_size=32), label="extra")
    where = data.draw(st.integers(0, len(proof)), label="where")
    fails(leaf, index, size, [*proof[:where], extra, *proof[where:]], root)
    other_index = data.draw(st.integers(0, MAX).filter(lambda i: i != index), label="other_index")
    fails(leaf, other_index, size, proof, root)
    # A wrong size comes with that size's real root: a (size, root) pair is only ever taken together from
    # a verified checkpoint. (With the *same* root a wrong size can verify: for index 0, sizes 3 and 4
    # walk the same path, so the root is what binds the size.)
    if index + 1 < MAX:
        other_size = data.draw(st.integers(index + 1, MAX).filter(lambda n: n != size), label="other_size")
        fails(leaf, index, other_size, proof, roots[other_size])
    fails(leaf, index, size, proof, roots[size - 1])
    fails(
        leaf,
        index,
        size,
        proof,
        data.draw(st.binary(min_size=32, max_size=32).filter(lambda r: r != root)),
    )
    fails(HASHES[(index + 1) % MAX], index, size, proof, root)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_consistency_proofs_verify_and_mutations_fail(
    big: TransparencyLog, roots: list[bytes], data: st.DataObject
) -> None:
    new = data.draw(st.integers(1, MAX), label="new")
    old = data.draw(st.integers(1, new), label="old")
    proof = big.consistency_proof(old, new)
    assert proof == merkle.consistency_proof(HASHES, old, new)
    merkle.verify_consistency(old, new, roots[old], roots[new], proof)

    def fails(old: int, new: int, old_root: bytes, new_root: bytes, proof: list[bytes]) -> None:
        with pytest.raises(VerificationError):
            merkle.verify_consistency(old, new, old_root, new_root, proof)

    if proof:
        at = data.draw(st.integers(0, len(proof) - 1), label="element")
        flipped = bytearray(proof[at])
        flipped[data.draw(st.integers(0, 31), label="byte")] ^= 0x80
        fails(old, new, roots[old], roots[new], [*proof[:at], bytes(flipped), *proof[at + 1 :]])
        fails(old, new, roots[old], roots[new], proof[:at] + proof[at + 1 :])
    extra = data.draw(st.binary(min_size=32, max_size=32), label="extra")
    where = data.draw(st.integers(0, len(proof)), label="where")
    fails(old, new, roots[old], roots[new], [*proof[:where], extra, *proof[where:]])
    other_old = data.draw(st.integers(1, MAX).filter(lambda m: m != old), label="other_old")
    fails(other_old, new, roots[other_old], roots[new], proof)
    other_new = data.draw(st.integers(1, MAX).filter(lambda n: n != new), label="other_new")
    fails(old, other_new, roots[old], roots[other_new], proof)
    if old > 1:
        fails(old, new, roots[old - 1], roots[new], proof)
    if new > 1:
        fails(old, new, roots[old], roots[new - 1], proof)
    fails(old, new, roots[old], bytes(32), proof)


def test_proofs_at_the_current_size_by_default(big: TransparencyLog, roots: list[bytes]) -> None:
    merkle.verify_inclusion(HASHES[17], 17, MAX, big.inclusion_proof(17), roots[MAX])
    merkle.verify_consistency(100, MAX, roots[100], roots[MAX], big.consistency_proof(100))


def test_bad_arguments_are_invalid_queries(big: TransparencyLog) -> None:
    for call in (
        lambda: big.leaf_hash(MAX),
        lambda: big.leaf_hash(-1),
        lambda: big.root(MAX + 1),
        lambda: big.root(-1),
        lambda: big.inclusion_proof(5, 5),
        lambda: big.inclusion_proof(0, MAX + 1),
        lambda: big.inclusion_proof(True),  # type: ignore[arg-type]
        lambda: big.consistency_proof(6, 5),
        lambda: big.consistency_proof(1, MAX + 1),
        lambda: big.consistency_proof(-1),
    ):
        with pytest.raises(InvalidQuery):
            call()
    with pytest.raises(TypeError):
        big.append(["not bytes"])  # type: ignore[list-item]


def test_another_origin_or_bad_configuration_is_refused(tmp_path: Path) -> None:
    open_log(tmp_path).close()
    with pytest.raises(LogError, match="another origin"):
        TransparencyLog(tmp_path, "eu.carvault.example/log", log_key(), "eu.carvault.example/log")
    with pytest.raises(LogError):
        TransparencyLog(tmp_path / "x", ORIGIN, log_key(), "has space")
    with pytest.raises(LogError):
        TransparencyLog(tmp_path / "y", "", log_key(), ORIGIN)


def test_a_torn_unacknowledged_tail_is_truncated_on_open(tmp_path: Path) -> None:
    with open_log(tmp_path) as log:
        log.append(DATA[:10])
        root = log.root()
    # A writer died after writing some records but before committing the size.
    with open(tmp_path / "nodes", "ab") as fh:
        fh.write(os.urandom(32 * 7 + 13))
    with open_log(tmp_path) as log:
        assert log.size == 10 and log.root() == root
        assert os.path.getsize(tmp_path / "nodes") == node_count(10) * 32
        assert log.append(DATA[10:20]) == 10
        assert log.root() == merkle.root_from_leaf_hashes(HASHES[:20])
        assert log.check_integrity() == 20


def test_a_torn_size_write_keeps_the_previous_size(tmp_path: Path) -> None:
    with open_log(tmp_path) as log:
        log.append(DATA[:10])
        log.append(DATA[10:15])  # goes to the other slot than the first append
    raw = bytearray((tmp_path / "size").read_bytes())
    slots = {0: bytes(raw[0:32]), 4096: bytes(raw[4096:4128])}
    newest = max(slots, key=lambda off: int.from_bytes(slots[off][8:16], "little"))
    raw[newest + 8 : newest + 12] = b"\xff\xff\xff\xff"  # half-written size, checksum now wrong
    (tmp_path / "size").write_bytes(bytes(raw))
    with open_log(tmp_path) as log:
        assert log.size == 10
        assert log.root() == merkle.root_from_leaf_hashes(HASHES[:10])
        assert os.path.getsize(tmp_path / "nodes") == node_count(10) * 32
        log.append(DATA[10:12])
        assert log.size == 12 and log.check_integrity() == 12


def test_contradictory_files_are_a_log_error(tmp_path: Path) -> None:
    with open_log(tmp_path) as log:
        log.append(DATA[:10])
    os.truncate(tmp_path / "nodes", 32 * 5)
    with pytest.raises(LogError, match="shorter"):
        open_log(tmp_path)
    (tmp_path / "size").write_bytes(bytes(8192))
    with pytest.raises(LogError, match="no valid committed size"):
        open_log(tmp_path)


def test_a_log_without_meta_is_never_reinitialised(tmp_path: Path) -> None:
    with open_log(tmp_path) as log:
        log.append(DATA[:3])
    (tmp_path / "meta.json").unlink()
    (tmp_path / "size").unlink()
    with pytest.raises(LogError, match="no meta.json"):
        open_log(tmp_path)
    assert os.path.getsize(tmp_path / "nodes") == node_count(3) * 32


def test_check_integrity_finds_a_damaged_node(tmp_path: Path) -> None:
    with open_log(tmp_path) as log:
        log.append(DATA[:40])
        with open(tmp_path / "nodes", "r+b") as fh:
            fh.seek(node_position(3, 2) * 32 + 5)
            fh.write(b"\x00")
        with pytest.raises(LogError, match="does not match"):
            log.check_integrity()


def test_threads_appending_to_one_instance(log: TransparencyLog) -> None:
    results: list[tuple[int, list[bytes]]] = []
    guard = threading.Lock()

    def worker(tag: int) -> None:
        rng = random.Random(tag)
        for k in range(40):
            batch = [b"thread %d batch %d entry %d" % (tag, k, j) for j in range(rng.randint(1, 20))]
            first = log.append(batch)
            with guard:
                results.append((first, batch))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected: dict[int, bytes] = {}
    for first, batch in results:
        for j, entry in enumerate(batch):
            assert first + j not in expected
            expected[first + j] = merkle.leaf_hash(entry)
    assert sorted(expected) == list(range(log.size))
    assert [log.leaf_hash(i) for i in range(log.size)] == [expected[i] for i in range(log.size)]
    assert log.check_integrity() == log.size


def test_two_instances_in_one_process_share_the_log(tmp_path: Path) -> None:
    with open_log(tmp_path) as a, open_log(tmp_path) as b:
        a.append(DATA[:3])
        assert b.append(DATA[3:5]) == 3
        assert a.size == b.size == 5
        assert a.root() == b.root() == merkle.root_from_leaf_hashes(HASHES[:5])


def test_concurrent_appends_share_commits(log: TransparencyLog, monkeypatch: pytest.MonkeyPatch) -> None:
    syncs = 0
    real = os.fdatasync

    def counting(fd: int) -> None:
        nonlocal syncs
        syncs += 1
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    firsts: list[int] = []

    def worker(tag: int) -> None:
        for k in range(50):
            firsts.append(log.append([b"single %d %d" % (tag, k)]))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(firsts) == list(range(400))
    assert syncs // 2 < 400  # group commit: fewer (records, size) sync pairs than appends
    assert log.check_integrity() == 400


def test_a_failed_write_is_reported_and_leaves_the_log_usable(
    log: TransparencyLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    log.append(DATA[:5])
    real = os.fdatasync

    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(OSError):
        log.append(DATA[5:9])
    monkeypatch.setattr(os, "fdatasync", real)
    assert log.size == 5
    assert log.append(DATA[5:9]) == 5
    assert log.root() == merkle.root_from_leaf_hashes(HASHES[:9])
    assert log.check_integrity() == 9
