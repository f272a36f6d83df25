"""Regenerate the Fleet Telemetry protobuf module from its schema (docs/fleet-telemetry.md §Schema).

The schema, src/carvault/protocol/fleet_telemetry/vehicle_data.proto, is the one source; vehicle_data_pb2.py is
generated from it with ``protoc`` (Debian: ``apt-get install protobuf-compiler``) and committed, so installing
CarVault needs no compiler. tests/ingest/test_fleet_telemetry_schema.py fails when the two disagree.

    .venv/bin/python scripts/gen_fleet_protos.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "carvault" / "protocol" / "fleet_telemetry"


def main() -> int:
    """Run protoc on the package's .proto files, writing the _pb2 modules beside them."""
    protoc = shutil.which("protoc")
    if protoc is None:
        print("protoc is not installed (Debian: apt-get install protobuf-compiler)", file=sys.stderr)
        return 1
    protos = sorted(p.name for p in PACKAGE.glob("*.proto"))
    subprocess.run(
        [protoc, f"--proto_path={PACKAGE}", f"--python_out={PACKAGE}", f"--pyi_out={PACKAGE}", *protos], check=True
    )
    print(f"generated {', '.join(p.replace('.proto', '_pb2.py') for p in protos)} in {PACKAGE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
