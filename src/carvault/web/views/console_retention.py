"""Console: retention — each category's period (signals.py, the one home), the cutoffs in force, the purge runs
with their signed records, and "run now" or a dry run (compliance/retention.py, the service the scheduler uses)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse, Response

from carvault.compliance.retention import run_json
from carvault.compliance.roles import Permission
from carvault.store.metadata import now_ms
from carvault.web.deps import RowId
from carvault.web.views.console_base import ConsolePage, Figure, Section, Tile, console_with

SECTION = Section("retention", "/console/retention", Permission.RETENTION_VIEW)
router = APIRouter(include_in_schema=False)
Viewer = Annotated[ConsolePage, Depends(console_with(SECTION.permission))]
Runner = Annotated[ConsolePage, Depends(console_with(Permission.RETENTION_RUN))]


def tile(p: ConsolePage) -> Tile:
    """The last purge, when the next is due, and a warning when a run failed or none ran when due."""
    policy = p.region.retention.policy()
    last = policy["last_run"]
    runs = p.region.retention.runs(1)
    figures = (
        Figure(p.t("console.retention.last_run"), p.t.dt(last["finished_ms"] if last else None)),
        Figure(p.t("console.retention.last_erased"), last["summary"].get("batches_erased", 0) if last else "—"),
        Figure(p.t("console.retention.next_due"), p.t.dt(policy["next_due_ms"]) if policy["next_due_ms"] else "—"),
    )
    warnings = []
    if runs and runs[0].status == "failed":
        warnings.append(p.t("console.retention.failed_warning"))
    due = policy["next_due_ms"]
    if due is not None and last is not None and now_ms() > due + policy["interval_s"] * 1000:
        warnings.append(p.t("console.retention.late_warning"))
    return Tile(SECTION, figures, tuple(warnings))


def _overview(p: ConsolePage) -> dict[str, Any]:
    plan = p.region.retention.plan()
    return {
        "policy": p.region.retention.policy(),
        "plan": plan.to_json(),
        "runs": [run_json(r) for r in p.region.retention.runs(30)],
    }


async def _page(p: ConsolePage, status: int = 200, error: str | None = None) -> HTMLResponse:
    data = await p.call(_overview, p)
    return p.render(
        "console_retention.html",
        status=status,
        title=p.t("console.nav.retention"),
        section=SECTION.key,
        error=error,
        **data,
    )


@router.get("/console/retention")
async def retention(p: Viewer) -> Response:
    return await _page(p)


@router.post("/console/retention/run")
async def run(p: Runner) -> Response:
    form = await p.form()
    dry = form.get("dry_run") == "1"
    done, error, status = await p.attempt(p.region.retention.run, dry_run=dry, actor=p.actor)
    if error or done is None:
        return await _page(p, status, error)
    return p.redirect(f"{SECTION.path}/runs/{done.id}", "retention_dry_run" if dry else "retention_ran")


@router.get("/console/retention/runs/{run_id}")
async def run_detail(run_id: RowId, p: Viewer) -> Response:
    found = await p.call(p.region.retention.get, run_id)
    return p.render(
        "console_retention_run.html",
        title=p.t("console.retention.run_title", id=run_id),
        section=SECTION.key,
        run=run_json(found),
    )
