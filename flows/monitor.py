"""The runbook's "Monitoring & Alerting" as a flow: probe the stack, compare with the key metrics and alerting rules,
declare an incident when a breach holds for N consecutive cycles, note recoveries, report uptime.

Each cycle probes concurrently (each probe bounded by the policy's probe timeout): /api/health, the auth endpoint,
Supabase REST count, the database's health, Stripe's undelivered webhook events, Sentry's error rate (errors as %
of its transactions), Sentry's request rate, requests per route and failed logins (unusual_traffic against a
baseline learned from earlier cycles' rates, feature_usage_anomaly: each route's share against its usual share,
security_event above the policy's failed logins per minute), OpenAI and the vendors' status pages.
`runbook.monitoring` turns the results into measurements and findings and keeps the breach state between runs;
this flow acts on it: a Prefect event per breach (`runbook.monitor.<rule>.<target>`), a declaration through
declare-incident (fingerprint `monitor:<rule>:<target>`, so a continuing breach attaches to the open incident),
RECOVERY_OBSERVED on the incident's timeline once the breach clears, and a table artifact `monitor-cycle` per
cycle. A probe that fails is a monitoring gap: shown, warned about when it persists, never declared as an outage
of the app. A source that stays a gap for the policy's `monitoring.gap_cycles` cycles is blind monitoring: one P2
`monitoring_gap` incident per source (fingerprint `monitor:monitoring_gap:<source>`, its title the cause in words,
its summary the rules that are blind), on-call paged once unless `respond` is none; the monitor resolves it when the
source measures again (runbook.monitoring.gaps). A freeze of remediations is shown in the cycle's summary and table.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from datetime import datetime, timedelta
from typing import Literal, TypeVar

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_table_artifact
from prefect.events import emit_event
from pydantic import BaseModel, Field

from flows._guard import page_oncall
from flows._guard_close import resolve_guard, resolve_open
from flows._response import announce_status
from flows.declare_incident import DeclareParams, declare_incident
from flows.watchdog import GUARD, HEARTBEAT_EVENT, heartbeat_resource
from runbook.errors import IncidentNotFound, IntegrationError, RunbookError
from runbook.guardrails import freeze_line
from runbook.models import Alert, EventKind, Severity, Status, utcnow
from runbook.monitoring import (
    ERROR_RATE_CAUSES,
    FEATURE_CAUSES,
    FEATURE_SHARE,
    GAP_RULE,
    REQUEST_RATE,
    SYMPTOM_RULES,
    CycleProbes,
    Finding,
    MonitorStore,
    ProbeFailure,
    Step,
    advance_all,
    advance_gaps,
    attribute_to_open,
    available,
    baseline_samples,
    cycle_rows,
    evaluate,
    gap_sources,
    measure,
    open_monitor_store,
    probe_failure,
    uptime_pct,
)
from runbook.monitoring.gaps import GapStep, blind_rules, gap_fingerprint, gap_reason, gap_steps, source_name
from runbook.policy import Policy, get_policy
from runbook.settings import get_settings
from runbook.store import open_store
from tasks.common import run_parameter
from tasks.health import check_app_health, check_auth_endpoint, check_openai, check_vendor_statuses
from tasks.incident import record
from tasks.sentry import read_error_rate, read_traffic
from tasks.stripe import list_failed_events
from tasks.supabase import check_database_health, check_rest_count

T = TypeVar("T")
ARTIFACT_KEY = "monitor-cycle"
UPTIME_TARGET = "app"


class MonitorParams(BaseModel):
    """Parameters of the monitor (the deployment runs it every minute with the defaults)."""

    respond: Literal["deployment", "inline", "none"] = Field(
        "deployment", description="How a declared incident's response starts (passed to declare-incident)")
    cycles: int = Field(1, ge=1, le=240, description="Monitoring cycles in this run")
    interval_seconds: float | None = Field(
        None, ge=0, le=3600, description="Seconds from one cycle's start to the next; default: the policy's interval")


class DeclaredAlert(BaseModel):
    """An incident the monitor declared (or attached a continuing breach to)."""

    rule: str
    target: str
    severity: str
    incident_id: str
    created: bool


class CycleReport(BaseModel):
    """One cycle: its table, what breached, what was declared or recovered, the gaps."""

    cycle: int
    at: datetime
    rows: list[dict[str, str]]
    breaches: list[str] = Field(default_factory=list, description="rule:target breached this cycle")
    declared: list[DeclaredAlert] = Field(default_factory=list)
    recovered: list[str] = Field(default_factory=list, description="Incidents whose breach cleared")
    gaps: dict[str, str] = Field(default_factory=dict, description="Probe source → why it could not measure")
    uptime_pct: float | None = None
    uptime_samples: int = 0
    errors: list[str] = Field(default_factory=list, description="Declarations or notes that failed")
    frozen: str | None = Field(None, description="The freeze of remediations in force, if any (`runbook freeze`)")


class MonitorResult(BaseModel):
    """What the monitor saw over its cycles."""

    cycles: list[CycleReport]
    declared: list[DeclaredAlert]
    gaps: dict[str, str] = Field(default_factory=dict, description="The last cycle's monitoring gaps")
    persistent_gaps: list[str] = Field(default_factory=list, description="Sources gapped for N+ cycles")
    uptime_pct: float | None
    uptime_target_pct: float
    uptime_ok: bool | None
    uptime_samples: int


async def _guard(call: Awaitable[T]) -> T | ProbeFailure:
    """Await a probe; any failure becomes a ProbeFailure (the cycle goes on)."""
    started = time.perf_counter()
    try:
        return await call
    except (IntegrationError, TimeoutError) as exc:
        return probe_failure(exc, time.perf_counter() - started)
    except Exception as exc:  # a probe bug must not stop the monitor; it is a gap, not an outage
        get_run_logger().warning("probe failed unexpectedly: %s: %s", type(exc).__name__, exc)
        return probe_failure(exc, time.perf_counter() - started).model_copy(update={"kind": "error"})


async def probe_all(policy: Policy) -> CycleProbes:
    """Run every probe concurrently, each bounded by the policy's probe timeout."""
    mon = policy.monitoring
    t = mon.probe_timeout_s
    results = await asyncio.gather(
        _guard(check_app_health.with_options(timeout_seconds=t)(None, purpose="monitor")),
        _guard(check_auth_endpoint.with_options(timeout_seconds=t)()),
        _guard(check_rest_count.with_options(timeout_seconds=t)(None)),
        _guard(check_database_health.with_options(timeout_seconds=t)(
            long_query_s=policy.key_metrics.query_time_ms / 1000)),
        _guard(list_failed_events.with_options(timeout_seconds=t)(window_minutes=mon.stripe_window_minutes)),
        _guard(read_error_rate.with_options(timeout_seconds=t)(window_minutes=mon.sentry_window_minutes)),
        _guard(check_openai.with_options(timeout_seconds=t)()),
        _guard(check_vendor_statuses.with_options(timeout_seconds=t)()),
        _guard(read_traffic.with_options(timeout_seconds=t)(
            window_minutes=mon.traffic_window_minutes, auth_window_minutes=mon.auth_failure_window_minutes,
            endpoint=mon.auth_endpoint, statuses=mon.auth_failure_statuses)),
    )
    names = ("health", "auth", "rest", "database", "stripe", "sentry", "openai", "vendors", "traffic")
    return CycleProbes.model_validate(dict(zip(names, results, strict=True)))


def _alert(finding: Finding, step: Step, environment: str) -> Alert:
    value = "–" if finding.value is None else f"{finding.value:g}"
    summary = (f"{finding.description}: {finding.target} {finding.metric}={value} "
               f"({finding.operator} {finding.threshold:g} for {step.state.consecutive} cycles)"
               if finding.threshold is not None else f"{finding.description}: {finding.target}")
    return Alert(
        source="monitor",
        fingerprint=f"monitor:{finding.rule}:{finding.target}",
        summary=summary[:200],
        rule=finding.rule,
        scenario=finding.scenario,
        labels={"target": finding.target, "metric": finding.metric, "environment": environment,
                "level": finding.level},
        values={k: v for k, v in {finding.metric: finding.value, "threshold": finding.threshold,
                                  "consecutive_cycles": float(step.state.consecutive)}.items() if v is not None},
        raw={"finding": finding.model_dump(mode="json"),
             "first_breach_at": step.state.first_breach_at.isoformat() if step.state.first_breach_at else None},
    )


def _emit_breach(finding: Finding, step: Step) -> None:
    emit_event(
        event="runbook.monitor.breach",
        resource={"prefect.resource.id": f"runbook.monitor.{finding.rule}.{finding.target}",
                  "prefect.resource.name": f"{finding.rule} on {finding.target}"},
        payload={"rule": finding.rule, "target": finding.target, "level": finding.level,
                 "severity": finding.severity, "metric": finding.metric, "value": finding.value,
                 "threshold": finding.threshold, "operator": finding.operator,
                 "consecutive": step.state.consecutive, "detail": finding.detail},
    )


async def _declare(step: Step, params: MonitorParams, environment: str) -> DeclaredAlert | None:
    """Declare the step's breach, unless a continuing breach's incident is still open; None when nothing to do."""
    f = step.finding
    if step.action == "continuing":
        async with open_store() as store:
            still = await store.find_open(f"monitor:{f.rule}:{f.target}")
        if still is not None:
            step.state.incident_id = still.id
            return None
    out = await declare_incident(DeclareParams(alert=_alert(f, step, environment), respond=params.respond))
    step.state.incident_id = out.incident_id
    get_run_logger().warning("%s on %s held for %d cycles → %s %s", f.rule, f.target, step.state.consecutive,
                             out.severity.value, out.incident_id)
    return DeclaredAlert(rule=f.rule, target=f.target, severity=out.severity.value, incident_id=out.incident_id,
                         created=out.created)


async def _note_recovery(step: Step) -> str | None:
    """Note on the still-open incident that its breach cleared; return the incident id when noted."""
    f = step.finding
    async with open_store() as store:
        try:
            incident = await store.get(step.previous_incident_id or "")
        except IncidentNotFound:
            return None
    emit_event(event="runbook.monitor.recovered",
               resource={"prefect.resource.id": f"runbook.monitor.{f.rule}.{f.target}"},
               payload={"rule": f.rule, "target": f.target, "incident_id": incident.id, "value": f.value})
    if not incident.status.is_open:
        return None
    value = "" if f.value is None else f" ({f.metric}={f.value:g})"
    await record(incident.id, EventKind.RECOVERY_OBSERVED, f"Monitor: {f.rule} on {f.target} cleared{value}",
                 {"rule": f.rule, "target": f.target, "metric": f.metric, "value": f.value,
                  "threshold": f.threshold}, actor="monitor")
    return incident.id


async def _act(steps: list[Step], params: MonitorParams, environment: str
               ) -> tuple[list[DeclaredAlert], list[str], list[str]]:
    """Emit breach events, declare, attach or note recovery per step; return (declared, recovered, errors)."""
    declared: list[DeclaredAlert] = []
    recovered: list[str] = []
    errors: list[str] = []
    for step in steps:
        f = step.finding
        if f.breached:
            _emit_breach(f, step)
        try:  # one failing declaration must not keep the other rules from acting; the run fails at the end
            if step.action in {"declare", "continuing"}:
                if (out := await _declare(step, params, environment)) is not None:
                    declared.append(out)
            elif step.action == "recovered" and step.previous_incident_id:
                if (noted := await _note_recovery(step)) is not None:
                    recovered.append(noted)
        except Exception as exc:
            get_run_logger().error("%s on %s: %s failed: %s: %s", f.rule, f.target, step.action,
                                   type(exc).__name__, exc)
            errors.append(f"{f.key} {step.action}: {type(exc).__name__}: {exc}")
    return declared, recovered, errors


async def _declare_gap(step: GapStep, reason: str, blind: list[str], params: MonitorParams, environment: str
                       ) -> DeclaredAlert | None:
    """Declare a source's P2 monitoring_gap incident (page on-call unless respond is none); None when still open."""
    state, fingerprint = step.state, gap_fingerprint(step.state.target)
    if step.action == "continuing":
        async with open_store() as store:
            if await store.find_open(fingerprint) is not None:
                return None
    rules = ", ".join(blind) or "none of the alert rules (the source only adds evidence)"
    alert = Alert(source="monitor", fingerprint=fingerprint, summary=reason[:200], severity=Severity.P2,
                  labels={"target": state.target, "metric": GAP_RULE, "environment": environment, "level": "info",
                          "rule": GAP_RULE},
                  values={"consecutive_cycles": float(state.gap_cycles)},
                  raw={"source": state.target, "reason": reason, "blind_rules": blind})
    summary = (f"{reason}. Blind while it lasts ({state.gap_cycles} cycles so far): {rules}. The monitor resolves "
               "this incident once it measures the source again.")
    out = await declare_incident(DeclareParams(alert=alert, summary=summary[:2000], respond="none"))
    state.incident_id = out.incident_id
    get_run_logger().warning("monitoring gap: %s for %d cycles → P2 %s (blind: %s)", state.target,
                             state.gap_cycles, out.incident_id, rules)
    if (out.created or out.reopened) and params.respond != "none":  # a gap back within the window: paged again
        async with open_store() as store:
            incident = await store.get(out.incident_id)
        await page_oncall(incident, f"{reason}; blind rules: {rules}")
        await announce_status(incident, Status.INVESTIGATING, f"{reason}. Blind rules: {rules}.")
    return DeclaredAlert(rule=GAP_RULE, target=state.target, severity=out.severity.value,
                         incident_id=out.incident_id, created=out.created)


async def _resolve_gap(step: GapStep) -> str | None:
    """Resolve a source's monitoring_gap incident now that the source measures again; return its id if resolved."""
    state = step.state
    resolved = await resolve_open(state.incident_id, f"the monitor measures {source_name(state.target)} again",
                                  actor="monitor", details={"rule": GAP_RULE, "source": state.target})
    state.incident_id = None  # resolved now, or gone / resolved by a person before: nothing left to do
    return resolved


async def _act_on_gaps(steps: list[GapStep], gaps: dict[str, str], blind: dict[str, list[str]],
                       params: MonitorParams, environment: str) -> tuple[list[DeclaredAlert], list[str], list[str]]:
    """Declare, keep or resolve each source's monitoring_gap incident; return (declared, resolved, errors)."""
    declared: list[DeclaredAlert] = []
    resolved: list[str] = []
    errors: list[str] = []
    for step in steps:
        source = step.state.target
        try:
            if step.action in {"declare", "continuing"}:
                reason = gap_reason(source, gaps.get(source, ""))
                if (out := await _declare_gap(step, reason, blind.get(source, []), params, environment)) is not None:
                    declared.append(out)
            elif step.action == "recovered" and (done := await _resolve_gap(step)) is not None:
                resolved.append(done)
        except Exception as exc:  # one failing declaration must not stop the cycle; the run fails at the end
            get_run_logger().error("%s on %s: %s failed: %s: %s", GAP_RULE, source, step.action,
                                   type(exc).__name__, exc)
            errors.append(f"{GAP_RULE}:{source} {step.action}: {type(exc).__name__}: {exc}")
    return declared, resolved, errors


async def _attribute_symptoms(findings: list[Finding]) -> None:
    """Mask a symptom breach (error rate, traffic, security, feature usage) while a monitor incident of one of its
    causes is open."""
    if not any(f.breached and f.rule in SYMPTOM_RULES for f in findings):
        return
    causes = set(ERROR_RATE_CAUSES) | set(FEATURE_CAUSES)
    candidates = {f"monitor:{f.rule}:{f.target}" for f in findings if f.rule in causes}
    async with open_store() as store:
        still_open = [fp for fp in sorted(candidates) if await store.find_open(fp) is not None]
    attribute_to_open(findings, still_open)


async def run_cycle(number: int, params: MonitorParams, policy: Policy, mstore: MonitorStore) -> CycleReport:
    """Probe, measure, evaluate, advance the breach state, act, publish the cycle's table."""
    log = get_run_logger()
    settings = get_settings()
    probes = await probe_all(policy)
    now = utcnow()
    mon = policy.monitoring
    baseline_window = timedelta(hours=mon.traffic_baseline_hours)
    history = await mstore.rates(REQUEST_RATE, baseline_window, now)
    route_history = await mstore.rates_by_prefix(FEATURE_SHARE, baseline_window, now)
    measurements = measure(probes, monitoring=mon, rate_history=history, route_history=route_history)
    findings = evaluate(policy.alert_rules, measurements)
    await _attribute_symptoms(findings)
    gaps = gap_sources(measurements)

    states = await mstore.states()
    steps = advance_all(states, findings, policy.monitoring.breach_cycles, now)
    gap_states = advance_gaps(states, gaps)
    await mstore.save([s.state for s in steps] + gap_states, now)

    declared, recovered, errors = await _act(steps, params, settings.environment)
    blind = {source: blind_rules(source, measurements, policy.alert_rules) for source in gaps}
    gsteps = gap_steps(gap_states, gaps, mon.gap_cycles)
    gap_declared, gap_recovered, gap_errors = await _act_on_gaps(gsteps, gaps, blind, params, settings.environment)
    declared, recovered, errors = declared + gap_declared, recovered + gap_recovered, errors + gap_errors
    if declared or any(g.action != "none" for g in gsteps):
        await mstore.save([s.state for s in steps if s.state.incident_id] + [g.state for g in gsteps], now)

    n = policy.monitoring.breach_cycles
    for gs in gap_states:
        if gs.gap_cycles == n:
            log.warning("monitoring gap: %s could not be measured for %d cycles: %s (not an app outage)",
                        gs.target, gs.gap_cycles, gaps.get(gs.target, ""))
        elif gs.gap_cycles:
            log.info("monitoring gap: %s (%d cycle(s)): %s", gs.target, gs.gap_cycles, gaps.get(gs.target, ""))

    await mstore.add_rates(baseline_samples(measurements, findings), now)

    up = available(probes)
    if up is not None:
        await mstore.add_sample(UPTIME_TARGET, up, now)
    window = timedelta(hours=policy.monitoring.uptime_window_hours)
    good, total = await mstore.uptime(UPTIME_TARGET, window, now)
    uptime = uptime_pct(good, total)

    rows = cycle_rows(policy, measurements, findings, uptime, total)
    async with open_store() as store:
        freeze = await store.freeze_of(settings.environment)
    frozen = f"remediations are {freeze_line(freeze)}" if freeze is not None else None
    if frozen:
        rows.append({"metric": "remediations", "target": settings.environment, "value": "frozen", "threshold": "–",
                     "state": "frozen", "detail": frozen[:200]})
    breaches = [f.key for f in findings if f.breached]
    summary = (("FROZEN: " + frozen + ". " if frozen else "")
               + f"Monitor cycle {number}/{params.cycles} at {now:%Y-%m-%d %H:%M:%S}Z ({settings.environment}): "
               f"{len(breaches)} breach(es){': ' + ', '.join(breaches) if breaches else ''}; "
               f"{len(gaps)} gap(s){': ' + ', '.join(gaps) if gaps else ''}; "
               f"uptime {'n/a' if uptime is None else f'{uptime:g} %'} (target > {policy.key_metrics.uptime_pct:g} %)")
    await acreate_table_artifact(table=rows, key=ARTIFACT_KEY, description=summary)
    log.info(summary)
    await _heartbeat(mstore, settings.environment, number, now)
    return CycleReport(cycle=number, at=now, rows=rows, breaches=breaches, declared=declared, recovered=recovered,
                       gaps=gaps, uptime_pct=uptime, uptime_samples=total, errors=errors, frozen=frozen)


async def _heartbeat(mstore: MonitorStore, environment: str, number: int, now: datetime) -> None:
    """Say that a cycle completed: in the store and as the event the watchdog's automation expects."""
    await mstore.beat(environment, now)
    emit_event(event=HEARTBEAT_EVENT,
               resource={"prefect.resource.id": heartbeat_resource(environment),
                         "prefect.resource.name": f"monitor of {environment}", "runbook.environment": environment},
               payload={"cycle": number, "at": now.isoformat()})


def _run_name() -> str:
    cycles = run_parameter("cycles", 1)
    return f"monitor {get_settings().environment}" + (f" x{cycles}" if cycles != 1 else "")


@flow(name="monitor", flow_run_name=_run_name)
async def monitor(params: MonitorParams = MonitorParams()) -> MonitorResult:
    """Probe the stack every cycle, declare breaches that hold for N cycles, note recoveries, report uptime."""
    policy = get_policy()
    interval = params.interval_seconds if params.interval_seconds is not None else policy.monitoring.interval_seconds
    reports: list[CycleReport] = []
    async with open_monitor_store() as mstore:
        for number in range(1, params.cycles + 1):
            started = time.monotonic()
            reports.append(await run_cycle(number, params, policy, mstore))
            if number < params.cycles:
                await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
        states = await mstore.states()
    if (back := await resolve_guard(GUARD, "the monitor completes its cycles again", actor="monitor")) is not None:
        get_run_logger().warning("the monitor runs again: resolved %s (the watchdog's page)", back)
    errors = [e for r in reports for e in r.errors]
    if errors:
        raise RunbookError(f"monitor: {len(errors)} action(s) failed: " + "; ".join(errors)[:1000])
    n = policy.monitoring.breach_cycles
    last = reports[-1]
    goal = policy.key_metrics.uptime_pct
    return MonitorResult(
        cycles=reports,
        declared=[d for r in reports for d in r.declared],
        gaps=last.gaps,
        persistent_gaps=sorted(s.target for s in states.values() if s.rule == GAP_RULE and s.gap_cycles >= n),
        uptime_pct=last.uptime_pct,
        uptime_target_pct=goal,
        uptime_ok=None if last.uptime_pct is None else last.uptime_pct > goal,
        uptime_samples=last.uptime_samples,
    )
