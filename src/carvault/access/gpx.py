"""Routes as GPX 1.1 (https://www.topografix.com/GPX/1/1/): one track, a segment per stretch without a gap.

Written incrementally (``GpxWriter``), so a whole history streams to a file in constant memory. Only
samples that have both latitude and longitude become track points; a new segment starts wherever the
car stopped sending location for more than ``gap_s`` seconds (asleep, or location collection off).
"""

from __future__ import annotations

import io
from typing import BinaryIO
from xml.sax.saxutils import escape

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from carvault.protocol.columns import has_column

LATITUDE = "Vehicle.CurrentLocation.Latitude"
LONGITUDE = "Vehicle.CurrentLocation.Longitude"
ALTITUDE = "Vehicle.CurrentLocation.Altitude"
ROUTE_SIGNALS = (LATITUDE, LONGITUDE, ALTITUDE)
MEDIA_TYPE = "application/gpx+xml"
GAP_S = 60


class GpxWriter:
    """Streams track points from telemetry tables into a GPX 1.1 document."""

    def __init__(self, out: BinaryIO, name: str, description: str = "", gap_s: float = GAP_S) -> None:
        self.out = out
        self.gap_ms = int(gap_s * 1000)
        self.points = 0
        self._last_t: int | None = None
        self._open_segment = False
        out.write(
            b'<?xml version="1.0" encoding="UTF-8"?>\n'
            b'<gpx version="1.1" creator="CarVault" xmlns="http://www.topografix.com/GPX/1/1">\n'
            b"<trk><name>" + escape(name).encode() + b"</name>"
        )
        if description:
            out.write(b"<desc>" + escape(description).encode() + b"</desc>")
        out.write(b"\n")

    def write(self, table: pa.Table) -> int:
        """Append the located samples of ``table`` (columns ``t`` and the location paths); return how many."""
        if table.num_rows == 0 or not has_column(table, LATITUDE) or not has_column(table, LONGITUDE):
            return 0
        located = pc.and_(pc.is_valid(table.column(LATITUDE)), pc.is_valid(table.column(LONGITUDE)))
        table = table.filter(located)
        if table.num_rows == 0:
            return 0
        t = table.column("t").cast(pa.int64()).to_numpy()
        # Every point is formatted by Arrow string kernels (no Python loop over samples).
        lat = pc.cast(pc.round(pc.cast(table.column(LATITUDE), pa.float64()), 7), pa.string())
        lon = pc.cast(pc.round(pc.cast(table.column(LONGITUDE), pa.float64()), 7), pa.string())
        if has_column(table, ALTITUDE):
            alt = pc.cast(pc.round(pc.cast(table.column(ALTITUDE), pa.float64()), 1), pa.string())
            ele = pc.fill_null(pc.binary_join_element_wise("<ele>", alt, "</ele>", ""), "")
        else:
            ele = pa.array([""] * len(t), pa.string())
        times = pc.strftime(table.column("t"), format="%Y-%m-%dT%H:%M:%SZ")
        prev = np.r_[self._last_t if self._last_t is not None else t[0] - 2 * self.gap_ms - 1, t[:-1]]
        new_segment = (t - prev) > self.gap_ms
        # A gap closes the open segment (if any) and opens a new one before the point.
        opener = np.where(new_segment, "</trkseg>\n<trkseg>\n", "")
        if new_segment[0] and not self._open_segment:
            opener[0] = "<trkseg>\n"
        points = pc.binary_join_element_wise(
            pa.array(opener, pa.string()),
            '<trkpt lat="',
            lat,
            '" lon="',
            lon,
            '">',
            ele,
            "<time>",
            times,
            "</time></trkpt>\n",
            "",
        )
        document = pc.binary_join(
            pa.ListArray.from_arrays(
                pa.array([0, len(points)], pa.int32()),
                points.combine_chunks() if isinstance(points, pa.ChunkedArray) else points,
            ),
            "",
        )
        self.out.write(document[0].as_py().encode())
        self._open_segment = True
        self._last_t = int(t[-1])
        self.points += len(t)
        return len(t)

    def close(self) -> None:
        """Finish the document (the stream stays open)."""
        if self._open_segment:
            self.out.write(b"</trkseg>\n")
        self.out.write(b"</trk>\n</gpx>\n")


def to_gpx(table: pa.Table, name: str, description: str = "") -> bytes:
    """A whole window as one GPX document."""
    sink = io.BytesIO()
    w = GpxWriter(sink, name, description)
    w.write(table)
    w.close()
    return sink.getvalue()


def gpx_name(vin: str, start_ms: int, end_ms: int) -> str:
    """The track name CarVault gives a window."""
    return f"{vin} {_iso(start_ms)} – {_iso(end_ms)}"


def _iso(ms: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
