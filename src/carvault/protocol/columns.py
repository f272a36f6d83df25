"""Names and types of the wire format shared by car, gateway and verifier: the time column, camera columns, events."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

TIME_COLUMN = "t"
TIME_TYPE = pa.timestamp("ms", tz="UTC")
"""Every payload's first column: UTC milliseconds."""

CAMERA = "Vehicle.CarVault.Camera."
CAMERA_COLUMNS = tuple(CAMERA + c for c in ("FrameHash", "Position", "DeIdentified", "Redactions", "Detectors"))
"""The columns describing one camera frame in a media batch (the frame bytes travel separately)."""

REDACTION_KINDS = ("face", "plate")
"""What the car blurs in an exterior frame; each entry of a frame's ``Redactions`` names one of these."""

EVENT_KINDS = ("crash", "restraint", "hard_braking", "abs", "aeb", "manual")
"""Kinds of event an event batch may describe (``carvault.event`` metadata ``kind``)."""


def has_column(table: pa.Table, name: str) -> bool:
    """Whether ``table`` has a column ``name``: a lookup in the schema. ``name in table.column_names`` builds a
    Python list of every field first (~40 µs for a 40-column batch, under the GIL), which hot paths cannot afford."""
    return bool(table.schema.get_all_field_indices(name))


def times_ms(table: pa.Table) -> np.ndarray:
    """The table's time column as int64 UTC milliseconds: a view of Arrow's buffer where its layout allows (a cast
    through ``pyarrow.compute`` costs ~8 µs more per call)."""
    t = table.column(TIME_COLUMN).to_numpy()
    return t.view(np.int64) if t.dtype.kind == "M" else t.astype(np.int64, copy=False)


EVENT_META_KEY = b"carvault.event"
"""Parquet key-value metadata key holding an event batch's signed description."""
