"""Sentry tasks: error counts and rates over a window."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from runbook.clients.sentry import ErrorRate, SentryClient, Traffic, stats_period
from tasks.common import open_client


@task(name="read_error_rate", retries=0, timeout_seconds=120, cache_policy=NO_CACHE)
async def read_error_rate(window_minutes: float = 15, requests: int | None = None) -> ErrorRate:
    """Return the error count and rate over the last window, as % of requests when a request count is known.

    Without `requests`, the request count is Sentry's transaction count (None, so no percentage, when the
    organisation has no performance monitoring).
    """
    async with open_client(SentryClient) as sc:
        return await sc.error_rate(f"{int(window_minutes)}m", requests=requests)


@task(name="read_traffic", retries=0, timeout_seconds=120, cache_policy=NO_CACHE)
async def read_traffic(window_minutes: float = 5, auth_window_minutes: float = 1, endpoint: str = "/api/auth/profile",
                       statuses: list[int] | None = None) -> Traffic:
    """Return the requests served over the window and the failed logins (401/403 on the auth endpoint)."""
    async with open_client(SentryClient) as sc:
        return await sc.traffic(stats_period(int(window_minutes * 60))[0],
                                auth_window=stats_period(int(auth_window_minutes * 60))[0], endpoint=endpoint,
                                statuses=statuses if statuses is not None else [401, 403])
