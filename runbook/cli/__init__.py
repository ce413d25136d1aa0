"""The `runbook` command line: one module per command group; main.py assembles them.

    main.py       the parser, `runbook config`, `main` (the console script `runbook = "runbook.cli:main"`)
    incidents.py  `runbook incidents list|show`, `runbook ack`
    report.py     `runbook report`, `runbook metrics`
    preflight.py  `runbook check`: one harmless authenticated call per configured integration
    intake.py     `runbook intake`: the alert intake's HTTP server
`runbook stack` and `runbook scenarios` come from runbook/drill/cli.py; `runbook up` and `runbook drill` run flows,
so they live in deployments/ (up.py, drill.py) and are registered as entry points of the group `runbook.commands`.
New command groups (incident lifecycle, freezes, …) get their own module here and a line in main.COMMAND_GROUPS.
"""

from runbook.cli.main import main

__all__ = ["main"]
