"""Residency: which region a vehicle's data belongs to, decided from registrations, never from a batch's word.

A vehicle's home region is fixed at provisioning. Two records say where it is:

- this region's ``vehicles`` table, for the vehicles registered here (their keys live here): authoritative;
- the **region directory**, a file shared by the manufacturer's regions (setting ``region_directory``), one
  ``VIN region`` line per provisioned vehicle, appended by provisioning in every region. It lets a gateway
  send a vehicle registered elsewhere to its home (HTTP 421 with the home's endpoint from
  ``region_endpoints``). The first line for a VIN is the one that counts; provisioning never writes a second
  one that disagrees.

Rules (docs/protocol.md §3.2, docs/operations.md):

- a VIN registered here is at home here, whatever its batches say; a batch whose signed header names another
  region (``region`` must be the registered name exactly, lower case) is refused with ``region_mismatch``;
- a VIN not registered here but listed in the directory under another region is refused with ``421
  wrong_region`` naming that home region and its endpoint (``null`` if ``region_endpoints`` lacks it);
- a VIN registered nowhere (not here, not in the directory, or listed for this region without being
  registered here) is ``401 unknown_vehicle``;
- region names are short lower-case names; names typed by operators (settings, provisioning) are
  lower-cased, a name in a signed header is compared as sent.

Used by the gateway (every batch), by provisioning and by registration (``Vehicles.register``).
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from sqlalchemy import select

from carvault.errors import RegionMismatch, UnknownVehicle, ValidationFailed, WrongRegion
from carvault.store.metadata import Database, Vehicle


def region_name(name: str) -> str:
    """The canonical (lower-case) form of a region name typed by an operator; ``ValidationFailed`` if it is none."""
    canon = name.strip().lower()
    if not (canon and canon.isascii() and canon.isalnum() and len(canon) <= 16):
        raise ValidationFailed(f"region must be a short name of letters and digits like 'cn', got {name!r}")
    return canon


def _vin(vin: str) -> str:
    v = vin.strip().upper()
    if not (len(v) == 17 and v.isascii() and v.isalnum()):
        raise ValidationFailed(f"a VIN is 17 letters and digits, got {vin!r}", field="vin")
    return v


class RegionDirectory:
    """VIN → home region for every provisioned vehicle, kept in a text file shared by the regions.

    Format: one ``VIN region`` pair per line (whitespace between, each line ending in a newline); ``#``
    starts a comment; the first line for a VIN counts; a line of any other shape is no entry. Appends take
    an exclusive ``flock`` and are fsynced, so provisioning in several processes or regions on one shared
    folder never interleaves or loses a line. Readers re-parse only when the file changed (inode, size, mtime).
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._homes: dict[str, str] = {}

    @classmethod
    def of_setting(cls, value: str) -> RegionDirectory:
        """The directory named by the ``region_directory`` setting (empty: none)."""
        return cls(Path(value) if value.strip() else None)

    def _load(self) -> dict[str, str]:
        if self.path is None:
            return {}
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return {}
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            if stamp != self._stamp:
                self._homes = self._parse(self.path.read_text(encoding="utf-8"))
                self._stamp = stamp
            return self._homes

    @staticmethod
    def _parse(text: str) -> dict[str, str]:
        homes: dict[str, str] = {}
        for line in text.split("\n")[:-1]:  # complete lines only: a line a crash cut short is never a home
            parts = line.split("#", 1)[0].split()
            if len(parts) != 2:
                continue
            vin, region = parts[0].upper(), parts[1].lower()
            if len(vin) == 17 and vin.isascii() and vin.isalnum() and region.isascii() and region.isalnum():
                homes.setdefault(vin, region)
        return homes

    def home_of(self, vin: str) -> str | None:
        """The home region the directory gives a VIN, or None."""
        return self._load().get(vin.upper())

    def record(self, vin: str, region: str) -> None:
        """Declare a VIN's home (idempotent); ``WrongRegion`` if the directory already gives it another home."""
        if self.path is None:
            return
        vin, region = _vin(vin), region_name(region)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            text = self.path.read_text(encoding="utf-8")
            known = self._parse(text).get(vin)
            if known == region:
                return
            if known is not None:
                raise WrongRegion(
                    f"vehicle {vin} is already provisioned for region {known}", home_region=known, vin=vin
                )
            # A line a crash cut short is closed as an invalid one ("!"), so that it never reads as a home.
            torn = "!\n" if text and not text.endswith("\n") else ""
            os.write(fd, f"{torn}{vin} {region}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)  # also releases the lock


class Residency:
    """This region's residency decisions (one instance per region, shared by gateway and registration)."""

    def __init__(
        self,
        region: str,
        endpoints: Mapping[str, str],
        directory: RegionDirectory,
        registered: Callable[[str], str | None],
    ) -> None:
        self.region = region_name(region)
        self.endpoints = {k.strip().lower(): v for k, v in endpoints.items()}
        self.directory = directory
        self._registered = registered
        self._local: dict[str, str] = {}  # VIN -> registered region; a registration never changes

    @classmethod
    def of_database(
        cls, db: Database, region: str, endpoints: Mapping[str, str], directory: RegionDirectory
    ) -> Residency:
        """Residency over this region's ``vehicles`` table."""

        def registered(vin: str) -> str | None:
            with db.session() as s:
                return s.scalar(select(Vehicle.region).where(Vehicle.vin == vin))

        return cls(region, endpoints, directory, registered)

    def endpoint_of(self, region: str) -> str | None:
        """The gateway URL of a region, if ``region_endpoints`` knows it."""
        return self.endpoints.get(region.lower())

    def registered_region(self, vin: str) -> str | None:
        """The home region recorded when the vehicle was registered here, or None (only hits are cached)."""
        home = self._local.get(vin)
        if home is None:
            home = self._registered(vin)
            if home is not None:
                self._local[vin] = home = home.lower()
        return home

    def admit(self, vin: str) -> None:
        """Let a vehicle's data in only at home: ``WrongRegion`` (421) if it lives elsewhere, else ``UnknownVehicle``.

        Decided from the registrations alone; the caller then checks the signature and ``check_claim``.
        """
        if self.registered_region(vin) is not None:
            return
        home = self.directory.home_of(vin)
        if home is None or home == self.region:
            raise UnknownVehicle(
                f"vehicle {vin} is not provisioned in region {self.region}"
                + (" (the region directory lists it here, but it was never registered)" if home else ""),
                vin=vin,
            )
        endpoint = self.endpoint_of(home)
        raise WrongRegion(
            f"vehicle {vin} belongs to region {home!r}; this gateway serves {self.region!r} and stores nothing "
            "for other regions" + ("" if endpoint else f" (no endpoint is configured for {home!r})"),
            home_region=home,
            endpoint=endpoint,
        )

    def check_claim(self, vin: str, claimed: str) -> None:
        """``RegionMismatch`` if a signed header names a region other than the vehicle's registered home."""
        home = self.registered_region(vin)
        if home is not None and claimed != home:
            raise RegionMismatch(
                f"batch header says region {claimed!r} but vehicle {vin} is registered in {home!r} "
                "(region names are lower case); the vehicle's provisioning is wrong, re-sending will not help",
                vin=vin,
                registered_region=home,
                header_region=claimed,
            )

    def check_registration(self, vin: str, region: str) -> str:
        """The canonical home for registering ``vin`` here; ``WrongRegion`` if it belongs elsewhere."""
        home = region_name(region)
        listed = self.directory.home_of(vin)
        if home != self.region or (listed is not None and listed != home):
            other = listed if listed is not None and listed != self.region else home
            raise WrongRegion(
                f"vehicle {vin} is provisioned for region {other}, not {self.region}",
                home_region=other,
                endpoint=self.endpoint_of(other),
            )
        return home
