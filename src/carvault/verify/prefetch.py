"""A package read ahead on a thread of its own while `carvault verify` imports the verification kernel.

Importing the kernel (pyarrow, NumPy, cryptography) is about half of the command's time and holds the GIL the whole
while; reading the ZIP (zlib inflates without the GIL) and decoding the batches' Parquet payloads (Arrow's reader
releases it) mostly do not, so on two cores they go on at once. Nothing here decides anything: the checks use the
members as ``read_container`` gives them, and the decoded tables only when they are those of exactly the envelopes
the checks accepted, in their order and under the same budget; else they decode again themselves.

This module imports no more than ``container`` does; the wire format is imported on the reading thread, once the
members are in memory.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from carvault.verify.container import DEFAULT_LIMITS, Container, Limits, read_container

if TYPE_CHECKING:
    from carvault.protocol import Envelope


def decode_batches(envs: Iterable[Envelope]) -> Iterator[tuple[Envelope, Any]]:
    """Each envelope with its decoded table, in the order given, under one decode budget for the whole package."""
    from carvault.protocol import MAX_DECODED_BYTES

    budget = MAX_DECODED_BYTES  # however many batches the package holds
    for env in envs:
        table = env.table(max_bytes=budget)
        budget -= table.nbytes
        yield env, table


class Prefetch:
    """``read_container(path, limits)`` started at once, then each batch's payload decoded in seq order."""

    def __init__(self, path: Path, limits: Limits = DEFAULT_LIMITS) -> None:
        self.path = path
        self.limits = limits
        self._container: Container | None = None
        self._error: BaseException | None = None
        self._read = threading.Event()
        self._decoded: list[tuple[bytes, Any]] = []  # (payload, table) of the batches in name (= seq) order
        self._thread = threading.Thread(target=self._run, name="prefetch-package", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._container = read_container(self.path, self.limits)
        except BaseException as e:  # noqa: BLE001 - raised again in the caller's thread by ``container``
            self._error = e
            return
        finally:
            self._read.set()
        try:
            from carvault.protocol import decode_envelope

            files = self._container.files
            envs = (decode_envelope(files[name]) for name in sorted(n for n in files if n.startswith("batches/")))
            for env, table in decode_batches(envs):
                self._decoded.append((env.payload, table))
        except Exception:  # noqa: BLE001 - from a bad batch on, the checks decode, and report, on their own
            return

    def container(self) -> Container:
        """The members, once read; raises what ``read_container`` raised."""
        self._read.wait()
        if self._error is not None:
            raise self._error
        assert self._container is not None
        return self._container

    def tables(self, envs: Sequence[Envelope]) -> list[Any] | None:
        """The decoded tables of ``envs`` (in seq order), if they are the first batches decoded here; else None.

        Waits for the decoding. A prefix is enough: the budget left after each batch depends only on those before it.
        """
        self._thread.join()
        if len(envs) > len(self._decoded):
            return None
        if any(env.payload != payload for env, (payload, _) in zip(envs, self._decoded, strict=False)):
            return None
        return [table for _, table in self._decoded[: len(envs)]]
