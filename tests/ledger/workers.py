"""Code the ledger tests run in other processes (spawned pool workers and a killable writer)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from tests.ledger.conftest import open_log


def entry(tag: int, k: int) -> bytes:
    """The k-th entry written by writer ``tag``."""
    return b"writer %d entry %d" % (tag, k)


def append_until(directory: str, tag: int, start_at: float, seconds: float) -> list[tuple[int, int, int]]:
    """Append batches of 1..40 entries from ``start_at`` for ``seconds``; return (first, count, k0) each."""
    done: list[tuple[int, int, int]] = []
    k = 0
    with open_log(Path(directory)) as log:
        while time.time() < start_at:
            time.sleep(0.001)
        while time.time() < start_at + seconds:
            count = 1 + (k * 7 + tag * 13) % 40
            first = log.append([entry(tag, k + j) for j in range(count)])
            done.append((first, count, k))
            k += count
    return done


def crash_writer(directory: str, tag: int) -> None:
    """Append forever, printing ``first count k0`` after each acknowledged append, until killed."""
    k = 0
    with open_log(Path(directory)) as log:
        while True:
            count = 1 + (k * 11) % 300
            first = log.append([entry(tag, k + j) for j in range(count)])
            # One short write per line: a pipe write under PIPE_BUF is atomic, so no torn lines.
            sys.stdout.write(f"{first} {count} {k}\n")
            sys.stdout.flush()
            k += count


def die_during_append(directory: str, point: str) -> None:
    """Acknowledge one batch, then SIGKILL this process at ``point`` inside the second append."""
    from carvault.ledger import log as log_module

    real_pwrite_all = log_module._pwrite_all
    calls = 0

    def pwrite_then_die(fd: int, data: bytes | memoryview, offset: int) -> None:
        nonlocal calls
        calls += 1  # call 1 writes the records, call 2 the size slot
        target = {"torn-records": 1, "unsynced-records": 1, "torn-size": 2, "unsynced-size": 2}[point]
        if calls == target and point.startswith("torn"):
            real_pwrite_all(fd, bytes(data)[: len(data) // 2 + 3], offset)
            os.kill(os.getpid(), signal.SIGKILL)
        real_pwrite_all(fd, data, offset)
        if calls == target:
            os.kill(os.getpid(), signal.SIGKILL)

    with open_log(Path(directory)) as log:
        first = log.append([entry(0, k) for k in range(100)])
        sys.stdout.write(f"{first} 100 0\n")
        sys.stdout.flush()
        log_module._pwrite_all = pwrite_then_die  # type: ignore[assignment]
        log.append([entry(0, k) for k in range(100, 150)])
    raise AssertionError("unreachable: the append above kills the process")


if __name__ == "__main__":
    if sys.argv[1] == "die":
        die_during_append(sys.argv[2], sys.argv[3])
    else:
        crash_writer(sys.argv[1], int(sys.argv[2]))
