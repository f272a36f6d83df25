"""A full `carvault bench` run rewrites docs/benchmarks.md but keeps the sections other steps wrote."""

from __future__ import annotations

from carvault.bench.run import other_sections

PAGE = """# Benchmarks

<!-- live:start -->
## Live
<!-- live-notes:start (hand-written) -->
notes
<!-- live-notes:end -->
<!-- live:end -->

<!-- retention:start (written by carvault bench --only retention) -->
## Retention purge
<!-- retention-notes:start (hand-written, kept by re-runs) -->
- kept
<!-- retention-notes:end -->
<!-- retention:end -->

<!-- fleet:start (written by carvault bench --only fleet) -->
## Fleet scale
<!-- fleet:end -->

<!-- broken:start -->
no end marker

## Analysis
<!-- analysis:start -->
hand-written
<!-- analysis:end -->
"""


def test_other_steps_sections_are_carried_whole_and_in_order() -> None:
    blocks = other_sections(PAGE)
    assert [b.splitlines()[1] for b in blocks] == ["## Retention purge", "## Fleet scale"]
    assert blocks[0].endswith("<!-- retention:end -->") and "- kept" in blocks[0]  # nested notes come along
    assert all("Live" not in b and "hand-written\n" not in b for b in blocks)  # the run's own sections are not


def test_a_page_without_sections_carries_nothing() -> None:
    assert other_sections("# Benchmarks\n\n## Results\n") == []
