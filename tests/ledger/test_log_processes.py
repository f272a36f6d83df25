"""The log across processes: concurrent appenders, and a writer SIGKILLed mid-stream."""

from __future__ import annotations

import multiprocessing
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from carvault.ledger import merkle
from carvault.ledger.checkpoint import verify_checkpoint
from carvault.ledger.log import node_count
from tests.ledger.conftest import ORIGIN, log_key, open_log
from tests.ledger.workers import append_until, entry

REPO = Path(__file__).resolve().parents[2]


def check_acknowledged(directory: Path, acks: list[tuple[int, int, int, int]]) -> None:
    """Every acknowledged (tag, first, count, k0) is present with its exact hash; the tree is whole."""
    with open_log(directory) as log:
        for tag, first, count, k0 in acks:
            assert first + count <= log.size
            for j in range(count):
                assert log.leaf_hash(first + j) == merkle.leaf_hash(entry(tag, k0 + j)), (tag, first, j)
        assert log.check_integrity() == log.size


def test_two_processes_append_concurrently_and_lose_nothing(tmp_path: Path) -> None:
    open_log(tmp_path).close()
    ctx = multiprocessing.get_context("spawn")
    start_at = time.time() + 2.0  # both children are up (imports done) before either appends
    with ctx.Pool(2) as pool:
        results = pool.starmap(
            append_until,
            [(str(tmp_path), 0, start_at, 1.0), (str(tmp_path), 1, start_at, 1.0)],
        )
    acks = [(tag, first, count, k0) for tag, done in enumerate(results) for first, count, k0 in done]
    owner = sorted((first, first + count, tag) for tag, first, count, _ in acks)
    # The acknowledged ranges tile [0, size) exactly: nothing lost, nothing written twice.
    assert owner[0][0] == 0
    assert all(a[1] == b[0] for a, b in zip(owner, owner[1:], strict=False))
    with open_log(tmp_path) as log:
        assert owner[-1][1] == log.size
    # Both writers were really interleaved, so the lock was really contended.
    assert {tag for _, _, tag in owner} == {0, 1}
    switches = sum(1 for a, b in zip(owner, owner[1:], strict=False) if a[2] != b[2])
    assert switches > 2
    check_acknowledged(tmp_path, acks)


def _read_lines(proc: subprocess.Popen[bytes], buffer: bytearray, until: float, want: int = 0) -> list[str]:
    """Complete lines the writer prints before ``until`` (or as soon as ``want`` lines have come)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    lines: list[str] = []
    while time.time() < until and not (want and len(lines) >= want):
        ready, _, _ = select.select([fd], [], [], max(0.0, until - time.time()))
        if not ready:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buffer.extend(chunk)
        *complete, rest = bytes(buffer).split(b"\n")
        buffer[:] = rest
        lines += [line.decode() for line in complete]
    return lines


def test_sigkill_mid_stream_loses_no_acknowledged_leaf(tmp_path: Path) -> None:
    rng = random.Random(2024)
    acks: list[tuple[int, int, int, int]] = []
    checkpoints: list[str] = []
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for tag in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.ledger.workers", str(tmp_path), str(tag)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
        )
        buffer = bytearray()
        try:
            lines = _read_lines(proc, buffer, time.time() + 30, want=10)  # let it get going
            assert len(lines) >= 10 and proc.poll() is None, "writer did not start appending"
            # A checkpoint taken by another process while the writer runs.
            with open_log(tmp_path) as reader:
                checkpoints.append(reader.checkpoint())
            lines += _read_lines(proc, buffer, time.time() + rng.uniform(0.05, 0.4))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            lines += _read_lines(proc, buffer, time.time() + 5)  # the rest, up to EOF
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        acks += [(tag, *map(int, line.split())) for line in lines]  # type: ignore[misc]
        assert acks, "the writer acknowledged nothing"

        # Reopen as a restarted server would: every acknowledged leaf is there, the tree is whole.
        check_acknowledged(tmp_path, acks)
        with open_log(tmp_path) as log:
            size, root = log.size, log.root()
            assert size >= max(first + count for _, first, count, _ in acks)
            for note in checkpoints:
                before = verify_checkpoint(note, log_key().public_key(), ORIGIN, ORIGIN)
                assert log.root(before.size) == before.root
                merkle.verify_consistency(
                    before.size,
                    size,
                    before.root,
                    root,
                    log.consistency_proof(before.size),
                )
            for _, first, count, _ in acks[-3:]:
                index = first + count - 1
                merkle.verify_inclusion(log.leaf_hash(index), index, size, log.inclusion_proof(index), root)


@pytest.mark.parametrize(
    ("point", "survives"),
    [("torn-records", False), ("unsynced-records", False), ("torn-size", False), ("unsynced-size", True)],
)
def test_kill_at_each_point_of_an_append(tmp_path: Path, point: str, survives: bool) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [sys.executable, "-m", "tests.ledger.workers", "die", str(tmp_path), point],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    assert done.stdout == b"0 100 0\n"
    tail = os.path.getsize(tmp_path / "nodes")
    with open_log(tmp_path) as log:
        # The killed append was never acknowledged: it is either wholly there or wholly gone.
        assert log.size == (150 if survives else 100)
        assert tail >= node_count(log.size) * 32
        assert os.path.getsize(tmp_path / "nodes") == node_count(log.size) * 32
        expected = [merkle.leaf_hash(entry(0, k)) for k in range(log.size)]
        assert [log.leaf_hash(i) for i in range(log.size)] == expected
        assert log.check_integrity() == log.size
        assert log.append([b"after the crash"]) == log.size - 1
        assert log.check_integrity() == log.size
