"""The exit codes of `carvault verify` (docs/incident-package.md §4), apart so the command line can report a usage
error, or print its help, without loading the verification kernel (pyarrow, NumPy, cryptography)."""

EXIT_VERIFIED = 0
EXIT_FAILED = 1
EXIT_NOT_ANCHORED = 2
EXIT_UNREADABLE = 3
EXIT_USAGE = 4
