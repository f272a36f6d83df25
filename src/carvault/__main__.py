"""The `carvault` command's entry point (also `python -m carvault`).

`carvault verify` goes straight to the lean offline verifier, which must start in a fraction of a second on
any computer; every other command loads the full command line (typer, the region, the server).
"""

from __future__ import annotations

import sys


def main() -> None:
    """Dispatch `verify` before anything heavy is imported; everything else to carvault.cli."""
    if sys.argv[1:2] == ["verify"]:
        from carvault.verify.cli import exit_process
        from carvault.verify.cli import main as verify_main

        exit_process(verify_main(sys.argv[2:]))
    from carvault.cli import main as full_main

    full_main()


if __name__ == "__main__":
    main()
