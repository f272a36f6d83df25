"""ASGI factory for multi-process serving: each uvicorn worker builds its own Region from the environment.

``carvault serve --workers N`` puts the settings in ``CARVAULT_*`` variables and runs
``uvicorn carvault.web.asgi:create_from_env --factory``; the workers share the region's store the same way
separate replicas do (own segment files, chain heads in the DB, log appends under flock).
"""

from __future__ import annotations

from fastapi import FastAPI

from carvault.region import Region
from carvault.settings import Settings
from carvault.web.app import create_app


def create_from_env() -> FastAPI:
    """The app of the region described by ``CARVAULT_*`` variables."""
    return create_app(Region(Settings.from_env()), close_region_on_shutdown=True, own_process=True)
