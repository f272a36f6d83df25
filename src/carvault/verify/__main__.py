"""`python -m carvault.verify PACKAGE ...`: the offline verifier alone (the same as `carvault verify`)."""

from carvault.verify.cli import main

raise SystemExit(main())
