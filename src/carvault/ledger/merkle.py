"""Merkle tree hashing, proofs and proof verification exactly as RFC 9162 §2.1 defines them.

This module is the offline verifier's Merkle code: it imports only the standard library, keeps no
state, and never trusts its input. Terms follow the RFC:

* ``leaf_hash(d)   = SHA-256(0x00 || d)`` and ``node_hash(l, r) = SHA-256(0x01 || l || r)`` (§2.1.1);
* ``MTH(D[n])`` splits at ``k``, the largest power of two *smaller* than ``n`` (§2.1.1);
* inclusion proofs are ``PATH(m, D[n])`` (§2.1.3.1), verified by the algorithm of §2.1.3.2;
* consistency proofs are ``PROOF(m, D[n])`` built from ``SUBPROOF`` (§2.1.4.1), verified by the
  algorithm of §2.1.4.2.

Proof generation takes either the list of leaf hashes or a *subtree provider*: a callable
``provider(start, end) -> MTH(D[start:end])``. The provider lets a disk-backed log answer with
O(log n) stored node reads instead of rehashing every leaf; every range the algorithms ask for starts
at a multiple of a power of two that is at least the range's length (a complete aligned subtree or a
right edge of one), which is what makes stored nodes reusable.

Every failure, including malformed input (wrong hash lengths, ``index >= size``, wrong types),
raises the single ``VerificationError`` carrying what was expected and what was found.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "SubtreeProvider",
    "VerificationError",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_from_inclusion_proof",
    "root_from_leaf_hashes",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()
"""MTH({}) = SHA-256() — the root of the empty tree (RFC 9162 §2.1.1)."""

SubtreeProvider = Callable[[int, int], bytes]
"""``provider(start, end)`` returns MTH(D[start:end]) for ``0 <= start < end``."""


class VerificationError(Exception):
    """A proof, root, checkpoint or its input does not hold; ``expected``/``actual`` say why."""

    def __init__(self, message: str, *, expected: Any = None, actual: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.expected = expected
        self.actual = actual

    def __str__(self) -> str:
        if self.expected is None and self.actual is None:
            return self.message
        return f"{self.message} (expected {_show(self.expected)}, got {_show(self.actual)})"


def _show(value: Any) -> str:
    return value.hex() if isinstance(value, bytes | bytearray) else repr(value)


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 || data): the hash of one leaf (RFC 9162 §2.1.1)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise VerificationError("leaf data must be bytes", expected="bytes", actual=type(data).__name__)
    return hashlib.sha256(LEAF_PREFIX + bytes(data)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right): the hash of an interior node (RFC 9162 §2.1.1)."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _largest_power_of_two_below(n: int) -> int:
    """k such that k < n <= 2k, for n >= 2 (the RFC 9162 split point)."""
    return 1 << ((n - 1).bit_length() - 1)


def _check_hash(value: Any, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != HASH_SIZE:
        actual = len(value) if isinstance(value, bytes | bytearray) else type(value).__name__
        raise VerificationError(f"{what} must be {HASH_SIZE} bytes", expected=HASH_SIZE, actual=actual)
    return bytes(value)


def _check_int(value: Any, what: str) -> int:
    # bool is an int subclass; True as a tree size is always a caller bug.
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise VerificationError(f"{what} must be a non-negative integer", expected=">= 0", actual=value)
    return value


def _check_proof(proof: Any) -> list[bytes]:
    if isinstance(proof, bytes | bytearray | str) or not isinstance(proof, Sequence):
        raise VerificationError(
            "proof must be a sequence of hashes",
            expected="list",
            actual=type(proof).__name__,
        )
    return [_check_hash(p, f"proof[{i}]") for i, p in enumerate(proof)]


def root_from_leaf_hashes(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH(D[n]) over already-hashed leaves (RFC 9162 §2.1.1), in O(n) time and O(log n) memory."""
    # A stack of complete-subtree roots (a binary counter); folding it right to left gives exactly the
    # RFC's split at the largest power of two, because the stack holds the binary decomposition of n.
    stack: list[tuple[int, bytes]] = []
    for i, h in enumerate(leaf_hashes):
        h = _check_hash(h, f"leaf_hashes[{i}]")
        level = 0
        while stack and stack[-1][0] == level:
            h = node_hash(stack.pop()[1], h)
            level += 1
        stack.append((level, h))
    if not stack:
        return EMPTY_ROOT
    root = stack[-1][1]
    for _, h in reversed(stack[:-1]):
        root = node_hash(h, root)
    return root


def _provider(source: Sequence[bytes] | SubtreeProvider, size: int) -> SubtreeProvider:
    if callable(source):
        return source
    if isinstance(source, bytes | bytearray | str) or not isinstance(source, Sequence):
        raise VerificationError(
            "leaf hashes must be a sequence",
            expected="list",
            actual=type(source).__name__,
        )
    if size > len(source):
        raise VerificationError("tree size exceeds the number of leaves", expected=len(source), actual=size)
    leaves = source

    def mth(start: int, end: int) -> bytes:
        return root_from_leaf_hashes(leaves[start:end])

    return mth


def inclusion_proof(source: Sequence[bytes] | SubtreeProvider, index: int, size: int) -> list[bytes]:
    """PATH(index, D[size]) (RFC 9162 §2.1.3.1), from leaf hashes or a subtree provider."""
    _check_int(index, "index")
    _check_int(size, "size")
    if index >= size:
        raise VerificationError("leaf index out of range", expected=f"< {size}", actual=index)
    mth = _provider(source, size)
    # PATH(m, D[n]) = PATH(m, D[0:k]) : MTH(D[k:n]) if m < k, else PATH(m - k, D[k:n]) : MTH(D[0:k]).
    # Walk top-down, collecting siblings, then reverse: the RFC lists them leaf-to-root.
    path: list[bytes] = []
    start, end, m = 0, size, index
    while end - start > 1:
        k = _largest_power_of_two_below(end - start)
        if m < k:
            path.append(mth(start + k, end))
            end = start + k
        else:
            path.append(mth(start, start + k))
            start, m = start + k, m - k
    path.reverse()
    return path


def consistency_proof(source: Sequence[bytes] | SubtreeProvider, old_size: int, new_size: int) -> list[bytes]:
    """PROOF(old_size, D[new_size]) (RFC 9162 §2.1.4.1); empty when old_size is 0 or equals new_size."""
    _check_int(old_size, "old_size")
    _check_int(new_size, "new_size")
    if old_size > new_size:
        raise VerificationError("old size exceeds new size", expected=f"<= {new_size}", actual=old_size)
    mth = _provider(source, new_size)
    if old_size == 0 or old_size == new_size:
        return []
    # SUBPROOF(m, D[n], b): if m == n: {} when b else {MTH(D[n])}; otherwise with k the split,
    # m <= k: SUBPROOF(m, D[0:k], b) : MTH(D[k:n]);  m > k: SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k]).
    proof: list[bytes] = []
    start, end, m, complete = 0, new_size, old_size, True
    while m != end - start:
        k = _largest_power_of_two_below(end - start)
        if m <= k:
            proof.append(mth(start + k, end))
            end = start + k
        else:
            proof.append(mth(start, start + k))
            start, m, complete = start + k, m - k, False
    if not complete:
        proof.append(mth(start, end))
    proof.reverse()
    return proof


def root_from_inclusion_proof(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """The root an inclusion proof leads to, by the algorithm of RFC 9162 §2.1.3.2 steps 1–5."""
    r = _check_hash(leaf, "leaf hash")
    _check_int(index, "index")
    _check_int(size, "size")
    path = _check_proof(proof)
    # 1. leaf_index must be < tree_size.
    if index >= size:
        raise VerificationError("leaf index out of range", expected=f"< {size}", actual=index)
    # 2. fn = leaf_index, sn = tree_size - 1;  3. r = hash.
    fn, sn = index, size - 1
    # 4. For each p in inclusion_path:
    for i, p in enumerate(path):
        # a. If sn is 0, the proof is too long.
        if sn == 0:
            raise VerificationError("inclusion proof too long", expected=f"{i} hashes", actual=len(path))
        # b. If LSB(fn) is set or fn == sn, p is a left sibling; else a right one.
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            # Skip levels where this node has no right sibling (the right edge of the tree).
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        # c. Go up one level.
        fn >>= 1
        sn >>= 1
    # 5. sn must be 0 (the proof reached the root), and r must equal the root.
    if sn != 0:
        raise VerificationError("inclusion proof too short", expected="more hashes", actual=len(path))
    return r


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """Raise VerificationError unless ``proof`` shows ``leaf`` at ``index`` in the tree (size, root)."""
    expected = _check_hash(root, "root")
    actual = root_from_inclusion_proof(leaf, index, size, proof)
    if actual != expected:
        raise VerificationError("inclusion proof leads to a different root", expected=expected, actual=actual)


def verify_consistency(
    old_size: int,
    new_size: int,
    old_root: bytes,
    new_root: bytes,
    proof: Sequence[bytes],
) -> None:
    """Raise VerificationError unless ``proof`` shows tree (old_size, old_root) is a prefix of the new one.

    Implements RFC 9162 §2.1.4.2. Two cases the RFC leaves implicit take an empty proof: equal sizes
    (the roots must be equal) and an old size of 0 (the old root must be the empty-tree hash).
    """
    _check_int(old_size, "old_size")
    _check_int(new_size, "new_size")
    first_hash = _check_hash(old_root, "old root")
    second_hash = _check_hash(new_root, "new root")
    path = _check_proof(proof)
    if old_size > new_size:
        raise VerificationError("old size exceeds new size", expected=f"<= {new_size}", actual=old_size)
    if old_size == new_size or old_size == 0:
        if path:
            raise VerificationError("consistency proof must be empty", expected=0, actual=len(path))
        want = second_hash if old_size == new_size else EMPTY_ROOT
        if first_hash != want:
            raise VerificationError("old root does not match", expected=want, actual=first_hash)
        return
    # 1. An empty consistency_path fails.
    if not path:
        raise VerificationError("consistency proof is empty", expected="at least 1 hash", actual=0)
    # 2. If first is an exact power of 2, prepend first_hash.
    if old_size & (old_size - 1) == 0:
        path = [first_hash, *path]
    # 3. fn = first - 1, sn = second - 1.
    fn, sn = old_size - 1, new_size - 1
    # 4. While LSB(fn) is set, right-shift fn and sn.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5. fr = sr = the first value.
    fr = sr = path[0]
    # 6. For each subsequent value c:
    for c in path[1:]:
        # a. If sn is 0, the proof is too long.
        if sn == 0:
            raise VerificationError("consistency proof too long", expected="fewer hashes", actual=len(proof))
        # b. c is a left sibling for both trees, or a right sibling in the new tree only.
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        # c. Go up one level.
        fn >>= 1
        sn >>= 1
    # 7. fr == first_hash, sr == second_hash and sn == 0.
    if sn != 0:
        raise VerificationError("consistency proof too short", expected="more hashes", actual=len(proof))
    if fr != first_hash:
        raise VerificationError(
            "consistency proof leads to a different old root",
            expected=first_hash,
            actual=fr,
        )
    if sr != second_hash:
        raise VerificationError(
            "consistency proof leads to a different new root",
            expected=second_hash,
            actual=sr,
        )
