"""The drill environment: a local stand-in of the production stack and the runbook's incident scenarios.

    from runbook.drill import DrillStack, SCENARIOS, Fault
    with DrillStack() as stack:
        stack.inject("bad-deploy")
        ...

See environment.py for the interface, scenarios.py for the scenarios (stack.py runs them by name), faults.py for
fault injection.
"""

from runbook.drill.faults import Fault, RecordedRequest
from runbook.drill.scenarios import SCENARIOS, Scenario, get_scenario
from runbook.drill.stack import DrillStack

__all__ = ["SCENARIOS", "DrillStack", "Fault", "RecordedRequest", "Scenario", "get_scenario"]
