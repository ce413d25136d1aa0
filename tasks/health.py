"""Health tasks: the app's /api/health and auth endpoint, probes with timings, OpenAI and vendor status pages."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from runbook.clients.app import AppClient, AppHealth, AuthProbe
from runbook.clients.health import HealthClient, ProbeResult, VendorStatus, probe
from runbook.clients.openai import OpenAIClient, OpenAILiveness
from runbook.models import EventKind
from runbook.settings import get_settings
from tasks.common import open_client
from tasks.incident import record


@task(name="check_app_health", retries=0, timeout_seconds=60, cache_policy=NO_CACHE)
async def check_app_health(incident_id: str | None = None, purpose: str = "check") -> AppHealth:
    """GET the app's /api/health (the runbook's first curl) and record the result."""
    async with open_client(AppClient) as app:
        health = await app.health()
    await record(incident_id, EventKind.CHECK,
                 f"/api/health → {health.status_code} ({health.latency_ms:.0f} ms) [{purpose}]",
                 {"check": "app_health", "ok": health.ok, "status_code": health.status_code,
                  "latency_ms": health.latency_ms, "body": health.body, "purpose": purpose})
    return health


@task(name="check_auth_endpoint", retries=0, timeout_seconds=60, cache_policy=NO_CACHE)
async def check_auth_endpoint() -> AuthProbe:
    """POST /api/auth/profile without a token: 401 means the auth endpoint is alive."""
    async with open_client(AppClient) as app:
        return await app.auth_probe()


@task(name="probe_health_timing", retries=0, timeout_seconds=60, cache_policy=NO_CACHE)
async def probe_health_timing() -> ProbeResult:
    """Probe /api/health with a curl -w style timing breakdown."""
    settings = get_settings()
    return await probe(f"{settings.app_url}/api/health", expect=[200])


@task(name="check_openai", retries=0, timeout_seconds=60, cache_policy=NO_CACHE)
async def check_openai() -> OpenAILiveness:
    """GET OpenAI /v1/models (the runbook's third-party check)."""
    async with open_client(OpenAIClient) as oa:
        return await oa.liveness()


@task(name="check_vendor_statuses", retries=0, timeout_seconds=60, cache_policy=NO_CACHE)
async def check_vendor_statuses() -> list[VendorStatus]:
    """Read the vendors' public status pages (Supabase, Vercel, OpenAI, Stripe)."""
    async with open_client(HealthClient) as hc:
        return await hc.vendor_statuses()
