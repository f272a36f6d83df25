"""The coverage tables: every catalogue path they name exists, every outside item is accounted for, and the counts
docs/signals.md gives are the tables' own."""

from __future__ import annotations

import csv
import re
from collections import Counter
from importlib import resources
from pathlib import Path

from carvault.signals import catalogue

DOC = (Path(__file__).resolve().parents[1] / "docs" / "signals.md").read_text(encoding="utf-8")


def rows(name: str) -> list[dict[str, str]]:
    text = resources.files("carvault").joinpath(f"data/{name}").read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines()))


def test_acea_items_are_each_carried_or_explained() -> None:
    cat = catalogue()
    items = rows("coverage_acea.csv")
    assert [int(r["item_id"]) for r in items] == list(range(1, 43))
    for r in items:
        paths = r["paths"].split()
        assert all(p in cat for p in paths), r["item"]
        assert r["status"] in {"carried", "partly", "none"}
        assert (r["status"] == "none") == (not paths), r["item"]
        assert r["status"] == "carried" or r["note"], r["item"]  # a gap always says why
    counts = Counter(r["status"] for r in items)
    assert f"**{counts['carried']} are carried**" in DOC
    assert f"**{counts['partly']} partly**" in DOC and f"**{counts['none']} none**" in DOC
    # The items the issue names are carried.
    carried = {r["item"] for r in items if r["status"] == "carried"}
    for item in ("Diagnostic Trouble Codes", "Distance to next Service", "Brake Pad Low Warning", "Door Lock Status"):
        assert item in carried


def test_every_tesla_field_is_mapped_or_explained() -> None:
    cat = catalogue()
    fields = rows("tesla_fields.csv")
    numbers = [int(r["number"]) for r in fields]
    assert numbers == list(range(len(fields))) and len(fields) >= 260
    assert len({r["field"] for r in fields}) == len(fields)
    mapped = [r for r in fields if r["paths"]]
    for r in fields:
        assert all(p in cat for p in r["paths"].split()), r["field"]
        assert r["paths"] or r["note"], r["field"]
    assert f"**{len(mapped)} fields map** onto {len({p for r in mapped for p in r['paths'].split()})}" in DOC
    by_name = {r["field"]: r for r in fields}
    assert by_name["VehicleSpeed"]["paths"] == "Vehicle.Speed" and "1.609344" in by_name["VehicleSpeed"]["conversion"]
    assert len(by_name["DoorState"]["paths"].split()) == 6
    assert re.search(r"\b177 map to none\b", DOC) and len(fields) - len(mapped) == 177
