"""The operator's roles and what each may do: the one home of the role matrix (docs/operator.md, "Role matrix").

Five roles staff the region. The matrix follows three rules:

- Separation of duties: the region admin runs the service (staff accounts, apps, retention, transfers, incidents,
  reports) but never reads an owner's data and opens no case; whoever reads under a case cannot make the account
  they read with.
- Reading an owner's telemetry needs ``case.read`` *and* an open case that covers the vehicle, is within its end
  date and — for a support ticket — was approved by the owner (compliance/cases.py). The permission alone reads
  nothing.
- The auditor sees everything that is recorded (``*.view``) and changes nothing.

``CASE_KINDS`` says which kinds of case each role may open: support opens support tickets, the authority liaison
opens cases under authority orders, the DPO opens rights-request and breach-investigation cases.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    """A staff member's role (one per account)."""

    REGION_ADMIN = "region_admin"
    DPO = "dpo"
    SUPPORT = "support"
    AUDITOR = "auditor"
    LIAISON = "authority_liaison"


class Permission(StrEnum):
    """One thing an operator route does; named ``noun.verb``. Every /api/v1/admin route requires exactly one."""

    STAFF_MANAGE = "staff.manage"
    APPS_DECIDE = "apps.decide"
    CASES_OPEN = "cases.open"
    CASES_VIEW = "cases.view"
    CASE_READ = "case.read"  # read an owner's telemetry under an open case (never without one)
    RIGHTS_HANDLE = "rights.handle"
    RIGHTS_VIEW = "rights.view"
    HOLDS_MANAGE = "holds.manage"
    HOLDS_VIEW = "holds.view"
    ORDERS_MANAGE = "orders.manage"
    ORDERS_VIEW = "orders.view"
    TRANSFERS_MANAGE = "transfers.manage"
    TRANSFERS_VIEW = "transfers.view"
    RETENTION_RUN = "retention.run"
    RETENTION_VIEW = "retention.view"
    INCIDENTS_MANAGE = "incidents.manage"
    INCIDENTS_VIEW = "incidents.view"
    REPORTS_VIEW = "reports.view"
    REPORTS_MANAGE = "reports.manage"
    RECORDS_VIEW = "records.view"
    RECORDS_MANAGE = "records.manage"

    @property
    def is_view(self) -> bool:
        """True for the read-only permissions (``*.view``): the auditor's whole set."""
        return self.value.endswith(".view")


_P = Permission
VIEWS = frozenset(p for p in Permission if p.is_view)

MATRIX: dict[Role, frozenset[Permission]] = {
    # Runs the service; reads no owner's data, opens no case, decides no rights request or legal matter.
    Role.REGION_ADMIN: VIEWS
    | {
        _P.STAFF_MANAGE,
        _P.APPS_DECIDE,
        _P.TRANSFERS_MANAGE,
        _P.RETENTION_RUN,
        _P.INCIDENTS_MANAGE,
        _P.REPORTS_MANAGE,
        _P.RECORDS_MANAGE,
    },
    # Data protection officer: rights requests, holds, transfers, retention, breaches, records, reports, apps.
    Role.DPO: VIEWS
    | {
        _P.APPS_DECIDE,
        _P.CASES_OPEN,
        _P.CASE_READ,
        _P.RIGHTS_HANDLE,
        _P.HOLDS_MANAGE,
        _P.TRANSFERS_MANAGE,
        _P.RETENTION_RUN,
        _P.INCIDENTS_MANAGE,
        _P.REPORTS_MANAGE,
        _P.RECORDS_MANAGE,
    },
    # Customer support: opens support tickets and reads under them once the owner approves; sees requests.
    Role.SUPPORT: frozenset({_P.CASES_OPEN, _P.CASES_VIEW, _P.CASE_READ, _P.RIGHTS_VIEW, _P.INCIDENTS_VIEW}),
    # Internal or external auditor: sees every record, changes nothing.
    Role.AUDITOR: VIEWS,
    # Authority liaison: authority orders, the holds they impose, and cases (reads) under them.
    Role.LIAISON: frozenset(
        {
            _P.CASES_OPEN,
            _P.CASES_VIEW,
            _P.CASE_READ,
            _P.ORDERS_MANAGE,
            _P.ORDERS_VIEW,
            _P.HOLDS_MANAGE,
            _P.HOLDS_VIEW,
            _P.TRANSFERS_VIEW,
            _P.REPORTS_VIEW,
        }
    ),
}

# The kinds of case (compliance/cases.py) each role may open; a role without CASES_OPEN opens none.
CASE_KINDS: dict[Role, frozenset[str]] = {
    Role.REGION_ADMIN: frozenset(),
    Role.DPO: frozenset({"rights_request", "breach_investigation"}),
    Role.SUPPORT: frozenset({"support_ticket"}),
    Role.AUDITOR: frozenset(),
    Role.LIAISON: frozenset({"authority_order"}),
}


def allows(role: Role | str, permission: Permission | str) -> bool:
    """Whether a role has a permission (an unknown role or permission has none)."""
    try:
        return Permission(permission) in MATRIX[Role(role)]
    except ValueError:
        return False


def may_open(role: Role | str, kind: str) -> bool:
    """Whether a role may open a case of this kind."""
    try:
        return kind in CASE_KINDS[Role(role)]
    except ValueError:
        return False


def matrix_markdown() -> str:
    """The role matrix as the Markdown table in docs/operator.md (a test keeps the two equal)."""
    roles = list(Role)
    lines = [
        "| permission | " + " | ".join(r.value for r in roles) + " |",
        "| --- | " + " | ".join(":-:" for _ in roles) + " |",
    ]
    for p in Permission:
        lines.append(f"| `{p.value}` | " + " | ".join("✓" if p in MATRIX[r] else "" for r in roles) + " |")
    return "\n".join(lines) + "\n"
