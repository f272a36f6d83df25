"""`carvault verify` run as a user runs it, in a process of its own, with the modules it loaded.

The command ends with ``os._exit`` once its output is flushed (no interpreter teardown), so nothing can be asked of
the process afterwards; ``-X importtime`` lists every module it imported on stderr instead.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class VerifyRun:
    code: int
    out: str
    err: str  # the command's own stderr, without the import lines
    modules: frozenset[str]


def run_verify(*args: str) -> VerifyRun:
    """``python -X importtime -m carvault verify ARGS``: exit code, output, and every module imported."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "carvault", "verify", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    modules, err = set(), []
    for line in done.stderr.splitlines():
        if line.startswith("import time:"):
            name = line.rsplit("|", 1)[-1].strip()
            if name != "package":  # the header line: "self [us] | cumulative | imported package"
                modules.add(name)
        else:
            err.append(line)
    assert "carvault.verify.cli" in modules, done.stderr[-2000:]  # the listing worked
    return VerifyRun(done.returncode, done.stdout, "\n".join(err), frozenset(modules))
