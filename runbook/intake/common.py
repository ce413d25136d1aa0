"""What every sender's routes share: the body limit, the rejection answer, keeping a payload that was not turned
into an incident, and starting `declare-incident` through Prefect's API."""

from __future__ import annotations

import logging
from typing import Any, Literal

from starlette.responses import JSONResponse

from runbook.models import Alert

DECLARE_DEPLOYMENT = "declare-incident/declare-incident"
MAX_BODY_BYTES = 1_000_000
Respond = Literal["deployment", "inline", "none"]

log = logging.getLogger("runbook.intake")


def rejected(status: int, message: str, **extra: Any) -> JSONResponse:
    """Return the intake's rejection answer: `{"status": "rejected", "error": …}` with the HTTP status."""
    return JSONResponse({"status": "rejected", "error": message, **extra}, status_code=status)


async def keep_raw(raw: dict[str, Any], reason: str) -> int | None:
    """Keep a payload that was not turned into an incident, with the reason; return its id (None if impossible)."""
    from runbook.store import open_store

    try:
        async with open_store() as store:
            return await store.store_raw_alert(raw, error=reason)
    except Exception as exc:  # the store is down: say so in the log, still answer the sender
        log.error("could not keep the raw alert (%s): %s", type(exc).__name__, exc)
        return None


async def start_declare(alert: Alert, respond: Respond) -> str:
    """Start declare-incident for a validated alert through Prefect's API; return the flow-run id."""
    from prefect.deployments.flow_runs import arun_deployment

    run = await arun_deployment(
        DECLARE_DEPLOYMENT,
        parameters={"params": {"alert": alert.model_dump(mode="json"), "respond": respond}},
        timeout=0,
        flow_run_name=f"declare {alert.summary[:60]}",
        tags=["intake", alert.source],
    )
    return str(run.id)
