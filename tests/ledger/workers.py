"""Code the ledger tests run in other processes (spawned pool workers and a killable writer)."""

from __future__ import annotations

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


if __name__ == "__main__":
    crash_writer(sys.argv[1], int(sys.argv[2]))
