"""`carvault verify --help` and usage errors answer without loading the verification kernel.

The kernel (pyarrow with NumPy, cryptography) is most of the command's start-up; only verifying a package needs it.
These run the real command in a process of its own and look at the modules it imported: no timing is asserted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.verify.process import VerifyRun, run_verify

#: What the kernel loads and the command line alone must not.
KERNEL = ("pyarrow", "numpy", "cryptography")


def _kernel_modules(result: VerifyRun) -> list[str]:
    return sorted(m for m in result.modules if m.split(".")[0] in KERNEL or m == "carvault.verify.package")


def test_help_loads_no_kernel() -> None:
    result = run_verify("--help")
    assert result.code == 0
    assert "Exit codes: 0 verified and anchored" in result.out
    assert not _kernel_modules(result), _kernel_modules(result)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("package.zip", "--no-such-option"), "unrecognized arguments: --no-such-option"),
        (("missing.zip",), "missing.zip is not a file"),
    ],
)
def test_usage_errors_exit_4_without_the_kernel(args: tuple[str, ...], message: str, tmp_path: Path) -> None:
    result = run_verify(*(str(tmp_path / a) if a.endswith(".zip") else a for a in args))
    assert result.code == 4
    assert message in result.err and result.err.startswith("carvault verify: ")
    assert not _kernel_modules(result), _kernel_modules(result)
