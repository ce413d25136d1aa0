"""DrillStack: the drill environment (environment.py) plus the runbook's incident scenarios (scenarios.py).

    with DrillStack() as stack:
        stack.env            # RUNBOOK_* variables pointing every runbook setting at the stack
        stack.settings()     # runbook.settings.Settings built from stack.env (os.environ untouched)
        stack.inject("bad-deploy"); stack.health(); stack.repair("bad-deploy"); stack.healthy("bad-deploy")
        stack.reset()        # back to the seeded baseline

The scenarios operate on a DrillEnvironment and never import this module, so the two do not import each other.
"""

from __future__ import annotations

from typing import Any

from runbook.drill.environment import DrillEnvironment
from runbook.drill.scenarios import get_scenario
from runbook.errors import DrillError


class DrillStack(DrillEnvironment):
    """The drill environment, and the scenarios that break and repair it by name."""

    def inject(self, name: str, **params: Any) -> dict[str, str]:
        """Break the running stack the way scenario `name` describes; return (and apply) its env changes."""
        scenario = get_scenario(name)
        try:
            changes = scenario.inject(self, **params) or {}
        except DrillError:
            raise
        except Exception as exc:
            raise DrillError(f"could not inject {name}: {type(exc).__name__}: {exc}") from exc
        self.env.update(changes)
        self.active[name] = dict(params)
        return dict(changes)

    def repair(self, name: str) -> None:
        """Apply scenario `name`'s documented manual repair."""
        try:
            get_scenario(name).repair(self)
        except DrillError:
            raise
        except Exception as exc:
            raise DrillError(f"could not repair {name}: {type(exc).__name__}: {exc}") from exc
        self.active.pop(name, None)

    def healthy(self, name: str) -> bool:
        """Return True when what scenario `name` breaks works again."""
        return get_scenario(name).healthy(self)
