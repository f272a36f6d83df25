"""Copy the portal's browser libraries from node_modules (after `npm ci`) into the package, and record them.

Run by `make vendor-js`. The copied files are committed: installs, the server and CI never need npm, and
nothing is fetched at run time. VENDOR.json pins what was copied (version, npm integrity, SHA-256 of each
file); tests/web/portal/test_portal_http.py checks it against package-lock.json and the files.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET = HERE.parent / "src" / "carvault" / "web" / "static" / "vendor"
FILES = {"uplot": {"uPlot.iife.min.js": "dist/uPlot.iife.min.js", "uPlot.min.css": "dist/uPlot.min.css",
                   "uPlot.LICENSE.txt": "LICENSE"}}


def main() -> None:
    lock = json.loads((HERE / "package-lock.json").read_text())
    manifest = json.loads((TARGET / "VENDOR.json").read_text())
    for name, files in FILES.items():
        locked = lock["packages"][f"node_modules/{name}"]
        entry = {"version": locked["version"], "license": locked.get("license", ""),
                 "integrity": locked["integrity"], "files": {}}
        for dest, src in files.items():
            shutil.copyfile(HERE / "node_modules" / name / src, TARGET / dest)
            entry["files"][dest] = {"from": src, "sha256": hashlib.sha256((TARGET / dest).read_bytes()).hexdigest()}
        manifest["packages"][name] = entry
    (TARGET / "VENDOR.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"vendored {', '.join(FILES)} into {TARGET}")


if __name__ == "__main__":
    main()
