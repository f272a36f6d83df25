"""`carvault admin …`: the operator's command line, thin over the same services as the console (issue 11).

One module per area defines a ``typer.Typer`` and is added below, one line each.
"""

from __future__ import annotations

import typer

admin = typer.Typer(
    help="Operator duties: staff, cases, rights requests, retention, transfers, incidents, reports, fleet jobs.",
    no_args_is_help=True,
)
# Areas are added here, one line each: admin.add_typer(<module>.<typer>, name="<area>")
from carvault.admin.incidents import incidents  # noqa: E402
from carvault.admin.records import records  # noqa: E402
from carvault.admin.rights import rights  # noqa: E402

admin.add_typer(rights, name="rights")
admin.add_typer(incidents, name="incidents")
admin.add_typer(records, name="records")
from carvault.admin.retention import retention  # noqa: E402

admin.add_typer(retention, name="retention")
from carvault.admin.transfers import transfers  # noqa: E402

admin.add_typer(transfers, name="transfers")
from carvault.admin.reports import reports  # noqa: E402

admin.add_typer(reports, name="reports")
from carvault.admin.cases import cases  # noqa: E402
from carvault.admin.staff import staff  # noqa: E402

admin.add_typer(staff, name="staff")
admin.add_typer(cases, name="cases")
from carvault.admin.fleet import fleet  # noqa: E402

admin.add_typer(fleet, name="fleet")
