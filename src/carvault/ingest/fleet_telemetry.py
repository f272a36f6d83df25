"""Fleet Telemetry ingest: today's Teslas stream to the region as they are, and the region attests what they send.

A car connects over WebSocket with mutual TLS. The TLS handshake accepts only certificates issued by the configured
vehicle-issuer CAs (``fleet_issuer_cas``), and the VIN is read from the *leaf* certificate that handshake verified
(its subject CN), never from a certificate further up the chain nor from anything the car sends inside a message:
the two identity mistakes Tesla fixed in its own server in 2026. A record naming another VIN is refused.

Each binary message is a FlatBuffers envelope (``carvault.protocol.fleet_telemetry.envelope``) holding a protobuf
``Payload`` (``vehicle_data.proto``); its values are mapped to catalogue signals through the declarative table
``carvault/vehicle/fleet_mapping.csv``, units converted. The car signs nothing, so the region builds batches from the
records (a connection's records gathered for ``fleet_batch_wait_ms``, at most ``fleet_batch_records``), applies the
owner's consent and location precision as a car would before sending, signs each batch with its attestation key
and marks it ``attested_by`` (docs/protocol.md §9), then hands it to the gateway, which checks it like any batch
(residency, consent, values) and stores and logs it. Only then is each record acknowledged, as Tesla's server
acknowledges (a ``StreamAck`` envelope naming the txid); a refused record is answered with an error envelope and
nothing of it is stored. The accepted values go to the live hub, so VISS subscribers see them.
"""

from __future__ import annotations

import asyncio
import csv
import math
import ssl
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError
from sqlalchemy import select

from carvault.compliance.consent import COLLECTING, Policy, filter_table
from carvault.errors import (
    BrokenChain,
    CarVaultError,
    FleetVinMismatch,
    InvalidQuery,
    MalformedFleetRecord,
    SeqConflict,
    UnknownFleetField,
    UnknownVehicle,
    WrongSignalType,
)
from carvault.ingest.gateway import Gateway
from carvault.ingest.live import LiveHub, LiveUpdate, LiveValue, now_ms
from carvault.ingest.validation import validate_payload
from carvault.location import DEFAULT_RESOLUTION, LAT, Place, coarsen, mask_places
from carvault.pki import RegionCA, attested_by
from carvault.protocol import BATCH_MEDIA_TYPE, BatchHeader, make_batch
from carvault.protocol.columns import has_column
from carvault.protocol.envelope import EARLIEST_MS, GENESIS_PREV, valid_software_version
from carvault.protocol.fleet_telemetry import vehicle_data_pb2 as pb
from carvault.protocol.fleet_telemetry.envelope import (
    MAX_MESSAGE_BYTES,
    EnvelopeError,
    StreamMessage,
    decode_stream,
    encode_ack,
    encode_error,
)
from carvault.signals import Catalogue
from carvault.store.metadata import BatchRecord, Vehicle
from carvault.store.telemetry import TelemetryStore

Scalar = bool | int | float | str
VEHICLE_DATA_TOPIC = b"V"  # the topic of vehicle data records; alerts, errors and connectivity are not carried
MAPPING_FILE = "vehicle/fleet_mapping.csv"
NUMERIC_MEMBERS = ("int_value", "long_value", "float_value", "double_value", "string_value")
COMMIT_TRIES = 3  # another connection of the same car may take the chain head first: read it again and retry
SOFTWARE_VERSION = "Vehicle.CarVault.Software.Version"  # Tesla's Version field (tesla_fields.csv), for the §10 header
_INT_TYPES = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}


# --------------------------------------------------------------------------------------------------- the mapping
@dataclass(frozen=True)
class FieldRule:
    """One row of fleet_mapping.csv: how one Tesla field (or one part of it) becomes one catalogue signal."""

    field: str
    number: int
    kind: str  # number | boolean | location.latitude | location.longitude | doors.<Member> | <enum oneof member>
    signal: str
    tesla_unit: str
    scale: float
    offset: float
    values: dict[str, Scalar]  # enum kinds: Tesla's enum value name -> signal value

    def convert(self, value: pb.Value, datatype: str) -> Scalar | None:
        """The signal's value for this Tesla value; None when the car says it has none; ``WrongSignalType`` else."""
        member = value.WhichOneof("value")
        if member == "invalid" or member is None and value.ByteSize() == 0:
            return None  # Tesla marks a value the car could not read as invalid (or sends an empty Value)
        if self.kind == "number":
            return self._number(value, member, datatype)
        if self.kind == "boolean":
            if member == "boolean_value":
                return value.boolean_value
            if member == "string_value" and value.string_value in ("true", "false"):
                return value.string_value == "true"
        elif self.kind.startswith("location."):
            if member == "location_value":
                return float(getattr(value.location_value, self.kind.removeprefix("location.")))
        elif self.kind == "text":
            if member == "string_value":
                return value.string_value or None
        elif self.kind.startswith("doors."):
            if member == "door_value":
                return bool(getattr(value.door_value, self.kind.removeprefix("doors.")))
        elif member == self.kind:
            enum = pb.Value.DESCRIPTOR.fields_by_name[member].enum_type
            number = getattr(value, member)
            name = enum.values_by_number[number].name if number in enum.values_by_number else str(number)
            return self.values.get(name)  # unknown, invalid or SNA states carry no value
        raise WrongSignalType(
            f"field {self.field} carries {member or 'a value kind CarVault does not read'}, not {self.kind}",
            field=self.field,
            expected=self.kind,
            got=member or "unknown",
        )

    def _number(self, value: pb.Value, member: str | None, datatype: str) -> Scalar:
        if member not in NUMERIC_MEMBERS:
            raise WrongSignalType(
                f"field {self.field} carries {member or 'an unreadable value'}, not a number",
                field=self.field,
                expected="number",
                got=member or "unknown",
            )
        raw: Any = getattr(value, member)
        if member == "string_value":  # older firmware sends numbers as decimal text
            try:
                raw = float(raw)
            except ValueError:
                raise WrongSignalType(
                    f"field {self.field} carries the text {raw[:40]!r}, not a number", field=self.field
                ) from None
        x = float(raw) * self.scale + self.offset
        if not math.isfinite(x):
            raise WrongSignalType(f"field {self.field} carries a value that is not finite", field=self.field)
        return round(x) if datatype in _INT_TYPES else x


def _parse_value(text: str, datatype: str) -> Scalar:
    if datatype == "boolean":
        if text not in ("true", "false"):
            raise ValueError(f"{text!r} is not true or false")
        return text == "true"
    if datatype in _INT_TYPES:
        return int(text)
    if datatype in ("float", "double"):
        return float(text)
    return text


class FleetMapping:
    """The declarative field -> signal table, checked against Tesla's field list and the catalogue on load."""

    def __init__(self, rules: Iterable[FieldRule], catalogue: Catalogue) -> None:
        self.rules = tuple(rules)
        self.catalogue = catalogue
        self.by_number: dict[int, list[FieldRule]] = {}
        for r in self.rules:
            self.by_number.setdefault(r.number, []).append(r)

    @classmethod
    def load(cls, catalogue: Catalogue, text: str | None = None) -> FleetMapping:
        """Read fleet_mapping.csv (or ``text``); ``ValueError`` naming the line of any row that does not hold."""
        text = text if text is not None else resources.files("carvault").joinpath(MAPPING_FILE).read_text("utf-8")
        rules = []
        for line, row in enumerate(csv.DictReader(text.splitlines()), start=2):
            try:
                rules.append(_rule(row, catalogue))
            except (ValueError, KeyError) as e:
                raise ValueError(f"fleet_mapping.csv line {line}: {e}") from None
        return cls(rules, catalogue)

    @property
    def signals(self) -> list[str]:
        """Every catalogue signal a Tesla field maps to."""
        return sorted({r.signal for r in self.rules})

    def values(self, datum: pb.Datum) -> dict[str, Scalar]:
        """The catalogue values one datum carries (none when the car marked it invalid)."""
        rules = self.by_number.get(datum.key)
        if rules is None:
            if datum.key not in pb.Field.values():
                raise UnknownFleetField(
                    f"field number {datum.key} is not in Tesla's Fleet Telemetry field list", field=datum.key
                )
            name = pb.Field.Name(datum.key)
            raise UnknownFleetField(
                f"field {name} is carried by no catalogue signal in this region (docs/fleet-telemetry.md lists the "
                "fields it maps); take it out of the vehicle's telemetry configuration",
                field=name,
            )
        out: dict[str, Scalar] = {}
        for rule in rules:
            v = rule.convert(datum.value, self.catalogue[rule.signal].datatype)
            if v is not None:
                out[rule.signal] = v
        return out


def _rule(row: dict[str, str], catalogue: Catalogue) -> FieldRule:
    """One checked row of the mapping."""
    name, kind, signal = row["field"].strip(), row["kind"].strip(), row["signal"].strip()
    if name not in pb.Field.DESCRIPTOR.values_by_name:
        raise ValueError(f"{name!r} is not a Fleet Telemetry field")
    sig = catalogue.get(signal)
    if sig is None:
        raise ValueError(f"{signal!r} is not a catalogue signal")
    values: dict[str, Scalar] = {}
    if kind == "text":
        if sig.datatype != "string":
            raise ValueError(f"text values cannot fill {signal} ({sig.datatype})")
    elif kind in ("number", "boolean") or kind.startswith(("location.", "doors.")):
        wanted = "boolean" if kind == "boolean" or kind.startswith("doors.") else None
        if wanted and sig.datatype != wanted or kind == "number" and sig.datatype in ("boolean", "string"):
            raise ValueError(f"{kind} values cannot fill {signal} ({sig.datatype})")
        part = kind.partition(".")[2]
        holder: Descriptor | None = {"location": pb.LocationValue.DESCRIPTOR, "doors": pb.Doors.DESCRIPTOR}.get(
            kind.partition(".")[0]
        )
        if holder is not None and part not in holder.fields_by_name:
            raise ValueError(f"{kind!r} names no member of {holder.name}")
    else:
        member = pb.Value.DESCRIPTOR.fields_by_name.get(kind)
        if member is None or member.enum_type is None:
            raise ValueError(f"{kind!r} is not a kind of value (number, boolean, location.*, doors.*, an enum member)")
        for pair in filter(None, row["values"].split(";")):
            enum_name, _, text = pair.partition("=")
            if enum_name not in member.enum_type.values_by_name:
                raise ValueError(f"{enum_name!r} is not a value of {member.enum_type.name}")
            values[enum_name] = _parse_value(text, sig.datatype)
    return FieldRule(
        field=name,
        number=pb.Field.Value(name),
        kind=kind,
        signal=signal,
        tesla_unit=row["tesla_unit"].strip(),
        scale=float(row["scale"] or 1),
        offset=float(row["offset"] or 0),
        values=values,
    )


# --------------------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class FleetRecord:
    """One accepted vehicle-data record: its sample time and catalogue values."""

    txid: bytes
    topic: bytes
    message_id: bytes
    t_ms: int
    values: dict[str, Scalar]


def vin_of_certificate(der: bytes) -> str:
    """The VIN a vehicle's leaf certificate names (subject CN, dots read as dashes as Tesla's server does)."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        raise UnknownVehicle("the client certificate is not readable X.509") from None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    vin = str(names[0].value).replace(".", "-") if len(names) == 1 else ""
    if not (len(vin) == 17 and vin.isascii() and vin.isalnum() and vin.upper() == vin):
        raise UnknownVehicle("the client certificate's subject CN is not a VIN")
    return vin


def decode_record(vin: str, data: bytes, mapping: FleetMapping) -> FleetRecord:
    """Every check of one message from the car connected as ``vin``; the record's values, or the refusal."""
    try:
        msg = decode_stream(data)
    except EnvelopeError as e:
        raise MalformedFleetRecord(f"the message is not a Fleet Telemetry envelope: {e}") from None
    _check_identity(vin, msg)
    if msg.topic != VEHICLE_DATA_TOPIC:
        raise MalformedFleetRecord(
            f"topic {msg.topic[:20].decode('utf-8', 'replace')!r} is not carried; only vehicle data ('V') is",
            topic=msg.topic[:20].decode("utf-8", "replace"),
        )
    try:
        payload = pb.Payload.FromString(msg.payload)
    except DecodeError as e:
        raise MalformedFleetRecord(f"the record is not a vehicle_data Payload: {e}") from None
    if payload.vin and payload.vin != vin:
        raise FleetVinMismatch(
            f"the record is for {payload.vin[:17]!r}; this connection's certificate is {vin}'s",
            expected=vin,
            received=payload.vin[:17],
        )
    t_ms = _created_ms(payload, msg)
    values: dict[str, Scalar] = {}
    for datum in payload.data:
        values.update(mapping.values(datum))
    return FleetRecord(msg.txid, msg.topic, msg.message_id, t_ms, values)


def _check_identity(vin: str, msg: StreamMessage) -> None:
    """Identity fields inside the message may only repeat the certificate's VIN (they are never trusted for it)."""
    said = {
        "device_id": msg.device_id,
        "sender_id": msg.sender_id.rpartition(b".")[2] if msg.sender_id else b"",
    }
    for name, value in said.items():
        if value and value != vin.encode():
            received = value[:17].decode("utf-8", "replace")
            raise FleetVinMismatch(
                f"the message's {name} names {received!r}; this connection's certificate is {vin}'s",
                expected=vin,
                received=received,
            )


def _created_ms(payload: pb.Payload, msg: StreamMessage) -> int:
    if payload.HasField("created_at"):
        t = payload.created_at.seconds * 1000 + payload.created_at.nanos // 1_000_000
    else:
        t = msg.created_at * 1000
    if t < EARLIEST_MS:
        raise MalformedFleetRecord("the record has no creation time (or one before 2000)")
    return t


# --------------------------------------------------------------------------------------------------- attestation
@dataclass
class Outcome:
    """What one message gets back: the answer bytes, and the values that reached the store."""

    answer: bytes
    record: FleetRecord | None = None
    error: CarVaultError | None = None


@dataclass
class Ingested:
    """The answers to a group of messages, in order, and the table the region stored from them (None: nothing)."""

    outcomes: list[Outcome]
    stored: pa.Table | None


@dataclass
class _Group:
    """One connection's records gathered for a batch, merged per sample time."""

    rows: dict[int, dict[str, Scalar]] = field(default_factory=dict)

    def add(self, r: FleetRecord) -> None:
        self.rows.setdefault(r.t_ms, {}).update(r.values)


class FleetTelemetry:
    """The region's Fleet Telemetry service: registers Teslas, checks their records, attests and stores batches."""

    def __init__(
        self,
        gateway: Gateway,
        catalogue: Catalogue,
        ca: RegionCA,
        attestation_key: Ed25519PrivateKey,
        register: Callable[..., Any],
        log_key_of: Callable[[str], bytes],
        hub: LiveHub | None = None,
        telemetry: TelemetryStore | None = None,
    ) -> None:
        self.gateway = gateway
        self.catalogue = catalogue
        self.ca = ca
        self.key = attestation_key
        self.region = gateway.settings.region
        self.mapping = FleetMapping.load(catalogue)
        self.hub = hub
        self.telemetry = telemetry  # to drop records already stored (a car re-sends what it got no ack for)
        self._register = register  # Vehicles.register
        self._log_key_of = log_key_of
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        # The owner's masked places of a vehicle (access/places.py ``masked_for_vehicle``), set by the region.
        self.masked_places: Callable[[str], Sequence[Place]] | None = None

    @property
    def attestation_public_key(self) -> bytes:
        """The raw Ed25519 key every region-attestation certificate of this region certifies."""
        return self.key.public_key().public_bytes_raw()

    def register(self, vin: str, pairing_code: str, model: str = "Tesla") -> str:
        """Register a Tesla here: its certificate binds the VIN to the region's attestation key (it has no key of ours).

        The owner claims it with ``pairing_code`` as any car. Residency as for provisioning: a VIN the directory
        gives to another region is refused (``WrongRegion``).
        """
        residency = self.gateway.residency
        home = residency.check_registration(vin, self.region)
        residency.directory.record(vin, home)
        cert = self.ca.issue(vin, self.attestation_public_key, attested=True)
        self._register(vin, self.attestation_public_key, pairing_code, model=model, region=home, certificate_pem=cert)
        self._log_key_of(vin)
        return cert

    def admit(self, vin: str) -> None:
        """A car may stream here only if it lives here and is registered as a Fleet Telemetry car."""
        self.gateway.residency.admit(vin)
        self.gateway.vehicle_key(vin)
        with self.gateway.db.session() as s:
            cert = s.scalar(select(Vehicle.certificate_pem).where(Vehicle.vin == vin))
        if not cert or attested_by(cert) != self.region:
            raise UnknownVehicle(f"vehicle {vin} is not registered here as a Fleet Telemetry car", vin=vin)

    def ingest(self, vin: str, messages: Sequence[bytes]) -> Ingested:
        """Check each message, store the accepted ones as one attested batch, and answer every message.

        Answers are built only after the batch is durable; if storing fails, every accepted record is answered with
        the error instead (the car sends them again).
        """
        outcomes: list[Outcome] = []
        group = _Group()
        for data in messages:
            try:
                record = decode_record(vin, data, self.mapping)
                self._check_record(vin, record)
            except CarVaultError as e:
                outcomes.append(Outcome(encode_error(_txid(data), f"{e.code}: {e.message}"), error=e))
                continue
            group.add(record)
            outcomes.append(Outcome(encode_ack(record.txid, record.topic, record.message_id), record=record))
        stored = None
        if group.rows:
            try:
                stored = self._store(vin, group)
            except CarVaultError as e:
                for o in outcomes:
                    if o.record is not None:
                        o.answer, o.record, o.error = encode_error(o.record.txid, f"{e.code}: {e.message}"), None, e
        return Ingested(outcomes, stored)

    def _table(self, rows: dict[int, dict[str, Scalar]]) -> pa.Table:
        """The rows as a batch table: ``t`` then one column per signal present, in the catalogue's types."""
        paths = sorted({p for values in rows.values() for p in values})
        times = sorted(rows)
        schema = self.catalogue.arrow_schema(paths)
        cols = [pa.array(times, pa.int64()).cast(schema.field("t").type)]
        cols += [pa.array([rows[t].get(p) for t in times], schema.field(p).type) for p in paths]
        return pa.Table.from_arrays(cols, schema=schema)

    def _check_record(self, vin: str, record: FleetRecord) -> None:
        """A record's values alone against the catalogue (types, ranges, time), so one bad record spoils no batch."""
        if not record.values:
            return
        try:
            table = self._table({record.t_ms: record.values})
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as e:
            raise WrongSignalType(f"a value does not fit its signal's type: {e}") from None
        header = BatchHeader(
            vin=vin, region=self.region, seq=1, prev=GENESIS_PREV, t0=record.t_ms, t1=record.t_ms, rows=1
        )
        settings = self.gateway.settings
        validate_payload(
            header,
            table,
            self.catalogue,
            now_ms=now_ms(),
            max_future_skew_ms=settings.max_future_skew_s * 1000,
            max_rows=1,
        )

    def routine(self, vin: str, table: pa.Table) -> pa.Table:
        """What the owner's consent lets the region keep of the rows, at the consented location precision.

        A Tesla does not apply the owner's decisions, so the region does it in the car's place, with the car's own
        rule module; the gateway then checks the batch again as it checks every car's.
        """
        policy: Policy = self.gateway.policy_of(vin)
        kept = filter_table(table, policy, self.catalogue)
        if has_column(kept, LAT) and kept.num_rows and self.masked_places is not None:
            # The owner's masked places, as the car would mask them: on the true positions, before coarsening.
            kept = mask_places(kept, self.masked_places(vin))
        if has_column(kept, LAT) and kept.num_rows:
            last = int(kept.column("t").cast(pa.int64())[-1].as_py())
            if policy.status("location_precise", last, None) != COLLECTING:
                kept = coarsen(kept, DEFAULT_RESOLUTION)
        return kept

    def _store(self, vin: str, group: _Group) -> pa.Table | None:
        """Attest the group's consented rows as one batch and commit it through the gateway (retrying a lost race)."""
        raw = self._table(group.rows)
        table = self.routine(vin, raw)
        with self._lock(vin):
            table = self._unstored(vin, table)
            if table.num_rows == 0 or table.num_columns < 2:
                return None  # nothing new the owner lets the region keep: every record is answered all the same
            version = self._software_version(vin, raw)
            for attempt in range(COMMIT_TRIES):
                head = self.gateway._head(vin, 0)
                body = make_batch(
                    vin=vin,
                    region=self.region,
                    seq=head["last_seq"] + 1,
                    prev=head["last_hash"],
                    table=table,
                    key=self.key,
                    attested_by=self.region,
                    software_version=version,
                )
                try:
                    self.gateway.accept(body, BATCH_MEDIA_TYPE, attested=True)
                    break
                except (BrokenChain, SeqConflict):
                    if attempt == COMMIT_TRIES - 1:
                        raise
        return table

    def _software_version(self, vin: str, raw: pa.Table) -> str | None:
        """The car's software version for the batch header (docs/protocol.md §10): the newest ``Version`` field in the
        records, else the version the vehicle's latest stored batch named (Tesla sends it on change, not each time).
        """
        if has_column(raw, SOFTWARE_VERSION):
            values = [v for v in raw.column(SOFTWARE_VERSION).to_pylist() if v]
            if values and valid_software_version(str(values[-1])):
                return str(values[-1])
        with self.gateway.db.session() as s:
            return s.scalar(
                select(BatchRecord.software_version)
                .where(BatchRecord.vin == vin, BatchRecord.software_version.is_not(None))
                .order_by(BatchRecord.seq.desc())
                .limit(1)
            )

    def _unstored(self, vin: str, table: pa.Table) -> pa.Table:
        """The rows whose sample time the vehicle has no stored row for yet.

        A car sends again every record it got no ack for (a connection lost between the commit and the ack), and
        Tesla's records carry no sequence number: a sample time already stored is the same record, kept once.
        """
        if self.telemetry is None or table.num_rows == 0:
            return table
        t = table.column("t").cast(pa.int64())
        lo, hi = pc.min_max(t).values()
        try:
            stored = self.telemetry.window(vin, lo.as_py(), hi.as_py() + 1, []).column("t").cast(pa.int64())
        except InvalidQuery:  # a span beyond one window's limit: nothing is dropped
            return table
        if len(stored) == 0:
            return table
        return table.filter(pc.invert(pc.is_in(t, value_set=stored.combine_chunks())))

    def _lock(self, vin: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(vin, threading.Lock())

    async def publish(self, vin: str, stored: pa.Table | None) -> None:
        """Hand what was stored (consented, at the consented precision) to the live hub: one update per row."""
        if self.hub is None or stored is None:
            return
        received = now_ms()
        times = stored.column("t").cast(pa.int64()).to_pylist()
        columns = {name: stored.column(name).to_pylist() for name in stored.column_names[1:]}
        for i, t in enumerate(times):
            values = {p: LiveValue(p, t, col[i], received) for p, col in columns.items() if col[i] is not None}
            if values:
                await self.hub.publish_local(LiveUpdate(vin, t, t, values))


def _txid(data: bytes) -> bytes:
    """The txid of a message to answer, when its envelope can be read that far (else empty)."""
    try:
        return decode_stream(data).txid
    except EnvelopeError:
        return b""


# --------------------------------------------------------------------------------------------------- the listener
def server_context(cert_file: str, key_file: str, issuer_cas: str) -> ssl.SSLContext:
    """The listener's TLS context: our certificate, client certificates required and verified against the issuers."""
    if not (cert_file and key_file and issuer_cas):
        raise ValueError("the Fleet Telemetry listener needs fleet_tls_cert, fleet_tls_key and fleet_issuer_cas")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    ctx.load_verify_locations(cafile=issuer_cas)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class FleetListener:
    """The WebSocket-over-mTLS endpoint cars connect to; runs in the event loop of the region's server."""

    def __init__(self, fleet: FleetTelemetry, context: ssl.SSLContext) -> None:
        self.fleet = fleet
        self.context = context
        settings = fleet.gateway.settings
        self.batch_records = max(1, settings.fleet_batch_records)
        self.batch_wait_s = max(0, settings.fleet_batch_wait_ms) / 1000
        self.server: Any = None

    async def start(self, host: str, port: int) -> Any:
        """Listen on ``host:port`` (TLS handshakes refuse certificates from other issuers before any byte is read)."""
        from websockets.asyncio.server import serve

        self.server = await serve(
            self.handle,
            host,
            port,
            ssl=self.context,
            max_size=MAX_MESSAGE_BYTES,
            compression=None,
            ping_interval=30,
        )
        return self.server

    async def close(self) -> None:
        """Stop listening and close every connection."""
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def handle(self, ws: Any) -> None:
        """One car's connection: identity from the verified leaf certificate, then records in, answers out."""
        from websockets.exceptions import ConnectionClosed

        ssl_object = ws.transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        try:
            if not der:
                raise UnknownVehicle("no verified client certificate")
            # OpenSSL's peer certificate is the leaf the handshake verified against the issuer CAs; Python does not
            # hand out the rest of the chain the client sent, so no other certificate can be read by mistake.
            vin = vin_of_certificate(der)
            await asyncio.to_thread(self.fleet.admit, vin)
        except CarVaultError as e:
            await ws.close(1008, f"{e.code}: {e.message}"[:120])
            return
        while True:
            batch, ending = await self._gather(ws)
            if batch:
                done = await asyncio.to_thread(self.fleet.ingest, vin, batch)
                try:
                    for o in done.outcomes:
                        await ws.send(o.answer)
                except ConnectionClosed:
                    ending = ending or "closed"  # stored all the same: the car sends them again, kept once
                await self.fleet.publish(vin, done.stored)
            if ending == "text":
                await ws.close(1003, "Fleet Telemetry messages are binary")
            if ending:
                return

    async def _gather(self, ws: Any) -> tuple[list[bytes], str | None]:
        """The next messages for one batch (the first waited for, more for up to ``fleet_batch_wait_ms``), and
        whether the connection ends after them: ``closed`` by the car, or ``text`` (a text message, refused)."""
        from websockets.exceptions import ConnectionClosed

        loop = asyncio.get_running_loop()
        batch: list[bytes] = []
        deadline = 0.0
        while len(batch) < self.batch_records:
            left = deadline - loop.time()
            if batch and left <= 0:
                break
            try:
                message = await (asyncio.wait_for(ws.recv(), left) if batch else ws.recv())
            except TimeoutError:
                break
            except ConnectionClosed:
                return batch, "closed"
            if isinstance(message, str):
                return batch, "text"
            batch.append(message)
            if len(batch) == 1:
                deadline = loop.time() + self.batch_wait_s
        return batch, None
