"""The operator's API (issue 11): every route under /api/v1/admin, one module per area, each route behind a role.

Each area module defines ``router`` (paths relative to /api/v1/admin) and guards every route with
``web.deps.staff_with(Permission.X)``; the role-matrix test (test_admin_roles.py) walks them all × every role.
"""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1/admin")
# Area routers are added here, one line each: router.include_router(<module>.router)
from carvault.web.routes import admin_incidents, admin_records, admin_rights  # noqa: E402

router.include_router(admin_rights.router)
router.include_router(admin_incidents.router)
router.include_router(admin_records.router)
from carvault.web.routes import admin_retention  # noqa: E402

router.include_router(admin_retention.router)
from carvault.web.routes import admin_transfers  # noqa: E402

router.include_router(admin_transfers.router)
from carvault.web.routes import admin_staff  # noqa: E402

router.include_router(admin_staff.router)
from carvault.web.routes import admin_cases  # noqa: E402

router.include_router(admin_cases.router)
from carvault.web.routes import admin_reports  # noqa: E402

router.include_router(admin_reports.router)
