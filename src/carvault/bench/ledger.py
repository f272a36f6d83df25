"""Measure the transparency log: append rate, and proof latency at sizes up to ~100 million leaves.

``bench_log`` appends through the real ``TransparencyLog.append`` path. ``build_large_log`` fills an
empty log directory much faster for the large-size proof figure: it hashes aligned chunks of 2^20
leaves in worker processes, lays each chunk's subtree out in post-order with numpy, writes it at its
final offset, then links the chunk roots in the parent and commits the size — the same bytes
``append`` would have written (``TransparencyLog.check_integrity`` proves it on small builds).

Run ``python -m carvault.bench.ledger DIR N_LEAVES [--build]`` to print the figures as JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carvault.ledger import merkle
from carvault.ledger.checkpoint import verify_checkpoint
from carvault.ledger.log import TransparencyLog, node_count, node_position
from carvault.ledger.merkle import HASH_SIZE

__all__ = [
    "BENCH_ORIGIN",
    "bench_key",
    "bench_leaf",
    "bench_log",
    "build_large_log",
    "open_bench_log",
    "proof_figures",
]

BENCH_ORIGIN = "bench.carvault.example/log"


_LEAF_PREFIX = b"carvault-leaf-v1\nbench\n"


def bench_leaf(i: int) -> bytes:
    """Distinct synthetic leaf data of 127 bytes, about the size of a real ``protocol.leaf_data`` leaf."""
    # Cheap to make on purpose: building 100M leaves should measure hashing and I/O, not formatting.
    return _LEAF_PREFIX + i.to_bytes(8, "big") * 13


def bench_key() -> Ed25519PrivateKey:
    """The fixed, public (so: never for production) log key of bench logs."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"carvault bench key").digest())


def open_bench_log(directory: Path | str) -> TransparencyLog:
    """Open (or create) a bench log in ``directory``."""
    return TransparencyLog(directory, BENCH_ORIGIN, bench_key(), BENCH_ORIGIN)


def _ms_quantiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1e3, ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3


def proof_figures(log: TransparencyLog, samples: int = 200, seed: int = 1) -> dict[str, Any]:
    """p50/p99 milliseconds for inclusion and consistency proofs (generate + verify) at the log's size."""
    rng = random.Random(seed)
    size = log.size
    if size == 0:
        return {"size": 0}
    root = log.root(size)
    gen_incl, ver_incl, gen_cons, ver_cons = [], [], [], []
    for _ in range(samples):
        index = rng.randrange(size)
        t0 = time.perf_counter()
        proof = log.inclusion_proof(index, size)
        t1 = time.perf_counter()
        merkle.verify_inclusion(log.leaf_hash(index), index, size, proof, root)
        t2 = time.perf_counter()
        gen_incl.append(t1 - t0)
        ver_incl.append(t2 - t1)
        old = rng.randrange(1, size + 1)
        t0 = time.perf_counter()
        cproof = log.consistency_proof(old, size)
        t1 = time.perf_counter()
        old_root = log.root(old)
        t2 = time.perf_counter()
        merkle.verify_consistency(old, size, old_root, root, cproof)
        t3 = time.perf_counter()
        gen_cons.append(t1 - t0)
        ver_cons.append(t3 - t2)
    t0 = time.perf_counter()
    note = log.checkpoint()
    t1 = time.perf_counter()
    verify_checkpoint(note, log.public_key, log.key_name, BENCH_ORIGIN)
    t2 = time.perf_counter()
    figures: dict[str, Any] = {"size": size, "proof_samples": samples}
    for name, values in (
        ("inclusion_proof", gen_incl),
        ("inclusion_verify", ver_incl),
        ("consistency_proof", gen_cons),
        ("consistency_verify", ver_cons),
    ):
        p50, p99 = _ms_quantiles(values)
        figures[f"{name}_ms_p50"] = round(p50, 4)
        figures[f"{name}_ms_p99"] = round(p99, 4)
    figures["checkpoint_sign_ms"] = round((t1 - t0) * 1e3, 4)
    figures["checkpoint_verify_ms"] = round((t2 - t1) * 1e3, 4)
    return figures


def bench_log(
    directory: Path | str,
    n_leaves: int,
    *,
    batch_size: int = 1000,
    proof_samples: int = 200,
    threads: int = 16,
) -> dict[str, Any]:
    """Append ``n_leaves`` in batches, time proofs at the end, and (threads > 0) concurrent 1-leaf appends."""
    with open_bench_log(directory) as log:
        start = log.size
        append_seconds = 0.0
        for first in range(start, start + n_leaves, batch_size):
            batch = [bench_leaf(i) for i in range(first, min(start + n_leaves, first + batch_size))]
            t0 = time.perf_counter()
            log.append(batch)
            append_seconds += time.perf_counter() - t0
        figures: dict[str, Any] = {
            "appended": n_leaves,
            "batch_size": batch_size,
            "append_seconds": round(append_seconds, 3),
            "append_leaves_per_s": round(n_leaves / append_seconds) if append_seconds else None,
        }
        figures.update(proof_figures(log, proof_samples))
    if threads:
        # In a scratch log beside it, so the measured log holds exactly the batched leaves.
        with tempfile.TemporaryDirectory(dir=Path(directory).parent) as scratch:
            figures.update(_concurrent_single_appends(Path(scratch), threads))
    return figures


def _concurrent_single_appends(directory: Path, threads: int, per_thread: int = 200) -> dict[str, Any]:
    """One leaf per call from many threads at once, as gateway request handlers append."""
    with open_bench_log(directory) as log:

        def worker(tag: int) -> None:
            for k in range(per_thread):
                log.append([bench_leaf(tag * per_thread + k)])

        pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
        t0 = time.perf_counter()
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        seconds = time.perf_counter() - t0
    return {
        "single_leaf_threads": threads,
        "single_leaf_appends_per_s": round(threads * per_thread / seconds),
    }


def _popcount(values: np.ndarray) -> np.ndarray:
    """Set bits per element of a non-negative int64 array (np.bitwise_count needs numpy 2)."""
    if hasattr(np, "bitwise_count"):
        counted: np.ndarray = np.bitwise_count(values).astype(np.int64)
        return counted
    counts = np.zeros_like(values)
    rest = values.copy()
    while rest.any():
        counts += rest & 1
        rest >>= 1
    return counts


def _chunk_postorder(first_leaf: int, chunk_log2: int) -> tuple[bytes, bytes]:
    """(post-order records, root) of the aligned subtree of 2^chunk_log2 leaves starting at first_leaf."""
    sha256 = hashlib.sha256
    n = 1 << chunk_log2
    levels = [b"".join(sha256(b"\x00" + bench_leaf(i)).digest() for i in range(first_leaf, first_leaf + n))]
    pair = 2 * HASH_SIZE
    for _ in range(chunk_log2):
        below = memoryview(levels[-1])
        parents = (sha256(b"\x01" + below[o : o + pair]).digest() for o in range(0, len(below), pair))
        levels.append(b"".join(parents))
    # Scatter each level into post-order: node (k, j) sits at record node_count((j+1)·2^k − 1) + k.
    out = np.empty((node_count(n), HASH_SIZE), dtype=np.uint8)
    for level, data in enumerate(levels):
        last_leaf = ((np.arange(n >> level, dtype=np.int64) + 1) << level) - 1
        positions = 2 * last_leaf - _popcount(last_leaf) + level
        out[positions] = np.frombuffer(data, dtype=np.uint8).reshape(-1, HASH_SIZE)
    return out.tobytes(), levels[-1]


def _build_chunk(args: tuple[str, int, int]) -> bytes:
    nodes_path, chunk, chunk_log2 = args
    first_leaf = chunk << chunk_log2
    records, root = _chunk_postorder(first_leaf, chunk_log2)
    fd = os.open(nodes_path, os.O_WRONLY)
    try:
        os.pwrite(fd, records, node_count(first_leaf) * HASH_SIZE)
    finally:
        os.close(fd)
    return root


def build_large_log(
    directory: Path | str, n_leaves: int, *, chunk_log2: int = 20, workers: int | None = None
) -> dict[str, Any]:
    """Fill an empty log with ``n_leaves`` ``bench_leaf`` entries, fast; returns timing figures.

    Whole chunks of 2^chunk_log2 leaves are built in parallel and written in place; the remainder
    goes through ``append``. The result is byte-identical to appending the same leaves one by one.
    """
    directory = Path(directory)
    workers = workers or os.cpu_count() or 1
    t0 = time.perf_counter()
    with open_bench_log(directory) as log:
        if log.size != 0:
            raise ValueError(f"{directory} is not an empty log")
        chunks = n_leaves >> chunk_log2
        nodes_path = str(directory / "nodes")
        with log._exclusive():
            # Room for every chunk record up front, so workers can write in any order.
            os.ftruncate(log._nodes_fd, node_count(chunks << chunk_log2) * HASH_SIZE)
            stack: list[tuple[int, bytes]] = []
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(workers) as pool:
                jobs = ((nodes_path, c, chunk_log2) for c in range(chunks))
                for chunk, root in enumerate(pool.imap(_build_chunk, jobs)):
                    # Link completed chunk roots into their ancestors, as append's carry loop does.
                    level, h, index = chunk_log2, root, chunk
                    while stack and stack[-1][0] == level:
                        h = merkle.node_hash(stack.pop()[1], h)
                        level, index = level + 1, index >> 1
                        os.pwrite(log._nodes_fd, h, node_position(level, index) * HASH_SIZE)
                    stack.append((level, h))
            os.fsync(log._nodes_fd)
            committed = chunks << chunk_log2
            log._commit(committed, log._committed()[1])
        built = time.perf_counter() - t0
        for first in range(committed, n_leaves, 1000):
            log.append([bench_leaf(i) for i in range(first, min(n_leaves, first + 1000))])
        total = time.perf_counter() - t0
        return {
            "leaves": log.size,
            "build_seconds": round(total, 1),
            "bulk_seconds": round(built, 1),
            "workers": workers,
            "leaves_per_s": round(n_leaves / total) if total else None,
            "nodes_bytes": os.fstat(log._nodes_fd).st_size,
        }


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: build or append a log, then print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("n_leaves", type=int)
    parser.add_argument("--build", action="store_true", help="bulk-build instead of appending")
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args(argv)
    if args.build:
        figures = build_large_log(args.directory, args.n_leaves)
        with open_bench_log(args.directory) as log:
            figures.update(proof_figures(log, args.samples))
    else:
        figures = bench_log(args.directory, args.n_leaves, proof_samples=args.samples)
    json.dump(figures, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
