"""Stripe resend: ask Stripe to deliver failed events to the endpoint again (what `stripe events resend` does).

Stripe signs each delivery afresh with the endpoint's secret and marks the event delivered when the app answers
2xx, so the failed-deliveries list clears (a direct replay to the app would leave Stripe retrying for days).
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from runbook.clients.stripe import ReplayResult, StripeClient
from runbook.errors import InputError, IntegrationError
from runbook.models import EventKind
from tasks.common import open_client
from tasks.incident import record


def _check(value: str, prefix: str) -> str:
    if not value.startswith(prefix) or any(c in value for c in "/?#& \t\n"):
        raise InputError(f"not a Stripe id ({prefix}…): {value[:40]!r}")
    return value


@task(name="resend_events", retries=0, timeout_seconds=600, cache_policy=NO_CACHE)
async def resend_events(incident_id: str | None, event_ids: list[str], endpoint_id: str) -> list[ReplayResult]:
    """Ask Stripe to redeliver each event to the endpoint; ok when no delivery is pending afterwards."""
    _check(endpoint_id, "we_")
    results: list[ReplayResult] = []
    async with open_client(StripeClient) as sc:
        for event_id in event_ids:
            try:
                _check(event_id, "evt_")

                async def call(eid: str = event_id) -> Any:
                    return await sc._sdk.raw_request_async("post", f"/v1/events/{eid}/retry",
                                                           webhook_endpoint=endpoint_id)

                response = await sc._call("resend event", call)
            except (IntegrationError, InputError) as exc:
                results.append(ReplayResult(event_id=event_id, ok=False, detail=str(exc)))
                continue
            pending = int((response.data or {}).get("pending_webhooks") or 0)
            results.append(ReplayResult(event_id=event_id, ok=pending == 0, status=200,
                                        detail="delivered" if pending == 0 else f"still pending for {pending}"))
    ok = sum(r.ok for r in results)
    await record(incident_id, EventKind.NOTE, f"Asked Stripe to resend {len(results)} event(s): {ok} delivered",
                 {"results": [r.model_dump() for r in results], "endpoint_id": endpoint_id}, actor="stripe")
    return results
