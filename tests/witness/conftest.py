"""Witness processes started the way an operator starts them: ``carvault witness init|add-log|serve``."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from carvault.server import free_port

CARVAULT = [sys.executable, "-m", "carvault"]


def carvault(*args: str) -> str:
    """Run a carvault command; its stdout (fails the test on a non-zero exit)."""
    done = subprocess.run([*CARVAULT, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


@dataclass
class WitnessProcess:
    """A running ``carvault witness serve``: its folder, name, vkey and URL."""

    directory: Path
    name: str
    vkey: str
    port: int
    proc: subprocess.Popen[bytes] | None = None
    log_vkeys: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> WitnessProcess:
        self.proc = subprocess.Popen(
            [*CARVAULT, "witness", "serve", "--dir", str(self.directory), "--port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(self.proc.stderr.read().decode() if self.proc.stderr else "witness exited")
            try:
                if httpx.get(self.url + "/", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError("witness did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    @property
    def entry(self) -> str:
        """This witness as an entry of the region's ``witnesses`` setting."""
        return f"{self.directory.name}={self.vkey}@{self.url}"


def make_witness(tmp_path: Path, label: str, log_vkeys: list[str]) -> WitnessProcess:
    """Initialise a witness folder for the given logs (not started)."""
    directory = tmp_path / label
    name = f"witness.example/{label}"
    vkey = carvault("witness", "init", "--name", name, "--dir", str(directory)).strip()
    for log_vkey in log_vkeys:
        carvault("witness", "add-log", log_vkey, "--dir", str(directory))
    return WitnessProcess(directory, name, vkey, free_port(), log_vkeys=log_vkeys)


@pytest.fixture
def witness_factory(tmp_path: Path) -> Iterator[list[WitnessProcess]]:
    """A list the test fills with witnesses; every one still running is stopped afterwards."""
    started: list[WitnessProcess] = []
    yield started
    for w in started:
        w.stop()
