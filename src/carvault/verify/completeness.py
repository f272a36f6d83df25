"""`carvault verify completeness REPORT`: check a completeness report offline, and against a package or the log.

What holds when it says so (docs/completeness.md §4):

1. **signature** — the report is signed by the key it names (``signed_by``), an Ed25519 signature over the context
   ``carvault-completeness-report-v1\\n`` and the canonical JSON of every other member (sorted keys, no spaces), as
   the region signs deletion receipts and retention records. ``--log-key`` pins the region's published log key;
   without it the report is consistent but not anchored (anyone can sign a report with a key of their own).
2. **figures** — the report agrees with itself: its batches are in seq order without repeats, the missing seqs it
   states are exactly those between its first and last batch, each gap lies inside the window and has a known reason.
3. **package** (``--package FILE``) — the incident package verifies (``carvault verify``), and over the seqs both
   cover, the report counts exactly the package's batches, with the same hashes.
4. **log** (``--log URL``) — the region's checkpoint verifies with the report's key, and each batch the report
   counts as logged has its leaf hash at its index, by an RFC 9162 inclusion proof from that checkpoint.

Exit codes: 0 every check holds and the key is anchored, 1 a check failed, 2 consistent but not anchored,
3 the report is unreadable, 4 usage error. Imports no database, server or web code.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TextIO

from cryptography.exceptions import InvalidSignature

from carvault.ledger.checkpoint import parse_vkey, verify_checkpoint
from carvault.ledger.merkle import VerificationError, verify_inclusion
from carvault.verify.documents import DocumentError, load_json

REPORT_FORMAT = "carvault-completeness-report"
REPORT_CONTEXT = b"carvault-completeness-report-v1\n"
REASONS = (
    "not_sent",
    "refused",
    "deleted",
    "retention_erased",
    "missing_from_chain",
    "not_yet_received",
    "not_available",  # a grant holder's report: missing, and why is the owner's business
)
EXIT_OK, EXIT_FAILED, EXIT_NOT_ANCHORED, EXIT_UNREADABLE, EXIT_USAGE = 0, 1, 2, 3, 4
_MARKS = {True: "holds", False: "FAILS", None: "note"}


@dataclass(frozen=True)
class Check:
    """One named check and what it found."""

    name: str
    ok: bool | None
    detail: str


@dataclass
class Result:
    """Every check of one report."""

    checks: list[Check] = field(default_factory=list)
    anchored: bool = False
    readable: bool = True

    def add(self, name: str, ok: bool | None, detail: str) -> None:
        """Record a check."""
        self.checks.append(Check(name, ok, detail))

    def failures(self) -> list[Check]:
        """The checks that failed."""
        return [c for c in self.checks if c.ok is False]

    @property
    def ok(self) -> bool:
        """Readable and no check failed."""
        return self.readable and not self.failures()

    @property
    def exit_code(self) -> int:
        """0 verified and anchored, 1 failed, 2 not anchored, 3 unreadable."""
        if not self.readable:
            return EXIT_UNREADABLE
        if not self.ok:
            return EXIT_FAILED
        return EXIT_OK if self.anchored else EXIT_NOT_ANCHORED


def canonical(body: dict[str, Any]) -> bytes:
    """The signed bytes' JSON part: sorted keys, no spaces."""
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def verify_report(
    report: Any,
    *,
    log_key: str | None = None,
    package: Path | None = None,
    log_url: str | None = None,
    fetch: Any = None,
) -> Result:
    """Run every check that the inputs allow (see the module docstring); ``fetch(url) -> bytes`` for ``log_url``."""
    result = Result()
    if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT or report.get("version") != 1:
        result.readable = False
        result.add("report readable", False, f"not a {REPORT_FORMAT} version 1 document")
        return result
    result.add("report readable", True, f"vehicle {report.get('vin')}, region {report.get('region')}")
    _check_signature(result, report, log_key)
    _check_figures(result, report)
    if package is not None:
        _check_package(result, report, package)
    if log_url is not None:
        _check_log(result, report, log_url, fetch or _http_get)
    return result


def _check_signature(result: Result, report: dict[str, Any], log_key: str | None) -> None:
    signer, signature = report.get("signed_by"), report.get("signature")
    body = {k: v for k, v in report.items() if k not in ("signature", "signed_by")}
    try:
        if not isinstance(signer, str) or not isinstance(signature, str):
            raise ValueError("the report carries no signature")
        parse_vkey(signer).public_key.verify(
            base64.b64decode(signature, validate=True), REPORT_CONTEXT + canonical(body)
        )
    except (InvalidSignature, ValueError, VerificationError) as e:
        result.add("signature", False, f"the signature does not verify: {e or 'altered after signing'}")
        return
    result.add("signature", True, f"signed by {signer.split('+')[0]}")
    if log_key is None:
        result.add("key anchored", None, "no --log-key given: compare signed_by with the region's published log key")
    elif log_key.strip() == signer:
        result.anchored = True
        result.add("key anchored", True, "signed by the pinned log key")
    else:
        result.add("key anchored", False, "signed by another key than the pinned log key")


def _check_figures(result: Result, report: dict[str, Any]) -> None:
    problems: list[str] = []
    try:
        batches = report["batches"]
        seqs = [int(b["seq"]) for b in batches]
        if seqs != sorted(set(seqs)):
            problems.append("batches are not in seq order without repeats")
        have = set(seqs)
        missing = [s for s in range(seqs[0], seqs[-1] + 1) if s not in have] if seqs else []
        stated = [s for lo, hi in report["chain"]["missing_seqs"] for s in range(int(lo), int(hi) + 1)]
        if stated != missing:
            problems.append(f"chain.missing_seqs states {len(stated)} seqs, the batches leave {len(missing)}")
        if report["chain"]["batches"] != len(seqs):
            problems.append("chain.batches does not count the batches listed")
        lo, hi = int(report["window"]["start_ms"]), int(report["window"]["end_ms"])
        for g in report["gaps"]:
            if not lo <= int(g["start_ms"]) < int(g["end_ms"]) <= hi:
                problems.append(f"a gap ({g['start_utc']}..{g['end_utc']}) lies outside the window")
            if g["reason"] not in REASONS:
                problems.append(f"a gap has an unknown reason {str(g['reason'])[:40]!r}")
    except (KeyError, TypeError, ValueError) as e:
        problems.append(f"a member is missing or of the wrong type: {e}")
    result.add("figures", not problems, "; ".join(problems[:5]) or f"{len(report.get('batches', []))} batches agree")


def _check_package(result: Result, report: dict[str, Any], path: Path) -> None:
    from carvault.protocol import decode_envelope
    from carvault.verify.package import open_package, verify_package

    verdict = verify_package(path)
    if not verdict.ok:
        names = ", ".join(c.name for c in verdict.failures())
        result.add("package", False, f"the package itself does not verify ({names})")
        return
    pkg = open_package(path)
    theirs: dict[int, str] = {}
    for name, data in pkg.files.items():
        if name.startswith("batches/"):
            theirs[decode_envelope(data).header.seq] = hashlib.sha256(data).hexdigest()
    ours = {int(b["seq"]): b["batch_hash"] for b in report["batches"]}
    if not theirs or not ours:
        result.add("package", None, "the package or the report holds no batch: nothing to compare")
        return
    lo, hi = max(min(theirs), min(ours)), min(max(theirs), max(ours))
    common = range(lo, hi + 1)
    differ = [s for s in common if ours.get(s) != theirs.get(s) and (s in ours or s in theirs)]
    if lo > hi:
        result.add("package", None, "the package and the report cover no seq in common")
    elif differ:
        result.add("package", False, f"seqs {differ[:10]} differ between the report and the package")
    else:
        both = sum(1 for s in common if s in ours)
        result.add("package", True, f"over seqs {lo}..{hi} the report counts the package's {both} batches exactly")


def _check_log(result: Result, report: dict[str, Any], url: str, fetch: Any) -> None:
    base = url.rstrip("/")
    signer = report.get("signed_by", "")
    try:
        key = parse_vkey(signer)
        text = fetch(f"{base}/api/v1/log/checkpoint").decode()
        cp = verify_checkpoint(text, key.public_key, key.name)
    except (VerificationError, ValueError, OSError) as e:
        result.add("log", False, f"the region's checkpoint does not verify with the report's key: {e}")
        return
    logged = [b for b in report["batches"] if b.get("log_index") is not None and b.get("leaf_hash")]
    failed = []
    for b in logged:
        try:
            if int(b["log_index"]) >= cp.size:
                raise VerificationError("leaf is beyond the checkpoint", expected=cp.size, actual=b["log_index"])
            doc = json.loads(fetch(f"{base}/api/v1/log/proof/inclusion?index={b['log_index']}&size={cp.size}"))
            proof = [base64.b64decode(h) for h in doc["proof"]]
            verify_inclusion(bytes.fromhex(b["leaf_hash"]), int(b["log_index"]), cp.size, proof, cp.root)
        except (VerificationError, ValueError, KeyError, OSError) as e:
            failed.append(f"seq {b['seq']}: {e}")
    if failed:
        result.add("log", False, "; ".join(failed[:5]))
    else:
        result.add("log", True, f"{len(logged)} batches are in the log of size {cp.size} at the indices stated")


def _http_get(url: str) -> bytes:
    import httpx  # only when a log URL is given

    try:
        r = httpx.get(url, timeout=30)
    except httpx.HTTPError as e:
        raise OSError(f"cannot fetch {url}: {e}") from None
    if r.status_code != 200:
        raise OSError(f"{url} answered HTTP {r.status_code}")
    return r.content


# ---------------------------------------------------------------------- command line
class _Usage(Exception):
    """A bad command line or an unreadable input file."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _Usage(message)


def parser() -> argparse.ArgumentParser:
    """The command's options."""
    p = _Parser(
        prog="carvault verify completeness",
        description="Verify a completeness report offline: its signature, its figures, and against a package or log.",
        epilog="Exit codes: 0 verified and anchored, 1 a check failed, 2 consistent but NOT anchored (no --log-key), "
        "3 unreadable report, 4 usage error.",
    )
    p.add_argument("report", type=Path, help="The report (JSON, as downloaded).")
    p.add_argument("--log-key", help="Pin the region's log verifier key (vkey) as published on its trust page.")
    p.add_argument("--package", type=Path, help="An incident package: the batches it holds must be those counted.")
    p.add_argument("--log", dest="log_url", help="The region's base URL: check each batch's leaf is in its log.")
    p.add_argument("--json", action="store_true", dest="json_out", help="Print the result as JSON.")
    return p


def run(
    report_path: Path,
    *,
    log_key: str | None = None,
    package: Path | None = None,
    log_url: str | None = None,
    json_out: bool = False,
    out: TextIO | None = None,
) -> int:
    """Verify one report file, print the result, return the exit code."""
    out = out or sys.stdout
    if not report_path.is_file() or (package is not None and not package.is_file()):
        print(
            f"carvault verify completeness: {report_path if not report_path.is_file() else package} is not a file",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        report = load_json(report_path.read_bytes(), str(report_path))
    except (DocumentError, OSError) as e:
        result = Result(readable=False)
        result.add("report readable", False, str(getattr(e, "detail", e)))
    else:
        result = verify_report(report, log_key=log_key, package=package, log_url=log_url)
    if json_out:
        doc = {
            "ok": result.ok and result.anchored,
            "consistent": result.ok,
            "anchored": result.anchored,
            "exit_code": result.exit_code,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in result.checks],
        }
        print(json.dumps(doc, indent=2), file=out)
    else:
        print(render(result, report_path.name), file=out)
    return result.exit_code


def render(result: Result, title: str) -> str:
    """Plain-text table of the checks and a one-line conclusion."""
    width = max(len(c.name) for c in result.checks)
    lines = [f"carvault verify completeness {title}", ""]
    lines += [f"{c.name:<{width}}  {_MARKS[c.ok]:<5}  {c.detail}" for c in result.checks]
    lines.append("")
    if not result.readable:
        lines.append("UNREADABLE: this is not a completeness report")
    elif not result.ok:
        lines.append(f"NOT VERIFIED: {', '.join(c.name for c in result.failures())}")
    elif not result.anchored:
        lines.append("NOT ANCHORED: the report is consistent and signed, but by a key you have not pinned (--log-key).")
    else:
        lines.append("VERIFIED: the region signed this report, and every check holds.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and verify; returns the exit code."""
    try:
        a = parser().parse_args(argv)
    except _Usage as e:
        print(f"carvault verify completeness: {e}", file=sys.stderr)
        return EXIT_USAGE
    return run(a.report, log_key=a.log_key, package=a.package, log_url=a.log_url, json_out=a.json_out)
