"""MTTA and MTTR per severity over a period (`runbook metrics`), from each incident's timeline."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from statistics import mean, median

from pydantic import BaseModel

from runbook.models import Incident, Severity, TimelineEvent, utcnow
from runbook.report.formatting import fmt_duration, fmt_time
from runbook.report.incident import mtta, mttr
from runbook.store import IncidentStore


class SeverityMetrics(BaseModel):
    """MTTA and MTTR of one severity over a period (seconds)."""

    severity: Severity
    incidents: int = 0
    acknowledged: int = 0
    resolved: int = 0
    mtta_seconds: float | None = None
    mttr_seconds: float | None = None
    median_mtta_seconds: float | None = None
    median_mttr_seconds: float | None = None


class Metrics(BaseModel):
    """MTTA and MTTR per severity over a period."""

    since: datetime
    until: datetime
    include_drills: bool
    by_severity: dict[Severity, SeverityMetrics]


def summarize(items: Iterable[tuple[Incident, list[TimelineEvent]]], *, since: datetime, until: datetime,
              include_drills: bool = False) -> Metrics:
    """Return MTTA/MTTR per severity of incidents declared in [since, until) (drills only when asked)."""
    acks: dict[Severity, list[float]] = {s: [] for s in Severity}
    fixes: dict[Severity, list[float]] = {s: [] for s in Severity}
    counts: dict[Severity, int] = dict.fromkeys(Severity, 0)
    for incident, timeline in items:
        if (incident.drill and not include_drills) or not (since <= incident.created_at < until):
            continue
        counts[incident.severity] += 1
        if (a := mtta(incident, timeline)) is not None:
            acks[incident.severity].append(a.total_seconds())
        if (r := mttr(incident, timeline)) is not None:
            fixes[incident.severity].append(r.total_seconds())
    return Metrics(
        since=since, until=until, include_drills=include_drills,
        by_severity={
            s: SeverityMetrics(
                severity=s, incidents=counts[s], acknowledged=len(acks[s]), resolved=len(fixes[s]),
                mtta_seconds=mean(acks[s]) if acks[s] else None, mttr_seconds=mean(fixes[s]) if fixes[s] else None,
                median_mtta_seconds=median(acks[s]) if acks[s] else None,
                median_mttr_seconds=median(fixes[s]) if fixes[s] else None,
            )
            for s in Severity
        },
    )


async def compute_metrics(store: IncidentStore, *, since: datetime, until: datetime | None = None,
                          include_drills: bool = False) -> Metrics:
    """Return MTTA and MTTR per severity over a period, from each incident's timeline."""
    until = until or utcnow()
    incidents = await store.list(include_drill=include_drills, since=since, until=until, limit=100_000)
    items = [(i, await store.timeline(i.id)) for i in incidents]
    return summarize(items, since=since, until=until, include_drills=include_drills)


def render_metrics(metrics: Metrics) -> str:
    """Return the metrics as a small text table."""
    drills = "drills included" if metrics.include_drills else "drills excluded"
    lines = [f"MTTA / MTTR from {fmt_time(metrics.since)} to {fmt_time(metrics.until)} ({drills})",
             f"{'severity':<9}{'incidents':>10}{'acked':>7}{'resolved':>9}  {'MTTA':>12}  {'MTTR':>12}"]
    for s, m in metrics.by_severity.items():
        a = fmt_duration(timedelta(seconds=m.mtta_seconds)) if m.mtta_seconds is not None else "n/a"
        r = fmt_duration(timedelta(seconds=m.mttr_seconds)) if m.mttr_seconds is not None else "n/a"
        lines.append(f"{s.value:<9}{m.incidents:>10}{m.acknowledged:>7}{m.resolved:>9}  {a:>12}  {r:>12}")
    return "\n".join(lines)
