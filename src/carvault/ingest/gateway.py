"""The gateway: verifies an uploaded batch, makes it durable, logs it, and answers with a receipt.

Checks run in the request thread (they are CPU work that needs no lock). Accepted batches then go
to a *group committer*: one thread that takes every batch waiting, writes them all to the segment
with a single fsync, advances each vehicle's chain head in one DB transaction, appends the group to
the transparency log, and only then releases the receipts. Concurrency across processes is safe
because the chain head advances with a conditional UPDATE (``WHERE last_seq = seq - 1``).

The fixed cost per batch is kept small (issue 10): the checks read the chain head, the ignition counter and
whether the seq is taken in one statement; the committer advances each vehicle's head with one statement per
group and inserts the group's rows with one multi-row INSERT. Those statements are built once (SQLAlchemy Core,
compiled once and cached) instead of through the ORM per batch.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, cast

import pyarrow as pa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Table, and_, bindparam, case, func, insert, or_, select, true, update
from sqlalchemy.exc import IntegrityError

from carvault.access.places import check_masked
from carvault.compliance.consent import ROUTINE_KINDS, Policy, check_batch, ignition_summary
from carvault.compliance.residency import RegionDirectory, Residency
from carvault.errors import (
    BrokenChain,
    CarVaultError,
    MalformedBatch,
    PayloadTooLarge,
    SeqConflict,
    Unavailable,
    UnknownVehicle,
    UnsupportedMediaType,
)
from carvault.ingest.validation import PayloadSummary, validate_payload
from carvault.ledger.leaves import RECOVERY_TAIL, log_batches
from carvault.location import Place
from carvault.pki import CertificateError, vehicle_key_from_certificate
from carvault.protocol import BATCH_MEDIA_TYPE, BatchHeader, Envelope, decode_envelope, receipt_json
from carvault.settings import Settings
from carvault.signals import Catalogue
from carvault.store.metadata import (
    BatchRecord,
    BatchRefusal,
    ConsentRecord,
    Database,
    OwnerPlaceRecord,
    Vehicle,
    VehicleEvent,
    now_ms,
    rowcount,
)
from carvault.store.segments import SegmentWriter

if TYPE_CHECKING:
    from carvault.metrics import Metrics

_log = logging.getLogger(__name__)
REPLAY_WAIT_MS = 2000  # a re-send waits this long after the original's commit for its leaf index

_VEHICLES = cast(Table, Vehicle.__table__)
_BATCHES = cast(Table, BatchRecord.__table__)
_EVENTS = cast(Table, VehicleEvent.__table__)
_CONSENTS = cast(Table, ConsentRecord.__table__)
_PLACES = cast(Table, OwnerPlaceRecord.__table__)

# What the checks need of the database, in one read: the chain head, the ignition counter, whether a batch
# already holds this seq (then the batch is answered as a re-send, docs/protocol.md §3.4), which consent
# decisions are on record, and the places the owner masks in the car (one row each; a single row of NULLs when
# there are none). Decisions are append-only (a stop is a new row), so their count and newest id name the
# vehicle's policy exactly: the policy is read again whenever they change, and a stop counts from the next batch.
# Places are edited in place, so they are read with every batch, in the same round trip (issue 12: on PostgreSQL a
# statement's cost is mostly its round trip).
_DECISIONS = _CONSENTS.c.vin == _VEHICLES.c.vin
_HEAD = (
    select(
        _VEHICLES.c.last_seq,
        _VEHICLES.c.last_hash,
        _VEHICLES.c.ignition_cycle,
        _VEHICLES.c.ignition_seen_ms,
        _BATCHES.c.id.label("taken"),
        select(func.count(_CONSENTS.c.id)).where(_DECISIONS).scalar_subquery().label("decisions"),
        select(func.max(_CONSENTS.c.id)).where(_DECISIONS).scalar_subquery().label("newest"),
        _PLACES.c.lat.label("place_lat"),
        _PLACES.c.lon.label("place_lon"),
        _PLACES.c.radius_m.label("place_radius_m"),
    )
    .select_from(
        _VEHICLES.outerjoin(
            _BATCHES, and_(_BATCHES.c.vin == _VEHICLES.c.vin, _BATCHES.c.seq == bindparam("seq"))
        ).outerjoin(_PLACES, and_(_PLACES.c.owner_id == _VEHICLES.c.owner_id, _PLACES.c.mask_in_car == true()))
    )
    .where(_VEHICLES.c.vin == bindparam("vin"))
    .order_by(_PLACES.c.id)
)
_HEAD_FIELDS = ("last_seq", "last_hash", "ignition_cycle", "ignition_seen_ms", "taken", "decisions", "newest")
# Which of a group's batch hashes are stored already (re-sends that raced their original through the checks).
_STORED = select(_BATCHES.c.batch_hash).where(_BATCHES.c.batch_hash.in_(bindparam("hashes", expanding=True)))
# A vehicle's chain head moves over all of its batches in a group at once, only from the head they were checked
# against. The ignition counter moves in the same statement, forward only (a lower counter proves nothing).
_FORWARD = or_(
    _VEHICLES.c.ignition_cycle.is_(None),
    _VEHICLES.c.ignition_cycle < bindparam("cycle"),
    and_(
        _VEHICLES.c.ignition_cycle == bindparam("cycle"),
        or_(_VEHICLES.c.ignition_seen_ms.is_(None), _VEHICLES.c.ignition_seen_ms < bindparam("seen")),
    ),
)
_HEAD_MOVES = update(_VEHICLES).where(
    _VEHICLES.c.vin == bindparam("b_vin"),
    _VEHICLES.c.last_seq == bindparam("from_seq"),
    _VEHICLES.c.last_hash == bindparam("from_hash"),
)
_ADVANCE = _HEAD_MOVES.values(last_seq=bindparam("to_seq"), last_hash=bindparam("to_hash"))
_ADVANCE_WITH_IGNITION = _HEAD_MOVES.values(
    last_seq=bindparam("to_seq"),
    last_hash=bindparam("to_hash"),
    ignition_cycle=case((_FORWARD, bindparam("cycle")), else_=_VEHICLES.c.ignition_cycle),
    ignition_seen_ms=case((_FORWARD, bindparam("seen")), else_=_VEHICLES.c.ignition_seen_ms),
)
_INSERT_BATCHES = insert(_BATCHES).returning(_BATCHES.c.id, sort_by_parameter_order=True)
_INSERT_EVENTS = insert(_EVENTS)


_REFUSALS = cast(Table, BatchRefusal.__table__)
_HOUR_MS = 3_600_000
_REFUSAL_BUCKET = and_(
    _REFUSALS.c.vin == bindparam("r_vin"),
    _REFUSALS.c.code == bindparam("r_code"),
    _REFUSALS.c.hour_ms == bindparam("r_hour"),
)


def _least(column: Any, name: str) -> Any:
    return case((column > bindparam(name), bindparam(name)), else_=column)


def _greatest(column: Any, name: str) -> Any:
    return case((column < bindparam(name), bindparam(name)), else_=column)


_REFUSAL_COUNT = (
    update(_REFUSALS)
    .where(_REFUSAL_BUCKET)
    .values(
        count=_REFUSALS.c.count + 1,
        last_ms=_greatest(_REFUSALS.c.last_ms, "r_at"),
        seq_min=_least(_REFUSALS.c.seq_min, "r_seq"),
        seq_max=_greatest(_REFUSALS.c.seq_max, "r_seq"),
        t0_min=_least(_REFUSALS.c.t0_min, "r_t0"),
        t1_max=_greatest(_REFUSALS.c.t1_max, "r_t1"),
        message=bindparam("r_message"),
    )
)


class RefusalRecord:
    """Durable, bounded record of refused uploads from authenticated cars: one counter per vehicle, code and hour.

    Only a batch whose signature verified is recorded (anyone can send garbage naming a VIN; only the car can sign),
    and a flood of refusals grows a counter, never the table (``BatchRefusal``).
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, header: BatchHeader, error: CarVaultError, at_ms: int | None = None) -> None:
        """Count one refusal; a storage failure here is logged and swallowed (the car still gets its answer)."""
        at = now_ms() if at_ms is None else at_ms
        params = {
            "r_vin": header.vin,
            "r_code": error.code[:64],
            "r_hour": at - at % _HOUR_MS,
            "r_at": at,
            "r_seq": header.seq,
            "r_t0": header.t0,
            "r_t1": header.t1,
            "r_message": error.message[:300],
        }
        for _ in range(2):  # a first refusal of the hour inserts; a racing insert makes the other one count
            try:
                with self.db.connection(write=True) as conn:
                    if rowcount(conn.execute(_REFUSAL_COUNT, params)) == 1:
                        return
                    conn.execute(
                        insert(_REFUSALS).values(
                            vin=header.vin,
                            code=params["r_code"],
                            hour_ms=params["r_hour"],
                            count=1,
                            first_ms=at,
                            last_ms=at,
                            seq_min=header.seq,
                            seq_max=header.seq,
                            t0_min=header.t0,
                            t1_max=header.t1,
                            message=params["r_message"],
                        )
                    )
                    return
            except IntegrityError:
                continue
            except CarVaultError as e:
                _log.warning("refusal of %s not recorded: %s", header.vin, e)
                return


class _HeadsMoved(Exception):
    """Raised inside a group's transaction to roll it back: not every chain head moved (``Gateway._record``)."""


class AppendOnlyLog(Protocol):
    """What the gateway needs of the transparency log."""

    @property
    def size(self) -> int: ...

    def append(self, entries: list[bytes]) -> int: ...

    def leaf_hash(self, index: int) -> bytes: ...


@dataclass
class _Pending:
    env: Envelope
    summary: PayloadSummary
    ignition: tuple[int, int] | None = None  # (highest IgnitionCycle, time of its last sample) in the batch
    future: Future[dict[str, Any]] = field(default_factory=Future)


def _answer(
    future: Future[dict[str, Any]], receipt: dict[str, Any] | None = None, *, error: BaseException | None = None
) -> None:
    """Answer a pending upload once; a later answer (two threads settling one batch) is dropped."""
    if future.done():
        return
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(receipt or {})
    except InvalidStateError:
        pass


def _answer_as_resend(future: Future[dict[str, Any]], original: Future[dict[str, Any]]) -> None:
    """A copy of a batch in the same group: the original's receipt with ``duplicate: true``, or its refusal."""
    error = original.exception()
    if error is not None:
        _answer(future, error=error)
    else:
        _answer(future, {**original.result(), "duplicate": True})


_BATCH_COLUMNS = (
    "vin",
    "seq",
    "kind",
    "batch_hash",
    "prev_hash",
    "t0",
    "t1",
    "rows",
    "samples",
    "columns",
    "segment",
    "offset",
    "length",
    "log_index",
    "received_ms",
    "attested_by",
    "software_version",
)


def _row(rec: BatchRecord) -> dict[str, Any]:
    """The ``batches`` row of a record about to be inserted."""
    return {name: getattr(rec, name) for name in _BATCH_COLUMNS}


def _event_row(p: _Pending) -> dict[str, Any]:
    """The ``vehicle_events`` row of an event batch."""
    ev = p.summary.event
    assert ev is not None
    return {
        "vin": p.env.header.vin,
        "kind": ev["kind"],
        "t_ms": ev["trigger_ms"],
        "batch_seq": p.env.header.seq,
        "legal_basis": ev["legal_basis"],
        "detail": json.dumps({k: v for k, v in ev.items() if k not in ("kind", "trigger_ms", "legal_basis")}),
    }


class Gateway:
    """Region gateway for vehicle uploads (protocol v1)."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        segments: SegmentWriter,
        log: AppendOnlyLog,
        catalogue: Catalogue,
        ca_pem: str,
        *,
        policy_of: Callable[[str], Policy] | None = None,
        residency: Residency | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.segments = segments
        self.log = log
        self.catalogue = catalogue
        self.ca_pem = ca_pem
        self._keys: dict[str, Ed25519PublicKey] = {}
        # The owner's decisions (``policy_of`` reads them from the consents table); every batch reads which decisions
        # are on record, so a stop counts from the very next one, in every worker process. The policy built from
        # them is kept until they change. Without a source, no decision is on record and only the defaults allow.
        self.policy_of: Callable[[str], Policy] = policy_of or (lambda vin: Policy(vin, ()))
        self._policies: dict[str, tuple[tuple[int, int | None], Policy]] = {}
        self.residency = residency or Residency.of_database(
            db, settings.region, settings.region_endpoints, RegionDirectory.of_setting(settings.region_directory)
        )
        # The live extension (docs/protocol.md §8): checks a header's live_root against the frames received.
        self.live_root_check: Callable[[BatchHeader], None] | None = None
        # The owner's masked places (access/places.py), enforced here too: a routine batch or live frame with a
        # position inside one is refused (``LocationInMaskedPlace``); set by the region. Live frames call it; a
        # batch's check reads the places with its chain head (``_HEAD``), so setting it turns that check on.
        self.places_check: Callable[[str, pa.Table], None] | None = None
        self.metrics: Metrics | None = None  # the region's counters (metrics.py), set by Region
        self.refusals = RefusalRecord(db)  # refusals of authenticated cars, for the completeness report
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="group-committer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ checks
    def accept(self, body: bytes, content_type: str | None, *, attested: bool = False) -> dict[str, Any]:
        """Check and store one batch; return its receipt, or raise the reason it was refused.

        ``attested``: a batch this region built and signed itself from records a car did not sign (Fleet Telemetry,
        docs/protocol.md §9); never for a batch that came over the network.
        """
        checked = self.check(body, content_type, attested=attested)
        if isinstance(checked, dict):
            return checked
        return checked.future.result(timeout=120)

    def check(self, body: bytes, content_type: str | None, *, attested: bool = False) -> dict[str, Any] | _Pending:
        """Every check of a batch (CPU work, no lock); a replay's receipt, or the batch queued for commit."""
        media = (content_type or "").split(";")[0].strip().lower()
        if media != BATCH_MEDIA_TYPE:
            raise UnsupportedMediaType(
                f"batches are sent as {BATCH_MEDIA_TYPE}, not {media or 'nothing'}", expected=BATCH_MEDIA_TYPE
            )
        if len(body) > self.settings.max_batch_bytes:
            raise PayloadTooLarge(
                f"batch is {len(body)} bytes; the limit is {self.settings.max_batch_bytes}",
                limit=self.settings.max_batch_bytes,
            )
        env = decode_envelope(body)
        h = env.header
        if h.region_attested != attested:
            # A car uploads only what it signed itself; only the region's own Fleet Telemetry ingest attests (§9).
            raise MalformedBatch(
                "a region-attested batch is built by the region, never uploaded"
                if h.region_attested
                else "a batch built by the region must name the attesting region (attested_by)",
                field="attested_by",
            )
        # Residency from the registrations (this region's vehicles, the region directory), never the header.
        self.residency.admit(h.vin)
        env.verify(self.vehicle_key(h.vin))
        try:
            return self._check_signed(env)
        except CarVaultError as e:
            if not isinstance(e, Unavailable):  # the region's own trouble is no refusal of the car's data
                self.refusals.record(h, e)
            raise

    def _check_signed(self, env: Envelope) -> dict[str, Any] | _Pending:
        """The checks of a batch whose signature holds (its refusals are recorded: ``RefusalRecord``)."""
        h = env.header
        self.residency.check_claim(h.vin, h.region)
        head = self._head(h.vin, h.seq)
        if head["taken"] is not None:
            existing = self._existing(h.vin, h.seq)
            if existing is not None:
                return self._replay(env, existing)
        self._check_chain(env, head)
        table = env.table()
        summary = validate_payload(
            h,
            table,
            self.catalogue,
            now_ms=now_ms(),
            max_future_skew_ms=self.settings.max_future_skew_s * 1000,
            max_rows=self.settings.max_batch_rows,
        )
        if self.live_root_check is not None:
            self.live_root_check(h)
        # The owner's consent, applied here again with the car's own rule module: the car's filtering is not proof.
        # The vehicle's last accepted ignition counter lets a rise between batches count as a new cycle.
        check_batch(
            self._policy(h.vin, head),
            table,
            self.catalogue,
            kind=h.kind,
            previous=(head["ignition_cycle"], head["ignition_seen_ms"]),
        )
        if self.places_check is not None and h.kind in ROUTINE_KINDS and head["masked"]:
            check_masked(table, head["masked"])  # the places came with the head: no read of their own
        pending = _Pending(env, summary, ignition_summary(table))  # the decoded table is not kept while queued
        self._queue.put(pending)
        return pending

    def vehicle_key(self, vin: str) -> Ed25519PublicKey:
        """The vehicle's certified public key (cached), or ``UnknownVehicle``."""
        key = self._keys.get(vin)
        if key is None:
            with self.db.session() as s:
                row = s.execute(select(Vehicle.public_key, Vehicle.certificate_pem).where(Vehicle.vin == vin)).first()
            if row is None:
                raise UnknownVehicle(f"vehicle {vin} is not provisioned in region {self.settings.region}", vin=vin)
            key = Ed25519PublicKey.from_public_bytes(row.public_key)
            if row.certificate_pem:
                try:
                    certified = vehicle_key_from_certificate(row.certificate_pem, self.ca_pem, vin)
                except CertificateError as e:
                    raise UnknownVehicle(
                        f"vehicle {vin} has no valid certificate from this region's CA: {e}", vin=vin
                    ) from None
                if certified.public_bytes_raw() != row.public_key:
                    raise UnknownVehicle(f"vehicle {vin}'s certificate does not match its registered key", vin=vin)
            self._keys[vin] = key
        return key

    def _head(self, vin: str, seq: int) -> dict[str, Any]:
        """The vehicle's chain head and ignition counter, ``taken``: the id of a batch with this seq, or None, the
        consent decisions on record (``decisions``, ``newest``) and ``masked``: the owner's masked places."""
        with self.db.connection() as conn:
            rows = conn.execute(_HEAD, {"vin": vin, "seq": seq}).all()
        if not rows:
            raise UnknownVehicle(f"vehicle {vin} is not provisioned in region {self.settings.region}", vin=vin)
        head = dict(zip(_HEAD_FIELDS, rows[0], strict=False))
        head["masked"] = tuple(
            Place(float(r.place_lat), float(r.place_lon), float(r.place_radius_m))
            for r in rows
            if r.place_lat is not None and r.place_lon is not None and r.place_radius_m is not None
        )
        return head

    def _policy(self, vin: str, head: Mapping[str, Any]) -> Policy:
        """The vehicle's consent policy as of ``head``'s read: kept while the decisions on record are the same."""
        on_record = (head["decisions"], head["newest"])
        kept = self._policies.get(vin)
        if kept is not None and kept[0] == on_record:
            return kept[1]
        policy = self.policy_of(vin)
        if (len(policy.consents), policy.version or None) == on_record:  # else a decision came in between: no keeping
            self._policies[vin] = (on_record, policy)
        return policy

    def _existing(self, vin: str, seq: int) -> BatchRecord | None:
        with self.db.session() as s:
            return s.scalar(select(BatchRecord).where(BatchRecord.vin == vin, BatchRecord.seq == seq))

    def _replay(self, env: Envelope, rec: BatchRecord) -> dict[str, Any]:
        """An identical re-send gets the original receipt (``duplicate: true``); different content is refused.

        The receipt is read from the batch's row, so every re-send gets the same ``log_index`` and
        ``received_ms`` however it raced the original. If the row has no leaf index yet, the original's
        committer (in this or another process) is between its DB commit and its log append: wait a moment
        for it, then log the batch through the exactly-once path, which finds the original's leaf or
        appends the only one (docs/protocol.md §3.4).
        """
        if rec.batch_hash != env.batch_hash:
            raise SeqConflict(
                f"seq {rec.seq} of {rec.vin} was already accepted with different content",
                vin=rec.vin,
                seq=rec.seq,
                accepted_hash=rec.batch_hash,
            )
        log_index = rec.log_index
        if log_index is None:
            # Only a fresh row is worth waiting for; an old unlogged one lost its writer (a crash).
            deadline = time.monotonic() + max(0, REPLAY_WAIT_MS - (now_ms() - rec.received_ms)) / 1000
            while log_index is None and time.monotonic() < deadline:
                time.sleep(0.02)
                refreshed = self._existing(rec.vin, rec.seq)
                log_index = refreshed.log_index if refreshed is not None else None
        if log_index is None:
            try:
                log_index = self._recover_log_index(rec)
            except LookupError:
                raise Unavailable(f"seq {rec.seq} of {rec.vin} is being removed; try again later") from None
        if log_index is None:
            raise Unavailable(f"seq {rec.seq} of {rec.vin} is stored but not yet logged; re-send the same bytes")
        return receipt_json(
            region=self.settings.region,
            vin=rec.vin,
            seq=rec.seq,
            batch_hash=rec.batch_hash,
            log_index=log_index,
            received_ms=rec.received_ms,
            duplicate=True,
        )

    def _check_chain(self, env: Envelope, head: Mapping[str, Any] | None = None) -> None:
        """Raise ``BrokenChain`` unless the batch continues its vehicle's chain (or ``SeqConflict``, see below).

        ``head`` is the vehicle's chain head as ``_head`` read it (read afresh if not given). A batch whose seq is
        already accepted *with these very bytes* passes: it is a re-send that raced the original past
        ``_existing`` (the original committed in between). The committer then answers it with the original's
        receipt and stores nothing, exactly as if ``_existing`` had seen the row.
        """
        h = env.header
        if head is None:
            head = self._head(h.vin, h.seq)
        last_seq, last_hash = head["last_seq"], head["last_hash"]
        if h.seq == last_seq + 1 and h.prev == last_hash:
            return
        if h.seq <= last_seq:
            rec = self._existing(h.vin, h.seq)
            if rec is not None and rec.batch_hash == env.batch_hash:
                return
            if rec is not None:
                raise SeqConflict(
                    f"seq {rec.seq} of {rec.vin} was already accepted with different content",
                    vin=rec.vin,
                    seq=rec.seq,
                    accepted_hash=rec.batch_hash,
                )
        if h.seq != last_seq + 1:
            raise BrokenChain(
                f"batch seq {h.seq} does not follow the last accepted seq {last_seq}; send seq {last_seq + 1} first",
                expected_seq=last_seq + 1,
                got_seq=h.seq,
            )
        raise BrokenChain(
            f"batch prev hash does not match the hash of accepted batch {last_seq}",
            expected_prev=last_hash,
            got_prev=h.prev,
        )

    # ------------------------------------------------------------------ group commit
    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            while len(group) < 512:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                group.append(item)
            try:
                self._commit(group)
            except CarVaultError as e:
                for p in group:
                    _answer(p.future, error=e)
            except Exception as e:  # noqa: BLE001 - the committer must survive and report any failure
                err = Unavailable(f"batch could not be stored: {type(e).__name__}: {e}")
                for p in group:
                    _answer(p.future, error=err)

    def _commit(self, group: list[_Pending]) -> None:
        """Store a group: one segment write and fsync, one DB transaction, one log append, then the receipts.

        Identical batches (same hash) are stored once: the first of them in the group is committed and the
        others get its receipt as re-sends; a batch already accepted before the group (a re-send that raced
        its original through the checks) is answered from its row without writing anything.
        """
        started = time.perf_counter()
        firsts: dict[str, _Pending] = {}
        for p in group:
            first = firsts.setdefault(p.env.batch_hash, p)
            if first is not p:
                first.future.add_done_callback(partial(_answer_as_resend, p.future))
        with self.db.connection() as conn:
            stored = conn.execute(_STORED, {"hashes": list(firsts)}).scalars().all()
        done: dict[str, BatchRecord] = {}
        if stored:  # rare: read those rows whole to answer them as re-sends
            with self.db.session() as s:
                rows = s.scalars(select(BatchRecord).where(BatchRecord.batch_hash.in_(stored)))
                done = {r.batch_hash: r for r in rows}
        for h, rec in done.items():
            self._settle_replay(firsts[h], rec)
        stored_now = self._store([p for h, p in firsts.items() if h not in done])
        if self.metrics is not None:
            self.metrics.committed(len(stored_now), sum(r.samples for r in stored_now), time.perf_counter() - started)

    def _settle_replay(self, p: _Pending, rec: BatchRecord) -> None:
        """Answer a queued batch that turned out to be accepted already, as a re-send is answered.

        A row without its leaf index yet (another process is logging it) is waited for off the committer
        thread, so one slow log append elsewhere never holds up this process's group commit.
        """

        def settle() -> None:
            try:
                _answer(p.future, self._replay(p.env, rec))
            except CarVaultError as e:
                _answer(p.future, error=e)
            except Exception as e:  # noqa: BLE001 - always answer the request
                _answer(p.future, error=Unavailable(f"batch could not be stored: {type(e).__name__}: {e}"))

        if rec.log_index is not None or rec.batch_hash != p.env.batch_hash:
            settle()
        else:
            threading.Thread(target=settle, name="replay-settle", daemon=True).start()

    def _store(self, group: list[_Pending]) -> list[BatchRecord]:
        """Store what continues each vehicle's chain; return the records stored (the rest are answered as re-sends)."""
        if not group:
            return []
        locations = self.segments.append_many([p.env.raw for p in group])
        received = now_ms()
        # Each vehicle's batches in the group, in order, as far as they continue one another: checked against the
        # same head, they can only all follow it if each follows the one before. One that does not (another batch
        # with a seq just taken, say) is not stored here and is answered below.
        chains: dict[str, list[tuple[_Pending, tuple[str, int, int]]]] = {}
        for p, location in zip(group, locations, strict=True):
            h = p.env.header
            chain = chains.setdefault(h.vin, [])
            if not chain or (h.seq == chain[-1][0].env.header.seq + 1 and h.prev == chain[-1][0].env.batch_hash):
                chain.append((p, location))
        try:
            accepted = self._record(chains, received, each=len(chains) == 1)
        except _HeadsMoved:  # some head moved under us: again, one statement per vehicle, to learn which
            accepted = self._record(chains, received, each=True)
        indices = self._log_records([rec for _, rec in accepted]) if accepted else []
        for (p, rec), idx in zip(accepted, indices, strict=True):
            _answer(
                p.future,
                receipt_json(
                    region=self.settings.region,
                    vin=rec.vin,
                    seq=rec.seq,
                    batch_hash=rec.batch_hash,
                    log_index=idx,
                    received_ms=rec.received_ms,
                ),
            )
        for p in group:
            if not p.future.done():
                # Another process advanced this vehicle's chain first (or another batch took this seq in the
                # group): answer as a re-send of what was accepted would be answered.
                try:
                    existing = self._existing(p.env.header.vin, p.env.header.seq)
                    if existing is None:
                        self._check_chain(p.env)
                        raise BrokenChain("the vehicle's chain moved while this batch was being stored")
                except CarVaultError as e:
                    _answer(p.future, error=e)
                    continue
                self._settle_replay(p, existing)
        return [rec for _, rec in accepted]

    def _record(
        self, chains: dict[str, list[tuple[_Pending, tuple[str, int, int]]]], received: int, *, each: bool
    ) -> list[tuple[_Pending, BatchRecord]]:
        """One transaction: advance each vehicle's chain head over its batches, insert their rows and events.

        With ``each`` false, the heads move in at most two statements for the whole group (one per statement shape,
        many parameter sets): if any of them did not move (another process advanced it, a different batch took
        the seq), ``_HeadsMoved`` rolls the transaction back for a run with ``each``, which finds out which.
        """
        accepted: list[tuple[_Pending, BatchRecord]] = []
        with self.db.connection(write=True) as conn:
            plain: list[dict[str, Any]] = []
            ignited: list[dict[str, Any]] = []
            for vin, chain in chains.items():
                first, last = chain[0][0], chain[-1][0]
                ignition = max((p.ignition for p, _ in chain if p.ignition is not None), default=None)
                params: dict[str, Any] = {
                    "b_vin": vin,
                    "from_seq": first.env.header.seq - 1,
                    "from_hash": first.env.header.prev,
                    "to_seq": last.env.header.seq,
                    "to_hash": last.env.batch_hash,
                }
                if ignition is not None:
                    params["cycle"], params["seen"] = ignition
                if each:
                    statement = _ADVANCE if ignition is None else _ADVANCE_WITH_IGNITION
                    if rowcount(conn.execute(statement, params)) != 1:
                        continue  # lost a race (another process, or a different batch with this seq); resolved later
                else:
                    (plain if ignition is None else ignited).append(params)
                accepted += [(p, self._new_record(p, location, received)) for p, location in chain]
            for statement, many in ((_ADVANCE, plain), (_ADVANCE_WITH_IGNITION, ignited)):
                if many and rowcount(conn.execute(statement, many)) != len(many):
                    raise _HeadsMoved
            if accepted:
                rows = [_row(rec) for _, rec in accepted]
                ids = conn.execute(_INSERT_BATCHES, rows).scalars().all()
                for (_, rec), row_id in zip(accepted, ids, strict=True):
                    rec.id = row_id
                events = [_event_row(p) for p, _ in accepted if p.summary.event is not None]
                if events:
                    conn.execute(_INSERT_EVENTS, events)
        return accepted

    @staticmethod
    def _new_record(p: _Pending, location: tuple[str, int, int], received: int) -> BatchRecord:
        """The row of a batch about to be stored at ``location`` (segment, offset, length)."""
        h = p.env.header
        segment, offset, length = location
        return BatchRecord(
            vin=h.vin,
            seq=h.seq,
            kind=h.kind,
            batch_hash=p.env.batch_hash,
            prev_hash=h.prev,
            t0=h.t0,
            t1=h.t1,
            rows=p.summary.rows,
            samples=p.summary.samples,
            columns=",".join(p.summary.columns),
            segment=segment,
            offset=offset,
            length=length,
            log_index=None,
            received_ms=received,
            attested_by=h.attested_by,
            software_version=h.software_version,
        )

    def _recover_log_index(self, rec: BatchRecord, tail: int = RECOVERY_TAIL) -> int | None:
        """The batch's leaf index: found in the log's tail (its writer died before the index write), else appended."""
        return log_batches(self.db, self.log, self.settings.region, [rec], fence_dir=self.settings.data_dir, tail=tail)[
            0
        ]

    def _log_records(self, records: list[BatchRecord]) -> list[int]:
        """Append the records' v2 leaves to the transparency log (exactly once) and store their indices."""
        return log_batches(self.db, self.log, self.settings.region, records, fence_dir=self.settings.data_dir)

    def close(self) -> None:
        """Stop the committer after the batches already queued."""
        self._queue.put(None)
        self._thread.join(timeout=30)
