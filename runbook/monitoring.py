"""The monitor's plain-Python core: measurements from probe results, rule evaluation, consecutive breaches, uptime.

One monitor cycle is: probe everything (the flow, concurrently) → `measure()` turns the probe results into
measurements, deciding what app_up / database_up / auth_up mean → `evaluate()` compares them with the policy's
alerting rules → `advance()` keeps the consecutive-breach state per rule and target and says what to do
(declare, nothing yet, note a recovery) → the flow acts.

Attribution (which rule a symptom belongs to), so that one cause opens one incident:
- database_up = 0 when the app's health says its database check is unhealthy, REST cannot count profiles, or the
  direct database connection fails;
- app_up = 0 when /api/health is unreachable, times out, or answers 5xx for a cause that is not the database or
  auth (a broken build, bad configuration, no body at all); a 5xx explained by the database or auth checks, or by
  maintenance mode, or a timeout while database queries wait on a lock, leaves app_up "masked" (neither down nor
  up);
- auth_up = 0 when the app's auth check fails (and the database check does not) or the auth endpoint does not
  answer like an auth endpoint; masked while the app or the database is down;
- slow responses while the app is down, or while the database is degraded, are masked likewise, and so are failed
  Stripe deliveries while the app or the database is down;
- the error rate (Sentry's errors as % of its transactions, the requests served) is masked while the app, the
  database or auth is down or in maintenance, while another cause rule (`ERROR_RATE_CAUSES`) breaches, and while a
  monitor incident of such a cause is still open (the window still holds that outage's errors after it recovered);
- unusual_traffic (traffic_anomaly): the request rate (Sentry's transactions per minute over the policy's traffic
  window) against the median of the rates of earlier cycles (`monitor_rates`, once there are enough of them); and
  security_event (security_events): failed logins per minute (401/403 transactions of the auth endpoint). Both are
  masked while the app, the database or auth is down or in maintenance (an outage changes the traffic and fails
  logins), while a cause rule breaches, and while such a cause's monitor incident is open; a request rate taken
  while masked is not kept for the baseline;
- feature_usage_anomaly (feature_anomaly, target `features`): each busy route's share of the requests (Sentry's
  transactions grouped by name) against the median of its earlier shares (`monitor_rates`, `feature_share:<route>`);
  a route whose share rose above factor x or fell below 1/factor of its usual share counts, the value being how
  many did. Judged from the policy's minimum of requests in the window and for routes with a usual share worth
  judging; masked like the traffic rules, and also while unusual_traffic, security_event or high_error_rate
  breaches or has its incident open (a flood on one route or users retrying a failing one shift the mix too).
  Shares are proportions, so a change of the total traffic alone does not move them;
- third_party_down per vendor from our own OpenAI liveness probe and the vendors' status pages (the app's own
  OpenAI check only when our probe cannot run).
A probe that itself fails (NotConfigured, the monitor cannot reach Sentry / Stripe / a status page) is a GAP: the
metric is unknown, never an outage of the app. Gaps and masked measurements neither advance nor clear a breach.

State between runs (the monitor runs every minute as separate flow runs) lives in two small tables created here on
the incident store's engine (SQLite file by default, Postgres in production, so several workers share it):
`monitor_breaches` (the breach state per rule and target), `monitor_samples` (availability per cycle, for uptime
over the policy's rolling window; older samples are pruned) and `monitor_rates` (a measured value per cycle, such as
the request rate and the route shares the traffic baselines are learned from; pruned after the policy's baseline
window).
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    ColumnElement,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    delete,
    func,
    insert,
    select,
)

from runbook.clients.app import AppHealth, AuthProbe
from runbook.clients.health import VendorStatus
from runbook.clients.openai import OpenAILiveness
from runbook.clients.sentry import ErrorRate, RouteCounts, Traffic
from runbook.clients.stripe import FailedEvent
from runbook.clients.supabase import DatabaseHealth, LongQuery, RowCount
from runbook.errors import AuthError, IntegrationError, NotConfigured, RateLimited, RequestRejected
from runbook.models import utcnow
from runbook.policy import AlertRule, Monitoring, Policy
from runbook.store import IncidentStore, UTCDateTime

HEALTHY = frozenset({"healthy", "ok", "up", "pass"})
FailureKind = Literal[
    "unconfigured", "timeout", "unreachable", "server_error", "rate_limited", "auth", "rejected", "error"
]
NOT_MEASURED: frozenset[str] = frozenset({"unconfigured", "error"})  # the monitor's own problem: a gap
MeasurementState = Literal["measured", "gap", "masked", "unknown"]
FindingState = Literal["ok", "breach", "gap", "masked", "unknown"]
Action = Literal["none", "breaching", "declare", "continuing", "recovered", "held"]


# -- probe results ----------------------------------------------------------------------------------------------


class ProbeFailure(BaseModel):
    """A probe that did not produce its result: why (kind) and the error message (never a secret)."""

    model_config = ConfigDict(frozen=True)

    kind: FailureKind
    message: str
    elapsed_s: float | None = None


def probe_failure(exc: BaseException, elapsed_s: float | None = None) -> ProbeFailure:
    """Classify an exception raised by a probe into a ProbeFailure."""
    if isinstance(exc, NotConfigured):
        kind: FailureKind = "unconfigured"
    elif isinstance(exc, TimeoutError):
        kind = "timeout"
    elif isinstance(exc, RateLimited):
        kind = "rate_limited"
    elif isinstance(exc, AuthError):
        kind = "auth"
    elif isinstance(exc, RequestRejected):
        kind = "rejected"
    elif isinstance(exc, IntegrationError):
        if exc.status is not None and exc.status >= 500:
            kind = "server_error"
        elif "timed out" in exc.detail or "timeout" in exc.detail:
            kind = "timeout"
        else:
            kind = "unreachable"
    else:
        kind = "unreachable"
    message = str(exc) or type(exc).__name__
    return ProbeFailure(kind=kind, message=message[:300], elapsed_s=elapsed_s)


class CycleProbes(BaseModel):
    """Everything one cycle probed; each item is the probe's result or its ProbeFailure."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    health: AppHealth | ProbeFailure
    auth: AuthProbe | ProbeFailure
    rest: RowCount | ProbeFailure
    database: DatabaseHealth | ProbeFailure
    stripe: list[FailedEvent] | ProbeFailure
    sentry: ErrorRate | ProbeFailure
    openai: OpenAILiveness | ProbeFailure
    vendors: list[VendorStatus] | ProbeFailure
    traffic: Traffic | ProbeFailure | None = Field(default=None, description="None: not probed (no traffic metrics)")


# -- measurements -----------------------------------------------------------------------------------------------


class Measurement(BaseModel):
    """One measured metric of one target, or why it has no value (gap: the probe failed; masked: attributed)."""

    metric: str
    target: str
    value: float | None = None
    state: MeasurementState = "measured"
    source: str
    detail: str = ""
    scenario: str | None = Field(default=None, description="Scenario hint when the evidence knows better than the rule")
    samples: dict[str, float] = Field(
        default_factory=dict, description="Values this cycle may add to a baseline (`monitor_rates` metric → value)")

    @property
    def key(self) -> str:
        """Return `metric:target`."""
        return f"{self.metric}:{self.target}"


def _m(metric: str, target: str, value: float | None, source: str, detail: str = "", *,
       state: MeasurementState = "measured", scenario: str | None = None) -> Measurement:
    return Measurement(metric=metric, target=target, value=value if state == "measured" else None, state=state,
                       source=source, detail=detail, scenario=scenario)


def health_checks(health: AppHealth) -> dict[str, dict[str, Any]]:
    """Return the dependency checks of an /api/health body ({} when it has none)."""
    checks = (health.body or {}).get("checks")
    return {str(k): v for k, v in checks.items() if isinstance(v, dict)} if isinstance(checks, dict) else {}


def check_status(checks: dict[str, dict[str, Any]], name: str) -> str | None:
    """Return a health check's status in lower case ('healthy', 'degraded', 'unhealthy'), or None when absent."""
    check = checks.get(name)
    return str(check.get("status", "")).lower() if check is not None else None


def _unhealthy(checks: dict[str, dict[str, Any]]) -> set[str]:
    return {n for n, c in checks.items() if str(c.get("status", "")).lower() not in HEALTHY | {"degraded"}}


def _evidence(values: Sequence[tuple[bool | None, str]]) -> tuple[float | None, str]:
    """Combine (up?, detail) evidence: any down → 0, else any up → 1, else None (no evidence: a gap)."""
    down = [d for up, d in values if up is False]
    if down:
        return 0.0, "; ".join(down)
    up = [d for ok, d in values if ok is True]
    if up:
        return 1.0, "; ".join(up)
    return None, "; ".join(d for _, d in values)


_DB_DOWN_KINDS = frozenset({"unreachable", "timeout", "server_error"})


def _database(p: CycleProbes, checks: dict[str, dict[str, Any]]) -> tuple[float | None, str]:
    evidence: list[tuple[bool | None, str]] = []
    status = check_status(checks, "database")
    if status is not None:
        err = checks["database"].get("error")
        evidence.append((status != "unhealthy", f"app database check {status}" + (f": {err}" if err else "")))
    if isinstance(p.rest, ProbeFailure):
        # A table the REST API cannot count (400/404 after a bad migration) is the database failing the app.
        down = p.rest.kind in _DB_DOWN_KINDS or p.rest.kind == "rejected"
        evidence.append((False if down else None, f"REST count: {p.rest.message}"))
    else:
        evidence.append((True, f"REST count {p.rest.count}"))
    if isinstance(p.database, ProbeFailure):
        evidence.append((False if p.database.kind in _DB_DOWN_KINDS else None, f"direct: {p.database.message}"))
    else:
        evidence.append((True, "direct connection ok"))
    return _evidence(evidence)


def measure(p: CycleProbes, *, monitoring: Monitoring | None = None, rate_history: Sequence[float] = (),
            route_history: Mapping[str, Sequence[float]] | None = None) -> list[Measurement]:
    """Turn one cycle's probe results into measurements, attributing each symptom to one cause.

    `rate_history` holds earlier cycles' request rates (the unusual-traffic baseline), `route_history` each
    route's earlier shares of the requests (the feature-usage baselines); `monitoring` the policy's traffic,
    feature and failed-login parameters (its defaults when None).
    """
    out: list[Measurement] = []
    health = p.health
    checks = health_checks(health) if isinstance(health, AppHealth) else {}

    # database
    db_up, db_detail = _database(p, checks)
    db_down = db_up == 0
    out.append(_m("database_up", "database", db_up, "database", db_detail,
                  state="measured" if db_up is not None else "gap", scenario="database"))

    # the app
    app_state: MeasurementState = "measured"
    app_up: float | None = 1.0
    app_scenario: str | None = None
    if isinstance(health, ProbeFailure):
        waiting = blocked_queries(p.database)
        if health.kind in NOT_MEASURED:
            app_state, app_up, app_detail = "gap", None, health.message
        elif health.kind == "timeout" and waiting:
            app_state, app_up = "masked", None
            app_detail = (f"/api/health timed out while {len(waiting)} database queries wait on locks "
                          "(attributed to the database)")
        else:
            app_up, app_detail = 0.0, f"/api/health {health.kind}: {health.message}"
    elif health.status_code >= 500:
        failing = _unhealthy(checks)
        maintenance = bool((health.body or {}).get("maintenance"))
        app_detail = f"/api/health HTTP {health.status_code}" + (f", failing: {', '.join(sorted(failing))}"
                                                                 if failing else "")
        if maintenance:
            app_state, app_up, app_detail = "masked", None, app_detail + " (maintenance mode)"
        elif failing and ("database" in failing or db_down) and failing <= {"database", "auth", "config"}:
            app_state, app_up, app_detail = "masked", None, app_detail + " (attributed to the database)"
        elif failing == {"auth"}:
            app_state, app_up, app_detail = "masked", None, app_detail + " (attributed to authentication)"
        elif not failing and db_down:
            app_state, app_up, app_detail = "masked", None, app_detail + " (attributed to the database)"
        else:
            app_up = 0.0
            if "config" in failing and "app" not in failing:
                app_scenario = "configuration"
    else:
        status = str((health.body or {}).get("status", "ok")).lower()
        app_detail = f"/api/health HTTP {health.status_code} {status}"
    out.append(_m("app_up", "app", app_up, "app", app_detail, state=app_state, scenario=app_scenario))
    app_down = app_up == 0

    # response time
    if isinstance(health, AppHealth):
        seconds = round(health.latency_ms / 1000, 3)
        if app_down:
            out.append(_m("response_time_s", "app", None, "app", "application down", state="masked"))
        else:
            out.append(_m("response_time_s", "app", seconds, "app", f"/api/health in {seconds:g} s",
                          scenario="performance"))
    else:
        state: MeasurementState = "gap" if health.kind in NOT_MEASURED else "masked"
        out.append(_m("response_time_s", "app", None, "app", "no answer from /api/health", state=state))

    # authentication
    evidence: list[tuple[bool | None, str]] = []
    auth_status = check_status(checks, "auth")
    if auth_status is not None:
        err = checks["auth"].get("error")
        evidence.append((auth_status != "unhealthy", f"app auth check {auth_status}" + (f": {err}" if err else "")))
    if isinstance(p.auth, ProbeFailure):
        evidence.append((None if p.auth.kind in NOT_MEASURED else False, f"auth endpoint: {p.auth.message}"))
    else:
        evidence.append((p.auth.alive, f"auth endpoint HTTP {p.auth.status_code}: {p.auth.detail}"))
    auth_up, auth_detail = _evidence(evidence)
    if auth_up == 0 and app_down:
        out.append(_m("auth_up", "auth", None, "app", "application down", state="masked"))
    elif auth_up == 0 and db_down:
        out.append(_m("auth_up", "auth", None, "app", "database unavailable", state="masked"))
    elif auth_up == 0 and isinstance(health, AppHealth) and (health.body or {}).get("maintenance"):
        out.append(_m("auth_up", "auth", None, "app", "maintenance mode", state="masked"))
    else:
        out.append(_m("auth_up", "auth", auth_up, "app", auth_detail,
                      state="measured" if auth_up is not None else "gap", scenario="authentication"))

    # database performance
    out.extend(_database_metrics(p, checks, db_down))

    # payments
    if isinstance(p.stripe, ProbeFailure):
        out.append(_m("stripe_failed_deliveries", "stripe", None, "stripe", p.stripe.message, state="gap"))
    elif p.stripe and (app_down or db_down):
        out.append(_m("stripe_failed_deliveries", "stripe", None, "stripe",
                      f"{len(p.stripe)} failed while the {'app' if app_down else 'database'} is down",
                      state="masked"))
    else:
        shown = ", ".join(e.type for e in p.stripe[:3])
        out.append(_m("stripe_failed_deliveries", "stripe", float(len(p.stripe)), "stripe",
                      f"{len(p.stripe)} undelivered webhook event(s)" + (f": {shown}" if shown else ""),
                      scenario="payment"))

    maintenance = isinstance(health, AppHealth) and bool((health.body or {}).get("maintenance"))
    cause = ("application down" if app_down else "database unavailable" if db_down
             else "authentication failing" if auth_up == 0 else "maintenance mode" if maintenance else None)

    # errors (Sentry): a symptom of a down app, database or auth, masked while one of them is down
    if isinstance(p.sentry, ProbeFailure):
        out.append(_m("error_rate_pct", "app", None, "sentry", p.sentry.message, state="gap"))
        out.append(_m("errors_per_minute", "app", None, "sentry", p.sentry.message, state="gap"))
    else:
        rate = p.sentry
        ratio = f"{rate.count} errors / {rate.requests} requests"
        if rate.percent_of_requests is None:
            unknown = "request count unknown" if rate.requests is None else "no requests in the window"
            out.append(_m("error_rate_pct", "app", None, "sentry", unknown, state="unknown"))
        elif cause is not None:
            out.append(_m("error_rate_pct", "app", None, "sentry", f"{ratio} ({cause})", state="masked"))
        else:
            out.append(_m("error_rate_pct", "app", rate.percent_of_requests, "sentry", ratio,
                          scenario="performance"))
        out.append(_m("errors_per_minute", "app", rate.per_minute, "sentry",
                      f"{rate.count} errors in {rate.window_s // 60} min"))

    # traffic and failed logins (Sentry transactions)
    if p.traffic is not None:
        out.extend(traffic_measurements(p.traffic, monitoring or Monitoring(), rate_history, cause))
        out.append(feature_measurement(p.traffic, monitoring or Monitoring(), route_history or {}, cause))

    # third parties
    out.extend(_third_parties(p, checks))
    return out


REQUEST_RATE = "request_rate_per_minute"  # the metric kept per cycle in `monitor_rates` for the traffic baseline


def traffic_baseline(history: Sequence[float], mon: Monitoring) -> float | None:
    """Return the median of earlier request rates, or None while there are fewer than the policy's minimum."""
    if len(history) < mon.traffic_baseline_min_samples:
        return None
    return float(statistics.median(history))


def traffic_anomaly(rate: float, history: Sequence[float], mon: Monitoring) -> tuple[float | None, str]:
    """Return (1 anomalous / 0 normal / None not judged yet, detail) for a request rate against its baseline.

    A rate above factor x the baseline, or below baseline / factor, is anomalous; the baseline is raised to the
    policy's minimum rate (so a quiet baseline neither makes a few requests a spike nor zero a drop of note).
    """
    baseline = traffic_baseline(history, mon)
    if baseline is None:
        return None, (f"{rate:g} requests/min; learning the baseline "
                      f"({len(history)}/{mon.traffic_baseline_min_samples} samples)")
    base = max(baseline, mon.traffic_min_rate_per_minute)
    k = mon.traffic_anomaly_factor
    detail = f"{rate:g} requests/min, baseline {baseline:g} (median of {len(history)})"
    if base > 0 and rate > k * base:
        return 1.0, f"{detail}: above {k:g}x"
    if baseline >= mon.traffic_min_rate_per_minute and baseline > 0 and rate < baseline / k:
        return 1.0, f"{detail}: below 1/{k:g}"
    return 0.0, detail


def traffic_measurements(traffic: Traffic | ProbeFailure, mon: Monitoring, history: Sequence[float],
                         cause: str | None) -> list[Measurement]:
    """Return request_rate_per_minute, traffic_anomaly and security_events (failed logins per minute).

    An uncountable value (the probe failed, Sentry rejected the query) is a gap of the `sentry` source;
    while `cause` (an outage or maintenance) holds, the anomaly and the failed logins are masked.
    """
    source = "sentry"
    if isinstance(traffic, ProbeFailure):
        return [_m(metric, "app" if metric != "security_events" else "auth", None, source, traffic.message,
                   state="gap") for metric in (REQUEST_RATE, "traffic_anomaly", "security_events")]
    out: list[Measurement] = []
    rate = traffic.requests_per_minute
    if rate is None:
        out.append(_m(REQUEST_RATE, "app", None, source, "request count unavailable", state="gap"))
        out.append(_m("traffic_anomaly", "app", None, source, "request count unavailable", state="gap"))
    else:
        out.append(_m(REQUEST_RATE, "app", rate, source,
                      f"{traffic.requests} requests in {traffic.window_s / 60:g} min"))
        anomaly, detail = traffic_anomaly(rate, history, mon)
        if cause is not None:
            out.append(_m("traffic_anomaly", "app", None, source, f"{detail} ({cause})", state="masked"))
        else:
            out.append(_m("traffic_anomaly", "app", anomaly, source, detail,
                          state="measured" if anomaly is not None else "unknown", scenario="performance"))
    failures = traffic.auth_failures_per_minute
    if failures is None:
        out.append(_m("security_events", "auth", None, source, "failed-login count unavailable", state="gap"))
    else:
        detail = (f"{traffic.auth_failures} failed logins in {traffic.auth_window_s / 60:g} min "
                  f"({failures:g}/min, brute force above {mon.auth_failures_per_minute:g}/min)")
        if cause is not None:
            out.append(_m("security_events", "auth", None, source, f"{detail} ({cause})", state="masked"))
        else:
            value = float(traffic.auth_failures or 0) if failures > mon.auth_failures_per_minute else 0.0
            out.append(_m("security_events", "auth", value, source, detail, scenario="authentication"))
    return out


FEATURE_SHARE = "feature_share:"  # `monitor_rates` metric prefix: a route's share of the requests (%) per cycle
FEATURE_METRIC = "feature_anomaly"
FEATURE_TARGET = "features"
MAX_ROUTE_NAME = 280  # longer transaction names are no route of ours (and would not fit the rates table's key)


def feature_shares(routes: RouteCounts, mon: Monitoring, history: Mapping[str, Sequence[float]]
                   ) -> tuple[dict[str, float], int]:
    """Return each tracked route's share of the requests (%) this window, and the requests of all feature routes.

    Tracked are the policy's `feature_max_routes` busiest routes, by their share now or their usual (median)
    share, so a route that stopped being used stays tracked while its baseline lasts: when Sentry listed every
    route, its share is 0; when the page was full, a route not on it is not known and not tracked this cycle.
    Excluded routes (the probes') and over-long names are no feature.
    """
    excluded = set(mon.feature_exclude_routes)
    counts = {r: n for r, n in routes.counts.items() if r not in excluded and len(r) <= MAX_ROUTE_NAME}
    total = sum(counts.values())
    if total <= 0:
        return {}, 0
    usual = {r: float(statistics.median(v)) for r, v in history.items() if v and r not in excluded}
    candidates = set(counts) | (set(usual) if routes.complete else set())

    def share(route: str) -> float:
        return round(100.0 * counts.get(route, 0) / total, 3)

    ranked = sorted(candidates, key=lambda r: (-max(share(r), usual.get(r, 0.0)), r))
    return {r: share(r) for r in ranked[:mon.feature_max_routes]}, total


def feature_anomaly(shares: Mapping[str, float], total: int, history: Mapping[str, Sequence[float]],
                    mon: Monitoring) -> tuple[float | None, str]:
    """Return (routes off their usual share / None not judged, detail) for this window's route mix.

    Judged from `feature_min_requests` requests, per route once its baseline has the policy's minimum of samples
    and a usual share of at least `feature_min_share_pct`: a share above factor x or below 1/factor of the usual
    one is anomalous (the most deviating routes are named first).
    """
    if total < mon.feature_min_requests:
        return None, f"{total} feature requests in the window; the mix is judged from {mon.feature_min_requests}"
    k = mon.feature_anomaly_factor
    judged, learning = 0, 0
    found: list[tuple[float, str]] = []
    for route, now in shares.items():
        past = history.get(route, ())
        if len(past) < mon.traffic_baseline_min_samples:
            learning += 1
            continue
        usual = float(statistics.median(past))
        if usual < mon.feature_min_share_pct or usual <= 0:
            continue
        judged += 1
        text = f"{route} {now:.3g} % of requests (usually {usual:.3g} %)"
        if now > k * usual:
            found.append((now / usual, f"{text}: above {k:g}x"))
        elif now < usual / k:
            found.append((usual / max(now, usual / 1000), f"{text}: below 1/{k:g}"))
    if not judged:
        if learning:
            return None, (f"learning the usual route mix ({learning} route(s) with fewer than "
                          f"{mon.traffic_baseline_min_samples} samples)")
        return 0.0, f"no route has a usual share of {mon.feature_min_share_pct:g} % or more of {total} requests"
    if not found:
        return 0.0, f"{judged} route(s) at their usual share of {total} requests"
    found.sort(key=lambda item: -item[0])
    return float(len(found)), (f"{len(found)} of {judged} route(s) off their usual share of {total} requests: "
                               + "; ".join(text for _, text in found[:3]))


def feature_measurement(traffic: Traffic | ProbeFailure, mon: Monitoring, history: Mapping[str, Sequence[float]],
                        cause: str | None) -> Measurement:
    """Return the feature_anomaly measurement: a gap when Sentry cannot group by route, masked while `cause` holds."""
    if isinstance(traffic, ProbeFailure):
        return _m(FEATURE_METRIC, FEATURE_TARGET, None, "sentry", traffic.message, state="gap")
    if traffic.routes is None:
        return _m(FEATURE_METRIC, FEATURE_TARGET, None, "sentry", "requests per route unavailable", state="gap")
    shares, total = feature_shares(traffic.routes, mon, history)
    value, detail = feature_anomaly(shares, total, history, mon)
    if cause is not None:
        return _m(FEATURE_METRIC, FEATURE_TARGET, None, "sentry", f"{detail} ({cause})", state="masked")
    m = _m(FEATURE_METRIC, FEATURE_TARGET, value, "sentry", detail,
           state="measured" if value is not None else "unknown", scenario="performance")
    if total >= mon.feature_min_requests:  # a thin window's mix is noise, not a baseline
        m.samples = {FEATURE_SHARE + route: share for route, share in shares.items()}
    return m


def baseline_samples(measurements: Iterable[Measurement], findings: Iterable[Finding]) -> dict[str, float]:
    """Return the values this cycle adds to the traffic baselines (`monitor_rates` metric → value).

    The request rate joins unless its judgement was masked (an outage's traffic is no normal); a spike does join,
    so that a lasting change becomes the new normal once it fills half the baseline window. The route shares
    (the feature measurement's samples) join likewise, when their judgement was not masked.
    """
    masked = {f.metric for f in findings if f.state == "masked"}
    out: dict[str, float] = {}
    for m in measurements:
        if m.metric == REQUEST_RATE and m.state == "measured" and m.value is not None and (
                "traffic_anomaly" not in masked):
            out[REQUEST_RATE] = m.value
        elif m.metric == FEATURE_METRIC and m.state in ("measured", "unknown") and FEATURE_METRIC not in masked:
            out.update(m.samples)
    return out


def blocked_queries(db: DatabaseHealth | ProbeFailure) -> list[LongQuery]:
    """Return the long-running queries that wait on another session's lock."""
    return [q for q in db.long_running if q.blocking_pids] if isinstance(db, DatabaseHealth) else []


def _database_metrics(p: CycleProbes, checks: dict[str, dict[str, Any]], db_down: bool) -> list[Measurement]:
    out: list[Measurement] = []
    db = p.database
    app_ms = checks.get("database", {}).get("latency_ms") if check_status(checks, "database") in HEALTHY | {
        "degraded"} else None
    if db_down:
        out.append(_m("query_time_ms", "database", None, "database", "database unavailable", state="masked"))
    elif isinstance(app_ms, int | float):
        out.append(_m("query_time_ms", "database", float(app_ms), "app",
                      f"the app's profiles query took {app_ms:g} ms", scenario="database"))
    elif isinstance(db, DatabaseHealth) and (db.mean_query_ms is not None or blocked_queries(db)):
        # No answer from the app's own check: the direct view, where a query waiting on a lock counts too.
        waited = max((q.duration_s * 1000 for q in blocked_queries(db)), default=0.0)
        value = round(max(db.mean_query_ms or 0.0, waited), 1)
        detail = (f"queries waiting on locks for up to {waited:g} ms" if waited > (db.mean_query_ms or 0.0)
                  else f"mean query time ({db.mean_query_source})")
        out.append(_m("query_time_ms", "database", value, "database", detail, scenario="database"))
    else:
        reason = db.message if isinstance(db, ProbeFailure) else "no query time available"
        out.append(_m("query_time_ms", "database", None, "database", reason, state="gap"))
    if isinstance(db, DatabaseHealth):
        out.append(_m("active_connections", "database", float(db.active_connections), "database",
                      f"{db.total_connections} connections of {db.max_connections}"))
        out.append(_m("pool_utilisation_pct", "database", db.pool_utilisation_pct, "database",
                      f"{db.total_connections}/{db.max_connections}"))
        longest = max((q.duration_s for q in db.long_running), default=0.0)
        out.append(_m("long_running_queries", "database", float(len(db.long_running)), "database",
                      f"longest {longest:g} s" if db.long_running else "none"))
    else:
        for metric in ("active_connections", "pool_utilisation_pct", "long_running_queries"):
            state: MeasurementState = "masked" if db_down else "gap"
            out.append(_m(metric, "database", None, "database", db.message, state=state))
    return out


def _third_parties(p: CycleProbes, checks: dict[str, dict[str, Any]]) -> list[Measurement]:
    evidence: dict[str, list[tuple[bool | None, str]]] = {}
    if isinstance(p.openai, ProbeFailure):
        down = None if p.openai.kind in NOT_MEASURED else False
        evidence.setdefault("openai", []).append((down, f"models: {p.openai.message}"))
    else:
        evidence.setdefault("openai", []).append((True, f"models listed in {p.openai.latency_ms:g} ms"))
    if isinstance(p.openai, ProbeFailure) and check_status(checks, "openai") is not None:
        # Only without our own liveness probe: the app's short-timeout check is the weaker evidence.
        ok = check_status(checks, "openai") != "unhealthy"
        evidence["openai"].append((ok, f"the app's OpenAI check: {checks['openai'].get('error', 'ok' if ok else '')}"))
    if isinstance(p.vendors, ProbeFailure):
        for vendor in ("supabase", "vercel", "openai", "stripe"):
            evidence.setdefault(vendor, []).append((None, f"status page: {p.vendors.message}"))
    else:
        for vs in p.vendors:
            if vs.level == "unknown":
                evidence.setdefault(vs.vendor, []).append((None, f"status page: {vs.error or 'unknown'}"))
            else:
                text = f"status page {vs.level}" + (f" ({vs.description})" if vs.description else "")
                evidence.setdefault(vs.vendor, []).append((vs.operational, text))
    out = []
    for vendor, items in evidence.items():
        up, detail = _evidence(items)
        value = None if up is None else 1.0 - up
        out.append(_m("third_party_down", vendor, value, "third-party", detail,
                      state="measured" if value is not None else "gap", scenario="performance"))
    return out


# -- rule evaluation --------------------------------------------------------------------------------------------


class Finding(BaseModel):
    """A rule compared with one target's measurement in one cycle."""

    rule: str
    level: str
    severity: str
    description: str
    target: str
    metric: str
    operator: str
    threshold: float | None
    value: float | None
    state: FindingState
    scenario: str | None = None
    detail: str = ""

    @property
    def key(self) -> str:
        """Return `rule:target` (the breach state's key; the fingerprint is `monitor:<key>`)."""
        return f"{self.rule}:{self.target}"

    @property
    def breached(self) -> bool:
        """Return True when the rule is breached this cycle."""
        return self.state == "breach"


def evaluate(rules: Iterable[AlertRule], measurements: Iterable[Measurement]) -> list[Finding]:
    """Compare every measurement with the rules on its metric; symptoms of a breached cause are masked."""
    by_metric: dict[str, list[Measurement]] = {}
    for m in measurements:
        by_metric.setdefault(m.metric, []).append(m)
    findings: list[Finding] = []
    for rule in rules:
        if rule.metric is None:
            continue
        for m in by_metric.get(rule.metric, []):
            if m.state == "measured" and m.value is not None:
                state: FindingState = "breach" if rule.breached(m.value) else "ok"
            else:
                state = {"gap": "gap", "masked": "masked"}.get(m.state, "unknown")  # type: ignore[assignment]
            findings.append(Finding(
                rule=rule.name, level=rule.level, severity=rule.severity.value, description=rule.description,
                target=m.target, metric=m.metric, operator=rule.operator, threshold=rule.threshold, value=m.value,
                state=state, scenario=m.scenario or rule.scenario, detail=m.detail,
            ))
    _attribute(findings)
    return findings


ERROR_RATE_RULE = "high_error_rate"
# The rules whose cause also raises the error rate: while one breaches, or its monitor incident is open, an
# error-rate breach is that cause's symptom.
ERROR_RATE_CAUSES = ("application_down", "database_unavailable", "authentication_failing",
                     "payment_processing_failed", "database_degradation")
# Symptoms of those causes too: an outage changes the traffic and fails logins (users retrying, sessions lost).
TRAFFIC_RULES = ("unusual_traffic", "security_event", "feature_usage_anomaly")
SYMPTOM_RULES = (ERROR_RATE_RULE, *TRAFFIC_RULES)
FEATURE_RULE = "feature_usage_anomaly"
# Symptoms of these as well: a flood on one route, failed logins, users retrying a failing feature shift the mix.
FEATURE_CAUSES = ("unusual_traffic", "security_event", ERROR_RATE_RULE)


def _causes_of(rule: str, active: Iterable[str]) -> list[str]:
    """Return the active rules (breached or with an open incident) a symptom rule is attributed to, in order."""
    causes = ERROR_RATE_CAUSES + (FEATURE_CAUSES if rule == FEATURE_RULE else ())
    present = set(active)
    return [c for c in causes if c in present] if rule in SYMPTOM_RULES else []


def _attribute(findings: list[Finding]) -> None:
    """Mask symptoms of a breached cause: one cause, one incident.

    Slow responses while the database is degraded belong to database_degradation; a high error rate, unusual
    traffic, a security event or a feature-usage anomaly while any of `ERROR_RATE_CAUSES` breaches belongs to that
    cause, and a feature-usage anomaly while one of `FEATURE_CAUSES` breaches to that one.
    """
    breached = {f.rule for f in findings if f.breached}
    for f in findings:
        if f.breached and f.rule == "slow_response_time" and "database_degradation" in breached:
            f.state = "masked"
            f.detail += " (attributed to database degradation)"
        elif f.breached and (causes := _causes_of(f.rule, breached)):
            f.state = "masked"
            f.detail += f" (attributed to {causes[0]})"


def attribute_to_open(findings: Iterable[Finding], open_fingerprints: Iterable[str]) -> None:
    """Mask a symptom breach while a monitor incident of one of its causes is open (its errors are in the window).

    `open_fingerprints` are the fingerprints of the open incidents (`monitor:<rule>:<target>`).
    """
    open_rules = {fp.split(":")[1] for fp in open_fingerprints if fp.startswith("monitor:") and fp.count(":") >= 2}
    for f in findings:
        if f.breached and (causes := _causes_of(f.rule, open_rules)):
            f.state = "masked"
            f.detail += f" (attributed to the open {causes[0]} incident)"


# -- consecutive breaches ---------------------------------------------------------------------------------------


class BreachState(BaseModel):
    """The breach state of one rule on one target, kept between monitor runs."""

    rule: str
    target: str
    consecutive: int = Field(default=0, description="Consecutive breaching cycles (gap/masked cycles hold it)")
    gap_cycles: int = Field(default=0, description="monitoring_gap states: consecutive cycles a probe failed")
    first_breach_at: datetime | None = None
    last_breach_at: datetime | None = None
    last_value: float | None = None
    incident_id: str | None = Field(default=None, description="The incident this breach episode declared")

    @property
    def key(self) -> str:
        """Return `rule:target`."""
        return f"{self.rule}:{self.target}"

    @property
    def idle(self) -> bool:
        """Return True when there is nothing worth keeping."""
        return not (self.consecutive or self.gap_cycles or self.incident_id)


class Step(BaseModel):
    """What one cycle did to one rule/target: the new state and the action it calls for."""

    finding: Finding
    state: BreachState
    action: Action
    previous_incident_id: str | None = None


def advance(previous: BreachState | None, finding: Finding, breach_cycles: int, now: datetime) -> Step:
    """Move one rule/target's state by one cycle and say what to do (pure; the flow acts on the action).

    breach: count it; at `breach_cycles` → declare; later → continuing (the flow re-declares only when the
    incident is no longer open); ok after a declared breach → recovered (once), else reset; gap/masked → held.
    """
    state = (previous or BreachState(rule=finding.rule, target=finding.target)).model_copy()
    if finding.state == "breach":
        state.consecutive += 1
        state.first_breach_at = state.first_breach_at or now
        state.last_breach_at = now
        state.last_value = finding.value
        if state.consecutive < breach_cycles:
            action: Action = "breaching"
        elif state.incident_id is None:
            action = "declare"
        else:
            action = "continuing"
        return Step(finding=finding, state=state, action=action)
    if finding.state == "ok":
        incident = state.incident_id
        action = "recovered" if incident else "none"
        fresh = BreachState(rule=finding.rule, target=finding.target)
        return Step(finding=finding, state=fresh, action=action, previous_incident_id=incident)
    return Step(finding=finding, state=state, action="held")


def advance_all(states: dict[str, BreachState], findings: Iterable[Finding], breach_cycles: int,
                now: datetime) -> list[Step]:
    """Advance every finding's state; return the steps in finding order."""
    return [advance(states.get(f.key), f, breach_cycles, now) for f in findings]


GAP_RULE = "monitoring_gap"


def gap_sources(measurements: Iterable[Measurement]) -> dict[str, str]:
    """Return probe source → reason for every measurement the monitor could not take."""
    out: dict[str, str] = {}
    for m in measurements:
        if m.state == "gap":
            out.setdefault(m.source if m.source != "third-party" else f"status:{m.target}", m.detail)
    return out


def advance_gaps(states: dict[str, BreachState], gaps: dict[str, str]) -> list[BreachState]:
    """Count consecutive gapped cycles per probe source; a source that measured again goes back to 0."""
    known = {s.target for s in states.values() if s.rule == GAP_RULE}
    out = []
    for source in sorted(known | set(gaps)):
        prev = states.get(f"{GAP_RULE}:{source}") or BreachState(rule=GAP_RULE, target=source)
        out.append(prev.model_copy(update={"gap_cycles": prev.gap_cycles + 1 if source in gaps else 0}))
    return out


# -- uptime -----------------------------------------------------------------------------------------------------


def uptime_pct(up: int, total: int) -> float | None:
    """Return the availability in percent from counts of available and measured cycles (None without samples)."""
    if total <= 0:
        return None
    return round(100.0 * up / total, 3)


def available(probes: CycleProbes) -> bool | None:
    """Return whether users could use the app this cycle (/api/health answered 2xx, healthy); None when unknown."""
    health = probes.health
    if isinstance(health, ProbeFailure):
        return None if health.kind in NOT_MEASURED else False
    if health.status_code >= 500 and (health.body or {}).get("maintenance"):
        return False
    return health.status_code < 500


# -- the artifact -----------------------------------------------------------------------------------------------

_KEY_TARGETS: dict[str, tuple[str, str]] = {
    # metric → (KeyMetrics field, healthy when the value is "<" or ">" the target)
    "response_time_s": ("response_time_s", "<"),
    "error_rate_pct": ("error_rate_pct", "<"),
    "pool_utilisation_pct": ("pool_utilisation_pct", "<"),
    "query_time_ms": ("query_time_ms", "<"),
    "active_connections": ("active_connections", "<"),
}


def key_target(policy: Policy, metric: str) -> tuple[str, float] | None:
    """Return (operator, value) of the runbook's key-metric target for a metric, if it has one."""
    entry = _KEY_TARGETS.get(metric)
    if entry is None:
        return None
    return entry[1], float(getattr(policy.key_metrics, entry[0]))


def _fmt(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:g}" if abs(value) < 1e6 else f"{value:.3g}"


def cycle_rows(policy: Policy, measurements: Sequence[Measurement], findings: Sequence[Finding],
               uptime: float | None, samples: int) -> list[dict[str, str]]:
    """Return the cycle's table: one row per measurement (metric, target, value, threshold, state, detail)."""
    by_key: dict[str, list[Finding]] = {}
    for f in findings:
        by_key.setdefault(f"{f.metric}:{f.target}", []).append(f)
    rows = []
    for m in measurements:
        related = by_key.get(m.key, [])
        limits = [f"{f.rule} {f.operator} {_fmt(f.threshold)}" for f in related]
        target = key_target(policy, m.metric)
        if target is not None:
            limits.append(f"target {target[0]} {_fmt(target[1])}")
        if m.state != "measured":
            state = {"gap": "gap", "masked": "masked", "unknown": "n/a"}[m.state]
        elif any(f.state == "breach" for f in related):
            state = "breach"
        elif any(f.state == "masked" for f in related):
            state = "masked"
        elif target is not None and m.value is not None and not _healthy(m.value, *target):
            state = "off-target"
        else:
            state = "ok"
        rows.append({"metric": m.metric, "target": m.target, "value": _fmt(m.value),
                     "threshold": "; ".join(limits) or "–", "state": state, "detail": m.detail[:200]})
    goal = policy.key_metrics.uptime_pct
    rows.append({"metric": "uptime_pct", "target": "app", "value": _fmt(uptime),
                 "threshold": f"target > {_fmt(goal)}",
                 "state": "n/a" if uptime is None else ("ok" if uptime > goal else "off-target"),
                 "detail": f"{samples} cycle(s) in the last {policy.monitoring.uptime_window_hours:g} h"})
    return rows


def _healthy(value: float, op: str, target: float) -> bool:
    return value < target if op == "<" else value > target


# -- persistence ------------------------------------------------------------------------------------------------

monitor_metadata = MetaData()

breaches_t = Table(
    "monitor_breaches",
    monitor_metadata,
    Column("key", String(300), primary_key=True),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("data", JSON, nullable=False),
)

samples_t = Table(
    "monitor_samples",
    monitor_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("target", String(100), nullable=False, index=True),
    Column("at", UTCDateTime, nullable=False, index=True),
    Column("up", Boolean, nullable=False),
)

rates_t = Table(
    "monitor_rates",
    monitor_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("metric", String(300), nullable=False, index=True),  # FEATURE_SHARE + a route name
    Column("at", UTCDateTime, nullable=False, index=True),
    Column("value", Float, nullable=False),
)


class MonitorStore:
    """The monitor's breach state and availability samples, on the incident store's database."""

    def __init__(self, url: str) -> None:
        self._store = IncidentStore(url)  # reuse its URL handling (drivers, SQLite pragmas, NullPool)
        self.engine = self._store.engine

    async def init(self) -> None:
        """Create the monitor's tables if missing (additive; the incident tables are untouched)."""
        for attempt in range(3):
            try:
                async with self.engine.begin() as conn:
                    await conn.run_sync(monitor_metadata.create_all)
                return
            except Exception:  # two processes creating the tables at once: the next pass sees them
                if attempt == 2:
                    raise
                await asyncio.sleep(0.2)

    async def close(self) -> None:
        """Release the engine."""
        await self.engine.dispose()

    async def states(self) -> dict[str, BreachState]:
        """Return every kept breach state by key."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(breaches_t.c.data))).all()
        out = {}
        for (data,) in rows:
            state = BreachState.model_validate(data)
            out[state.key] = state
        return out

    async def save(self, states: Iterable[BreachState], now: datetime | None = None) -> None:
        """Write these states (idle ones are deleted) in one transaction."""
        now = now or utcnow()
        async with self.engine.begin() as conn:
            for state in states:
                await conn.execute(delete(breaches_t).where(breaches_t.c.key == state.key))
                if not state.idle:
                    await conn.execute(insert(breaches_t).values(key=state.key, updated_at=now,
                                                                 data=state.model_dump(mode="json")))

    async def add_sample(self, target: str, up: bool, at: datetime | None = None) -> None:
        """Record one cycle's availability of a target."""
        async with self.engine.begin() as conn:
            await conn.execute(insert(samples_t).values(target=target, at=at or utcnow(), up=up))

    async def uptime(self, target: str, window: timedelta, now: datetime | None = None) -> tuple[int, int]:
        """Return (available, total) cycles of a target in the window; prune samples older than it."""
        since = (now or utcnow()) - window
        async with self.engine.begin() as conn:
            await conn.execute(delete(samples_t).where(samples_t.c.at < since))
            row = (await conn.execute(
                select(func.count(), func.coalesce(func.sum(samples_t.c.up.cast(Integer)), 0))
                .where(and_(samples_t.c.target == target, samples_t.c.at >= since))
            )).one()
        return int(row[1]), int(row[0])

    async def add_rates(self, values: Mapping[str, float], at: datetime | None = None) -> None:
        """Record one cycle's values of several metrics in one transaction."""
        if not values:
            return
        at = at or utcnow()
        async with self.engine.begin() as conn:
            await conn.execute(insert(rates_t), [{"metric": m, "at": at, "value": float(v)} for m, v in values.items()])

    async def _values(self, named: ColumnElement[bool], window: timedelta, now: datetime | None
                      ) -> list[tuple[str, float]]:
        """Return (metric, value) of the metrics `named` selects in the window, oldest first; prune older ones."""
        since = (now or utcnow()) - window
        async with self.engine.begin() as conn:
            await conn.execute(delete(rates_t).where(and_(named, rates_t.c.at < since)))
            rows = (await conn.execute(select(rates_t.c.metric, rates_t.c.value).where(
                and_(named, rates_t.c.at >= since)).order_by(rates_t.c.at, rates_t.c.id))).all()
        return [(metric, float(value)) for metric, value in rows]

    async def rates_by_prefix(self, prefix: str, window: timedelta, now: datetime | None = None
                              ) -> dict[str, list[float]]:
        """Return the values in the window of every metric named `prefix…`, by the rest of the name, oldest first;
        prune their values older than the window."""
        out: dict[str, list[float]] = {}
        for metric, value in await self._values(rates_t.c.metric.startswith(prefix, autoescape=True), window, now):
            out.setdefault(metric[len(prefix):], []).append(value)
        return out

    async def rates(self, metric: str, window: timedelta, now: datetime | None = None) -> list[float]:
        """Return a metric's values in the window, oldest first; prune values older than it."""
        return [value for _, value in await self._values(rates_t.c.metric == metric, window, now)]


@asynccontextmanager
async def open_monitor_store(url: str | None = None) -> AsyncIterator[MonitorStore]:
    """Open the monitor's tables on the incident store's database (the settings' store unless a URL is given)."""
    if url is None:
        from runbook.settings import get_settings

        url = get_settings().resolved_store_url
    store = MonitorStore(url)
    try:
        await store.init()
        yield store
    finally:
        await store.close()
