"""The sections of docs/benchmarks.md that one step of ``carvault bench --only …`` rewrites on its own.

Each such step keeps its figures under one key of the bench JSON and its text between two markers of the page;
re-running the step replaces both and leaves the rest of the file and the page as they were.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ANCHOR = "## Targets missed"  # a new section goes before it (or at the end of a page without it)


def splice_section(markdown: str, block: str, start: str, end: str) -> str:
    """``markdown`` with ``block`` (which begins with ``start`` and ends with ``end``) replacing the old section."""
    a, b = markdown.find(start), markdown.find(end)
    if a >= 0 and b > a:
        return markdown[:a] + block + markdown[b + len(end) :]
    anchor = markdown.find(ANCHOR)
    if anchor < 0:
        return markdown.rstrip("\n") + "\n\n" + block + "\n"
    return markdown[:anchor] + block + "\n\n" + markdown[anchor:]


def save_section(out: Path, docs: Path, key: str, figures: Any, render: Any) -> None:
    """Set ``key`` in the bench JSON ``out`` and rewrite the page ``docs`` with ``render(page) -> page``."""
    try:
        result = json.loads(out.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        result = {}
    result[key] = figures
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    try:
        page = docs.read_text(encoding="utf-8")
    except OSError:
        page = "# Benchmarks\n"
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.write_text(render(page), encoding="utf-8")
