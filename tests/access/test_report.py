"""The human incident report: self-contained HTML and a PDF, from a synthetic crash."""

from __future__ import annotations

import base64
import re
import time

import numpy as np
import pyarrow as pa
import pytest

from carvault.access.report import MAX_PLOT_POINTS, envelope, render_report, summarise, utc_text
from carvault.signals import catalogue
from carvault.timezones import REGION_TIME_ZONES, local_text
from carvault.verify.edr import edr_elements
from tests.factories import drive_table
from tests.verify.test_edr import ABS, AEB, EVENT_MS, PRESSURE, crash_table

WINDOW = (EVENT_MS - 60_000, EVENT_MS + 5_000)
COVERAGE = {
    "gaps": [
        {
            "kind": "missing batch",
            "from_ms": EVENT_MS - 40_000,
            "to_ms": EVENT_MS - 30_000,
            "detail": "seq 12 absent <b>bold</b>",
        }
    ],
    "batches": 7,
    "chain": "broken",
}
HINT = "Run: carvault verify incident.cvpkg\nIt checks <signatures> & proofs offline."
EVIL_VIN = '<script>alert("x")</script>$\\alpha$'


def pdf_pages(pdf: bytes) -> int:
    return len(re.findall(rb"/Type\s*/Page\b(?!s)", pdf))


def render(
    table: pa.Table | None = None,
    event_ms: int | None = EVENT_MS,
    vin: str = "LRWTEST0000000001",
    window: tuple[int, int] = WINDOW,
    region: str = "cn",
) -> tuple[bytes, bytes]:
    table = crash_table() if table is None else table
    edr = edr_elements(table, event_ms, ignition_cycle_download=1240) if event_ms is not None else []
    return render_report(
        table=table,
        event_ms=event_ms,
        window=window,
        vin=vin,
        region=region,
        coverage=COVERAGE,
        edr=edr,
        verification_hint=HINT,
    )


@pytest.fixture(scope="module")
def report() -> tuple[str, bytes]:
    html, pdf = render()
    return html.decode("utf-8"), pdf


def test_html_is_self_contained_with_the_chart(report: tuple[str, bytes]) -> None:
    html, _ = report
    m = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert m is not None
    assert base64.b64decode(m.group(1)).startswith(b"\x89PNG\r\n\x1a\n")
    # Nothing is fetched: no external scripts, styles, fonts or images.
    assert not re.search(r'(src|href)="(?!data:)', html)
    assert "<script" not in html and "@import" not in html and "url(" not in html


def test_html_has_window_summary_coverage_edr_and_hint(report: tuple[str, bytes]) -> None:
    html, _ = report
    assert utc_text(WINDOW[0]) in html and str(local_text(WINDOW[0], "cn")) in html
    assert utc_text(EVENT_MS) in html and "China time (Asia/Shanghai, UTC+8)" in html
    # Summary from every sample: the brake press at -2.47 s (speed 55.1), speed 31.1 at the event.
    assert "-2.47 s (2025-11-13 02:13:57.530 UTC), speed 55.1 km/h" in html
    assert "Speed at the event</th><td>31.1 km/h" in html
    assert "140.0 bar at +0.03 s" in html
    assert "ABS activations</th><td>1: -0.97 s to +4.93 s" in html
    assert "AEB (automatic emergency braking) activations</th><td>1: -0.47 s to +4.93 s" in html
    assert "missing batch" in html and "BROKEN" in html and "10.0 s" in html
    assert "<td>Speed vehicle indicated</td>" in html
    assert html.count("<td>Speed vehicle indicated</td>") == 11
    assert "<td>Frontal air bag warning lamp</td>" in html and "not recorded" in html
    assert "How to verify this package" in html
    assert "It checks &lt;signatures&gt; &amp; proofs offline." in html


def test_everything_supplied_is_escaped() -> None:
    html, pdf = render(vin=EVIL_VIN)
    text = html.decode()
    assert "<script>" not in text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in text
    assert "<b>bold</b>" not in text and "&lt;b&gt;bold&lt;/b&gt;" in text
    assert pdf.startswith(b"%PDF")  # a "$...$" VIN does not trip matplotlib's TeX parser


def test_pdf_has_title_chart_and_edr_pages(report: tuple[str, bytes]) -> None:
    _, pdf = report
    assert pdf.startswith(b"%PDF-")
    assert pdf.rstrip().endswith(b"%%EOF")
    assert pdf_pages(pdf) >= 4  # title, chart, EDR table, completeness and verification
    assert b"/CreationDate" not in pdf


def test_same_input_same_bytes(report: tuple[str, bytes]) -> None:
    html, pdf = render()
    assert html.decode() == report[0]
    assert pdf == report[1]


def test_without_event_or_signals() -> None:
    def bare(x: np.ndarray, cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for p in (PRESSURE, ABS, AEB):
            del cols[p]
        return cols

    html, pdf = render(crash_table(edit=bare), event_ms=None)
    text = html.decode()
    assert "no event given" in text and "No event was given" in text
    assert "Brake first pressed in the window" in text
    assert "Highest brake master-cylinder pressure</th><td>not recorded" in text
    assert "ABS activations</th><td>not recorded" in text
    assert pdf_pages(pdf) >= 3


def test_envelope_keeps_spikes_and_bounds_points() -> None:
    n = 18_000
    t = np.arange(n, dtype=np.int64) * 100
    v = np.zeros(n)
    v[12_345] = 1.0
    v[77] = -3.0
    et, ev = envelope(t, v)
    assert len(et) <= MAX_PLOT_POINTS
    assert ev.max() == 1.0 and ev.min() == -3.0
    assert np.all(np.diff(et) > 0)
    short_t, short_v = envelope(t[:100], v[:100])
    assert len(short_t) == 100


def test_summary_uses_the_last_brake_press_before_the_event() -> None:
    def two_presses(x: np.ndarray, cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cols["Vehicle.Chassis.Brake.PedalPosition"] = np.where((x > -30) & (x < -25) | (x >= -2.5), 40.0, 0.0)
        return cols

    s = dict(summarise(crash_table(edit=two_presses), EVENT_MS, WINDOW).lines)
    assert s["Brake pressed (start of the last braking before the event)"].startswith("-2.47 s")


def test_timing_30_minute_window() -> None:
    base = crash_table(before_s=1795, after_s=5)
    extra_paths = [p for p in catalogue().paths if p not in base.column_names][:26]
    extra = drive_table(seconds=1800, paths=extra_paths)
    assert extra.num_rows == base.num_rows
    table = base
    for p in extra_paths:
        table = table.append_column(p, extra.column(p))
    window = (EVENT_MS - 1_795_000, EVENT_MS + 5_000)
    render_report(
        table=table,
        event_ms=EVENT_MS,
        window=window,
        vin="W",
        region="cn",
        coverage=COVERAGE,
        edr=[],
        verification_hint=HINT,
    )  # warm matplotlib's font cache
    wall, cpu = time.perf_counter(), time.process_time()
    edr = edr_elements(table, EVENT_MS, ignition_cycle_download=1240)
    edr_wall = time.perf_counter() - wall
    html, pdf = render_report(
        table=table,
        event_ms=EVENT_MS,
        window=window,
        vin="LRWTEST0000000001",
        region="cn",
        coverage=COVERAGE,
        edr=edr,
        verification_hint=HINT,
    )
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(
        f"\n30-min window, {table.num_rows} rows x {table.num_columns} columns: EDR {edr_wall * 1000:.0f} ms, "
        f"EDR + report {wall * 1000:.0f} ms wall / {cpu * 1000:.0f} ms CPU; "
        f"HTML {len(html) // 1024} KiB, PDF {len(pdf) // 1024} KiB, {pdf_pages(pdf)} PDF pages"
    )


JUNE_MS = 1_749_000_000_000  # 2025-06-04 01:20:00 UTC: summer time in Europe and the US


@pytest.mark.parametrize(
    ("region", "ms", "local"),
    [
        ("cn", EVENT_MS, "2025-11-13 10:14:00.000 China time (Asia/Shanghai, UTC+8)"),
        ("cn", JUNE_MS, "2025-06-04 09:20:00.000 China time (Asia/Shanghai, UTC+8)"),
        ("eu", EVENT_MS, "2025-11-13 03:14:00.000 Central European time (Europe/Brussels, UTC+1)"),
        ("eu", JUNE_MS, "2025-06-04 03:20:00.000 Central European time (Europe/Brussels, UTC+2)"),
        ("us", EVENT_MS, "2025-11-12 21:14:00.000 US Eastern time (America/New_York, UTC-5)"),
        ("us", JUNE_MS, "2025-06-03 21:20:00.000 US Eastern time (America/New_York, UTC-4)"),
        ("CN", EVENT_MS, "2025-11-13 10:14:00.000 China time (Asia/Shanghai, UTC+8)"),
        ("xx", EVENT_MS, None),
    ],
)
def test_local_time_follows_the_region(region: str, ms: int, local: str | None) -> None:
    assert local_text(ms, region) == local


@pytest.mark.parametrize("region", ["cn", "eu", "us", "xx"])
def test_report_times_are_in_utc_and_the_regions_own_zone(region: str) -> None:
    html = render(region=region)[0].decode()
    assert utc_text(EVENT_MS) in html
    local = local_text(EVENT_MS, region)
    if local is None:  # a region without a listed zone: UTC only
        assert not any(f"({zone}," in html for zone in REGION_TIME_ZONES.values())
    else:
        assert local in html
        others = [z for r, z in REGION_TIME_ZONES.items() if r != region]
        assert not any(f"({zone}," in html for zone in others), region
