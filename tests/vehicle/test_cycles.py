"""The standard driving cycles read from the reference data match their published figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from carvault.errors import Unavailable
from carvault.vehicle.cycles import (
    CYCLE_NAMES,
    DEFAULT_REFERENCE_DIR,
    REFERENCE_ENV,
    STANDARD_CYCLES,
    load_cycle,
    microtrip_library,
    reference_dir,
    split_microtrips,
)

# Published figures: distance (km), top speed (km/h), duration (s).
# CLTC-P: GB/T 38146.1-2019. WLTC 3b: UN GTR 15. UDDS, HWFET, US06: EPA (7.45 mi / 56.7 mph,
# 10.26 mi / 59.9 mph, 8.01 mi / 80.3 mph). NEDC: UN R83/R101 (11.02 km, 1180 s; the source pads to 1200 s).
PUBLISHED = {
    "CLTC-P": (14.48, 114.0, 1800),
    "WLTC-3b": (23.27, 131.3, 1800),
    "UDDS": (11.99, 91.2, 1369),
    "HWFET": (16.51, 96.4, 765),
    "US06": (12.89, 129.2, 600),
    "NEDC": (11.02, 120.0, 1200),
}


@pytest.mark.parametrize("name", STANDARD_CYCLES)
def test_cycle_matches_published_figures(name: str) -> None:
    km, vmax, duration = PUBLISHED[name]
    c = load_cycle(name)
    assert c.distance_m / 1000 == pytest.approx(km, rel=0.01)
    assert c.max_speed_kmh == pytest.approx(vmax, abs=0.2)
    assert c.duration_s == duration


@pytest.mark.parametrize("name", CYCLE_NAMES)
def test_cycle_is_a_clean_1hz_trace(name: str) -> None:
    c = load_cycle(name)
    assert c.t[0] == 0 and np.all(np.diff(c.t) == 1.0)
    assert np.all(np.isfinite(c.v)) and c.v.min() == 0.0
    assert c.v[0] == 0.0 and c.v[-1] == 0.0
    with pytest.raises(ValueError):
        c.v[0] = 1.0  # shared, cached arrays are read-only


def test_wltc_with_byte_order_mark_parses() -> None:
    # The file starts with a UTF-8 BOM; read naively, its first header would be '\ufeffcycSecs'.
    assert (reference_dir() / "drive_cycles" / "fastsim_wltc_3b.csv").read_bytes()[:3] == b"\xef\xbb\xbf"
    assert load_cycle("WLTC-3b").mean_speed_kmh == pytest.approx(46.5, abs=0.1)


def test_microtrips_cover_the_cycle() -> None:
    c = load_cycle("CLTC-P")
    trips, stops = split_microtrips(c)
    assert len(trips) == 11 and len(stops) == 10
    assert sum(m.distance_m for m in trips) == pytest.approx(c.distance_m, rel=1e-9)
    for m in trips:
        assert m.v[0] == 0.0 and m.v[-1] == 0.0 and np.all(m.v[1:-1] > 0)
    library, stop_lengths = microtrip_library()
    assert len(library) > 40 and min(stop_lengths) >= 1
    assert max(m.max_speed_kmh for m in library) > 125


def test_reference_dir_from_environment() -> None:
    real = reference_dir()
    assert reference_dir({REFERENCE_ENV: str(real)}) == real
    if (DEFAULT_REFERENCE_DIR / "drive_cycles").is_dir():
        assert reference_dir({}) == DEFAULT_REFERENCE_DIR  # <repo>/../shared/reference


def test_missing_reference_dir_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(Unavailable) as err:
        reference_dir({REFERENCE_ENV: str(tmp_path / "nowhere")})
    assert REFERENCE_ENV in err.value.message and "drive_cycles" in err.value.message


def test_unknown_cycle() -> None:
    with pytest.raises(KeyError):
        load_cycle("FTP-99")
