"""`runbook freeze --reason … --by … [--environment E]` and `runbook unfreeze --by … [--environment E]`: the kill
switch of remediations, kept in the incident store (the `freeze-remediations` / `unfreeze-remediations`
deployments do the same from the Prefect UI).

While a freeze holds, every remediation stops after its plan (as a dry run) and says why; monitoring, paging and
communication go on. Without --environment a freeze holds every environment, drills included; an unfreeze without it
lifts every freeze in force.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from runbook import guardrails
from runbook.store import open_store


def register(sub: Any) -> None:
    """Add `runbook freeze` and `runbook unfreeze`."""
    p = sub.add_parser("freeze", help="stop every remediation after its plan (a kill switch); monitoring goes on")
    p.add_argument("--reason", required=True, help="why (shown to everyone a remediation stops for)")
    p.add_argument("--by", required=True, help="who freezes")
    p.add_argument("--environment", help="only this environment (default: every environment, drills included)")
    p.set_defaults(func=lambda a: asyncio.run(_freeze(a)))

    p = sub.add_parser("unfreeze", help="lift a freeze: remediations act again (after their approval)")
    p.add_argument("--by", required=True, help="who lifts it")
    p.add_argument("--environment", help="only this environment's freeze (default: every freeze in force)")
    p.set_defaults(func=lambda a: asyncio.run(_unfreeze(a)))


async def _freeze(args: argparse.Namespace) -> int:
    async with open_store() as store:
        held, created = await guardrails.freeze(store, args.environment, reason=args.reason, by=args.by)
    print(guardrails.freeze_report(created, held))
    return 0


async def _unfreeze(args: argparse.Namespace) -> int:
    async with open_store() as store:
        lifted = await guardrails.unfreeze(store, args.environment, by=args.by)
    print(guardrails.unfreeze_report(lifted, args.environment))
    return 0
