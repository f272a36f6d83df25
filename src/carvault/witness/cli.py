"""``carvault witness init|add-log|serve|show``: run a witness for one or more logs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

from carvault.witness.state import WitnessState, WitnessStateError

witness = typer.Typer(help="Run an independent C2SP tlog-witness that cosigns logs' checkpoints (docs/witness.md).")

WitnessDir = Annotated[Path, typer.Option("--dir", help="The witness's folder (its key and state).")]


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


@witness.command("init")
def init_cmd(
    name: Annotated[str, typer.Option(help="The witness's key name, e.g. witness.example.org/w1.")],
    directory: WitnessDir = Path("witness"),
) -> None:
    """Create the witness's key and state; prints its verifier key (give it to the logs' operators)."""
    from carvault.ledger.checkpoint import format_witness_vkey
    from carvault.witness.server import load_witness_key

    directory.mkdir(parents=True, exist_ok=True)
    try:
        vkey = format_witness_vkey(name, load_witness_key(directory).public_key())
    except ValueError as exc:
        _fail(str(exc))
    state = WitnessState(directory / "witness.db")
    try:
        current = state.get_config("name")
        if current and current != name:
            _fail(f"{directory} already belongs to witness {current}")
        state.set_config("name", name)
    finally:
        state.close()
    typer.echo(vkey)


@witness.command("add-log")
def add_log_cmd(
    vkey: Annotated[str, typer.Argument(help="The log's checkpoint verifier key (its trust page shows it).")],
    origin: Annotated[str | None, typer.Option(help="The log's origin line (default: the key's name).")] = None,
    directory: WitnessDir = Path("witness"),
) -> None:
    """Witness another log."""
    state = WitnessState(directory / "witness.db")
    try:
        log = state.add_log(vkey, origin)
    except WitnessStateError as exc:
        _fail(str(exc))
    finally:
        state.close()
    typer.echo(f"witnessing {log.origin}")


@witness.command("show")
def show_cmd(directory: WitnessDir = Path("witness")) -> None:
    """Print the witness's verifier key and, per log, the latest tree size it cosigned."""
    from carvault.witness.server import Witness

    try:
        w = Witness(directory)
    except WitnessStateError as exc:
        _fail(str(exc))
    try:
        typer.echo(w.vkey)
        for log in w.state.logs():
            typer.echo(f"{log.origin} {log.size}")
    finally:
        w.close()


@witness.command("serve")
def serve_cmd(
    directory: WitnessDir = Path("witness"),
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8480,
) -> None:
    """Serve POST /add-checkpoint until stopped; prints the verifier key first."""
    import uvicorn

    from carvault.witness.server import Witness, witness_app

    try:
        w = Witness(directory)
    except WitnessStateError as exc:
        _fail(str(exc))
    typer.echo(f"witness {w.name} vkey {w.vkey} on http://{host}:{port}", err=True)
    try:
        uvicorn.run(witness_app(w), host=host, port=port, log_level="warning", limit_concurrency=256)
    finally:
        w.close()
