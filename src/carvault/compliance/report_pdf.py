"""The annual report as a PDF (A4, Chinese first, or English), typeset with fpdf2 from the report JSON.

The text of the PDF (titles, labels, column headings) comes from the portal's message catalogues under
``report.*`` (English and Simplified Chinese, one home for every sentence a person reads); the caller passes the
catalogue of the chosen language in, so this module needs no web code. The font is WenQuanYi Micro Hei
(``fonts-wqy-microhei``, installed by scripts/install-system-deps.sh): it covers Chinese and Latin, and fpdf2
embeds the subset it uses, so the file opens anywhere. Without the font the PDF is refused with ``FontMissing``.
Record-provided text (names, titles, reasons) is set as plain text; fpdf2 has no markup in ``cell``/``multi_cell``
unless asked, so nothing a user typed can change the layout beyond its own cell.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from fpdf import FPDF
from fpdf.enums import XPos, YPos
from fpdf.fonts import FontFace

from carvault.errors import FontMissing

FONT_PATH = Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc")
FONT = "wqymicrohei"
LANGUAGES = ("zh-CN", "en")
SECTIONS = (
    "operator",
    "data_types",
    "scale",
    "purposes",
    "storage",
    "provision",
    "transfers",
    "incidents",
    "rights_requests",
    "deletion_requests",
    "authority",
)
MAX_CELL = 300  # characters of one record-provided value shown in a table cell


class _Text:
    """Looks up ``report.*`` messages; a missing key shows the key (a test checks both catalogues are complete)."""

    def __init__(self, messages: Mapping[str, str], zone: str, language: str) -> None:
        self.messages = messages
        self.language = language
        self.zone = zone  # the report's time zone, for the times in tables

    def __call__(self, message: str, /, **values: Any) -> str:
        text = self.messages.get(message, message)
        return text.format(**values) if values else text

    def name(self, prefix: str, value: str) -> str:
        """The catalogue's name for a code (``category.adas``), or the code itself when it has none."""
        return self.messages.get(f"{prefix}.{value}", value)


def _when(ms: int | None, zone: str) -> str:
    if ms is None:
        return "—"
    return dt.datetime.fromtimestamp(ms / 1000, ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M")


def _value(v: Any, t: _Text) -> str:
    """A figure's value as text: numbers with separators, mappings as 'key: value' pairs."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return t("report.yes") if v else t("report.no")
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, dict) and set(v) == {"name", "contact"}:
        return f"{v['name']} ({v['contact']})"
    if isinstance(v, dict):
        if not v:
            return t("report.none")
        return "; ".join(f"{k}: {_value(x, t)}" for k, x in v.items())
    if isinstance(v, list):
        return ", ".join(str(x) for x in v) or t("report.none")
    return str(v)[:MAX_CELL]


class _Pdf(FPDF):
    """A4 portrait with a page number footer."""

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font(FONT, size=8)
        self.cell(0, 8, f"{self.page_no()}", align="C")


def _new_pdf(title: str) -> _Pdf:
    if not FONT_PATH.is_file():
        raise FontMissing(
            f"the annual report PDF needs the font {FONT_PATH} (Debian package fonts-wqy-microhei; "
            "run scripts/install-system-deps.sh)",
            font=str(FONT_PATH),
        )
    pdf = _Pdf(format="A4")
    pdf.add_font(FONT, "", str(FONT_PATH), collection_font_number=0)
    pdf.set_title(title)
    pdf.set_creator("CarVault")
    pdf.set_creation_date(dt.datetime(2000, 1, 1, tzinfo=dt.UTC))  # no clock in the file: same report, same bytes
    pdf.set_auto_page_break(True, margin=16)
    pdf.add_page()
    return pdf


def render(report: Mapping[str, Any], messages: Mapping[str, str]) -> bytes:
    """The PDF of a report (as built by ``compliance.annual_report``) in the language of ``messages``."""
    zone = report["period"]["time_zone"]
    t = _Text(messages, zone, messages.get("report.language", "en"))
    pdf = _new_pdf(f"{t('report.title')} {report['year']}")
    _head(pdf, report, t, zone)
    sections = report["sections"]
    for name in SECTIONS:
        _section(pdf, name, sections.get(name), t)
    return bytes(pdf.output())


def _head(pdf: FPDF, report: Mapping[str, Any], t: _Text, zone: str) -> None:
    pdf.set_font(FONT, size=17)
    pdf.multi_cell(0, 9, t("report.title"), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font(FONT, size=11)
    pdf.multi_cell(
        0, 6, t("report.subtitle", year=report["year"], region=report["region"]), new_x=XPos.LMARGIN, new_y=YPos.NEXT
    )
    period = report["period"]
    pdf.set_font(FONT, size=9)
    lines = [
        t("report.period", start=_when(period["from_ms"], zone), end=_when(period["to_ms"], zone), zone=zone),
        t("report.generated", at=_when(report["generated_ms"], zone)),
    ]
    finalised = report.get("finalised")
    if finalised:
        lines.append(t("report.finalised", at=_when(finalised["at_ms"], zone), by=finalised["by"]))
    else:
        lines.append(t("report.draft"))
    signature = report.get("signature") or {}
    if signature.get("signed_by"):
        lines.append(t("report.signed", key=signature["signed_by"]))
    for line in lines:
        pdf.multi_cell(0, 5, line, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(3)


def _section(pdf: FPDF, name: str, section: Mapping[str, Any] | None, t: _Text) -> None:
    pdf.set_font(FONT, size=13)
    pdf.ln(2)
    pdf.multi_cell(0, 8, t(f"report.s.{name}"), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font(FONT, size=9)
    if not section or section.get("status"):
        pdf.multi_cell(0, 5, t("report.not_recorded"), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        return
    figures = [(k, v) for k, v in section.items() if isinstance(v, dict) and "value" in v and "source" in v]
    if figures:
        _table(
            pdf,
            [t("report.source")],
            [[t(f"report.f.{k}"), _value(v["value"], t), v["source"]] for k, v in figures],
            widths=(52, 58, 80),
            header=False,
        )
    table = TABLES.get(name)
    if table is not None:
        table(pdf, section, t)


def _table(
    pdf: FPDF, heading: list[str], rows: list[list[str]], widths: tuple[int, ...], *, header: bool = True
) -> None:
    """A bordered table; ``header`` puts ``heading`` as its first row."""
    style = FontFace(emphasis=None, fill_color=(232, 240, 236))
    if not rows:
        pdf.multi_cell(0, 5, heading[0] + ": —" if header else "—", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        return
    with pdf.table(
        col_widths=widths, first_row_as_headings=header, headings_style=style, line_height=5, text_align="LEFT"
    ) as tbl:
        if header:
            row = tbl.row()
            for h in heading:
                row.cell(h)
        for values in rows:
            row = tbl.row()
            for v in values:
                row.cell(str(v)[:MAX_CELL])
    pdf.ln(2)


def _data_types(pdf: FPDF, section: Mapping[str, Any], t: _Text) -> None:
    cols = ["category", "privacy", "signals", "collection", "collected"]
    rows = [
        [
            t.name("category", r["category"]),
            t.name("privacy", r["privacy"]),
            str(r["signals"]),
            t.name("data_sheet.collection", r["collection"]),
            _value(r["collected_in_year"], t),
        ]
        for r in section["categories"]
    ]
    _table(pdf, [t(f"report.c.{c}") for c in cols], rows, (50, 30, 20, 40, 30))
    _source(pdf, section["source"], t)


def _scale(pdf: FPDF, section: Mapping[str, Any], t: _Text) -> None:
    by = section["by_category"]
    pdf.multi_cell(0, 5, t("report.by_category"), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    cols = ["category", "batches", "vehicles", "samples", "bytes"]
    rows = [[t.name("category", r["category"]), *(f"{r[c]:,}" for c in cols[1:])] for r in by["rows"]]
    _table(pdf, [t(f"report.c.{c}") for c in cols], rows, (50, 30, 25, 45, 40))
    _source(pdf, by["source"], t)
    pdf.multi_cell(0, 4, f"{t('report.method')}: {by['method']}", new_x=XPos.LMARGIN, new_y=YPos.NEXT)


def _purposes(pdf: FPDF, section: Mapping[str, Any], t: _Text) -> None:
    cols = ["category", "purpose", "legal_basis", "collected", "consents"]
    rows = [
        [
            t.name("category", r["category"]),
            t.name("purpose", r["category"]),
            t(f"report.basis.{r['legal_basis']}"),
            _value(r["collected_in_year"], t),
            f"{r['consents_given']:,}",
        ]
        for r in section["categories"]
    ]
    _table(pdf, [t(f"report.c.{c}") for c in cols], rows, (40, 62, 30, 28, 30))
    _source(pdf, section["source"], t)


def _provision(pdf: FPDF, section: Mapping[str, Any], t: _Text) -> None:
    cols = ["recipient", "legal_entity", "jurisdiction", "purposes", "categories", "owners", "grants"]
    rows = [
        [
            r["name"],
            r["legal_entity"] or "—",
            r["jurisdiction"] or "—",
            ", ".join(t.name("purpose", p) for p in r["purposes"]),
            ", ".join(t.name("category", c) for c in r["categories"]),
            f"{r['owners']:,}",
            f"{r['grants_in_force']:,}",
        ]
        for r in section["rows"]
    ]
    if rows:
        _table(pdf, [t(f"report.c.{c}") for c in cols], rows, (28, 30, 20, 30, 42, 18, 22))
    processors = [
        [p["name"], p["purpose"], ", ".join(t.name("category", c) for c in p["categories"]), p["jurisdiction"] or "—"]
        for p in section.get("processor_rows") or []
    ]
    if processors:
        cols = ["processor", "purpose", "categories", "jurisdiction"]
        _table(pdf, [t(f"report.c.{c}") for c in cols], processors, (45, 60, 55, 30))


def _transfers(pdf: FPDF, section: Mapping[str, Any], t: _Text) -> None:
    cols = ["recipient", "jurisdiction", "route", "categories", "reference", "max_persons", "events", "persons"]
    rows = [
        [
            r["recipient"],
            r["jurisdiction"],
            r["route"],
            ", ".join(t.name("category", c) for c in r["categories"]),
            r["approval_reference"],
            f"{r['max_persons']:,}",
            f"{r['events']:,}",
            f"{r['persons']:,}",
        ]
        for r in section["rows"]
    ]
    if rows:
        _table(pdf, [t(f"report.c.{c}") for c in cols], rows, (26, 18, 26, 34, 26, 20, 20, 20))


def _incidents(pdf: FPDF, section: Mapping[str, Any], t: _Text) -> None:
    cols = ["title", "status", "detected", "affected", "authority", "measures"]
    zone = t.zone
    rows = [
        [
            r["title"],
            r["status"],
            _when(r["detected_ms"], zone),
            _value(r["affected_owners"], t),
            _value(r["authority_notified_ms"] is not None, t),
            _measures(r.get("measures") or {}, t),
        ]
        for r in section["rows"]
    ]
    if rows:
        _table(pdf, [t(f"report.c.{c}") for c in cols], rows, (40, 20, 28, 20, 22, 60))


def _measures(by_language: Mapping[str, str], t: _Text) -> str:
    """The measures in the PDF's language, else in any language the incident was written in."""
    return by_language.get(t.language) or next(iter(by_language.values()), "—")


def _rights(pdf: FPDF, section: Mapping[str, Any], t: _Text) -> None:
    refusals = section.get("refusals") or []
    if refusals:
        cols = ["kind", "reason"]
        _table(pdf, [t(f"report.c.{c}") for c in cols], [[r["kind"], r["reason"] or "—"] for r in refusals], (40, 150))
    complaints = section["complaint_outcomes"]
    if complaints:
        cols = ["kind", "status", "outcome"]
        rows = [["complaint", c["status"], c["outcome"] or c["reason"] or "—"] for c in complaints]
        _table(pdf, [t(f"report.c.{c}") for c in cols], rows, (30, 30, 130))


def _source(pdf: FPDF, source: str, t: _Text) -> None:
    pdf.set_font(FONT, size=7)
    pdf.multi_cell(0, 4, f"{t('report.source')}: {source}", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font(FONT, size=9)


TABLES: dict[str, Callable[[FPDF, Mapping[str, Any], _Text], None]] = {
    "data_types": _data_types,
    "scale": _scale,
    "purposes": _purposes,
    "provision": _provision,
    "transfers": _transfers,
    "incidents": _incidents,
    "rights_requests": _rights,
}
