"""`python -m runbook.cli …`: the same as the `runbook` console script."""

from runbook.cli.main import main

raise SystemExit(main())
