"""`python -m carvault.verify PACKAGE ...`: the offline verifier alone (the same as `carvault verify`)."""

from carvault.verify.cli import exit_process, main

exit_process(main())
