"""Regenerate the generated parts of the docs from the code: the error-code table and the signal catalogue.

``python scripts/gen_docs.py`` rewrites both; ``python scripts/gen_docs.py signals`` only docs/signals.md.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import carvault.region  # noqa: F401 - imports every module that defines an error class
import carvault.web.app  # noqa: F401
from carvault.errors import all_error_classes
from carvault.signals import CATEGORIES, catalogue

DOCS = Path(__file__).resolve().parents[1] / "docs"
SIGNAL_HEADER = (
    "| path | datatype | unit | range | rate | category | privacy | source | description | 说明 |\n"
    "|---|---|---|---|---|---|---|---|---|---|\n"
)
CATEGORY_HEADER = "| category | title | privacy class | purpose | retention (days) |\n|---|---|---|---|---|\n"
ENUM_HEADER = "| signal | datatype | values | source |\n|---|---|---|---|\n"
ENUM_SECTION = (
    "\n## Enumerations\n"
    "A string enumeration carries only these values (VSS 6.0's allowed values, or the overlay's own); any other\n"
    "value is refused at the gateway. Integer signals whose values VSS gives a meaning are listed with it.\n\n"
)


def error_rows() -> str:
    """Markdown rows of every error code."""
    classes = sorted(all_error_classes(), key=lambda c: (c.status, c.code))
    return "\n".join(f"| `{c.code}` | {c.status} | {' '.join((c.__doc__ or '').split())} |" for c in classes)


def signal_rows() -> str:
    """Markdown rows of every signal."""

    def rng(s: object) -> str:
        lo, hi = s.min, s.max  # type: ignore[attr-defined]
        return f"{'' if lo is None else f'{lo:g}'}..{'' if hi is None else f'{hi:g}'}"

    return "\n".join(
        f"| `{s.path}` | {s.datatype} | {s.unit} | {rng(s)} | {s.rate_hz} Hz{' on change' if s.on_change else ''} | "
        f"{s.category} | {s.privacy.value} | {'overlay' if s.overlay else 'VSS 6.0'} | "
        f"{s.description.replace('|', '/')} | {s.description_zh.replace('|', '/')} |"
        for s in catalogue()
    )


def enum_rows() -> str:
    """Markdown rows of every enumerated or coded signal with its values, in catalogue order."""
    rows = []
    for s in catalogue():
        if s.allowed:
            values = ", ".join(f"`{v}`" for v in s.allowed)
        elif s.coded:
            values = ", ".join(f"`{k}` {meaning}" for k, meaning in s.coded.items())
        else:
            continue
        rows.append(f"| `{s.path}` | {s.datatype} | {values} | {'overlay' if s.overlay else 'VSS 6.0'} |")
    return "\n".join(rows)


def replace_table(text: str, header: str, rows: str) -> str:
    """Replace the body of the markdown table that starts with ``header``."""
    start = text.index(header) + len(header)
    m = re.compile(r"\n(?!\|)").search(text, start)
    end = m.start() if m else len(text)
    return text[:start] + rows + text[end:]


def write_errors() -> None:
    """Rewrite the error-code table of docs/api.md."""
    api = DOCS / "api.md"
    api.write_text(
        replace_table(
            api.read_text(),
            "| code | HTTP | meaning |\n|---|---|---|\n",
            error_rows() + "\n| `validation_failed` (schema) | 422 | a body or query parameter "
            "does not match the OpenAPI schema; `problems` lists each |",
        )
    )


def write_signals() -> None:
    """Rewrite the generated tables of docs/signals.md: signals, enumerations, categories."""
    sig = DOCS / "signals.md"
    text = sig.read_text()
    text = re.sub(r"## Signals \(\d+\)", f"## Signals ({len(catalogue())})", text)
    text = replace_table(text, SIGNAL_HEADER, signal_rows())
    if ENUM_HEADER not in text:
        text = text.rstrip("\n") + "\n" + ENUM_SECTION + ENUM_HEADER + "\n"
    text = replace_table(text, ENUM_HEADER, enum_rows())
    cats = "\n".join(
        f"| `{c.name}` | {c.title} | {c.privacy.value} | {c.purpose} | {c.retention_days} |"
        for c in CATEGORIES.values()
    )
    sig.write_text(replace_table(text, CATEGORY_HEADER, cats))


def main(argv: list[str]) -> None:
    """Rewrite docs/api.md (errors) and docs/signals.md, or only the parts named in ``argv``."""
    parts = set(argv) or {"errors", "signals"}
    unknown = parts - {"errors", "signals"}
    if unknown:
        raise SystemExit(f"unknown part(s) {sorted(unknown)}: give errors and/or signals")
    if "errors" in parts:
        write_errors()
    if "signals" in parts:
        write_signals()


if __name__ == "__main__":
    main(sys.argv[1:])
