"""`carvault verify --help` and usage errors answer without loading the verification kernel.

The kernel (pyarrow with NumPy, cryptography) is most of the command's start-up; only verifying a package needs it.
These run the real entry point in a fresh interpreter and look at ``sys.modules``: no timing is asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ENTRY = """
import contextlib, io, json, sys
sys.argv = ["carvault", "verify", *sys.argv[1:]]
from carvault.__main__ import main
out, err = io.StringIO(), io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
        main()
    except SystemExit as e:
        code = e.code
print(json.dumps({"code": code, "out": out.getvalue(), "err": err.getvalue(), "modules": sorted(sys.modules)}))
"""
#: What the kernel loads and the command line alone must not.
KERNEL = ("pyarrow", "numpy", "cryptography")


def _run(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", ENTRY, *args], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def _kernel_modules(result: dict) -> list[str]:
    return [m for m in result["modules"] if m.split(".")[0] in KERNEL or m == "carvault.verify.package"]


def test_help_loads_no_kernel() -> None:
    result = _run("--help")
    assert result["code"] == 0
    assert "Exit codes: 0 verified and anchored" in result["out"]
    assert not _kernel_modules(result), _kernel_modules(result)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("package.zip", "--no-such-option"), "unrecognized arguments: --no-such-option"),
        (("missing.zip",), "missing.zip is not a file"),
    ],
)
def test_usage_errors_exit_4_without_the_kernel(args: tuple[str, ...], message: str, tmp_path: Path) -> None:
    result = _run(*(str(tmp_path / a) if a.endswith(".zip") else a for a in args))
    assert result["code"] == 4
    assert message in result["err"] and result["err"].startswith("carvault verify: ")
    assert not _kernel_modules(result), _kernel_modules(result)
