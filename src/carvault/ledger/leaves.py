"""Which leaf a batch has in the region's log, and how each batch gets exactly one (docs/transparency-log.md).

Every vehicle has a *log key*: 32 random bytes made when it is registered (or, for a vehicle registered
before leaf v2, when its first batch is logged after the upgrade). New batches get leaf v2, a keyed
commitment that names no VIN, seq or time; batches logged before keep their v1 leaf, and
``BatchRecord.leaf_version`` says which (NULL on a logged row means v1).

Exactly once across threads and processes: whoever appends a batch's leaf holds the *fence* (an
``flock`` on a file next to the log, opened afresh per holder so threads exclude each other too) from
re-reading the batch's row, through the append, to writing ``log_index`` (``WHERE log_index IS NULL``).
So a row still unlogged under the fence has no leaf, except when its writer died between append and
update; start-up reconciliation and re-sends therefore search the log's tail for the leaf first.

Log keys are sealed at rest: ``vehicles.log_key`` holds ``SEALED_MAGIC || nonce || AES-256-GCM(key)``
under the region's data key (``keys/log-keys-aes256.key``, ``Database.data_key``) with the VIN as associated
data, so a copy of the database alone opens no leaf and a sealed key moved to another car's row does not
open. ``seal_log_key`` is the one writer, ``open_log_key`` the one reader; vehicles loaded through the ORM
get their key opened on load (so ``Vehicle.log_key`` in memory is the clear key). A 32-byte value is a
clear key written before sealing; ``seal_clear_log_keys`` (run by the region on start) seals those.
"""

from __future__ import annotations

import base64
import fcntl
import os
import secrets
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Table, bindparam, event, func, select, update
from sqlalchemy.orm import attributes

from carvault.errors import Unavailable
from carvault.ledger.merkle import leaf_hash
from carvault.protocol import LOG_KEY_LEN, leaf_data_v1, leaf_data_v2, leaf_salt
from carvault.store.metadata import BatchRecord, Database, Vehicle, rowcount

LEAF_V1 = 1
LEAF_V2 = 2
CURRENT_LEAF = LEAF_V2
FENCE_FILE = "log-fence.lock"
RECOVERY_TAIL = 1 << 16  # leaves searched for a batch whose writer died between append and index write
DATA_KEY_FILE = "log-keys-aes256.key"  # in <data_dir>/keys/: 32 random bytes, the AES-256-GCM key of log keys
SEALED_MAGIC = b"cvk1"  # sealed log key: magic (4) || nonce (12) || ciphertext (32) || tag (16)
NONCE_LEN = 12
SEALED_LEN = len(SEALED_MAGIC) + NONCE_LEN + LOG_KEY_LEN + 16


class Log(Protocol):
    """What logging a batch needs of the transparency log."""

    @property
    def size(self) -> int: ...

    def append(self, entries: list[bytes]) -> int: ...

    def leaf_hash(self, index: int) -> bytes: ...


def _aad(vin: str) -> bytes:
    """The associated data of a vehicle's sealed log key: it opens only in that vehicle's row."""
    return b"carvault-log-key-v1\n" + vin.encode()


def _data_key(db: Database) -> bytes:
    """The region's data key, loaded by ``Region``; a bare ``Database`` cannot seal or open log keys."""
    if db.data_key is None:
        raise Unavailable("vehicle log keys are sealed and this database was opened without the region's data key")
    return db.data_key


def seal_log_key(data_key: bytes, vin: str, log_key: bytes) -> bytes:
    """What ``vehicles.log_key`` stores for a vehicle's log key: AES-256-GCM under the data key, the VIN bound."""
    if len(log_key) != LOG_KEY_LEN:
        raise ValueError(f"a log key is {LOG_KEY_LEN} bytes")
    nonce = secrets.token_bytes(NONCE_LEN)
    return SEALED_MAGIC + nonce + AESGCM(data_key).encrypt(nonce, log_key, _aad(vin))


def open_log_key(data_key: bytes, vin: str, stored: bytes) -> bytes:
    """The clear log key from a stored value (sealed, or a 32-byte clear key written before sealing)."""
    stored = bytes(stored)
    if len(stored) == LOG_KEY_LEN:
        return stored
    if len(stored) != SEALED_LEN or not stored.startswith(SEALED_MAGIC):
        raise Unavailable(f"the stored log key of {vin} is neither sealed nor a {LOG_KEY_LEN}-byte key")
    nonce = stored[len(SEALED_MAGIC) : len(SEALED_MAGIC) + NONCE_LEN]
    try:
        return AESGCM(data_key).decrypt(nonce, stored[len(SEALED_MAGIC) + NONCE_LEN :], _aad(vin))
    except InvalidTag:
        raise Unavailable(
            f"the log key of {vin} does not open with this region's data key (keys/{DATA_KEY_FILE} is not the "
            "one it was sealed with, or the row was altered)"
        ) from None


def _open_on_load(target: Vehicle, context: Any, *_: Any) -> None:
    """Give a vehicle loaded through the ORM its clear log key (the column holds it sealed)."""
    stored = target.__dict__.get("log_key")
    if stored is None or len(stored) == LOG_KEY_LEN:
        return
    db = context.session.info.get("database") if context.session is not None else None
    if not isinstance(db, Database):
        raise Unavailable("a sealed log key was loaded outside a CarVault database session")
    attributes.set_committed_value(target, "log_key", open_log_key(_data_key(db), target.vin, stored))


event.listen(Vehicle, "load", _open_on_load)
event.listen(Vehicle, "refresh", _open_on_load)


def log_key_of(db: Database, vin: str) -> bytes:
    """The vehicle's log key, made (once, whoever asks first) and stored sealed if it has none yet."""
    with db.session() as s:
        stored = s.scalar(select(Vehicle.log_key).where(Vehicle.vin == vin))
        if stored is not None:
            return open_log_key(_data_key(db), vin, stored)
        s.execute(
            update(Vehicle)
            .where(Vehicle.vin == vin, Vehicle.log_key.is_(None))
            .values(log_key=seal_log_key(_data_key(db), vin, secrets.token_bytes(LOG_KEY_LEN)))
        )
    with db.session() as s:
        stored = s.scalar(select(Vehicle.log_key).where(Vehicle.vin == vin))
    if stored is None:
        raise LookupError(f"no vehicle {vin}")
    return open_log_key(_data_key(db), vin, stored)


# A vehicle's log key never changes once made (sealing re-encrypts the same key), so each process keeps the keys it
# has opened, per database: logging a group then reads no vehicle row and decrypts nothing.
_OPENED_KEYS: weakref.WeakKeyDictionary[Database, dict[str, bytes]] = weakref.WeakKeyDictionary()


def log_keys_of(db: Database, vins: set[str]) -> dict[str, bytes]:
    """The log keys of several vehicles in one read (each made first if missing)."""
    if not vins:
        return {}
    opened = _OPENED_KEYS.setdefault(db, {})
    keys = {vin: opened[vin] for vin in vins if vin in opened}
    wanted = vins - keys.keys()
    if not wanted:
        return keys
    with db.session() as s:
        rows = s.execute(select(Vehicle.vin, Vehicle.log_key).where(Vehicle.vin.in_(wanted))).all()
    keys |= {row.vin: open_log_key(_data_key(db), row.vin, row.log_key) for row in rows if row.log_key is not None}
    keys |= {vin: log_key_of(db, vin) for vin in vins - keys.keys()}
    opened.update(keys)
    return keys


_BATCHES = cast(Table, BatchRecord.__table__)
_LOG_STATE = select(_BATCHES.c.id, _BATCHES.c.log_index).where(_BATCHES.c.id.in_(bindparam("ids", expanding=True)))
_SET_LEAF = (
    update(_BATCHES)
    .where(_BATCHES.c.id == bindparam("b_id"), _BATCHES.c.log_index.is_(None))
    .values(log_index=bindparam("b_index"), leaf_version=bindparam("b_version"), leaf_hash=bindparam("b_leaf_hash"))
)


def seal_clear_log_keys(db: Database) -> int:
    """Seal every log key still stored in the clear (written before sealing); how many this call sealed."""
    with db.session() as s:
        rows = s.execute(select(Vehicle.vin, Vehicle.log_key).where(func.length(Vehicle.log_key) == LOG_KEY_LEN)).all()
    sealed = 0
    for row in rows:
        clear = bytes(row.log_key)
        with db.session() as s:  # conditional: a process sealing the same row at once leaves it to the first
            result = s.execute(
                update(Vehicle)
                .where(Vehicle.vin == row.vin, Vehicle.log_key == clear)
                .values(log_key=seal_log_key(_data_key(db), row.vin, clear))
            )
            sealed += rowcount(result)
    return sealed


def batch_leaf(region: str, rec: BatchRecord, log_key: bytes | None, version: int | None = None) -> bytes:
    """The leaf bytes of a batch in the given version (default: the version it was logged with)."""
    version = version or rec.leaf_version or LEAF_V1
    if version == LEAF_V1:
        return leaf_data_v1(
            region=region, vin=rec.vin, seq=rec.seq, batch_hash=rec.batch_hash, received_ms=rec.received_ms
        )
    if log_key is None:
        raise ValueError("a v2 leaf needs the vehicle's log key")
    return leaf_data_v2(
        salt=leaf_salt(log_key, rec.seq),
        region=region,
        vin=rec.vin,
        seq=rec.seq,
        batch_hash=rec.batch_hash,
        received_ms=rec.received_ms,
        attested_by=rec.attested_by,
    )


def leaf_opening(rec: BatchRecord, log_key: bytes | None) -> dict[str, Any]:
    """What a proof entry needs to open the batch's leaf: nothing for v1; version and base64 salt for v2."""
    if (rec.leaf_version or LEAF_V1) == LEAF_V1:
        return {}
    if log_key is None:
        raise ValueError("a v2 leaf needs the vehicle's log key")
    return {"leaf_version": LEAF_V2, "leaf_salt": base64.b64encode(leaf_salt(log_key, rec.seq)).decode()}


@contextmanager
def fence(directory: Path) -> Iterator[None]:
    """Hold the log-writer fence (exclusive across processes and threads) for the block."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / FENCE_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def log_batches(
    db: Database, log: Log, region: str, records: Sequence[BatchRecord], *, fence_dir: Path, tail: int = 0
) -> list[int]:
    """Each record's leaf index, appending v2 leaves only for records no one has logged (exactly once).

    With ``tail`` > 0, the last ``tail`` leaves are first searched for leaves of unlogged records (v2 or v1),
    for a writer that died between its append and its index write.
    """
    if not records:
        return []
    given = {r.id: r for r in reversed(records)}  # vin, seq, hash and time of a row never change: only its index
    # A log shared by several machines brings its own fence (PostgreSQL: an advisory lock); else the file fence.
    log_fence = getattr(log, "fence", None)
    with log_fence() if callable(log_fence) else fence(fence_dir):
        ids = [r.id for r in records]
        with db.connection() as conn:
            state = {i: index for i, index in conn.execute(_LOG_STATE, {"ids": list(given)})}
        known = {i: index for i, index in state.items() if index is not None}
        todo = [given[i] for i in dict.fromkeys(ids) if i in state and i not in known]
        keys = log_keys_of(db, {r.vin for r in todo})
        found = _search_tail(log, region, todo, keys, tail) if tail and todo else {}
        fresh = {r.id: batch_leaf(region, r, keys[r.vin], CURRENT_LEAF) for r in todo if r.id not in found}
        if fresh:
            first = log.append(list(fresh.values()))
            found.update({i: (first + n, CURRENT_LEAF) for n, i in enumerate(fresh)})
        if todo:
            with db.connection(
                write=True
            ) as conn:  # one statement for the group, each row only if no one has indexed it
                conn.execute(
                    _SET_LEAF,
                    [
                        {
                            "b_id": r.id,
                            "b_index": found[r.id][0],
                            "b_version": found[r.id][1],
                            "b_leaf_hash": leaf_hash(
                                fresh[r.id] if r.id in fresh else batch_leaf(region, r, keys[r.vin], found[r.id][1])
                            ),
                        }
                        for r in todo
                    ],
                )
    known.update({i: index for i, (index, _) in found.items()})
    missing = [i for i in ids if i not in known]
    if missing:
        raise LookupError(f"batch rows {missing} do not exist")
    return [known[i] for i in ids]


def _search_tail(
    log: Log, region: str, records: list[BatchRecord], keys: dict[str, bytes], tail: int
) -> dict[int, tuple[int, int]]:
    """Record id -> (index, leaf version) for the records whose leaf (v2 or v1) is among the last leaves."""
    wanted: dict[bytes, tuple[int, int]] = {}
    for r in records:
        for version in (LEAF_V2, LEAF_V1):
            wanted[leaf_hash(batch_leaf(region, r, keys[r.vin], version))] = (r.id, version)
    found: dict[int, tuple[int, int]] = {}
    size = log.size
    for index in range(size - 1, max(-1, size - 1 - tail), -1):
        hit = wanted.get(log.leaf_hash(index))
        if hit is not None and hit[0] not in found:
            found[hit[0]] = (index, hit[1])
            if len(found) == len(records):
                break
    return found
