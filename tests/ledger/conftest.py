"""Shared fixtures for the ledger tests: published vectors and a real log in tmp_path."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carvault.ledger.log import TransparencyLog

ORIGIN = "test.carvault.example/log"
VECTORS_PATH = Path(__file__).parent / "assets" / "vectors.json"


def log_key(seed: str = "ledger-tests") -> Ed25519PrivateKey:
    """A deterministic log key, so separate processes can open the same log with the same key."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(seed.encode()).digest())


def open_log(directory: Path) -> TransparencyLog:
    """The test log in ``directory`` (created if missing)."""
    return TransparencyLog(directory, ORIGIN, log_key(), ORIGIN)


@pytest.fixture(scope="session")
def vectors() -> dict[str, Any]:
    return json.loads(VECTORS_PATH.read_text())


@pytest.fixture
def log(tmp_path: Path) -> Iterator[TransparencyLog]:
    with open_log(tmp_path / "log") as opened:
        yield opened
