"""measure(): one cycle's probe results → measurements, each symptom attributed to one cause.

What app_up / database_up / auth_up mean, when a slow response or a failed delivery is masked, the third parties;
the traffic and feature measurements come from baselines.py. The rules of attribution: the package's docstring.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from runbook.clients.app import AppHealth
from runbook.clients.supabase import DatabaseHealth
from runbook.monitoring.baselines import feature_measurement, traffic_measurements
from runbook.monitoring.probes import (
    HEALTHY,
    NOT_MEASURED,
    CycleProbes,
    Measurement,
    MeasurementState,
    ProbeFailure,
    blocked_queries,
    check_status,
    health_checks,
)
from runbook.monitoring.probes import measurement as _m
from runbook.policy import Monitoring


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
    waiting = blocked_queries(p.database)
    if status is not None:
        err = str(checks["database"].get("error") or "")
        timed_out = "timeout" in err.lower() or "timed out" in err.lower()
        if status == "unhealthy" and timed_out and waiting:  # slow behind a lock, not down (as for REST below)
            evidence.append((None, f"app database check timed out while {len(waiting)} queries wait on locks"))
        else:
            evidence.append((status != "unhealthy", f"app database check {status}" + (f": {err}" if err else "")))
    if isinstance(p.rest, ProbeFailure) and p.rest.kind == "timeout" and isinstance(p.database, DatabaseHealth):
        # The database answered the direct connection in this very cycle: a REST count that timed out is a slow
        # database (queries queued behind a lock, or a busy machine), degradation that query_time_ms measures
        # (at least the REST probe's wait), not an outage: no database_up=0 from this timeout.
        why = f"{len(waiting)} queries wait on locks" if waiting else "the direct connection answers"
        evidence.append((None, f"REST count timed out while {why} (slow, not down)"))
    elif isinstance(p.rest, ProbeFailure):
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


def _lock_wait_ms(db: DatabaseHealth | ProbeFailure) -> float:
    """Return how long the longest query waiting on another session's lock has waited (ms; 0 when none)."""
    return max((q.duration_s * 1000 for q in blocked_queries(db)), default=0.0)


def _database_metrics(p: CycleProbes, checks: dict[str, dict[str, Any]], db_down: bool) -> list[Measurement]:
    out: list[Measurement] = []
    db = p.database
    rest = p.rest
    rest_ms = round(rest.elapsed_s * 1000, 1) if isinstance(rest, ProbeFailure) and rest.kind == "timeout" \
        and rest.elapsed_s else 0.0
    app_ms = checks.get("database", {}).get("latency_ms") if check_status(checks, "database") in HEALTHY | {
        "degraded"} else None
    if db_down:
        out.append(_m("query_time_ms", "database", None, "database", "database unavailable", state="masked"))
    elif isinstance(app_ms, int | float) and float(app_ms) >= max(_lock_wait_ms(db), rest_ms):
        out.append(_m("query_time_ms", "database", float(app_ms), "app",
                      f"the app's profiles query took {app_ms:g} ms", scenario="database"))
    elif isinstance(db, DatabaseHealth) and (db.mean_query_ms is not None or blocked_queries(db) or rest_ms):
        # No answer from the app's own check (or its query slipped between two holds of a lock others still wait
        # on): the direct view, where a query waiting on a lock counts too, and a REST count that timed out.
        waited = _lock_wait_ms(db)
        value = round(max(db.mean_query_ms or 0.0, waited, rest_ms), 1)
        if rest_ms >= max(waited, db.mean_query_ms or 0.0):
            detail = f"the REST count timed out after {rest_ms:g} ms"
        elif waited > (db.mean_query_ms or 0.0):
            detail = f"queries waiting on locks for up to {waited:g} ms"
        else:
            detail = f"mean query time ({db.mean_query_source})"
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
