"""One typed settings object, built at the entry point and passed in (never read from globals)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, get_type_hints

from carvault.geo.tiles import check_tile_crs, check_tile_url

ENV_PREFIX = "CARVAULT_"


@dataclass(frozen=True)
class Setting:
    """One row of the settings table: name, type, default and help text (documented in docs/operations.md)."""

    name: str
    type: Any
    default: Any  # as written in the environment when ``parse`` reads it from text
    help: str
    parse: Callable[[Any], Any]


def _parse_endpoints(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, url = part.partition("=")
        if not name or not url:
            raise ValueError(f"region_endpoints entry {part!r} is not name=url")
        out[name.strip()] = url.strip().rstrip("/")
    return out


def _endpoints(value: Any) -> dict[str, str]:
    return _parse_endpoints(value) if isinstance(value, str) else dict(value)


def _setting(default: Any, help: str, *, parse: Callable[[Any], Any] | None = None) -> Any:
    """Declare one setting in the ``Settings`` table; with ``parse`` the default is its text form."""
    meta = {"help": help, "default": default, "parse": parse}
    if parse is not None:
        return field(default_factory=lambda: parse(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Settings:
    """Everything a region deployment needs to know, typed: each field is one row of the settings table."""

    data_dir: Path = _setting(
        "./carvault-data", "Folder holding this region's batch segments, log and SQLite DB.", parse=Path
    )
    region: str = _setting("cn", "The region this deployment serves (cn, eu, us ...).")
    database_url: str = _setting("", "SQLAlchemy URL of the metadata DB; empty means SQLite in data_dir.")
    host: str = _setting("127.0.0.1", "Listen address of `carvault serve`.")
    port: int = _setting(8400, "Listen port of `carvault serve`.")
    region_endpoints: Mapping[str, str] = _setting(
        "cn=http://127.0.0.1:8400,eu=http://127.0.0.1:8401",
        "Directory of region gateways, `name=url,...`, used to send foreign vehicles home (HTTP 421).",
        parse=_endpoints,
    )
    region_directory: str = _setting(
        "",
        "Region directory file (`VIN region` per line) shared by all regions; provisioning appends to it; "
        "empty means none (only vehicles registered here are known).",
    )
    max_batch_bytes: int = _setting(8 * 1024 * 1024, "Largest accepted batch envelope in bytes.")
    max_batch_rows: int = _setting(200_000, "Largest accepted number of rows (timestamps) in one batch.")
    max_future_skew_s: int = _setting(300, "How far ahead of the server clock a batch may reach, in seconds.")
    session_ttl_s: int = _setting(7 * 24 * 3600, "Lifetime of a browser session or API token, in seconds.")
    segment_max_bytes: int = _setting(256 * 1024 * 1024, "Size at which a writer rolls to a new segment file.")
    blob_store: str = _setting(
        "local",
        "Where evidence, query copies, frames, packages and log tiles live: `local` (the data_dir folder itself), "
        "`file:///path` (a folder elsewhere) or `s3://bucket/prefix` (S3-compatible object storage; "
        "credentials from the usual AWS_* variables).",
    )
    s3_endpoint_url: str = _setting("", "URL of the S3-compatible server when it is not AWS (e.g. http://minio:9000).")
    s3_region: str = _setting("us-east-1", "Region name given to the S3-compatible server.")
    metrics_token: str = _setting(
        "",
        "Bearer token Prometheus must send to read /metrics; empty leaves /metrics open (it shows aggregate "
        "figures only, never a car or an owner).",
    )
    log_format: str = _setting(
        "text", "How `carvault serve` writes its logs: `text` for people, `json` (one object per line) for collectors."
    )
    retention_interval_s: int = _setting(
        3600,
        "Seconds between the in-process retention purges of each replica (one runs at a time); 0 turns the "
        "scheduler off, e.g. when a cron job runs `carvault admin retention run` instead (docs/retention.md).",
    )
    deletion_grace_s: int = _setting(
        72 * 3600,
        "Grace period between an owner's deletion request and its erasure, in seconds; the owner may cancel it "
        "until then (at most 7 days, well inside the 10-working-day deadline; docs/deletion.md).",
    )
    log_backend: str = _setting(
        "file",
        "Where the transparency log keeps its tree: `file` (a folder in data_dir, one machine) or `postgres` "
        "(tables in the PostgreSQL metadata database; appends of every replica sequenced by an advisory lock).",
    )
    compaction_interval_s: int = _setting(
        900,
        "Seconds between compactions of closed days into compact query copies on each replica (store/day_copies.py); "
        "0 turns it off, e.g. when cron runs `carvault compact` instead.",
    )
    witnesses: str = _setting(
        "",
        "Independent witnesses that cosign the log's checkpoints: `name=vkey@url` entries separated by `;` "
        "(vkey: the witness's cosignature/v1 key as `carvault witness init` prints it; url: its submission "
        "prefix); empty = none (docs/witness.md).",
    )
    witness_quorum: int = _setting(
        0,
        "Cosignatures a checkpoint needs to count as witnessed (0 to the number of witnesses); cosigned "
        "checkpoints are published and carried in receipts' proofs and incident packages.",
    )
    live_broker: str = _setting(
        "memory",
        "Broker fanning live frames out to every replica: `memory` (one process), `nats://host:port` (NATS "
        "server) or `postgres` (LISTEN/NOTIFY on the PostgreSQL metadata database).",
    )
    fleet_telemetry_port: int = _setting(
        0,
        "Port of the Fleet Telemetry listener (WebSocket over mutual TLS, for Teslas as they are; "
        "docs/fleet-telemetry.md) that `carvault serve` opens beside the API; 0 turns it off.",
    )
    fleet_issuer_cas: str = _setting(
        "",
        "PEM file of the vehicle-issuer CA certificates whose vehicle certificates the Fleet Telemetry listener "
        "accepts (the TLS handshake refuses any other issuer); required when the listener is on.",
    )
    fleet_tls_cert: str = _setting(
        "", "PEM file of the Fleet Telemetry listener's own certificate chain (the server name the cars are given)."
    )
    fleet_tls_key: str = _setting("", "PEM file of the private key of `fleet_tls_cert`.")
    fleet_batch_records: int = _setting(
        60, "Most Fleet Telemetry records the region attests in one batch (one connection's records, in order)."
    )
    fleet_batch_wait_ms: int = _setting(
        1000, "How long a Fleet Telemetry connection gathers records for one batch before attesting it, in ms."
    )
    map_tile_url: str = _setting(
        "",
        "XYZ tile URL template for the portal's maps, e.g. `https://tiles.example.org/{z}/{x}/{y}.png` (`{s}` "
        "allowed in the first host label); its host is added to the pages' img-src; empty draws routes without "
        "tiles (docs/maps.md).",
    )
    map_tile_attribution: str = _setting(
        "", "Attribution the tile server's licence asks for, shown on every map (e.g. `© OpenStreetMap contributors`)."
    )
    map_tile_crs: str = _setting(
        "wgs84",
        "Datum the tiles are drawn in: `wgs84` (OpenStreetMap and most servers) or `gcj02` (Chinese providers; "
        "positions are converted for display only, docs/maps.md).",
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``CARVAULT_*`` variables, then explicit overrides (CLI flags)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for s in SETTINGS:
            raw = env.get(ENV_PREFIX + s.name.upper())
            if raw is not None:
                values[s.name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.coerce(values)

    @classmethod
    def coerce(cls, values: Mapping[str, Any]) -> Settings:
        """Turn loose values (strings from env or flags) into typed settings, failing clearly."""
        table = {row.name: row for row in SETTINGS}
        typed: dict[str, Any] = {}
        for name, value in values.items():
            if name not in table:
                raise ValueError(f"unknown setting {name!r}")
            typed[name] = table[name].parse(value)
        s = cls(**typed)
        check_tile_url(s.map_tile_url)
        check_tile_crs(s.map_tile_crs)
        if not s.region.isalnum() or not s.region.islower():
            raise ValueError(f"region must be a short lowercase name like 'cn', got {s.region!r}")
        if not 0 <= s.deletion_grace_s <= 7 * 86400:
            raise ValueError(f"deletion_grace_s must be 0 to 604800 seconds (7 days), got {s.deletion_grace_s}")
        from carvault.ledger.witnessing import parse_witnesses

        configured = parse_witnesses(s.witnesses)  # ValueError naming the bad entry
        if not 0 <= s.witness_quorum <= len(configured):
            raise ValueError(f"witness_quorum must be 0 to {len(configured)} (the witnesses configured)")
        if s.log_backend not in ("file", "postgres"):
            raise ValueError(f"log_backend must be 'file' or 'postgres', got {s.log_backend!r}")
        if s.log_backend == "postgres" and not s.resolved_database_url.startswith("postgresql"):
            raise ValueError("log_backend 'postgres' needs a PostgreSQL database_url")
        return s

    def with_(self, **changes: Any) -> Settings:
        """A copy with some settings changed."""
        return replace(self, **changes)

    @property
    def resolved_database_url(self) -> str:
        """The metadata DB URL; SQLite inside the data folder unless configured."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'metadata.sqlite3').resolve()}"

    def endpoint_of(self, region: str) -> str | None:
        """The gateway URL of a region, if the directory knows it."""
        return self.region_endpoints.get(region)


def _to_int(name: str) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValueError(f"setting {name} must be an integer, got {value!r}") from None

    return parse


# How a value of each declared type is read from text (env, flags); a setting may bring its own parser.
_PARSERS: dict[Any, Callable[[str], Callable[[Any], Any]]] = {
    int: _to_int,
    str: lambda _name: str,
    Path: lambda _name: Path,
}


def _table() -> tuple[Setting, ...]:
    """The settings table, read from the ``Settings`` fields (the one place each setting is declared)."""
    hints = get_type_hints(Settings)
    rows = []
    for f in fields(Settings):
        parse = f.metadata["parse"] or _PARSERS[hints[f.name]](f.name)
        rows.append(Setting(f.name, hints[f.name], f.metadata["default"], f.metadata["help"], parse))
    return tuple(rows)


SETTINGS: tuple[Setting, ...] = _table()
