"""Vehicle identity: each region's X.509 CA (Ed25519) and the certificates it issues to vehicles.

A vehicle certificate binds the VIN (subject common name and serialNumber attribute) to the vehicle's
Ed25519 key. ``vehicle_key_from_certificate`` is pure (only ``cryptography``) so the offline verifier
uses it too.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VEHICLE_CERT_YEARS = 20
CA_YEARS = 30
# A region-attestation certificate (docs/fleet-telemetry.md, docs/protocol.md §9) binds a VIN to the region's
# attestation key instead of a key the car holds: its subject carries this title, and the verifier says so.
ATTESTATION_TITLE = "region-attested"


class CertificateError(Exception):
    """A certificate is malformed, not issued by the expected CA, expired, or for another VIN."""


def _name(common: str, region: str, vin: str | None = None, *, attested: bool = False) -> x509.Name:
    attrs = [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CarVault"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"region {region}"),
        x509.NameAttribute(NameOID.COMMON_NAME, common),
    ]
    if vin:
        attrs.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, vin))
    if attested:
        attrs.append(x509.NameAttribute(NameOID.TITLE, ATTESTATION_TITLE))
    return x509.Name(attrs)


def attested_by(cert_pem: bytes | str) -> str | None:
    """The region that attests a vehicle's data if ``cert_pem`` is a region-attestation certificate, else None.

    Such a certificate names no key of the car: the batches it verifies were built and signed by that region from
    records the car did not sign (Fleet Telemetry). The region is read from the subject's ``region <name>`` unit.
    """
    cert = x509.load_pem_x509_certificate(cert_pem.encode() if isinstance(cert_pem, str) else cert_pem)
    titles = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.TITLE)]
    if ATTESTATION_TITLE not in titles:
        return None
    for unit in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME):
        value = str(unit.value)
        if value.startswith("region "):
            return value.removeprefix("region ")
    return ""


def fingerprint(cert_pem: bytes | str) -> str:
    """SHA-256 fingerprint (hex) of a certificate's DER bytes."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode() if isinstance(cert_pem, str) else cert_pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


class RegionCA:
    """The CA of one region; its key stays in the region's key folder."""

    def __init__(self, key: Ed25519PrivateKey, cert: x509.Certificate, region: str) -> None:
        self.key = key
        self.cert = cert
        self.region = region

    @property
    def cert_pem(self) -> str:
        """The CA certificate, PEM."""
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    @classmethod
    def load_or_create(cls, key: Ed25519PrivateKey, cert_path: Path, region: str) -> RegionCA:
        """Load the CA certificate for ``key``, or self-sign one on first use."""
        if cert_path.exists():
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            return cls(key, cert, region)
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        name = _name(f"CarVault {region} vehicle CA", region)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365 * CA_YEARS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, algorithm=None)
        )
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cert_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        try:
            os.link(tmp, cert_path)  # atomic; if another process won, use its certificate
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        return cls(key, x509.load_pem_x509_certificate(cert_path.read_bytes()), region)

    def issue(self, vin: str, public_key: bytes, *, attested: bool = False) -> str:
        """A certificate for a vehicle's raw Ed25519 public key, PEM.

        ``attested``: the key is the region's attestation key, not the car's (a region-attestation certificate,
        ``attested_by``), for a car whose records the region signs on its behalf.
        """
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        pub = Ed25519PublicKey.from_public_bytes(public_key)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(vin, self.region, vin, attested=attested))
            .issuer_name(self.cert.subject)
            .public_key(pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365 * VEHICLE_CERT_YEARS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=True,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, algorithm=None)
        )
        return cert.public_bytes(serialization.Encoding.PEM).decode()


def vehicle_key_from_certificate(
    cert_pem: bytes | str, ca_pem: bytes | str, vin: str, at: dt.datetime | None = None
) -> Ed25519PublicKey:
    """Check that the certificate was issued by the CA to ``vin`` and is valid ``at``; return the vehicle key."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode() if isinstance(cert_pem, str) else cert_pem)
        ca = x509.load_pem_x509_certificate(ca_pem.encode() if isinstance(ca_pem, str) else ca_pem)
    except ValueError as e:
        raise CertificateError(f"certificate is not valid PEM/X.509: {e}") from None
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, Exception) as e:  # InvalidSignature has no message
        raise CertificateError(f"vehicle certificate was not issued by this CA ({type(e).__name__})") from None
    try:
        bc = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise CertificateError("the issuing certificate is not a CA") from None
    if not bc.ca:
        raise CertificateError("the issuing certificate is not a CA")
    when = at or dt.datetime.now(dt.UTC)
    if not (cert.not_valid_before_utc <= when <= cert.not_valid_after_utc):
        raise CertificateError(f"vehicle certificate is not valid at {when.isoformat()}")
    subjects = {a.value for a in cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)}
    subjects |= {a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)}
    if vin not in subjects:
        raise CertificateError(f"certificate is for {sorted(subjects)}, not for VIN {vin}")
    key = cert.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise CertificateError("vehicle certificate does not hold an Ed25519 key")
    return key
