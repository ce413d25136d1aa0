"""The runbook's "Performance Issues" scenario as a diagnosis.

Symptoms: slow pages, timeouts, high response times, 5xx. Response: /api/health with a curl -w style timing
breakdown against the key metrics (response time < 2 s, warning > 5 s), Vercel → Deployments (the recent
production deployments), Database → Logs (long-running queries, mean query time), Sentry's error rate and series,
and the external services: OpenAI's /v1/models and the vendors' status pages (Supabase, Vercel, OpenAI, Stripe).

Causes:
- bad deploy: /api/health answers 5xx while its dependencies are fine, and the production deployment was created
  shortly before the errors started → NAMES the deployment and the previous good one, suggests code-rollback;
- slow database: a long-running query → names its pid and duration, suggests cancel-query;
- third-party outage (OpenAI, a vendor's status page) → names the vendor; nothing of ours to roll back (monitor),
  maintenance mode as an optional workaround;
- a slow database without a runaway query (mean query time over the policy).
"""

from datetime import UTC, datetime, timedelta

from prefect import flow
from pydantic import BaseModel, Field

from flows._diagnosis import (
    INCIDENT_ID_DESCRIPTION,
    NONE,
    Investigation,
    check_status,
    culprit,
    health_checks,
    is_failing,
    note_health,
    publish,
    query_line,
    run_name,
    suggest_cancel,
)
from runbook.clients.types import Deployment, SeriesPoint
from runbook.models import Diagnosis, IncidentId, Suggestion
from runbook.policy import get_policy
from tasks.diagnostics import probe_openai, read_error_series
from tasks.health import check_app_health, check_vendor_statuses, probe_health_timing
from tasks.sentry import read_error_rate
from tasks.supabase import check_database_health
from tasks.vercel import find_rollback_target, list_production_deployments

DEPENDENCIES = ("database", "auth", "config")


class DiagnosePerformanceParams(BaseModel):
    """Parameters of diagnose-performance."""

    incident_id: IncidentId | None = Field(default=None, description=INCIDENT_ID_DESCRIPTION)
    deploy_window_minutes: float = Field(default=120, gt=0, le=7 * 24 * 60,
        description="A production deployment created at most this long before the errors started is suspect")
    error_window_minutes: float | None = Field(
        default=None, gt=0, le=24 * 60, description="Sentry window (default: the policy's monitoring.sentry_window)")
    long_query_seconds: float | None = Field(default=None, gt=0, le=3600,
        description="A query running longer than this is long-running (default: key_metrics.response_time_s)")
    probe_timeout_seconds: float = Field(
        default=5, gt=0, le=60, description="Give the OpenAI liveness probe at most this long (one attempt)")


def errors_started(series: list[SeriesPoint], since: datetime | None = None) -> datetime | None:
    """Return the start of the errors: the first non-empty bucket (at or after `since` when given)."""
    for point in series:
        if point.count > 0 and (since is None or point.timestamp >= since):
            return point.timestamp
    return None


def _when(at: datetime | None) -> str:
    if at is None:
        return "unknown time"
    minutes = (datetime.now(UTC) - at).total_seconds() / 60
    ago = f"{minutes:.0f} min ago" if minutes < 120 else f"{minutes / 60:.1f} h ago" if minutes < 2880 \
        else f"{minutes / 1440:.0f} days ago"
    return f"{at:%Y-%m-%d %H:%M:%S} UTC ({ago})"


def _deployment_line(d: Deployment) -> str:
    message = d.meta.get("githubCommitMessage") or ""
    sha = (d.commit_sha or "")[:7]
    return f"{d.id} created {_when(d.created_at)}" + (f", {sha} {message}".rstrip() if sha or message else "")


@flow(name="diagnose-performance", flow_run_name=run_name("performance"))
async def diagnose_performance(params: DiagnosePerformanceParams) -> Diagnosis:
    """Diagnose the runbook's performance scenario: timing, deployments, database, errors, third parties."""
    inv = Investigation("performance")
    policy = get_policy()
    km = policy.key_metrics
    warn_s = policy.rule("slow_response_time").threshold or 5.0
    long_s = params.long_query_seconds or km.response_time_s
    sentry_window = params.error_window_minutes or policy.monitoring.sentry_window_minutes

    # Verification-style timing: curl -w against /api/health
    timing = await inv.probe("response time", probe_health_timing())
    if timing is not None:
        breakdown = ", ".join(f"{k} {v:.3f} s" for k, v in (("connect", timing.connect_s), ("tls", timing.tls_s),
                              ("first byte", timing.first_byte_s)) if v is not None)
        level = "ok" if timing.total_s < km.response_time_s else "WARNING" if timing.total_s > warn_s else "slow"
        inv.note("response time", timing.error is None and timing.total_s < km.response_time_s,
                 f"{timing.total_s:.3f} s ({level})",
                 f"HTTP {timing.status}; {breakdown}; target < {km.response_time_s:g} s, warning > {warn_s:g} s"
                 if timing.error is None else timing.error)
    health = await inv.probe("app /api/health", check_app_health(params.incident_id, purpose="diagnosis"))
    note_health(inv, health, *[n for n in health_checks(health) if n not in DEPENDENCIES] or ["app"])
    server_error = health is not None and health.status_code >= 500
    deps_failing = [n for n in DEPENDENCIES if is_failing(health, n)]

    # Vercel → Deployments
    deployments = await inv.probe("production deployments", list_production_deployments(5)) or []
    if deployments:
        inv.note("production deployments", True, str(len(deployments)),
                 "; ".join(_deployment_line(d) for d in deployments[:3]))
    target = await inv.probe("rollback candidate", find_rollback_target())
    current, previous = target if target is not None else (None, None)
    if current is not None:
        inv.note("production deployment", True, current.id, _deployment_line(current))
    if target is not None:
        inv.note("previous deployment", previous is not None, previous.id if previous else "none",
                 _deployment_line(previous) if previous else "no READY production deployment before it")
    # Database → Logs
    dbh = await inv.probe("database queries", check_database_health(long_s))
    if dbh is not None:
        inv.note("long-running queries", not dbh.long_running, str(len(dbh.long_running)),
                 "; ".join(query_line(q) for q in dbh.long_running[:3]) or f"none over {long_s:g} s")
        mean = dbh.mean_query_ms
        inv.note("mean query time", mean is None or mean < km.query_time_ms,
                 "n/a" if mean is None else f"{mean:.0f} ms", f"target < {km.query_time_ms:g} ms")
    # Sentry → Issues
    rate = await inv.probe("Sentry errors", read_error_rate(sentry_window))
    if rate is not None:
        inv.note("Sentry errors", rate.count == 0, f"{rate.count} in {sentry_window:g} min",
                 f"{rate.per_minute:g} per minute")
    series = await inv.probe("Sentry error series", read_error_series(max(sentry_window, 60))) or []
    # External services
    openai = await inv.probe("OpenAI /v1/models", probe_openai(params.probe_timeout_seconds))
    if openai is not None:
        inv.note("OpenAI /v1/models", openai.ok, f"HTTP {openai.status}" if openai.status else "no answer",
                 openai.error or f"{openai.total_s:.3f} s")
    statuses = await inv.probe("vendor status pages", check_vendor_statuses()) or []
    for vs in statuses:
        if vs.level == "unknown":  # its page did not answer: not read, so neither "operational" nor a cause
            inv.unread(f"status page: {vs.vendor}", vs.error or "its status page could not be read", vs.level)
            if not vs.url:  # no status page configured for it: not checked, and no failure either
                inv.unconfigured.add(f"status page: {vs.vendor}")
        else:
            inv.note(f"status page: {vs.vendor}", vs.operational, vs.level, vs.description or "")

    # Causes
    if health is not None and server_error and not deps_failing and current is not None \
            and current.created_at is not None:
        started = errors_started(series, current.created_at - timedelta(minutes=1)) or datetime.now(UTC)
        gap = (started - current.created_at).total_seconds() / 60
        if -1 <= gap <= params.deploy_window_minutes:
            error = str(health_checks(health).get("app", {}).get("error") or "")
            inv.cause(
                f"Bad deploy: production deployment {current.id} (created {_when(current.created_at)}) went live "
                f"{max(gap, 0):.0f} min before the errors started; /api/health answers HTTP {health.status_code}"
                + (f" ({error[:120]})" if error else "") + " while its database, auth and config checks pass. "
                + (f"Previous good deployment: {previous.id} (created {_when(previous.created_at)})."
                   if previous else "No previous deployment to roll back to."),
                *([Suggestion(flow="code-rollback", parameters={"target_deployment_id": previous.id},
                              why=f"roll production back from {current.id} to {previous.id}")] if previous else []),
            )
    if dbh is not None and dbh.long_running:
        q = culprit(dbh.long_running)
        db_check = health_checks(health).get("database", {})
        waited = (f" /api/health's database check took {db_check['latency_ms']} ms."
                  if db_check.get("latency_ms") is not None else "")
        inv.cause(f"Slow database: long-running query {query_line(q)}.{waited}", suggest_cancel(q, long_s))
    openai_error = (openai.error or f"HTTP {openai.status}" if openai is not None and not openai.ok
                    and (openai.status is None or openai.status >= 500 or openai.status == 429) else None)
    openai_health = health_checks(health).get("openai", {})
    openai_page = next((vs for vs in statuses if vs.vendor == "openai" and not vs.operational
                        and vs.level != "unknown"), None)
    if openai_error or openai_page is not None or check_status(health, "openai") == "unhealthy":
        seen = [f"/v1/models: {openai_error}" if openai_error else "",
                f"status page: {openai_page.level} ({openai_page.description or ''})" if openai_page else "",
                f"/api/health openai: {openai_health.get('error') or openai_health.get('status')}"
                if check_status(health, "openai") not in (None, "healthy") else ""]
        inv.cause("Third-party outage: OpenAI is unavailable (" + "; ".join(s for s in seen if s) + "). "
                  "AI features are degraded; nothing of ours to roll back.",
                  Suggestion(flow=NONE, why="monitor status.openai.com and post updates; recover when OpenAI does"),
                  Suggestion(flow="maintenance-mode", parameters={"enabled": True},
                             why="optional workaround if the outage makes the app unusable"))
    for vs in statuses:
        if vs.vendor != "openai" and not vs.operational and vs.level != "unknown":
            inv.cause(f"Third-party degradation: {vs.vendor} reports {vs.level} ({vs.description or ''}).",
                      Suggestion(flow=NONE, why=f"monitor {vs.vendor}'s status page"))
    if dbh is not None and not dbh.long_running and dbh.mean_query_ms is not None \
            and dbh.mean_query_ms >= km.query_time_ms:
        inv.cause(f"Slow database: mean query time {dbh.mean_query_ms:.0f} ms ≥ {km.query_time_ms:g} ms, no single "
                  "runaway query.", Suggestion(flow=NONE, why="look at Supabase → Database → Query performance"))
    if timing is not None and timing.total_s >= km.response_time_s:
        nothing = f"/api/health took {timing.total_s:.2f} s (target < {km.response_time_s:g} s); no cause identified"
    elif server_error:
        nothing = f"/api/health answers HTTP {health.status_code if health else '?'}; no cause identified here"
    else:
        nothing = (f"Performance healthy: /api/health in {timing.total_s:.2f} s, no recent bad deploy, no slow "
                   "queries, third parties operational." if timing is not None else "No performance cause found.")
    all_clear = nothing.startswith(("Performance healthy", "No performance"))
    return await publish(inv.diagnosis(nothing, all_clear=all_clear), params.incident_id)
