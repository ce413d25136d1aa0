"""Stripe tasks: the billing webhook's endpoint, failed deliveries, secret, live probe and replay."""

from __future__ import annotations

from datetime import timedelta

from prefect import task
from prefect.cache_policies import NO_CACHE

from runbook.clients.stripe import (
    EndpointCheck,
    FailedEvent,
    ReplayResult,
    SecretCheck,
    StripeClient,
    WebhookProbe,
)
from runbook.clients.vercel import VercelClient
from runbook.errors import InputError
from runbook.models import EventKind
from runbook.settings import get_settings
from tasks.common import open_client
from tasks.incident import record


@task(name="check_webhook_endpoint", retries=0, timeout_seconds=120, cache_policy=NO_CACHE)
async def check_webhook_endpoint() -> EndpointCheck:
    """Check the app's webhook endpoint is registered and enabled for the right events."""
    async with open_client(StripeClient) as sc:
        return await sc.check_webhook_endpoint()


@task(name="list_failed_events", retries=0, timeout_seconds=120, cache_policy=NO_CACHE)
async def list_failed_events(window_minutes: float = 24 * 60) -> list[FailedEvent]:
    """Return events whose delivery failed in the window (Stripe keeps 30 days)."""
    async with open_client(StripeClient) as sc:
        return await sc.failed_events(timedelta(minutes=window_minutes))


@task(name="check_webhook_secret", retries=0, timeout_seconds=120, cache_policy=NO_CACHE)
async def check_webhook_secret() -> SecretCheck:
    """Compare the endpoint secret with the app's (Vercel env) by fingerprint, never by value."""
    settings = get_settings()
    async with open_client(StripeClient, settings) as sc:
        if settings.vercel_token:
            async with open_client(VercelClient, settings) as vc:
                return await sc.check_webhook_secret(vc)
        return await sc.check_webhook_secret()


@task(name="probe_webhook", retries=0, timeout_seconds=120, cache_policy=NO_CACHE)
async def probe_webhook() -> WebhookProbe:
    """Probe the app's webhook: unsigned → 400 expected, correctly signed harmless event → 2xx expected."""
    async with open_client(StripeClient) as sc:
        return await sc.probe_webhook()


@task(name="replay_events", retries=0, timeout_seconds=600, cache_policy=NO_CACHE)
async def replay_events(incident_id: str | None, event_ids: list[str]) -> list[ReplayResult]:
    """Re-deliver failed events to the app with fresh signatures."""
    async with open_client(StripeClient) as sc:
        results = await sc.replay_events(event_ids)
    ok = sum(r.ok for r in results)
    await record(incident_id, EventKind.NOTE, f"Replayed {len(results)} Stripe event(s) to the app: {ok} accepted",
                 {"results": [r.model_dump() for r in results]}, actor="stripe")
    return results


# -- resend: Stripe re-delivers failed events itself ---------------------------------------------------------

def _check(value: str, prefix: str) -> str:
    if not value.startswith(prefix) or any(c in value for c in "/?#& \t\n"):
        raise InputError(f"not a Stripe id ({prefix}…): {value[:40]!r}")
    return value


@task(name="resend_events", retries=0, timeout_seconds=600, cache_policy=NO_CACHE)
async def resend_events(incident_id: str | None, event_ids: list[str], endpoint_id: str) -> list[ReplayResult]:
    """Ask Stripe to redeliver each event to the endpoint; ok only once a re-read shows no delivery pending.

    Stripe answers a resend before it delivers, so the client re-reads each event (`StripeClient.resend_events`).
    """
    _check(endpoint_id, "we_")
    results: list[ReplayResult] = []
    valid: list[str] = []
    for event_id in event_ids:
        try:
            valid.append(_check(event_id, "evt_"))
        except InputError as exc:
            results.append(ReplayResult(event_id=event_id[:40], ok=False, detail=str(exc)))
    async with open_client(StripeClient) as sc:
        results.extend(await sc.resend_events(valid, endpoint_id))
    ok = sum(r.ok for r in results)
    await record(incident_id, EventKind.NOTE, f"Asked Stripe to resend {len(results)} event(s): {ok} delivered",
                 {"results": [r.model_dump() for r in results], "endpoint_id": endpoint_id}, actor="stripe")
    return results
