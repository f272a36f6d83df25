"""The owner portal: server-rendered pages, one module per page group, all built on the /api/v1 routes."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from carvault.web.views import (
    access,
    account,
    api_docs,
    base,
    charging,
    completeness,
    consent,
    console,
    data_sheet,
    deletion,
    developers,
    diagnostics,
    downloads,
    drives,
    live,
    oauth,
    packages,
    places,
    portability,
    rights,
    sharing,
    statistics,
    support,
    vehicles,
)

router = APIRouter(include_in_schema=False)
for _module in (account, vehicles, drives, downloads, packages, consent, access, deletion, oauth, sharing, developers):
    router.include_router(_module.router)
router.include_router(portability.router)  # issue 9: move my data to another company
router.include_router(live.router)  # issue 10: a vehicle's Live page
router.include_router(data_sheet.router)  # issue 11: the public Data Act data sheet
router.include_router(rights.router)  # issue 11: my rights requests and incident notices
router.include_router(support.router)  # issue 11: the owner approves or declines support tickets
router.include_router(diagnostics.router)  # issue 14: a vehicle's warning lamps and trouble codes
router.include_router(charging.router)  # issue 13: a vehicle's charging sessions, tariffs, battery health
router.include_router(statistics.router)  # issue 13: months and years, efficiency, states, drain, conditions
router.include_router(completeness.router)  # issue 13: a vehicle's completeness report and software versions
router.include_router(places.router)  # issue 13: the owner's places and the maps' tile configuration


def install(app: FastAPI) -> None:
    """Add the portal's pages, static files and error pages to an app."""
    base.install(app)
    app.include_router(router)
    api_docs.install(app)  # issue 13: the API reference on the vendored Swagger UI
    console.install(app)  # issue 11: the operator console under /console (its own log-in, nav by role)
