"""The de-identification evaluation harness: rates, false positives and time on a slice of the labelled set."""

from __future__ import annotations

from pathlib import Path

from carvault.bench.deidentify_eval import measure

LABELS = Path(__file__).resolve().parents[1] / "assets" / "images" / "labels.json"


def test_measure_reports_rates_false_positives_and_time() -> None:
    # A slice of the set keeps this test short; docs/deidentification.md has the figures on all of it.
    report = measure(LABELS, variants={"original"}, timing_frames=1)
    assert report["iou_threshold"] == 0.3 and report["objects"] >= 40
    assert set(report["by_kind"]) == {"face", "plate_blue", "plate_green"}
    for figures in report["by_kind"].values():
        assert figures["labelled"] >= 5 and 0 <= figures["rate"] <= 1
    assert set(report["ms_per_frame"]) == {"720x1160", "1280x720"}
    assert report["false_positives"]["per_image"] >= 0 and report["detectors"]
    # A regression floor, well under what this slice measures (1.0): a broken detector falls far below it.
    assert report["all"]["rate"] >= 0.85, report["misses"]
