"""One typed settings object, built at the entry point and passed in (never read from globals)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

ENV_PREFIX = "CARVAULT_"


@dataclass(frozen=True)
class Setting:
    """Declaration of one setting: its name, default and help text (documented in docs/operations.md)."""

    name: str
    default: Any
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting("data_dir", "./carvault-data", "Folder holding this region's batch segments, log and SQLite DB."),
    Setting("region", "cn", "The region this deployment serves (cn, eu, us ...)."),
    Setting("database_url", "", "SQLAlchemy URL of the metadata DB; empty means SQLite in data_dir."),
    Setting("host", "127.0.0.1", "Listen address of `carvault serve`."),
    Setting("port", 8400, "Listen port of `carvault serve`."),
    Setting(
        "region_endpoints",
        "cn=http://127.0.0.1:8400,eu=http://127.0.0.1:8401",
        "Directory of region gateways, `name=url,...`, used to send foreign vehicles home (HTTP 421).",
    ),
    Setting("max_batch_bytes", 8 * 1024 * 1024, "Largest accepted batch envelope in bytes."),
    Setting("max_batch_rows", 200_000, "Largest accepted number of rows (timestamps) in one batch."),
    Setting("max_future_skew_s", 300, "How far ahead of the server clock a batch may reach, in seconds."),
    Setting("session_ttl_s", 7 * 24 * 3600, "Lifetime of a browser session or API token, in seconds."),
    Setting("segment_max_bytes", 256 * 1024 * 1024, "Size at which a writer rolls to a new segment file."),
)


def _parse_endpoints(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, url = part.partition("=")
        if not name or not url:
            raise ValueError(f"region_endpoints entry {part!r} is not name=url")
        out[name.strip()] = url.strip().rstrip("/")
    return out


@dataclass(frozen=True)
class Settings:
    """Everything a region deployment needs to know, typed."""

    data_dir: Path = Path("./carvault-data")
    region: str = "cn"
    database_url: str = ""
    host: str = "127.0.0.1"
    port: int = 8400
    region_endpoints: Mapping[str, str] = field(
        default_factory=lambda: _parse_endpoints("cn=http://127.0.0.1:8400,eu=http://127.0.0.1:8401")
    )
    max_batch_bytes: int = 8 * 1024 * 1024
    max_batch_rows: int = 200_000
    max_future_skew_s: int = 300
    session_ttl_s: int = 7 * 24 * 3600
    segment_max_bytes: int = 256 * 1024 * 1024

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
        typed: dict[str, Any] = {}
        known = {f.name for f in fields(cls)}
        for name, value in values.items():
            if name not in known:
                raise ValueError(f"unknown setting {name!r}")
            if name == "data_dir":
                typed[name] = Path(value)
            elif name == "region_endpoints":
                typed[name] = _parse_endpoints(value) if isinstance(value, str) else dict(value)
            elif name in {
                "port",
                "max_batch_bytes",
                "max_batch_rows",
                "max_future_skew_s",
                "session_ttl_s",
                "segment_max_bytes",
            }:
                try:
                    typed[name] = int(value)
                except (TypeError, ValueError):
                    raise ValueError(f"setting {name} must be an integer, got {value!r}") from None
            else:
                typed[name] = str(value)
        s = cls(**typed)
        if not s.region.isalnum() or not s.region.islower():
            raise ValueError(f"region must be a short lowercase name like 'cn', got {s.region!r}")
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
