"""The walls of the architecture (STYLE.md): each is checked by importing the module in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# module -> prefixes of carvault modules it may pull in (directly or transitively)
WALLS: dict[str, tuple[str, ...]] = {
    # The verification kernel: wire format, Merkle/checkpoint code, PKI and the catalogue only.
    "carvault.verify.package": (
        "carvault.verify",
        "carvault.protocol",
        "carvault.ledger.merkle",
        "carvault.ledger.checkpoint",
        "carvault.ledger",
        "carvault.pki",
        "carvault.signals",
        "carvault.errors",
    ),
    # The completeness report's verifier: the same kernel (issue 13).
    "carvault.verify.completeness": (
        "carvault.verify",
        "carvault.protocol",
        "carvault.ledger",
        "carvault.pki",
        "carvault.signals",
        "carvault.errors",
    ),
    # The wire format knows no database, server or gateway.
    "carvault.protocol": ("carvault.protocol", "carvault.errors"),
    # The log's proof and checkpoint code knows no database.
    "carvault.ledger.checkpoint": ("carvault.ledger", "carvault.errors"),
    # The on-disk log knows no store or database: only its own proofs, checkpoints and durable writes.
    "carvault.ledger.log": ("carvault.ledger", "carvault.errors", "carvault.durable"),
}

CAR_MAY_NOT = ("carvault.ingest", "carvault.store", "carvault.web", "carvault.region", "carvault.bench")
ENTRY_POINTS = ("carvault.cli", "carvault.server", "carvault.region", "carvault.web", "carvault.bench")

# module -> prefixes it must never pull in
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "carvault.vehicle.agent": (
        "carvault.ingest",
        "carvault.store",
        "carvault.web",
        "carvault.region",
        "carvault.access",
    ),
    "carvault.vehicle.camera": ("carvault.ingest", "carvault.store", "carvault.web", "carvault.region"),
    "carvault.ingest.gateway": ("carvault.cli", "carvault.server", "carvault.region", "carvault.web", "carvault.bench"),
    "carvault.access.packages": ("carvault.cli", "carvault.server", "carvault.web", "carvault.bench"),
    "carvault.store.metadata": (
        "carvault.cli",
        "carvault.server",
        "carvault.region",
        "carvault.web",
        "carvault.access",
    ),
    "carvault.compliance.consent": ("carvault.store", "carvault.web", "carvault.region", "carvault.ingest"),
    # The rest of the car: no region code, and no benchmark or evaluation code.
    **{f"carvault.vehicle.{m}": CAR_MAY_NOT for m in ("can", "can_mapping", "simulator", "deidentify")},
    # Stores and services never import the entry points, the web layer or the bench.
    **{
        m: ENTRY_POINTS
        for m in (
            "carvault.access.audit",
            "carvault.access.jobs",
            "carvault.access.trips",
            "carvault.ingest.frames",
            "carvault.compliance.deletion",
            "carvault.store.segments",
            "carvault.store.telemetry",
            "carvault.store.tables",
            "carvault.store.derived",
            "carvault.access.consents",
            "carvault.access.places",
            "carvault.access.vehicles",
            "carvault.access.exports",
            "carvault.compliance.orders",
            "carvault.compliance.residency",
            "carvault.compliance.rights",
            "carvault.compliance.incidents",
            "carvault.compliance.records",
            "carvault.ingest.reconcile",
            "carvault.ingest.validation",
        )
    },
}

# The wire format, the log, the verifier and the car load no database or web framework at all.
NO_SERVER_LIBRARIES = ("sqlalchemy", "fastapi", "starlette", "uvicorn", "jinja2")
SERVERLESS = (
    "carvault.protocol",
    "carvault.ledger.log",
    "carvault.verify.package",
    "carvault.verify.cli",
    "carvault.verify.completeness",
    "carvault.vehicle.agent",
    "carvault.signals",
    "carvault.geo.gcj02",  # the portal's map maths and place names: pure, no server
    "carvault.geo.geocoder",
)

# Product code may name the bench only here: the CLI's ``bench`` command runs it.
MAY_IMPORT_BENCH = {"cli.py"}


def _loaded(module: str, prefix: str = "carvault") -> list[str]:
    code = f"import sys, json, {module}; print(json.dumps(sorted(m for m in sys.modules if m.startswith({prefix!r}))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


@pytest.mark.parametrize("module", sorted(WALLS))
def test_module_imports_only_what_it_may(module: str) -> None:
    allowed = WALLS[module] + ("carvault",)
    stray = [m for m in _loaded(module) if not any(m == a or m.startswith(a + ".") for a in allowed)]
    assert not stray, f"{module} pulls in {stray}"


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_module_stays_behind_its_wall(module: str) -> None:
    stray = [m for m in _loaded(module) if any(m == f or m.startswith(f + ".") for f in FORBIDDEN[module])]
    assert not stray, f"{module} pulls in {stray}"


@pytest.mark.parametrize("module", SERVERLESS)
def test_module_loads_no_database_or_web_framework(module: str) -> None:
    stray = [m for m in _loaded(module, "") if m.split(".")[0] in NO_SERVER_LIBRARIES]
    assert not stray, f"{module} loads {sorted({m.split('.')[0] for m in stray})}"


def test_no_product_module_reads_tests() -> None:
    from pathlib import Path

    import carvault

    root = Path(carvault.__file__).parent
    offenders = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if "tests/" in p.read_text(encoding="utf-8") and "bench" not in p.parts
    ]
    assert not offenders, f"product modules refer to tests/: {offenders}"


def test_no_product_module_imports_the_bench() -> None:
    from pathlib import Path

    import carvault

    root = Path(carvault.__file__).parent
    offenders = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if "bench" not in p.relative_to(root).parts
        and str(p.relative_to(root)) not in MAY_IMPORT_BENCH
        and any(word in p.read_text(encoding="utf-8") for word in ("from carvault.bench", "import carvault.bench"))
    ]
    assert not offenders, f"product modules import benchmark code: {offenders}"


def test_every_table_is_defined_in_store() -> None:
    from pathlib import Path

    import carvault

    root = Path(carvault.__file__).parent
    outside = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if p.relative_to(root).parts[0] != "store" and "__tablename__" in p.read_text(encoding="utf-8")
    ]
    assert not outside, f"tables defined outside store/: {outside}"
