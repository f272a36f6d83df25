"""A Fleet Telemetry car for the tests, written from Tesla's published protocol: WebSocket over mutual TLS, each
message a FlatBuffers envelope around a protobuf ``Payload``; plus a test PKI made with ``cryptography``.

``FleetPKI`` makes what a deployment gets from Tesla and its own CA: a vehicle-issuer root, an issuing intermediate
below it, vehicle certificates (subject CN = VIN), a second, untrusted issuer, and the listener's server certificate.
``tesla_payloads`` turns catalogue-unit rows (the simulator's) into Tesla records, in Tesla's units, through the
inverse of the region's own mapping table.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from websockets.asyncio.client import connect

from carvault.ingest.fleet_telemetry import FieldRule, FleetMapping
from carvault.protocol.fleet_telemetry import vehicle_data_pb2 as pb
from carvault.protocol.fleet_telemetry.envelope import Answer, decode_answer, encode_stream

# --------------------------------------------------------------------------------------------------- test PKI


@dataclass
class Issued:
    """A certificate (with the chain to send after it) and its key, written as PEM files."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_file: Path
    key_file: Path


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Motors"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class FleetPKI:
    """Every certificate a Fleet Telemetry test needs, in ``folder``."""

    folder: Path
    _n: int = field(default=0)

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.root = self.ca("Test Vehicle Root CA")
        self.issuing = self.ca("Test Vehicle Issuing CA", self.root)
        self.other_root = self.ca("Some Other Vehicle CA")
        self.server_root = self.ca("Test Server CA")
        self.server = self.leaf("localhost", self.server_root, server=True)
        # What the region trusts for vehicle certificates: the issuer root only.
        self.issuers_file = self.folder / "vehicle-issuers.pem"
        self.issuers_file.write_bytes(_pem(self.root.cert))
        self.server_trust_file = self.folder / "server-ca.pem"
        self.server_trust_file.write_bytes(_pem(self.server_root.cert))

    def _write(
        self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, chain: Sequence[x509.Certificate]
    ) -> Issued:
        self._n += 1
        cert_file, key_file = self.folder / f"{self._n}.crt", self.folder / f"{self._n}.key"
        cert_file.write_bytes(b"".join(_pem(c) for c in (cert, *chain)))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return Issued(cert, key, cert_file, key_file)

    def ca(self, cn: str, parent: Issued | None = None) -> Issued:
        """A CA certificate, self-signed or issued by ``parent``."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        issuer = parent.cert.subject if parent else _name(cn)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(parent.key if parent else key, hashes.SHA256())
        )
        return self._write(cert, key, [])

    def leaf(self, cn: str, issuer: Issued, *, server: bool = False) -> Issued:
        """A vehicle certificate (subject CN = VIN), or with ``server`` the listener's, issued by ``issuer``."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(issuer.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        else:
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        cert = builder.sign(issuer.key, hashes.SHA256())
        # The car sends its leaf and the intermediates up to (not including) the trusted root.
        intermediate = issuer.cert.issuer != issuer.cert.subject
        return self._write(cert, key, [issuer.cert] if intermediate else [])

    def vehicle(self, vin: str) -> Issued:
        """A vehicle certificate for ``vin`` from the trusted issuing CA (the car sends it with the intermediate)."""
        return self.leaf(vin, self.issuing)


# --------------------------------------------------------------------------------------------------- records


def value_of(**member: Any) -> pb.Value:
    """A ``Value`` with one member set, e.g. ``value_of(double_value=3.5)``."""
    v = pb.Value()
    ((name, x),) = member.items()
    if name == "location_value":
        v.location_value.latitude, v.location_value.longitude = x
    elif name == "door_value":
        for k, b in x.items():
            setattr(v.door_value, k, b)
    else:
        setattr(v, name, x)
    return v


def payload(t_ms: int, data: dict[int, pb.Value], vin: str = "") -> pb.Payload:
    """A vehicle-data record: field number -> value, created at ``t_ms``."""
    p = pb.Payload(vin=vin)
    p.created_at.FromMilliseconds(t_ms)
    for key, value in data.items():
        d = p.data.add()
        d.key = key
        d.value.CopyFrom(value)
    return p


def message(
    vin: str, record: pb.Payload | bytes, txid: str, *, topic: bytes = b"V", device_id: str | None = None
) -> bytes:
    """The envelope a car sends for one record (device id and sender id naming ``vin`` as Tesla's cars do)."""
    body = record if isinstance(record, bytes) else record.SerializeToString()
    dev = (device_id if device_id is not None else vin).encode()
    return encode_stream(txid=txid.encode(), topic=topic, payload=body, device_id=dev, created_at=0)


def _tesla_value(rules: list[FieldRule], row: dict[str, Any]) -> pb.Value | None:
    """The one Tesla value that the field's rules turn into the row's catalogue values (the mapping, inverted)."""
    present = [r for r in rules if row.get(r.signal) is not None]
    if not present:
        return None
    kind = present[0].kind
    if kind == "number":
        r = present[0]
        x = (row[r.signal] - r.offset) / r.scale
        # Older firmware sends speed as decimal text; the region reads both.
        return value_of(string_value=repr(x)) if r.field == "VehicleSpeed" else value_of(double_value=x)
    if kind == "boolean":
        return value_of(boolean_value=bool(row[present[0].signal]))
    if kind == "text":  # the car's Version field (docs/protocol.md §10)
        return value_of(string_value=str(row[present[0].signal]))
    if kind.startswith("location."):
        if len(present) < 2:
            return None
        lat = next(row[r.signal] for r in present if r.kind == "location.latitude")
        lon = next(row[r.signal] for r in present if r.kind == "location.longitude")
        return value_of(location_value=(lat, lon))
    if kind.startswith("doors."):
        return value_of(door_value={r.kind.removeprefix("doors."): bool(row[r.signal]) for r in present})
    enum = pb.Value.DESCRIPTOR.fields_by_name[kind].enum_type
    for name in present[0].values:
        if all(r.values.get(name) == row[r.signal] for r in present):
            return value_of(**{kind: enum.values_by_name[name].number})
    return None


def tesla_payloads(table: pa.Table, mapping: FleetMapping) -> list[pb.Payload]:
    """One Tesla record per row of a catalogue-unit table (``t`` first), in Tesla's units."""
    by_field: dict[int, list[FieldRule]] = {}
    for r in mapping.rules:
        by_field.setdefault(r.number, []).append(r)
    rows = table.to_pylist()
    out = []
    for row in rows:
        t = row["t"]
        t_ms = int(t.timestamp() * 1000) if isinstance(t, dt.datetime) else int(t)
        data = {}
        for number, rules in by_field.items():
            v = _tesla_value(rules, row)
            if v is not None:
                data[number] = v
        out.append(payload(t_ms, data))
    return out


# --------------------------------------------------------------------------------------------------- the client


def client_context(pki: FleetPKI, cert: Issued) -> ssl.SSLContext:
    """The car's TLS: its certificate (and chain) and the listener's CA."""
    ctx = ssl.create_default_context(cafile=str(pki.server_trust_file))
    ctx.load_cert_chain(str(cert.cert_file), str(cert.key_file))
    return ctx


class FleetClient:
    """One car's connection to the listener."""

    def __init__(self, url: str, context: ssl.SSLContext) -> None:
        self.url = url
        self.context = context
        self.ws: Any = None

    async def __aenter__(self) -> FleetClient:
        self.ws = await connect(self.url, ssl=self.context, compression=None, open_timeout=20)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ws.close()

    async def stream(self, messages: Sequence[bytes], timeout: float = 60) -> list[Answer]:
        """Send every message without waiting (as a car streams), then read one answer per message."""
        import asyncio

        for m in messages:
            await self.ws.send(m)
        return [decode_answer(await asyncio.wait_for(self.ws.recv(), timeout)) for _ in messages]
