"""Sentry: error count, request count and error rate over a window, and the error time series (Discover events API).

Requests served are the `spans` dataset's segment spans (`is_transaction:true`, one per request the SDK traces):
the dataset the events endpoint documents for spans and transactions (`transactions` is no longer among its
datasets; see tests/contracts/specs/sentry.json). `traffic()` reads the request count, the requests per route
(segment spans grouped by `transaction`, the feature-usage mix) and the failed logins (segment spans of the auth
endpoint with `span.status_code` 401/403; https://docs.sentry.io/concepts/search/searchable-properties/spans).

A reading Sentry refuses (a 4xx: the query or dataset rejected, no access, no tracing) is a named gap, never an
error and never silent: the count is None, `gaps` names the reading with Sentry's own message, and a warning is
logged once per reading and message.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field

from runbook.clients._http import (
    DEFAULT_POLICY,
    BaseClient,
    HttpClient,
    RetryPolicy,
    Sleeper,
    require,
    secret_value,
    settings_secrets,
)
from runbook.errors import AuthError, InputError, RequestRejected
from runbook.settings import Settings

VENDOR = "sentry"
SPANS = "spans"
SEGMENTS = "is_transaction:true"  # segment spans: one per request served (what `transactions` used to count)
log = logging.getLogger("runbook.clients.sentry")


class ErrorRate(BaseModel):
    """Errors in a window: count, per minute, and % of requests when the request count is known."""

    count: int
    window_s: int
    per_minute: float
    requests: int | None = None
    percent_of_requests: float | None = None
    requests_gap: str | None = Field(default=None, description="Why the request count is unavailable, if it is")


ROUTE_PAGE = 100  # Discover's largest page: the busiest routes, enough for a usage mix


class RouteCounts(BaseModel):
    """Requests per route (Sentry transaction name) over a window, busiest first."""

    counts: dict[str, int]
    complete: bool = Field(description="False when the page was full: routes past it are not listed, not unused")


class Traffic(BaseModel):
    """Requests served (transactions) and failed logins over their windows; None when Sentry cannot count them."""

    requests: int | None
    window_s: int
    auth_failures: int | None
    auth_window_s: int
    routes: RouteCounts | None = Field(default=None, description="Requests per route over `window_s`")
    gaps: dict[str, str] = Field(default_factory=dict, description="Reading (requests, auth_failures, routes) → "
                                 "why Sentry could not count it; empty when every reading was counted")

    @property
    def requests_per_minute(self) -> float | None:
        """Return the request rate per minute over the window."""
        return None if self.requests is None else round(self.requests / (self.window_s / 60), 3)

    @property
    def auth_failures_per_minute(self) -> float | None:
        """Return the failed logins per minute over the auth window."""
        return None if self.auth_failures is None else round(self.auth_failures / (self.auth_window_s / 60), 3)


def _search_value(value: str) -> str:
    """Quote a Discover search value when it holds characters the search syntax treats specially."""
    return f'"{value}"' if any(c in value for c in ' :"[],') else value


class SeriesPoint(BaseModel):
    """One bucket of the error time series."""

    timestamp: datetime
    count: int


def stats_period(window: timedelta | int | str) -> tuple[str, int]:
    """Return Sentry's `statsPeriod` and the window in seconds, for a timedelta, seconds or '15m'."""
    if isinstance(window, str):
        units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
        number, unit = window[:-1], window[-1:]
        if not number.isdigit() or unit not in units:
            raise InputError(f"not a Sentry period (like 15m, 1h): {window[:20]!r}")
        return window, int(number) * units[unit]
    seconds = int(window.total_seconds()) if isinstance(window, timedelta) else int(window)
    if seconds <= 0:
        raise InputError("the window must be positive")
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h", seconds
    if seconds % 60 == 0:
        return f"{seconds // 60}m", seconds
    return f"{seconds}s", seconds


class SentryClient(BaseClient):
    """Typed client of one Sentry organisation and project."""

    vendor = VENDOR

    def __init__(self, http: HttpClient, org: str, project: str) -> None:
        super().__init__(http)
        self.org = org
        self.project = project
        self.gaps: dict[str, str] = {}
        self._warned: set[tuple[str, str]] = set()

    def _gap(self, reading: str, exc: AuthError | RequestRejected) -> None:
        """Record (and log, once per reading and message) that Sentry refused a reading."""
        status = f"HTTP {exc.status}" if exc.status else "refused"
        reason = f"Sentry refused the {reading} query ({status}: {exc.detail or 'no detail'})"
        self.gaps[reading] = reason
        if (reading, reason) not in self._warned:
            self._warned.add((reading, reason))
            log.warning("sentry %s is a gap: %s", reading, reason)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, policy: RetryPolicy = DEFAULT_POLICY, sleep: Sleeper = asyncio.sleep
    ) -> SentryClient:
        """Build from settings; NotConfigured names RUNBOOK_SENTRY_TOKEN / _ORG / _PROJECT when unset."""
        require(VENDOR, settings, "sentry_token", "sentry_org", "sentry_project")
        http = HttpClient(
            VENDOR,
            settings.sentry_url.rstrip("/"),
            headers={"Authorization": f"Bearer {secret_value(settings.sentry_token)}"},
            policy=policy,
            secrets=settings_secrets(settings),
            sleep=sleep,
        )
        return cls(http, settings.sentry_org or "", settings.sentry_project or "")

    async def _discover(self, dataset: str, window: timedelta | int | str, operation: str, *,
                        fields: tuple[str, ...] = ("count()",), **extra: Any) -> list[Any]:
        """Return the rows of one Discover events query (`extra`: query, sort, per_page)."""
        period, _ = stats_period(window)
        params: dict[str, Any] = {"dataset": dataset, "field": list(fields), "project": self.project,
                                  "statsPeriod": period, **{k: v for k, v in extra.items() if v}}
        body = await self.http.json(
            "GET", f"/api/0/organizations/{self.org}/events/", operation=operation, params=params)
        rows = body.get("data", []) if isinstance(body, dict) else []
        return rows if isinstance(rows, list) else []

    async def _count(self, dataset: str, window: timedelta | int | str, operation: str, query: str | None = None
                     ) -> int:
        rows = await self._discover(dataset, window, operation, query=query)
        return int(rows[0].get("count()", 0) or 0) if rows and isinstance(rows[0], dict) else 0

    async def error_count(self, window: timedelta | int | str = "15m") -> int:
        """Return the number of error events in the last `window`."""
        return await self._count("errors", window, "count errors")

    async def request_count(self, window: timedelta | int | str = "15m") -> int | None:
        """Return the requests served (segment spans) in the last `window`; None (a named gap) when refused."""
        self.gaps.pop("requests", None)
        try:
            return await self._count(SPANS, window, "count requests", SEGMENTS)
        except (AuthError, RequestRejected) as exc:
            self._gap("requests", exc)
            return None

    async def auth_failure_count(self, window: timedelta | int | str = "1m", *, endpoint: str = "/api/auth/profile",
                                 statuses: tuple[int, ...] | list[int] = (401, 403)) -> int | None:
        """Return the requests to the auth endpoint answered with one of `statuses`; None (a named gap) if refused."""
        codes = ",".join(str(int(c)) for c in statuses)
        query = f"{SEGMENTS} transaction:{_search_value(endpoint)} span.status_code:[{codes}]"
        self.gaps.pop("auth_failures", None)
        try:
            return await self._count(SPANS, window, "count failed logins", query)
        except (AuthError, RequestRejected) as exc:
            self._gap("auth_failures", exc)
            return None

    async def route_counts(self, window: timedelta | int | str = "5m") -> RouteCounts | None:
        """Return the requests per route (segment spans grouped by name, busiest first); None (a gap) if refused."""
        self.gaps.pop("routes", None)
        try:
            rows = await self._discover(SPANS, window, "count requests per route", fields=("transaction", "count()"),
                                        query=SEGMENTS, sort="-count()", per_page=ROUTE_PAGE)
        except (AuthError, RequestRejected) as exc:
            self._gap("routes", exc)
            return None
        counts: dict[str, int] = {}
        for row in rows:
            if isinstance(row, dict) and isinstance(row.get("transaction"), str):
                counts[row["transaction"]] = counts.get(row["transaction"], 0) + int(row.get("count()") or 0)
        return RouteCounts(counts=counts, complete=len(rows) < ROUTE_PAGE)

    async def traffic(self, window: timedelta | int | str = "5m", *, auth_window: timedelta | int | str = "1m",
                      endpoint: str = "/api/auth/profile",
                      statuses: tuple[int, ...] | list[int] = (401, 403)) -> Traffic:
        """Return the requests served and per route over `window`, and the failed logins over `auth_window`."""
        _, seconds = stats_period(window)
        _, auth_seconds = stats_period(auth_window)
        requests, failures, routes = await asyncio.gather(
            self.request_count(window),
            self.auth_failure_count(auth_window, endpoint=endpoint, statuses=statuses),
            self.route_counts(window))
        gaps = {k: v for k, v in self.gaps.items() if k in ("requests", "auth_failures", "routes")}
        return Traffic(requests=requests, window_s=seconds, auth_failures=failures, auth_window_s=auth_seconds,
                       routes=routes, gaps=gaps)

    async def error_rate(self, window: timedelta | int | str = "15m", *, requests: int | None = None) -> ErrorRate:
        """Return the error count, errors per minute and errors as % of requests (Sentry's request count if not given).

        The percentage is None when the request count is unavailable or zero, and at most 100 (errors reported
        outside a request, such as background jobs, are not requests).
        """
        _, seconds = stats_period(window)
        count = await self.error_count(window)
        gap = None
        if requests is None:
            requests = await self.request_count(window)
            gap = self.gaps.get("requests") if requests is None else None
        percent = min(100.0, round(100.0 * count / requests, 3)) if requests else None
        return ErrorRate(
            count=count,
            window_s=seconds,
            per_minute=round(count / (seconds / 60), 3),
            requests=requests,
            percent_of_requests=percent,
            requests_gap=gap,
        )

    async def error_series(self, window: timedelta | int | str = "30m", interval: int = 60) -> list[SeriesPoint]:
        """Return error counts per `interval` seconds over `window` (events-timeseries)."""
        period, _ = stats_period(window)
        body = await self.http.json(
            "GET",
            f"/api/0/organizations/{self.org}/events-timeseries/",
            operation="error time series",
            params={
                "dataset": "errors",
                "yAxis": "count()",
                "project": self.project,
                "statsPeriod": period,
                "interval": interval,
            },
        )
        return _series(body)


def _series(body: Any) -> list[SeriesPoint]:
    """Read the new `timeSeries[].values[{timestamp,value}]` or the older `data: [[ts, [{count}]]]` shape."""
    points: list[SeriesPoint] = []
    if isinstance(body, dict) and isinstance(body.get("timeSeries"), list):
        for series in body["timeSeries"][:1]:
            for item in series.get("values", []):
                points.append(SeriesPoint(timestamp=_ts(item.get("timestamp")), count=int(item.get("value") or 0)))
    elif isinstance(body, dict) and isinstance(body.get("data"), list):
        for item in body["data"]:
            if isinstance(item, list | tuple) and len(item) == 2:
                counts = item[1] if isinstance(item[1], list) else []
                total = sum(int(c.get("count") or 0) for c in counts if isinstance(c, dict))
                points.append(SeriesPoint(timestamp=_ts(item[0]), count=total))
            elif isinstance(item, dict):
                value = item.get("count()", item.get("value", item.get("count"))) or 0
                points.append(SeriesPoint(timestamp=_ts(item.get("timestamp") or item.get("time")), count=int(value)))
    return points


def _ts(value: Any) -> datetime:
    if isinstance(value, int | float):
        seconds = value / 1000 if value > 1e11 else value
        return datetime.fromtimestamp(seconds, UTC)
    if isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return datetime.now(UTC)
