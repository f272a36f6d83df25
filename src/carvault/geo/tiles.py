"""The configured XYZ tile server: its URL template checked, its origin for the content security policy."""

from __future__ import annotations

from urllib.parse import urlsplit

CRS = ("wgs84", "gcj02")
PLACEHOLDERS = ("{z}", "{x}", "{y}")


def check_tile_url(url: str) -> str:
    """The template unchanged if it is empty or an http(s) XYZ template with {z}, {x} and {y}; ValueError if not."""
    if not url:
        return url
    parts = urlsplit(url.replace("{s}", "a"))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"map_tile_url must be an http(s) URL template, got {url!r}")
    missing = [p for p in PLACEHOLDERS if p not in url]
    if missing:
        raise ValueError(f"map_tile_url must contain {', '.join(PLACEHOLDERS)}; {', '.join(missing)} missing")
    host = urlsplit(url).netloc
    if "{s}" in host.partition(".")[2]:
        raise ValueError("map_tile_url may use {s} only in the first label of the host name")
    if any(c in url for c in " '\";,"):
        raise ValueError("map_tile_url must not contain spaces, quotes or semicolons")
    return url


def check_tile_crs(crs: str) -> str:
    """The tile datum, `wgs84` or `gcj02`; ValueError otherwise."""
    if crs not in CRS:
        raise ValueError(f"map_tile_crs must be one of {', '.join(CRS)}, got {crs!r}")
    return crs


def tile_origin(url: str) -> str | None:
    """The scheme and host the tiles come from, as a CSP source (`{s}` subdomains become a wildcard)."""
    if not url:
        return None
    parts = urlsplit(url)
    first, dot, rest = parts.netloc.partition(".")
    return f"{parts.scheme}://{'*' if '{s}' in first else first}{dot}{rest}"
