"""Sentry stand-in: the app reports its 5xx and every request it serves here; the runbook reads counts and series.

It answers the Discover endpoints as Sentry's published OpenAPI document describes them
(tests/contracts/specs/sentry.json):

    GET /api/0/organizations/{org}/events/?dataset=errors&field=count()&project=<id>&statsPeriod=15m
        → {"data": [{"count()": N}], "meta": {...}}   (other fields, e.g. field=release, group the rows)
    GET /api/0/organizations/{org}/events/?dataset=spans&field=count()&query=is_transaction:true&…
        → the same shape, counting spans; each request served is one segment span (`is_transaction:true`) with
          child spans (a database span), so a count without `is_transaction:true` counts more than requests.
          400 when `performance` is off (an organisation whose spans cannot be queried)
    dataset=transactions (or any dataset the document does not list) → 400 {"detail": "Invalid dataset …"}
    …&query=is_transaction:true transaction:/api/auth/profile span.status_code:[401,403]
        → only the events matching every `key:value` / `key:"quoted value"` / `key:[a,b]` term (a field or tag);
          400 "Invalid query" for any other search syntax
    …&field=transaction&field=count()&sort=-count()&per_page=100
        → one row per transaction name (route) with its count, busiest first, at most per_page rows (≤ 100)
    GET /api/0/organizations/{org}/events-timeseries/?dataset=errors&yAxis=count()&statsPeriod=30m&interval=60
        → {"timeSeries": [{"yAxis": "count()", "values": [{"timestamp": ms, "value": n, "incomplete": b}, …],
          "meta": {…}}], "meta": {"dataset", "start", "end"}}   (interval in seconds, like the document says)

Rate limits as Sentry documents them (getsentry/sentry-docs docs/api/ratelimits.mdx): a fixed window per caller and
endpoint (`rate_limit` requests per `rate_window` seconds, on `rate_clock`); every answer carries
`X-Sentry-Rate-Limit-Limit/-Remaining/-Reset` (reset in UTC epoch seconds) and `-ConcurrentLimit/-ConcurrentRemaining`;
past the limit 429 {"detail": …} with those headers and no Retry-After. An injected rate-limit fault answers that 429,
its reset the fault's `retry_after` seconds from now.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from runbook.drill.faults import Fault
from runbook.drill.standin import StandIn, bearer, iso, json_response, opt_in_retry_after

_PERIOD = re.compile(r"^(\d+)([smhdw])$")
_TERM = re.compile(r'\s*([A-Za-z0-9_.\-]+):("(?:[^"\\]|\\.)*"|\[[^\]]*\]|[^\s"\[\]]+)\s*')
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# The datasets the events endpoints document (tests/contracts/specs/sentry.json): `transactions` is not one.
DATASETS = ("errors", "logs", "profile_functions", "spans", "tracemetrics", "uptime_results")


def parse_period(text: str) -> float | None:
    """Return a Sentry statsPeriod ('15m', '24h', '14d') in seconds, or None when malformed."""
    m = _PERIOD.match(text.strip())
    return int(m.group(1)) * _UNITS[m.group(2)] if m else None


def parse_query(text: str) -> list[tuple[str, set[str]]] | None:
    """Return a Discover search as (key, accepted values) terms, all of which must match; None when unsupported."""
    terms: list[tuple[str, set[str]]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TERM.match(text, pos)
        if m is None or m.end() == pos:
            return None
        key, raw = m.group(1), m.group(2)
        if raw.startswith("["):
            values = {v.strip().strip('"') for v in raw[1:-1].split(",") if v.strip()}
        elif raw.startswith('"'):
            values = {raw[1:-1].replace('\\"', '"')}
        else:
            values = {raw}
        terms.append((key, values))
        pos = m.end()
    return terms


@dataclass
class SentryEvent:
    """One captured error event."""

    title: str
    timestamp: float = field(default_factory=time.time)
    level: str = "error"
    release: str | None = None
    environment: str = "production"
    transaction: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    is_transaction: bool = False

    def field_value(self, name: str) -> Any:
        """Return the value of a Discover field for grouping."""
        return {"title": self.title, "level": self.level, "release": self.release, "id": self.id,
                "environment": self.environment, "transaction": self.transaction,
                "is_transaction": "true" if self.is_transaction else "false",
                "timestamp": iso(self.timestamp)}.get(name, self.tags.get(name))

    def matches(self, terms: list[tuple[str, set[str]]]) -> bool:
        """Return True when every search term accepts this event's field or tag value."""
        for key, values in terms:
            value = self.field_value(key)
            if value is None and key in ("http.status_code", "span.status_code"):
                value = self.tags.get("status_code")
            if value is None or str(value) not in values:
                return False
        return True


class SentryStandIn(StandIn):
    """The Sentry Discover endpoints the runbook reads, for one organization and one project."""

    name = "sentry"

    def __init__(self, *, token: str, org: str, project_id: str, project_slug: str) -> None:
        self.token = token
        self.org = org
        self.project_id = project_id
        self.project_slug = project_slug
        self.events: list[SentryEvent] = []
        self.transactions: list[SentryEvent] = []  # segment spans: one per request served
        self.child_spans: list[SentryEvent] = []
        self.performance = True
        self.rate_limit, self.rate_window, self.concurrent_limit = 40, 1.0, 25
        self.rate_clock: Callable[[], float] = time.time
        self._windows: dict[tuple[str, str], tuple[int, int]] = {}  # (caller, endpoint) → (window number, used)
        self._in_flight = 0
        super().__init__()

    def reset_state(self) -> None:
        """Forget every captured event and transaction; performance monitoring on again."""
        self.events = []
        self.transactions = []
        self.child_spans = []
        self.performance = True
        self.rate_limit, self.rate_window, self.rate_clock = 40, 1.0, time.time
        self._windows = {}

    def capture(self, title: str, **fields: Any) -> SentryEvent:
        """Record an error event (what the Sentry SDK in the app sends)."""
        event = SentryEvent(title=title, **fields)
        with self._lock:
            self.events.append(event)
        return event

    def capture_transaction(self, name: str, *, child_spans: int = 1, **fields: Any) -> SentryEvent:
        """Record one request served: its segment span and `child_spans` spans under it (what the SDK sends)."""
        event = SentryEvent(title=name, level="info", transaction=name, is_transaction=True, **fields)
        children = [SentryEvent(title="db", level="info", transaction=name, timestamp=event.timestamp,
                                release=event.release, environment=event.environment, tags=dict(event.tags))
                    for _ in range(child_spans)]
        with self._lock:
            self.transactions.append(event)
            self.child_spans.extend(children)
        return event

    def age(self, seconds: float) -> None:
        """Move every captured event and transaction `seconds` into the past (as if that much time went by)."""
        with self._lock:
            for event in (*self.events, *self.transactions, *self.child_spans):
                event.timestamp -= seconds

    def count(self, seconds: float = 900) -> int:
        """Return how many events were captured in the last `seconds`."""
        since = time.time() - seconds
        with self._lock:
            return sum(1 for e in self.events if e.timestamp >= since)

    # -- HTTP -------------------------------------------------------------------------------------------------
    def error_body(self, status: int, message: str) -> Any:
        """Return Sentry's `{"detail": …}`."""
        return {"detail": message}

    def rate_limited(self, fault: Fault) -> Response:
        """An injected rate limit is Sentry's own 429: no Retry-After, the window reset `retry_after` s from now."""
        reset = math.ceil(self.rate_clock() + (fault.retry_after if fault.retry_after is not None else 1))
        return self._throttled(fault.status, {**self._limit_headers(self.rate_limit, reset, 0),
                                              **opt_in_retry_after(fault)})

    def _throttled(self, status: int, headers: dict[str, str]) -> Response:
        return json_response({"detail": f"You are attempting to use this endpoint too frequently. Limit is "
                                        f"{self.rate_limit} requests in {self.rate_window:g} seconds"}, status, headers)

    def _limit_headers(self, used: int, reset: int, concurrent: int) -> dict[str, str]:
        """Return the documented X-Sentry-Rate-Limit-* headers (reset in UTC epoch seconds)."""
        return {"X-Sentry-Rate-Limit-Limit": str(self.rate_limit),
                "X-Sentry-Rate-Limit-Remaining": str(max(0, self.rate_limit - used)),
                "X-Sentry-Rate-Limit-Reset": str(reset),
                "X-Sentry-Rate-Limit-ConcurrentLimit": str(self.concurrent_limit),
                "X-Sentry-Rate-Limit-ConcurrentRemaining": str(max(0, self.concurrent_limit - concurrent))}

    def _guard(self, request: Request) -> Response | None:
        token = bearer(request)
        if token is None:
            return json_response({"detail": "Authentication credentials were not provided."}, 401)
        if token != self.token:
            return json_response({"detail": "Invalid token"}, 401)
        if request.path_params.get("org") != self.org:
            return json_response({"detail": "The requested resource does not exist"}, 404)
        return None

    def _window(self, request: Request) -> tuple[float, float] | Response:
        q = request.query_params
        now = time.time()
        if "start" in q and "end" in q:
            try:
                start = datetime.fromisoformat(q["start"].replace("Z", "+00:00")).timestamp()
                end = datetime.fromisoformat(q["end"].replace("Z", "+00:00")).timestamp()
            except ValueError:
                return json_response({"detail": "start/end must be ISO 8601 datetimes"}, 400)
            return start, end
        seconds = parse_period(q.get("statsPeriod", "14d"))
        if seconds is None:
            return json_response({"detail": "Invalid statsPeriod"}, 400)
        return now - seconds, now

    def _selected(self, request: Request, start: float, end: float) -> list[SentryEvent] | Response:
        q = request.query_params
        dataset = q.get("dataset")
        if dataset not in DATASETS:
            return json_response({"detail": f"Invalid dataset: {dataset!r}; must be one of {', '.join(DATASETS)}"},
                                 400)
        if dataset == "spans" and not self.performance:
            return json_response({"detail": "Tracing is not enabled for this organization"}, 400)
        projects = set(q.getlist("project"))
        if projects and not projects & {self.project_id, self.project_slug, "-1"}:
            return json_response({"detail": "You do not have permission to perform this action."}, 403)
        env = q.get("environment")
        terms = parse_query(q.get("query", ""))
        if terms is None:
            return json_response({"detail": "Invalid query. Parse error: unsupported search syntax"}, 400)
        with self._lock:
            pool = ([*self.transactions, *self.child_spans] if dataset == "spans"
                    else self.events if dataset == "errors" else [])
            return [e for e in pool
                    if start <= e.timestamp <= end and (env is None or e.environment == env) and e.matches(terms)]

    def routes(self) -> list[BaseRoute]:
        """Return the Sentry routes."""
        return [
            Route("/api/0/organizations/{org}/events/", self._limited("events", self._events), methods=["GET"]),
            Route("/api/0/organizations/{org}/events-timeseries/", self._limited("events-timeseries",
                                                                                 self._timeseries), methods=["GET"]),
        ]

    def _limited(self, endpoint: str, handler: Callable[[Request], Awaitable[Response]]
                 ) -> Callable[[Request], Awaitable[Response]]:
        """Count the request in its caller's window for the endpoint; answer 429 past the limit; add the headers."""

        async def limited(request: Request) -> Response:
            used, number = self.count_in_window(request, endpoint)
            with self._lock:
                self._in_flight += 1
                concurrent = self._in_flight
            headers = self._limit_headers(used, int((number + 1) * self.rate_window), concurrent)
            try:
                if used > self.rate_limit:
                    return self._throttled(429, headers)
                response = await handler(request)
            finally:
                with self._lock:
                    self._in_flight -= 1
            response.headers.update(headers)
            return response

        return limited

    async def _events(self, request: Request) -> Response:
        if (denied := self._guard(request)) is not None:
            return denied
        window = self._window(request)
        if isinstance(window, Response):
            return window
        events = self._selected(request, *window)
        if isinstance(events, Response):
            return events
        fields = request.query_params.getlist("field") or ["count()"]
        group = [f for f in fields if f != "count()"]
        rows: dict[tuple[Any, ...], dict[str, Any]] = {}
        for e in events:
            key = tuple(e.field_value(f) for f in group)
            row = rows.setdefault(key, {**dict(zip(group, key, strict=True)), "count()": 0})
            row["count()"] += 1
        data = list(rows.values()) if group else [{"count()": len(events)}]
        data.sort(key=lambda r: r["count()"], reverse=True)
        try:
            per_page = min(100, max(1, int(request.query_params.get("per_page", "50"))))
        except ValueError:
            return json_response({"detail": "per_page must be an integer"}, 400)
        data = data[:per_page]
        for row in data:
            if "count()" not in fields:
                row.pop("count()", None)
        meta = {"fields": {f: "integer" if f == "count()" else "string" for f in fields},
                "units": {f: None for f in fields}, "isMetricsData": False, "tips": {},
                "datasetReason": "unchanged", "dataset": request.query_params.get("dataset")}
        return json_response({"data": data, "meta": meta})

    async def _timeseries(self, request: Request) -> Response:
        if (denied := self._guard(request)) is not None:
            return denied
        window = self._window(request)
        if isinstance(window, Response):
            return window
        start, end = window
        events = self._selected(request, start, end)
        if isinstance(events, Response):
            return events
        try:
            interval = int(request.query_params.get("interval", "60"))
        except ValueError:
            return json_response({"detail": "interval must be seconds"}, 400)
        interval = max(1, interval)
        first = int(start // interval) * interval
        buckets = {first + i * interval: 0 for i in range(int((end - first) // interval) + 1)}
        for e in events:
            buckets[int(e.timestamp // interval) * interval] = buckets.get(int(e.timestamp // interval) * interval,
                                                                           0) + 1
        y_axis = request.query_params.get("yAxis", "count()")
        values = [{"timestamp": ts * 1000, "value": n, "incomplete": ts + interval > end}
                  for ts, n in sorted(buckets.items())]
        series = {"yAxis": y_axis, "values": values,
                  "meta": {"valueType": "integer", "valueUnit": None, "interval": interval * 1000}}
        meta = {"dataset": request.query_params.get("dataset"), "start": start * 1000, "end": end * 1000}
        return json_response({"timeSeries": [series], "meta": meta})
