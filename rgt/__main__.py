"""`python -m rgt` is the same as the `rgt` console script."""

from rgt.cli import main

raise SystemExit(main())
