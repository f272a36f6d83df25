"""The witness's HTTP API on a real ``carvault witness serve`` process: every answer C2SP tlog-witness defines."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carvault.ledger.checkpoint import (
    format_vkey,
    parse_vkey,
    sign_checkpoint,
    verify_cosignatures,
)
from carvault.ledger.merkle import VerificationError, consistency_proof, leaf_hash, root_from_leaf_hashes
from carvault.witness.server import MAX_BODY_BYTES
from carvault.witness.state import WitnessState
from tests.witness.conftest import WitnessProcess, carvault, make_witness

pytestmark = pytest.mark.slow

ORIGIN = "test.carvault.example/log"


class Log:
    """A small Merkle log in memory, signing checkpoints with its own key (a second key forges)."""

    def __init__(self, origin: str = ORIGIN) -> None:
        self.origin = origin
        self.key = Ed25519PrivateKey.generate()
        self.vkey = format_vkey(origin, self.key.public_key())
        self.leaves: list[bytes] = []

    def grow(self, n: int, tag: bytes = b"a") -> None:
        start = len(self.leaves)
        self.leaves += [leaf_hash(tag + str(start + i).encode()) for i in range(n)]

    def note(self, size: int | None = None, key: Ed25519PrivateKey | None = None) -> str:
        size = len(self.leaves) if size is None else size
        root = root_from_leaf_hashes(self.leaves[:size])
        return sign_checkpoint(self.origin, size, root, key or self.key, self.origin)

    def body(
        self, old: int, size: int | None = None, proof: list[bytes] | None = None, note: str | None = None
    ) -> bytes:
        size = len(self.leaves) if size is None else size
        if proof is None:
            proof = consistency_proof(self.leaves, old, size) if 0 < old < size else []
        lines = "".join(base64.b64encode(h).decode() + "\n" for h in proof)
        return (f"old {old}\n{lines}\n" + (note or self.note(size))).encode()


@pytest.fixture(scope="module")
def shared_witness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WitnessProcess]:
    """One witness process for the module (starting one takes seconds); each test witnesses its own log."""
    w = make_witness(tmp_path_factory.mktemp("witness"), "w1", [])
    yield w.start()
    w.stop()


@pytest.fixture
def log(shared_witness: WitnessProcess) -> Log:
    """A fresh log with its own origin, added to the running witness's list (the state file is shared)."""
    made = Log(f"test-{secrets.token_hex(4)}.carvault.example/log")
    state = WitnessState(shared_witness.directory / "witness.db")
    state.add_log(made.vkey)
    state.close()
    return made


@pytest.fixture
def witness(shared_witness: WitnessProcess) -> WitnessProcess:
    if shared_witness.proc is None:
        shared_witness.start()
    return shared_witness


def post(w: WitnessProcess, body: bytes) -> httpx.Response:
    return httpx.post(w.url + "/add-checkpoint", content=body, timeout=10)


def test_cosigns_a_growing_log_and_remembers_across_restarts(witness: WitnessProcess, log: Log) -> None:
    key = parse_vkey(witness.vkey)
    log.grow(5)
    r = post(witness, log.body(0))
    assert r.status_code == 200, r.text
    assert r.text.startswith(f"\u2014 {witness.name} ") and r.text.endswith("\n")
    cosigned = log.note() + r.text
    [cosig] = verify_cosignatures(cosigned, [key])
    assert cosig.name == witness.name and cosig.timestamp > 1_700_000_000
    log.grow(300)
    r = post(witness, log.body(5))
    assert r.status_code == 200, r.text
    assert verify_cosignatures(log.note() + r.text, [key])
    # The same checkpoint again is cosigned again (same size, same root).
    assert post(witness, log.body(305)).status_code == 200
    witness.stop()
    witness.start()
    r = post(witness, log.body(5))  # the witness remembers 305
    assert r.status_code == 409
    assert r.headers["content-type"].startswith("text/x.tlog.size")
    assert r.text == "305\n"
    assert f"{log.origin} 305" in carvault("witness", "show", "--dir", str(witness.directory))


def test_a_tampered_cosignature_does_not_verify(witness: WitnessProcess, log: Log) -> None:
    log.grow(3)
    r = post(witness, log.body(0))
    raw = bytearray(base64.b64decode(r.text.split(" ")[2]))
    raw[-1] ^= 1
    forged = f"\u2014 {witness.name} {base64.b64encode(bytes(raw)).decode()}\n"
    with pytest.raises(VerificationError, match="does not verify"):
        verify_cosignatures(log.note() + forged, [parse_vkey(witness.vkey)])
    # Moved to another checkpoint, the genuine line does not verify either.
    log.grow(1)
    with pytest.raises(VerificationError):
        verify_cosignatures(log.note() + r.text, [parse_vkey(witness.vkey)])


def test_unknown_log_is_404(witness: WitnessProcess) -> None:
    other = Log("other.example/log")
    other.grow(2)
    r = post(witness, other.body(0))
    assert r.status_code == 404 and "unknown log" in r.text


def test_signature_by_another_key_is_403(witness: WitnessProcess, log: Log) -> None:
    log.grow(2)
    r = post(witness, log.body(0, note=log.note(key=Ed25519PrivateKey.generate())))
    assert r.status_code == 403
    # Nothing was recorded: the genuine checkpoint still goes in from 0.
    assert post(witness, log.body(0)).status_code == 200


def test_old_size_above_the_checkpoint_is_400(witness: WitnessProcess, log: Log) -> None:
    log.grow(4)
    assert post(witness, log.body(0)).status_code == 200
    r = post(witness, log.body(9, size=4, proof=[]))
    assert r.status_code == 400


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"old 0\n",  # no empty line, no checkpoint
        b"new 0\n\nx\n",
        b"old 01\n\n",
        b"old -1\n\n",
        b"old 0\nnot base64!\n\n",
        b"old 0\n" + base64.b64encode(b"short") + b"\n\n",
        b"old 0\n\nnot a checkpoint\n",
        b"\xff\xfe\n\n",
    ],
)
def test_malformed_bodies_are_400(witness: WitnessProcess, body: bytes) -> None:
    r = post(witness, body)
    assert r.status_code == 400, r.text


def test_more_than_63_proof_lines_is_400(witness: WitnessProcess, log: Log) -> None:
    log.grow(2)
    r = post(witness, log.body(1, proof=[b"\x00" * 32] * 64))
    assert r.status_code == 400 and "63" in r.text


def test_oversized_body_is_413(witness: WitnessProcess) -> None:
    r = post(witness, b"old 0\n" + b"A" * (MAX_BODY_BYTES + 10))
    assert r.status_code == 413


def test_wrong_old_size_is_409_with_the_recorded_size(witness: WitnessProcess, log: Log) -> None:
    log.grow(10)
    r = post(witness, log.body(3))  # the witness has seen nothing: its size is 0
    assert r.status_code == 409 and r.text == "0\n"
    assert r.headers["content-type"].startswith("text/x.tlog.size")
    assert post(witness, log.body(0)).status_code == 200
    log.grow(5)
    r = post(witness, log.body(0))
    assert r.status_code == 409 and r.text == "10\n"


def test_a_bad_consistency_proof_is_422_and_changes_nothing(witness: WitnessProcess, log: Log) -> None:
    log.grow(7)
    assert post(witness, log.body(0)).status_code == 200
    log.grow(9)
    good = consistency_proof(log.leaves, 7, 16)
    bad = [good[0][:-1] + bytes([good[0][-1] ^ 1]), *good[1:]]
    assert post(witness, log.body(7, proof=bad)).status_code == 422
    assert post(witness, log.body(7, proof=[])).status_code == 422
    r = post(witness, log.body(0, proof=[good[0]]))  # old 0 needs an empty proof
    assert r.status_code in (409, 422)
    assert post(witness, log.body(7)).status_code == 200


def test_a_split_view_is_refused(witness: WitnessProcess, log: Log) -> None:
    """A log that shows the witness another tree of a size it cosigned, or a fork of it, gets no cosignature."""
    log.grow(8)
    assert post(witness, log.body(0)).status_code == 200
    fork = Log(log.origin)
    fork.key, fork.vkey = log.key, log.vkey  # the same log key signing a different tree
    fork.grow(8, tag=b"b")
    r = post(witness, fork.body(8, proof=[]))
    assert r.status_code == 409 and r.text == "8\n"
    fork.grow(4, tag=b"b")
    assert post(witness, fork.body(8)).status_code == 422
    # The witness still holds the honest tree.
    log.grow(4)
    assert post(witness, log.body(8)).status_code == 200


def test_state_never_rolls_back_under_concurrent_submissions(witness: WitnessProcess, log: Log) -> None:
    import concurrent.futures

    log.grow(50)
    assert post(witness, log.body(0, size=10)).status_code == 200
    bodies = [log.body(10, size=s) for s in range(11, 51)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda b: post(witness, b).status_code, bodies))
    assert codes.count(200) >= 1 and set(codes) <= {200, 409}
    sizes = [
        int(line.split()[-1])
        for line in carvault("witness", "show", "--dir", str(witness.directory)).splitlines()[1:]
        if line.startswith(log.origin)
    ]
    won = [s for s, c in zip(range(11, 51), codes, strict=True) if c == 200]
    assert sizes == [max(won)]


def test_cli_refuses_bad_input(tmp_path: Path) -> None:
    import subprocess
    import sys

    directory = tmp_path / "w"
    carvault("witness", "init", "--name", "w.example/x", "--dir", str(directory))
    bad = subprocess.run(
        [sys.executable, "-m", "carvault", "witness", "add-log", "not-a-vkey", "--dir", str(directory)],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "not a log verifier key" in bad.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "carvault", "witness", "serve", "--dir", str(tmp_path / "none")],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 1 and "witness init" in missing.stderr
