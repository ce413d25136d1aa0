"""The kill switch of remediations as flows for the Prefect UI: `freeze-remediations` and `unfreeze-remediations`
(the same as `runbook freeze` / `runbook unfreeze`, kept in the incident store).

While a freeze holds an environment (or every one, drills included) every remediation stops after its plan, as a
dry run, and says why; monitoring, paging and communication go on.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow, get_run_logger
from pydantic import BaseModel, Field

from runbook import guardrails
from runbook.models import ONE_LINE
from runbook.store import open_store
from tasks.common import run_parameter

ENVIRONMENT = Field(None, pattern=guardrails.ENVIRONMENT_PATTERN,
                    description="Only this environment (empty: every environment, drills included)")


class FreezeParams(BaseModel):
    """Freeze remediations."""

    reason: str = Field(..., min_length=1, max_length=500, description="Why (shown wherever a remediation stops)")
    by: str = Field(..., min_length=1, max_length=100, description="Who freezes")
    environment: Annotated[str, ONE_LINE] | None = ENVIRONMENT


class UnfreezeParams(BaseModel):
    """Lift a freeze."""

    by: str = Field(..., min_length=1, max_length=100, description="Who lifts it")
    environment: Annotated[str, ONE_LINE] | None = Field(None, pattern=guardrails.ENVIRONMENT_PATTERN,
                                    description="Only this environment's freeze (empty: every freeze in force)")


class FreezeOutcome(BaseModel):
    """What the freeze command did, in one line, and the freezes in force after it."""

    summary: str
    frozen: list[str] = Field(default_factory=list, description="The freezes in force afterwards")


async def _outcome(summary: str) -> FreezeOutcome:
    async with open_store() as store:
        held = await store.freezes()
    get_run_logger().warning(summary) if held else get_run_logger().info(summary)
    return FreezeOutcome(summary=summary, frozen=[guardrails.freeze_line(f) for f in held])


@flow(name="freeze-remediations", flow_run_name=lambda: f"freeze-remediations by {run_parameter('by')}")
async def freeze_remediations(params: FreezeParams) -> FreezeOutcome:
    """Freeze remediations: each stops after its plan until unfrozen."""
    async with open_store() as store:
        held, created = await guardrails.freeze(store, params.environment, reason=params.reason, by=params.by)
    return await _outcome(guardrails.freeze_report(created, held))


@flow(name="unfreeze-remediations", flow_run_name=lambda: f"unfreeze-remediations by {run_parameter('by')}")
async def unfreeze_remediations(params: UnfreezeParams) -> FreezeOutcome:
    """Lift a freeze of remediations."""
    async with open_store() as store:
        lifted = await guardrails.unfreeze(store, params.environment, by=params.by)
    return await _outcome(guardrails.unfreeze_report(lifted, params.environment))
