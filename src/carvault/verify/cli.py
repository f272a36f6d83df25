"""`carvault verify`: the offline verifier's command line, lean enough to start in a fraction of a second.

It loads only the verification kernel (no web framework, database or region code) and prints plain text.
Exit codes (docs/incident-package.md §4): 0 verified and anchored, 1 a check failed, 2 consistent but not
anchored, 3 the package is unreadable, 4 a usage error (bad option, unreadable trust or checkpoint file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from carvault.verify.exit_codes import EXIT_USAGE
from carvault.verify.prefetch import Prefetch

if TYPE_CHECKING:
    from carvault.ledger.checkpoint import VerifierKey
    from carvault.verify.package import Verdict, WitnessPolicy

# The kernel (carvault.verify.package: pyarrow, NumPy, cryptography) is imported where a package is verified, so
# `carvault verify --help` and a usage error answer at once.

_MARKS = {True: "holds", False: "FAILS", None: "note"}


class _Usage(Exception):
    """A bad command line or an unreadable input file."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """Usage errors exit with EXIT_USAGE, not argparse's 2 (which means "not anchored" here)."""
        raise _Usage(message)


def parser() -> argparse.ArgumentParser:
    """The verify command's options."""
    p = _Parser(
        prog="carvault verify",
        description="Verify an incident package offline: signatures, certificates, chain, log proofs, tables.",
        epilog="Exit codes: 0 verified and anchored, 1 a check failed, 2 consistent but NOT anchored "
        "(no --trust or pins), 3 unreadable package, 4 usage error.",
    )
    p.add_argument("package", type=Path, help="The incident package (ZIP).")
    p.add_argument("--trust", type=Path, help="The region's published trust file (GET /api/v1/region/trust).")
    p.add_argument("--log-key", help="Pin the region's log verifier key (vkey) as published on its trust page.")
    p.add_argument("--ca-sha256", help="Pin the SHA-256 of the region CA certificate (DER) as published.")
    p.add_argument("--checkpoint", type=Path, help="A checkpoint you saved earlier: prove the log was not rewritten.")
    p.add_argument(
        "--witness",
        action="append",
        default=[],
        dest="witnesses",
        help="A witness you trust (its cosignature/v1 vkey); repeat for each.",
    )
    p.add_argument("--quorum", type=int, default=None, help="How many of the --witness keys must have cosigned.")
    p.add_argument("--json", action="store_true", dest="json_out", help="Print the result as JSON.")
    return p


def run(
    package: Path,
    *,
    trust: Path | None = None,
    checkpoint: Path | None = None,
    log_key: str | None = None,
    ca_sha256: str | None = None,
    json_out: bool = False,
    out: TextIO | None = None,
    witnesses: Sequence[str] = (),
    quorum: int | None = None,
) -> int:
    """Verify one package, print the result, return the exit code."""
    out = out or sys.stdout
    try:
        if not package.is_file():
            raise _Usage(f"{package} is not a file")
        if (log_key is None) != (ca_sha256 is None):
            raise _Usage("pin both --log-key and --ca-sha256, or neither")
        # Read the package, and decode its batches, while the kernel is imported (below; about half of the
        # command's time): inflating and decoding mostly run without the GIL, importing holds it.
        prefetch = Prefetch(package)
        trust_doc = _read_json(trust) if trust else None
        saved = _read_text(checkpoint) if checkpoint else None
        policy = _witness_policy(witnesses, quorum)
    except _Usage as e:
        print(f"carvault verify: {e}", file=sys.stderr)
        return EXIT_USAGE
    from carvault.verify.package import Pins, verify_package

    pins = Pins(log_key, ca_sha256) if log_key is not None and ca_sha256 is not None else None
    verdict = verify_package(
        package, saved_checkpoint=saved, trust=trust_doc, pins=pins, witnesses=policy, prefetch=prefetch
    )
    if json_out:
        print(json.dumps(as_json(verdict), indent=2), file=out)
    else:
        print(render(verdict, package.name), file=out)
    return verdict.exit_code


def as_json(verdict: Verdict) -> dict[str, Any]:
    """The verdict as a JSON object."""
    return {
        "ok": verdict.verified,
        "consistent": verdict.ok,
        "anchored": verdict.anchored,
        "exit_code": verdict.exit_code,
        "log_vkey": verdict.log_vkey,
        "ca_sha256": verdict.ca_sha256,
        "provenance": verdict.provenance,
        "attested_by": verdict.attested_by,
        "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in verdict.checks],
    }


def render(verdict: Verdict, title: str) -> str:
    """The verdict as a plain-text table and a one-line conclusion."""
    width = max(len(c.name) for c in verdict.checks)
    lines = [f"carvault verify {title}", ""]
    lines += [f"{c.name:<{width}}  {_MARKS[c.ok]:<5}  {c.detail}" for c in verdict.checks]
    lines.append("")
    if not verdict.readable:
        lines.append(f"UNREADABLE: {verdict.checks[0].detail}")
    elif not verdict.ok:
        lines.append(f"NOT VERIFIED: {', '.join(c.name for c in verdict.failures())}")
    elif not verdict.anchored:
        lines += [
            "NOT ANCHORED: the package is internally consistent, but its keys came from the package itself, and",
            "anyone can build such a package with keys of their own. Compare these with the region's published",
            "trust page, or run again with --trust (or --log-key and --ca-sha256):",
            f"  log key   {verdict.log_vkey}",
            f"  CA sha256 {verdict.ca_sha256}",
        ]
    elif verdict.attested_by is not None:
        lines.append(
            f"VERIFIED: every check holds; this data was attested by region {verdict.attested_by}, not signed by the "
            "car, and the log holds it."
        )
    else:
        lines.append("VERIFIED: every check holds; this is what the car signed and the log holds.")
    return "\n".join(lines)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise _Usage(f"cannot read {path}: {e}") from None


def _read_json(path: Path) -> Any:
    from carvault.verify.documents import DocumentError, load_json

    try:
        return load_json(path.read_bytes(), str(path))
    except OSError as e:
        raise _Usage(f"cannot read {path}: {e}") from None
    except DocumentError as e:
        raise _Usage(e.detail) from None


def _witness_policy(witnesses: Sequence[str], quorum: int | None) -> WitnessPolicy | None:
    from carvault.ledger.checkpoint import SIGNATURE_TYPE_COSIGNATURE, parse_vkey
    from carvault.ledger.merkle import VerificationError
    from carvault.verify.package import WitnessPolicy

    keys: list[VerifierKey] = []
    for text in witnesses:
        try:
            key = parse_vkey(text.strip())
        except VerificationError as e:
            raise _Usage(f"--witness {text!r} is not a verifier key: {e}") from None
        if key.signature_type != SIGNATURE_TYPE_COSIGNATURE:
            raise _Usage(f"--witness {key.name} is not a witness key (cosignature/v1, type 0x04)")
        if any(k.name == key.name for k in keys):
            raise _Usage(f"--witness {key.name} is given twice")
        keys.append(key)
    if quorum is None:
        quorum = len(keys)  # every witness named, unless --quorum says fewer
    if not 0 <= quorum <= len(keys) or (quorum > 0 and not keys):
        raise _Usage(f"--quorum must be between 0 and the number of --witness keys ({len(keys)})")
    return WitnessPolicy(tuple(keys), quorum) if keys else None


def exit_process(code: int) -> NoReturn:
    """End the process with ``code`` once its output is flushed, without the interpreter's teardown.

    Tearing down pyarrow, NumPy and cryptography takes about 30 ms, a tenth of verifying a package, and serves
    nothing here: the verifier only reads, so it leaves no file to close, lock to release or child to wait for.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that went away, or a closed stream: the verdict's code stands
            pass
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and verify; returns the exit code (``completeness REPORT``: a completeness report)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["completeness"]:
        from carvault.verify.completeness import main as completeness_main

        return completeness_main(args[1:])
    try:
        a = parser().parse_args(args)
    except _Usage as e:
        print(f"carvault verify: {e}", file=sys.stderr)
        return EXIT_USAGE
    return run(
        a.package,
        trust=a.trust,
        checkpoint=a.checkpoint,
        log_key=a.log_key,
        ca_sha256=a.ca_sha256,
        json_out=a.json_out,
        witnesses=a.witnesses,
        quorum=a.quorum,
    )
