"""`carvault demo --check`, the main job of `make demo`, end to end in a subprocess: every step must hold."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

STEPS = (
    "owner account",
    "pairing",
    "upload over HTTP",
    "re-send gives the same receipt",
    "region enforces consent itself",
    "foreign vehicle refused (421)",
    "foreign vehicle uploads at home",
    "incident package",
    "offline verification",
    "transparency log",
)


def test_demo_check_runs_every_step(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "carvault.cli", "demo", "--check", "--data-dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "200"},
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    for step in STEPS:
        assert step in run.stdout, step
