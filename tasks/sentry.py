"""Sentry tasks: error counts and rates over a window."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from runbook.clients.sentry import ErrorRate, SentryClient
from tasks.common import open_client


@task(name="read_error_rate", retries=0, timeout_seconds=120, cache_policy=NO_CACHE)
async def read_error_rate(window_minutes: float = 15, requests: int | None = None) -> ErrorRate:
    """Return the error count and rate over the last window, as % of requests when a request count is known.

    Without `requests`, the request count is Sentry's transaction count (None, so no percentage, when the
    organisation has no performance monitoring).
    """
    async with open_client(SentryClient) as sc:
        return await sc.error_rate(f"{int(window_minutes)}m", requests=requests)
