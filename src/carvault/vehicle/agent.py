"""The in-car agent: cuts recorded signals into batches, signs them, spools them on disk, uploads them.

A batch is signed once, written to the spool (fsynced) and only then does the chain head advance; an
upload re-sends the spooled bytes unchanged until the gateway returns a receipt, so a crash or an
outage never re-signs anything differently, loses anything, or duplicates anything.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import numpy as np
import pyarrow as pa

from carvault.compliance.consent import COLLECTING, Policy, filter_table, statuses
from carvault.durable import write_durably
from carvault.location import DEFAULT_RESOLUTION, LAT, Place, coarsen, mask_places, places_from_json
from carvault.protocol import BATCH_MEDIA_TYPE, GENESIS_PREV, make_batch, sha256_hex
from carvault.protocol.columns import has_column
from carvault.protocol.envelope import valid_software_version
from carvault.signals import catalogue
from carvault.vehicle.edr import EventRecord, EventRecorder
from carvault.vehicle.identity import VehicleIdentity

UPLOAD_PATH = "/api/v1/ingest/batches"
POLICY_PATH = "/api/v1/vehicle/policy"
IGNITION_GAP_MS = 60_000
RETRYABLE = frozenset({429, 502, 503, 504})
# Five-minute batches: per-column Parquet overhead is amortised (0.7 bytes/sample and 6.5 M samples/s
# decode on simulated drives, against 1.65 bytes/sample and 2.7 M samples/s for one-minute batches).
DEFAULT_BATCH_SECONDS = 300
SOFTWARE_VERSION = "Vehicle.CarVault.Software.Version"


class UploadRefused(Exception):
    """The gateway refused a batch for a reason that re-sending will not fix."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        err = body.get("error", {})
        super().__init__(f"HTTP {status} {err.get('code')}: {err.get('message')}")
        self.status = status
        self.code = err.get("code")
        self.body = body


def time_slices(table: pa.Table, batch_ms: int) -> Iterator[tuple[int, int, pa.Table]]:
    """Split a table into aligned windows of ``batch_ms``: yields (span start, span end, rows)."""
    if table.num_rows == 0:
        return
    t = table.column("t").cast(pa.int64()).to_numpy()
    bucket = t // batch_ms
    cuts = np.flatnonzero(np.diff(bucket)) + 1
    starts = np.concatenate(([0], cuts))
    ends = np.concatenate((cuts, [len(t)]))
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        b0 = int(bucket[a]) * batch_ms
        yield b0, b0 + batch_ms - 1, table.slice(a, b - a)


@dataclass
class ChainHead:
    """The last batch the car signed."""

    seq: int = 0
    prev: str = GENESIS_PREV


class LiveCommitments(Protocol):
    """What the agent asks of a live sender (``vehicle.live.LiveSender``) when it signs a telemetry batch."""

    def pending_root(self, t1: int) -> tuple[int, int, str] | None:
        """(first counter, last counter, hex Merkle root) of the frames not yet committed, up to ``t1``."""

    def committed(self, seq: int, live: tuple[int, int, str]) -> None:
        """Batch ``seq`` now commits to those frames."""


def without_empty_columns(table: pa.Table) -> pa.Table:
    """The table without signal columns that hold no value in it.

    Most of the catalogue is sent on change (doors, lamps, wear, trouble codes): in a given minute most of those
    columns are all null, and each column costs a Parquet column chunk (metadata and statistics, ~150 bytes) even
    then. A batch names the columns it carries, so leaving empty ones out loses nothing (issue 14).
    """
    empty = [name for name, col in zip(table.column_names, table.columns, strict=True) if col.null_count == len(col)]
    return table.drop_columns([n for n in empty if n != "t"]) if empty else table


def running_version(table: pa.Table, current: str | None) -> str | None:
    """The software version the car runs after these rows: the last one recorded in them, else ``current``."""
    if not has_column(table, SOFTWARE_VERSION):
        return current
    values = [v for v in table.column(SOFTWARE_VERSION).to_pylist() if v]
    return str(values[-1]) if values and valid_software_version(str(values[-1])) else current


class VehicleAgent:
    """Batching, signing, spooling and uploading for one vehicle."""

    def __init__(
        self,
        identity: VehicleIdentity,
        state_dir: Path,
        endpoint: str,
        client: httpx.Client | None = None,
        *,
        places: Sequence[Place] = (),
        location_resolution: int = DEFAULT_RESOLUTION,
    ) -> None:
        self.identity = identity
        self.state_dir = state_dir
        self.spool_dir = state_dir / "spool"
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.endpoint = endpoint.rstrip("/")
        self.client = client or httpx.Client(timeout=60)
        self.head = self._load_head()
        self.catalogue = catalogue()
        # Places the owner masks (home, work …), sent with the policy; the region refuses positions inside them.
        self.owner_places: tuple[Place, ...] = ()
        self.policy = self._load_policy()
        self.recorder = EventRecorder(self.catalogue)
        self.places = tuple(places)
        self.location_resolution = location_resolution
        self._last_t = -(10**15)
        self._ignition_on = -(10**15)
        # The live extension (docs/protocol.md §8): the frames a telemetry batch commits to (vehicle.live).
        self.live: LiveCommitments | None = None
        # The software the car runs, named in every batch header it signs (docs/protocol.md §10); set by the car's
        # software, or followed from the recorded Software.Version signal as ``process`` goes (an update mid-way).
        self.software_version: str | None = None

    # -------------------------------------------------------------- policy (consent)
    def _load_policy(self) -> Policy:
        p = self.state_dir / "policy.json"
        if not p.exists():
            return Policy(self.identity.vin, ())
        doc = json.loads(p.read_text())
        self.owner_places = places_from_json(doc.get("masked_places", []))
        return Policy.from_json(doc)

    def fetch_policy(self) -> Policy:
        """Fetch the owner's current consents from the home region (vehicle-signed request) and keep them."""
        from carvault.protocol.requests import sign_request

        headers = sign_request(self.identity.key, "GET", POLICY_PATH, self.identity.vin)
        r = self.client.get(self.endpoint + POLICY_PATH, headers=headers)
        if r.status_code != 200:
            raise UploadRefused(r.status_code, r.json())
        doc = r.json()
        places = places_from_json(doc.get("masked_places", []))
        self.policy, self.owner_places = Policy.from_json(doc), places
        (self.state_dir / "policy.json").write_text(
            json.dumps({**self.policy.to_json(), "masked_places": doc.get("masked_places", [])})
        )
        return self.policy

    def collection_status(self, at_ms: int | None = None) -> dict[str, str]:
        """What the car collects now, per category (shown in the car)."""
        at = at_ms if at_ms is not None else int(time.time() * 1000)
        return statuses(self.policy, at, ignition_on_ms=self._ignition_on)

    # -------------------------------------------------------------- the pipeline
    def _ignition_starts(self, t: np.ndarray) -> np.ndarray:
        """Ignition-on instant of every row: a new cycle starts after {IGNITION_GAP_MS} ms without rows."""
        prev = np.concatenate(([self._last_t], t[:-1]))
        starts = np.where(t - prev > IGNITION_GAP_MS, t, np.iinfo(np.int64).min)
        starts[0] = max(starts[0], self._ignition_on)
        return np.maximum.accumulate(starts)

    def process(self, table: pa.Table, batch_seconds: int = DEFAULT_BATCH_SECONDS) -> int:
        """Everything the car does with recorded rows: events first, then consent, precision, batching."""
        if table.num_rows == 0:
            return 0
        t_all = table.column("t").cast(pa.int64()).to_numpy()
        ign_all = self._ignition_starts(t_all)
        n = 0
        offset = 0
        # Chunk by chunk, as the car records: a frozen event window is signed as soon as it completes, so it
        # sits in the hash chain next to the routine batches of the same minutes.
        for t0, t1, part in time_slices(table, batch_seconds * 1000):
            ign = ign_all[offset : offset + part.num_rows]
            offset += part.num_rows
            self.software_version = running_version(part, self.software_version)
            for rec in self.recorder.feed(part):  # events go first: they rest on their own legal basis
                self.spool_event(rec)
                n += 1
            routine = without_empty_columns(self.routine(part, ign))
            if routine.num_columns > 1 and routine.num_rows:
                self.spool(routine, t0=t0, t1=t1)
                n += 1
        self._last_t, self._ignition_on = int(t_all[-1]), int(ign_all[-1])
        return n

    def routine(self, part: pa.Table, ign: np.ndarray) -> pa.Table:
        """What consent lets leave the car of these rows, at the consented location precision (``ign``: ignition-on
        instant of each row). Batches and live frames both go through here."""
        routine = filter_table(part, self.policy, self.catalogue, ignition_on_ms=ign)
        if has_column(routine, LAT):
            # Masked first, on the true positions: a point inside a circle can coarsen to a cell centre outside it.
            routine = mask_places(routine, self.places + self.owner_places)
            t = routine.column("t").cast(pa.int64()).to_numpy()
            if len(t) and self.policy.status("location_precise", int(t[-1]), int(ign[-1])) != COLLECTING:
                routine = coarsen(routine, self.location_resolution)
        return routine

    def ignition_of(self, t: np.ndarray) -> np.ndarray:
        """The ignition-on instant of rows recorded after everything processed so far (live frames use it)."""
        return self._ignition_starts(t)

    def finish(self) -> int:
        """Ignition off: freeze pending event windows."""
        records = self.recorder.flush()
        for rec in records:
            self.spool_event(rec)
        return len(records)

    def spool_event(self, rec: EventRecord) -> bytes:
        """Sign a frozen event window as an event batch."""
        ts = rec.table.column("t").cast(pa.int64())
        return self.spool(
            rec.batch_table(self.recorder.pre_s, self.recorder.post_s),
            t0=int(ts[0].as_py()),
            t1=int(ts[-1].as_py()),
            kind="event",
        )

    # -------------------------------------------------------------- chain state
    def _load_head(self) -> ChainHead:
        p = self.state_dir / "chain.json"
        if p.exists():
            d = json.loads(p.read_text())
            return ChainHead(seq=d["seq"], prev=d["prev"])
        return ChainHead()

    def _save_head(self) -> None:
        write_durably(
            self.state_dir / "chain.json", json.dumps({"seq": self.head.seq, "prev": self.head.prev}).encode()
        )

    # -------------------------------------------------------------- batching
    def record(self, table: pa.Table, batch_seconds: int = DEFAULT_BATCH_SECONDS, kind: str = "telemetry") -> int:
        """Sign ``table`` as batches of ``batch_seconds`` and put them in the spool; return how many."""
        n = 0
        for t0, t1, part in time_slices(table, batch_seconds * 1000):
            self.spool(part, t0=t0, t1=t1, kind=kind)
            n += 1
        return n

    def spool(self, part: pa.Table, *, t0: int, t1: int, kind: str = "telemetry") -> bytes:
        """Sign one batch, write it durably to the spool, then advance the chain head."""
        seq = self.head.seq + 1
        live = self.live.pending_root(t1) if self.live is not None and kind == "telemetry" else None
        blob = make_batch(
            vin=self.identity.vin,
            region=self.identity.region,
            seq=seq,
            prev=self.head.prev,
            table=part,
            key=self.identity.key,
            kind=kind,
            t0=t0,
            t1=t1,
            live=live,
            software_version=self.software_version,
        )
        write_durably(self.spool_dir / f"{seq:012d}.cvb", blob)
        self.head = ChainHead(seq=seq, prev=sha256_hex(blob))
        self._save_head()
        if live is not None and self.live is not None:
            self.live.committed(seq, live)
        return blob

    def pending(self) -> list[Path]:
        """Spooled batches not yet acknowledged, in seq order."""
        return sorted(self.spool_dir.glob("*.cvb"))

    # -------------------------------------------------------------- upload
    def upload_one(self, blob: bytes) -> dict[str, Any]:
        """POST one batch; return the receipt or raise ``UploadRefused`` / ``httpx.HTTPError``."""
        r = self.client.post(self.endpoint + UPLOAD_PATH, content=blob, headers={"Content-Type": BATCH_MEDIA_TYPE})
        if r.status_code == 200:
            return r.json()
        try:
            body = r.json()
        except ValueError:
            body = {"error": {"code": "http_error", "message": r.text[:200]}}
        raise UploadRefused(r.status_code, body)

    def upload_with_retry(
        self, attempts: int = 8, first_delay_s: float = 0.2, max_delay_s: float = 30.0
    ) -> list[dict[str, Any]]:
        """Upload the spool, backing off exponentially while the gateway is unreachable or busy.

        The same spooled bytes are re-sent each time (never re-signed); a batch the gateway accepted before
        the connection dropped comes back as the same receipt.
        """
        receipts: list[dict[str, Any]] = []
        delay = first_delay_s
        for attempt in range(attempts):
            try:
                receipts += self.upload_pending()
                return receipts
            except UploadRefused as e:
                if e.status not in RETRYABLE or attempt == attempts - 1:
                    raise
            except httpx.TransportError:
                if attempt == attempts - 1:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, max_delay_s)
        return receipts

    def upload_pending(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Upload spooled batches in order until done (or the first refusal); return the receipts."""
        receipts = []
        with open(self.state_dir / "receipts.jsonl", "a") as log:
            for path in self.pending()[:limit]:
                receipt = self.upload_one(path.read_bytes())
                log.write(json.dumps(receipt) + "\n")
                log.flush()
                path.unlink()
                receipts.append(receipt)
        return receipts
