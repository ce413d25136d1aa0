"""What the PagerDuty stand-in was asked to page, for the escalation tests (flows and e2e)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from runbook.clock import ManualClock, use_clock
from runbook.models import Incident
from tests.waiting import eventually

if TYPE_CHECKING:
    from runbook.drill import DrillStack


def paged_roles(stack: DrillStack) -> list[str]:
    """Return the roles paged so far (Events v2 triggers), in order."""
    return [r.body["payload"]["custom_details"]["role"] for r in stack.pagerduty.requests
            if r.path.endswith("/enqueue") and r.body.get("event_action") == "trigger"]


async def paged(stack: DrillStack, count: int) -> list[str]:
    """Wait until at least `count` pages went out; return the roles."""
    return await eventually(lambda: len(paged_roles(stack)) >= count and paged_roles(stack), f"{count} page(s)")


@contextmanager
def clock_stopped_at_declaration(incident: Incident) -> Iterator[ManualClock]:
    """Stop the escalation's clock at the moment the incident was declared (advance it by hand)."""
    with use_clock(ManualClock(incident.created_at)) as fixed:
        assert isinstance(fixed, ManualClock)
        yield fixed
