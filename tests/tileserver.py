"""A real local XYZ tile server for the map tests: serves small PNG tiles it draws itself and records requests.

Each tile is a 256×256 PNG (zlib, written here with the standard library) in a colour that depends on z/x/y, so a
page showing tiles shows a visible grid. ``TileServer.requests`` lists every (z, x, y) asked for, in order;
``url_template`` is what the ``map_tile_url`` setting takes.
"""

from __future__ import annotations

import re
import struct
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

TILE = re.compile(r"^/tiles/(\d{1,2})/(\d{1,7})/(\d{1,7})\.png$")


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A solid-colour PNG with a one-pixel darker border (PNG spec: signature, IHDR, IDAT, IEND)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    dark = bytes(max(0, c - 40) for c in rgb)
    inner = bytes(rgb)
    rows = []
    for y in range(height):
        line = dark * width if y in (0, height - 1) else dark + inner * (width - 2) + dark
        rows.append(b"\x00" + line)  # filter type 0 per row
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"".join(rows), 9))
        + chunk(b"IEND", b"")
    )


def tile_colour(z: int, x: int, y: int) -> tuple[int, int, int]:
    """A light colour per tile, different for neighbours."""
    return (200 + (x * 37 + z * 11) % 50, 210 + (y * 53 + z * 7) % 40, 190 + ((x + y) * 29) % 60)


class TileServer:
    """The running server: its base URL, the XYZ template, and the tiles it served."""

    def __init__(self) -> None:
        self.requests: list[tuple[int, int, int]] = []
        self.misses: list[str] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server name
                m = TILE.match(self.path)
                if not m:
                    with server._lock:
                        server.misses.append(self.path)
                    self.send_error(404)
                    return
                z, x, y = (int(g) for g in m.groups())
                if z > 19 or x >= 2**z or y >= 2**z:
                    self.send_error(404)
                    return
                with server._lock:
                    server.requests.append((z, x, y))
                body = png(256, 256, tile_colour(z, x, y))
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="tile-server", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def url_template(self) -> str:
        return self.url + "/tiles/{z}/{x}/{y}.png"

    def served(self) -> list[tuple[int, int, int]]:
        with self._lock:
            return list(self.requests)

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self.misses.clear()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture(scope="session")
def tile_server() -> Iterator[TileServer]:
    """One tile server for the session; tests call ``clear()`` before counting requests."""
    s = TileServer()
    yield s
    s.stop()
