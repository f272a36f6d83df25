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
# axe-core only runs in the accessibility tests: it is vendored next to them, not served by the portal.
TEST_TARGET = HERE.parent / "tests" / "web" / "portal" / "vendor"
FILES = {
    "uplot": {"uPlot.iife.min.js": "dist/uPlot.iife.min.js", "uPlot.min.css": "dist/uPlot.min.css",
              "uPlot.LICENSE.txt": "LICENSE"},
    "leaflet": {"leaflet.js": "dist/leaflet.js", "leaflet.css": "dist/leaflet.css", "leaflet.LICENSE.txt": "LICENSE",
                "images/marker-icon.png": "dist/images/marker-icon.png",
                "images/marker-icon-2x.png": "dist/images/marker-icon-2x.png",
                "images/marker-shadow.png": "dist/images/marker-shadow.png",
                "images/layers.png": "dist/images/layers.png", "images/layers-2x.png": "dist/images/layers-2x.png"},
    "swagger-ui-dist": {"swagger-ui-bundle.js": "swagger-ui-bundle.js", "swagger-ui.css": "swagger-ui.css",
                        "swagger-ui.LICENSE.txt": "LICENSE", "swagger-ui.NOTICE.txt": "NOTICE"},
}
TEST_FILES = {"axe-core": {"axe.min.js": "axe.min.js", "axe-core.LICENSE.txt": "LICENSE"}}


def main() -> None:
    lock = json.loads((HERE / "package-lock.json").read_text())
    copy(lock, FILES, TARGET)
    copy(lock, TEST_FILES, TEST_TARGET)
    print(f"vendored {', '.join(FILES)} into {TARGET} and {', '.join(TEST_FILES)} into {TEST_TARGET}")


def copy(lock: dict, packages: dict[str, dict[str, str]], target: Path) -> None:
    """Copy each package's files into ``target`` and record them in its VENDOR.json."""
    manifest_path = target / "VENDOR.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
    else:
        target.mkdir(parents=True, exist_ok=True)
        manifest = {"about": "Third-party browser code used only by the tests; refresh with `make vendor-js`.",
                    "packages": {}}
    for name, files in packages.items():
        locked = lock["packages"][f"node_modules/{name}"]
        entry = {"version": locked["version"], "license": locked.get("license", ""),
                 "integrity": locked["integrity"], "files": {}}
        for dest, src in files.items():
            (target / dest).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(HERE / "node_modules" / name / src, target / dest)
            entry["files"][dest] = {"from": src, "sha256": hashlib.sha256((target / dest).read_bytes()).hexdigest()}
        manifest["packages"][name] = entry
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
