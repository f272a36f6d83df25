"""`carvault portability …`: verify a portability bundle offline, or import it into this deployment.

``verify`` needs no region: it runs the bundle checks (ingest/importer.py) and prints each. ``import`` re-runs
them and stores the bundle's batches under the imported vehicle, owned by the account named with ``--owner``;
a bundle that fails any check is refused whole and nothing is stored (exit code 1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlalchemy import select

# Defined before the import of carvault.cli below (see apps_cli.py for why).
portability = typer.Typer(help="Portability bundles: verify offline, import from another deployment.")

from carvault.cli import DataDir, DbUrl, RegionOpt, _settings, console  # noqa: E402
from carvault.errors import CarVaultError  # noqa: E402

BundleArg = Annotated[Path, typer.Argument(help="The bundle ZIP.", exists=True, dir_okay=False, readable=True)]
TrustOpt = Annotated[
    Path | None,
    typer.Option("--trust", help="The origin region's trust document (its /api/v1/region/trust), to anchor the keys."),
]


def _trust(path: Path | None) -> Any:
    if path is None:
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        console.print(f"[red]the trust file cannot be read:[/] {e}")
        raise typer.Exit(2) from None


@portability.command("verify")
def verify(bundle: BundleArg, trust: TrustOpt = None) -> None:
    """Check a bundle offline: every signature, the chain, every proof; exit 0 only if all hold."""
    from carvault.ingest.importer import open_bundle, verify_bundle

    try:
        verdict = verify_bundle(open_bundle(bundle), trust=_trust(trust))
    except CarVaultError as e:
        console.print(f"[red]{e.code}:[/] {e.message}")
        raise typer.Exit(3) from None
    for c in verdict.checks:
        mark = {True: "[green]ok[/]", False: "[red]FAILED[/]", None: "[yellow]note[/]"}[c.ok]
        console.print(f"{mark}  {c.name}: {c.detail}")
    raise typer.Exit(verdict.exit_code)


@portability.command("import")
def import_(
    bundle: BundleArg,
    owner: Annotated[str, typer.Option("--owner", help="E-mail of the account here that will own the data.")],
    import_code: Annotated[
        str,
        typer.Option(
            "--import-code",
            envvar="CARVAULT_IMPORT_CODE",
            prompt="Import code shown by the origin",
            hide_input=True,
            help="The one-time import code the origin showed the owner (proof of ownership); asked for when not "
            "given, or read from CARVAULT_IMPORT_CODE, so it need not appear in the process list or shell history.",
        ),
    ],
    trust: TrustOpt = None,
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """Re-verify a bundle and store its batches here (all or nothing; importing it again adds nothing)."""
    from carvault.ingest.importer import Importer
    from carvault.region import Region
    from carvault.store.metadata import Owner

    try:
        with Region(_settings(data_dir, region, database_url)) as r:
            with r.db.session() as s:
                owner_id = s.scalar(select(Owner.id).where(Owner.email == owner.strip().lower()))
            if owner_id is None:
                console.print(f"[red]not_found:[/] no account {owner!r} in region {r.name}")
                raise typer.Exit(1)
            importer = Importer(r.settings, r.db, r.segments, r.log, r.catalogue)
            result = importer.import_bundle(bundle, owner_id=owner_id, import_code=import_code, trust=_trust(trust))
            r.audit.by_owner(
                owner_id,
                "portability.import",
                vin=result.vin,
                detail={k: v for k, v in result.as_json().items() if k != "checks"},
            )
    except CarVaultError as e:
        console.print(f"[red]{e.code}:[/] {e.message}")
        for failure in e.details.get("failed", []):
            console.print(f"  [red]FAILED[/] {failure['check']}: {failure['detail']}")
        raise typer.Exit(1) from None
    anchored = "anchored by the trust file" if result.anchored else "NOT anchored (keys from the bundle itself)"
    console.print(
        f"vehicle {result.vin} from region {result.origin_region}: {result.added} of {result.batches} batches added"
        f"{' (already imported)' if result.duplicate else ''}; {anchored}; {result.excluded} left out by the origin"
    )
