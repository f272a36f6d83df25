"""``Catalogue.select`` answers from an index of paths and branches; it must select exactly what a scan would."""

from __future__ import annotations

import pytest

from carvault.errors import InvalidQuery
from carvault.signals import catalogue


def _scan(selector: str) -> list[str]:
    """The definition: a signal is selected by its own path or by any branch above it."""
    return [s.path for s in catalogue() if s.path == selector or s.path.startswith(selector + ".")]


def test_every_path_and_branch_selects_what_the_scan_selects() -> None:
    cat = catalogue()
    names = {p for path in cat.paths for p in (".".join(path.split(".")[:i]) for i in range(1, path.count(".") + 2))}
    assert len(names) > len(cat)  # branches as well as paths
    for name in sorted(names):
        assert [s.path for s in cat.select([name])] == _scan(name), name


@pytest.mark.parametrize("selector", ["Vehicle.Spee", "Vehicle.", "vehicle.speed", "Vehicle.Speed.", ".Vehicle", "X"])
def test_what_is_not_a_path_or_branch_is_refused(selector: str) -> None:
    assert _scan(selector) == []
    with pytest.raises(InvalidQuery):
        catalogue().select([selector])


def test_several_selectors_overlap_once_in_catalogue_order() -> None:
    cat = catalogue()
    chosen = [s.path for s in cat.select(["Vehicle.Speed", "Vehicle.ADAS", "Vehicle.ADAS.ABS", " Vehicle.Speed "])]
    assert chosen == [p for p in cat.paths if p in set(_scan("Vehicle.ADAS")) | {"Vehicle.Speed"}]
    assert len(chosen) == len(set(chosen))
