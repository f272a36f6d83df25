"""Regenerate the generated parts of the docs from the code: the error-code table and the signal catalogue."""

from __future__ import annotations

import re
from pathlib import Path

import carvault.region  # noqa: F401 - imports every module that defines an error class
import carvault.web.app  # noqa: F401
from carvault.errors import all_error_classes
from carvault.signals import CATEGORIES, catalogue

DOCS = Path(__file__).resolve().parents[1] / "docs"


def error_rows() -> str:
    """Markdown rows of every error code."""
    classes = sorted(all_error_classes(), key=lambda c: (c.status, c.code))
    return "\n".join(f"| `{c.code}` | {c.status} | {(c.__doc__ or '').strip()} |" for c in classes)


def signal_rows() -> str:
    """Markdown rows of every signal."""

    def rng(s: object) -> str:
        lo, hi = s.min, s.max  # type: ignore[attr-defined]
        return f"{'' if lo is None else f'{lo:g}'}..{'' if hi is None else f'{hi:g}'}"

    return "\n".join(
        f"| `{s.path}` | {s.datatype} | {s.unit} | {rng(s)} | {s.rate_hz} Hz | {s.category} | "
        f"{s.privacy.value} | {'overlay' if s.overlay else 'VSS 6.0'} |"
        for s in catalogue()
    )


def replace_table(text: str, header: str, rows: str) -> str:
    """Replace the body of the markdown table that starts with ``header``."""
    start = text.index(header) + len(header)
    m = re.compile(r"\n(?!\|)").search(text, start)
    end = m.start() if m else len(text)
    return text[:start] + rows + text[end:]


def main() -> None:
    """Rewrite docs/api.md (errors) and docs/signals.md (signals, categories, overlay)."""
    api = DOCS / "api.md"
    api.write_text(
        replace_table(
            api.read_text(),
            "| code | HTTP | meaning |\n|---|---|---|\n",
            error_rows() + "\n| `validation_failed` (schema) | 422 | a body or query parameter "
            "does not match the OpenAPI schema; `problems` lists each |\n| `method_not_allowed` "
            "| 405 | the route exists, the method does not |",
        )
    )
    sig = DOCS / "signals.md"
    text = sig.read_text()
    text = re.sub(r"## Signals \(\d+\)", f"## Signals ({len(catalogue())})", text)
    text = replace_table(
        text,
        "| path | datatype | unit | range | rate | category | privacy | source |\n|---|---|---|---|---|---|---|---|\n",
        signal_rows(),
    )
    cats = "\n".join(
        f"| `{c.name}` | {c.title} | {c.privacy.value} | {c.purpose} | {c.retention_days} |"
        for c in CATEGORIES.values()
    )
    text = replace_table(
        text, "| category | title | privacy class | purpose | retention (days) |\n|---|---|---|---|---|\n", cats
    )
    sig.write_text(text)


if __name__ == "__main__":
    main()
