"""RFC 9162 hashing and proofs in carvault.ledger.merkle: hand-built trees, published vectors, properties."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carvault.ledger import merkle
from carvault.ledger.merkle import VerificationError


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def leaf(data: bytes) -> bytes:
    return sha(b"\x00" + data)


def node(left: bytes, right: bytes) -> bytes:
    return sha(b"\x01" + left + right)


D = [b"d%d" % i for i in range(8)]
L = [leaf(d) for d in D]


def test_empty_tree_root_is_sha256_of_nothing() -> None:
    assert sha(b"") == merkle.EMPTY_ROOT
    assert merkle.root_from_leaf_hashes([]) == sha(b"")


def test_leaf_and_node_hashes_use_the_rfc_prefixes() -> None:
    assert merkle.leaf_hash(b"abc") == sha(b"\x00abc")
    assert merkle.node_hash(b"l" * 32, b"r" * 32) == sha(b"\x01" + b"l" * 32 + b"r" * 32)


def test_roots_of_small_trees_composed_by_hand() -> None:
    # MTH splits at the largest power of two strictly below n (RFC 9162 §2.1.1), not at the middle.
    n01, n23, n45 = node(L[0], L[1]), node(L[2], L[3]), node(L[4], L[5])
    n0123 = node(n01, n23)
    by_hand = {
        1: L[0],
        2: n01,
        3: node(n01, L[2]),
        4: n0123,
        5: node(n0123, L[4]),
        6: node(n0123, n45),
        7: node(n0123, node(n45, L[6])),
        8: node(n0123, node(n45, node(L[6], L[7]))),
    }
    for size, root in by_hand.items():
        assert merkle.root_from_leaf_hashes(L[:size]) == root, size


def test_proofs_of_the_rfc_example_tree() -> None:
    # The 7-leaf tree drawn in RFC 9162 §2.1.5, with its node names: a..f leaves d0..d5, j = leaf d6.
    a, b, c, d, e, f, j = L[:7]
    g, h, i = node(a, b), node(c, d), node(e, f)
    k, ll = node(g, h), node(i, j)
    root = node(k, ll)
    hashes = L[:7]
    assert merkle.root_from_leaf_hashes(hashes) == root
    assert merkle.inclusion_proof(hashes, 0, 7) == [b, h, ll]
    assert merkle.inclusion_proof(hashes, 3, 7) == [c, g, ll]
    assert merkle.inclusion_proof(hashes, 4, 7) == [f, j, k]
    assert merkle.consistency_proof(hashes, 3, 7) == [c, d, g, ll]
    assert merkle.consistency_proof(hashes, 4, 7) == [ll]
    assert merkle.consistency_proof(hashes, 6, 7) == [i, j, k]
    merkle.verify_inclusion(d, 3, 7, [c, g, ll], root)
    merkle.verify_consistency(3, 7, node(g, c), root, [c, d, g, ll])
    merkle.verify_consistency(4, 7, k, root, [ll])
    merkle.verify_consistency(6, 7, node(k, i), root, [i, j, k])


def test_published_roots_and_complete_subtrees(vectors: dict[str, Any]) -> None:
    hashes = [merkle.leaf_hash(bytes.fromhex(x)) for x in vectors["leaf_inputs_hex"]]
    for size, want in enumerate(vectors["roots_by_size_hex"]):
        assert merkle.root_from_leaf_hashes(hashes[:size]).hex() == want
    for level, row in enumerate(vectors["complete_subtrees_by_level_hex"]):
        width = 1 << level
        for index, want in enumerate(row):
            assert merkle.root_from_leaf_hashes(hashes[index * width : (index + 1) * width]).hex() == want


def test_published_proofs(vectors: dict[str, Any]) -> None:
    hashes = [merkle.leaf_hash(bytes.fromhex(x)) for x in vectors["leaf_inputs_hex"]]
    roots = [bytes.fromhex(x) for x in vectors["roots_by_size_hex"]]
    for case in vectors["inclusion_proofs"]:
        proof = [bytes.fromhex(x) for x in case["proof_hex"]]
        assert merkle.inclusion_proof(hashes, case["index"], case["size"]) == proof
        merkle.verify_inclusion(
            hashes[case["index"]],
            case["index"],
            case["size"],
            proof,
            roots[case["size"]],
        )
    for case in vectors["consistency_proofs"]:
        proof = [bytes.fromhex(x) for x in case["proof_hex"]]
        assert merkle.consistency_proof(hashes, case["old"], case["new"]) == proof
        merkle.verify_consistency(case["old"], case["new"], roots[case["old"]], roots[case["new"]], proof)


def test_every_proof_of_every_small_tree_verifies() -> None:
    hashes = [merkle.leaf_hash(b"leaf %d" % i) for i in range(33)]
    roots = [merkle.root_from_leaf_hashes(hashes[:n]) for n in range(34)]
    for n in range(1, 34):
        for i in range(n):
            merkle.verify_inclusion(hashes[i], i, n, merkle.inclusion_proof(hashes, i, n), roots[n])
        for m in range(n + 1):
            merkle.verify_consistency(m, n, roots[m], roots[n], merkle.consistency_proof(hashes, m, n))


def test_trivial_consistency_cases() -> None:
    root = merkle.root_from_leaf_hashes(L[:5])
    merkle.verify_consistency(5, 5, root, root, [])
    merkle.verify_consistency(0, 5, merkle.EMPTY_ROOT, root, [])
    with pytest.raises(VerificationError):
        merkle.verify_consistency(5, 5, root, merkle.root_from_leaf_hashes(L[:4]), [])
    with pytest.raises(VerificationError):
        merkle.verify_consistency(0, 5, root, root, [])
    with pytest.raises(VerificationError):
        merkle.verify_consistency(5, 5, root, root, [root])


def test_the_error_carries_expected_and_actual() -> None:
    root = merkle.root_from_leaf_hashes(L)
    with pytest.raises(VerificationError) as info:
        merkle.verify_inclusion(L[1], 0, 8, merkle.inclusion_proof(L, 0, 8), root)
    assert info.value.expected == root
    assert isinstance(info.value.actual, bytes) and info.value.actual != root
    assert root.hex() in str(info.value)


MALFORMED_INCLUSION: list[tuple[Any, ...]] = [
    (b"short", 0, 1, [], merkle.EMPTY_ROOT),
    (L[0], 1, 1, [], L[0]),
    (L[0], 5, 3, [L[1]], L[0]),
    (L[0], -1, 3, [L[1]], L[0]),
    (L[0], 0, -3, [L[1]], L[0]),
    (L[0], True, 2, [L[1]], L[0]),
    (L[0], "0", 2, [L[1]], L[0]),
    (L[0], 0, 2.0, [L[1]], L[0]),
    (L[0], 0, 2, [L[1][:31]], L[0]),
    (L[0], 0, 2, [L[1] + b"x"], L[0]),
    (L[0], 0, 2, L[1], L[0]),
    (L[0], 0, 2, [None], L[0]),
    (L[0], 0, 2, None, L[0]),
    (L[0], 0, 2, "abc", L[0]),
    (L[0], 0, 2, [L[1]], None),
    (L[0], 0, 2, [L[1]], b""),
    (None, 0, 2, [L[1]], L[0]),
    ("x" * 32, 0, 2, [L[1]], L[0]),
]


@pytest.mark.parametrize("args", MALFORMED_INCLUSION)
def test_malformed_inclusion_input_is_a_verification_error(args: tuple[Any, ...]) -> None:
    with pytest.raises(VerificationError):
        merkle.verify_inclusion(*args)


MALFORMED_CONSISTENCY: list[tuple[Any, ...]] = [
    (3, 2, L[0], L[1], [L[2]]),
    (-1, 2, L[0], L[1], [L[2]]),
    (1, 2, L[0][:3], L[1], [L[2]]),
    (1, 2, L[0], None, [L[2]]),
    (1, 2, L[0], L[1], [b"x" * 33]),
    (1, 2, L[0], L[1], L[2]),
    (1, 2, L[0], L[1], []),
    (1, 2, L[0], L[1], 7),
    (None, 2, L[0], L[1], [L[2]]),
]


@pytest.mark.parametrize("args", MALFORMED_CONSISTENCY)
def test_malformed_consistency_input_is_a_verification_error(args: tuple[Any, ...]) -> None:
    with pytest.raises(VerificationError):
        merkle.verify_consistency(*args)


def test_malformed_generation_input_is_a_verification_error() -> None:
    for call in (
        lambda: merkle.inclusion_proof(L, 8, 8),
        lambda: merkle.inclusion_proof(L, 0, 9),
        lambda: merkle.inclusion_proof(L, -1, 4),
        lambda: merkle.inclusion_proof(L, 0, 0),
        lambda: merkle.consistency_proof(L, 5, 4),
        lambda: merkle.consistency_proof(L, 2, 9),
        lambda: merkle.consistency_proof(b"not a list", 1, 2),  # type: ignore[arg-type]
        lambda: merkle.root_from_leaf_hashes([b"short"]),
        lambda: merkle.leaf_hash("text"),  # type: ignore[arg-type]
    ):
        with pytest.raises(VerificationError):
            call()


junk = st.one_of(
    st.none(),
    st.integers(min_value=-3, max_value=2**65),
    st.binary(max_size=40),
    st.text(max_size=4),
    st.lists(st.one_of(st.binary(min_size=31, max_size=33), st.none(), st.integers()), max_size=4),
)


@settings(max_examples=200, deadline=None)
@given(st.tuples(junk, junk, junk, junk, junk))
def test_arbitrary_input_only_ever_raises_verification_error(args: tuple[Any, ...]) -> None:
    for verify in (merkle.verify_inclusion, merkle.verify_consistency):
        try:
            verify(*args)
        except VerificationError:
            pass


def test_merkle_imports_only_the_standard_library() -> None:
    # The offline verifier relies on this: no server code, no third-party package.
    code = (
        "import sys; before = set(sys.modules); import carvault.ledger.merkle; "
        "new = set(sys.modules) - before; "
        "print(sorted(m for m in new if m.split('.')[0] not in sys.stdlib_module_names))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['carvault', 'carvault.ledger', 'carvault.ledger.merkle']"
