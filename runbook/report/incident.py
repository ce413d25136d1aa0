"""The incident report (the runbook's "Incident Report Template"), computed from the timeline.

Nothing in the report is typed twice: the five key times come from timeline events, the actions taken are the
recorded side effects, the review's answers are fields of the incident record. A section with nothing recorded
says `_Not recorded yet_` instead of disappearing, so a draft shows what the review still has to fill in.

    detected                = the `declared` event (its alert's received_at when present)
    response initiated      = first paged / acknowledged / status_page / slack event
    root cause identified   = first diagnosis with details.found, else first status change to identified
    resolution implemented  = first remediation_applied
    service restored        = first verification with details.passed after the resolution (and after the last
                              reopen), else the last resolution
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from runbook.models import (
    BUSINESS_IMPACT,
    USER_IMPACT,
    ActionItem,
    Approval,
    EventKind,
    Incident,
    TimelineEvent,
    last_reopen,
    utcnow,
)
from runbook.provenance import describe
from runbook.report.formatting import fmt_duration, fmt_time
from runbook.report.timeline_svg import KeyMoment, TimelinePicture, render_timeline_svg
from runbook.store import IncidentStore

NOT_RECORDED = "_Not recorded yet_"

# The template's sections, in the template's order (the report may add sections after them).
TEMPLATE_SECTIONS = (
    "Summary",
    "Timeline",
    "Root Cause",
    "Impact",
    "Actions Taken",
    "Lessons Learned",
    "Preventive Measures",
)

KEY_TIMES = (
    ("detected", "Incident detected"),
    ("response_initiated", "Response initiated"),
    ("root_cause_identified", "Root cause identified"),
    ("resolution_implemented", "Resolution implemented"),
    ("service_restored", "Service restored"),
)

RESPONSE_KINDS = frozenset({EventKind.PAGED, EventKind.ACKNOWLEDGED, EventKind.STATUS_PAGE, EventKind.SLACK})

# Observations, not side effects: they stay out of "Actions Taken" (they are on the timeline all the same).
OBSERVATION_KINDS = frozenset({
    EventKind.DECLARED, EventKind.DUPLICATE_ALERT, EventKind.CHECK, EventKind.SLA_MISSED, EventKind.ASSESSMENT,
    EventKind.DIAGNOSIS, EventKind.RECOVERY_OBSERVED, EventKind.REPORT_WRITTEN, EventKind.NOTE,
})


# -- the figures ------------------------------------------------------------------------------------------------


class KeyTime(BaseModel):
    """One line of the template's Timeline section."""

    key: str
    label: str
    at: datetime | None = None
    actor: str | None = None
    summary: str | None = None


class ApprovalTiming(BaseModel):
    """How long a plan waited for a human decision."""

    action: str
    decision: str
    approver: str
    requested_at: datetime | None
    decided_at: datetime
    waited: timedelta | None
    via: str = "api"


class ActedVersion(BaseModel):
    """One version of the code and deployment that wrote events on the incident's timeline."""

    code_version: str | None = None
    commit: str | None = None
    deployment_id: str | None = None
    deployment_version: str | None = None
    flows: list[str] = Field(default_factory=list, description="The flows of the runs that wrote its events")
    events: int = 0
    first_at: datetime
    last_at: datetime

    def line(self) -> str:
        """Return the version in one line: code, deployment, flows, how many events and when."""
        prov = {"version": self.code_version, "commit": self.commit, "deployment_id": self.deployment_id,
                "deployment_version": self.deployment_version, "flow": ", ".join(self.flows) or None}
        what = describe({k: v for k, v in prov.items() if v}) if self.code_version else "not recorded (older store)"
        return f"{what}: {self.events} event(s), {fmt_time(self.first_at)} to {fmt_time(self.last_at)}"


def acted_versions(timeline: list[TimelineEvent]) -> list[ActedVersion]:
    """Return the versions (code + deployment) that wrote the timeline's events, in the order they first acted."""
    found: dict[tuple[Any, ...], ActedVersion] = {}
    for ev in timeline:
        prov = ev.provenance or {}
        key = (prov.get("version"), prov.get("commit"), prov.get("deployment_id"), prov.get("deployment_version"))
        seen = found.get(key)
        if seen is None:
            seen = found[key] = ActedVersion(code_version=key[0], commit=key[1], deployment_id=key[2],
                                             deployment_version=key[3], first_at=ev.at, last_at=ev.at)
        seen.events += 1
        seen.first_at, seen.last_at = min(seen.first_at, ev.at), max(seen.last_at, ev.at)
        if prov.get("flow") and prov["flow"] not in seen.flows:
            seen.flows.append(str(prov["flow"]))
    return list(found.values())


class IncidentReport(BaseModel):
    """Everything the report shows, computed from the record and its timeline."""

    incident: Incident
    timeline: list[TimelineEvent]
    key_times: list[KeyTime]
    actions: list[TimelineEvent]
    approvals: list[ApprovalTiming]
    action_items: list[ActionItem] = Field(default_factory=list)
    versions: list[ActedVersion] = Field(default_factory=list, description="The code and deployments that acted")
    reopens: list[TimelineEvent] = Field(default_factory=list,
                                         description="Each time the problem returned after a resolution (reopened)")
    mtta: timedelta | None = None
    mttr: timedelta | None = None
    generated_at: datetime = Field(default_factory=utcnow)

    def key_time(self, key: str) -> datetime | None:
        """Return the time of one key event (detected, response_initiated, …) or None."""
        return next((k.at for k in self.key_times if k.key == key), None)

    @property
    def time_to_approve(self) -> timedelta | None:
        """Return the longest wait for an approval decision, or None when nothing waited."""
        waits = [a.waited for a in self.approvals if a.waited is not None]
        return max(waits) if waits else None


def _aware(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def _first(events: Iterable[TimelineEvent], *kinds: str, after: datetime | None = None,
           where: Any = None) -> TimelineEvent | None:
    for ev in events:
        if ev.kind in kinds and (after is None or ev.at >= after) and (where is None or where(ev)):
            return ev
    return None


def _key(key: str, ev: TimelineEvent | None, at: datetime | None = None) -> KeyTime:
    label = dict(KEY_TIMES)[key]
    if ev is None and at is None:
        return KeyTime(key=key, label=label)
    return KeyTime(key=key, label=label, at=at or (ev.at if ev else None),
                   actor=ev.actor if ev else None, summary=ev.summary if ev else None)


def resolved_time(incident: Incident, timeline: list[TimelineEvent]) -> datetime | None:
    """Return when the incident was (last) resolved: the last status change to resolved, else resolved_at."""
    resolved = [e for e in timeline if e.kind == EventKind.STATUS_CHANGED and e.details.get("to") == "resolved"]
    if resolved and incident.resolved_at is not None:
        return resolved[-1].at
    return incident.resolved_at


def key_times(incident: Incident, timeline: list[TimelineEvent]) -> list[KeyTime]:
    """Return the template's five key times, from the timeline."""
    events = sorted(timeline, key=lambda e: (e.at, e.id or 0))
    declared = _first(events, EventKind.DECLARED)
    detected_at = None
    if declared is not None:
        alert = declared.details.get("alert") or {}
        detected_at = _aware(alert.get("received_at")) if isinstance(alert, dict) else None
        detected_at = detected_at or declared.at
    response = _first(events, *RESPONSE_KINDS)
    cause = _first(events, EventKind.DIAGNOSIS, where=lambda e: e.details.get("found") is True) or _first(
        events, EventKind.STATUS_CHANGED, where=lambda e: e.details.get("to") == "identified"
    )
    fix = _first(events, EventKind.REMEDIATION_APPLIED)
    # Restored is the verification that held: after the fix and after the last reopen (the problem returned).
    after = max((t for t in (fix.at if fix else None, last_reopen(events)) if t is not None), default=None)
    restored = _first(events, EventKind.VERIFICATION, after=after, where=lambda e: e.details.get("passed") is True)
    out = [
        _key("detected", declared, detected_at) if declared else
        KeyTime(key="detected", label=dict(KEY_TIMES)["detected"], at=incident.created_at),
        _key("response_initiated", response),
        _key("root_cause_identified", cause),
        _key("resolution_implemented", fix),
    ]
    if restored is not None:
        out.append(_key("service_restored", restored))
    else:
        at = resolved_time(incident, events)
        resolved_ev = _first(reversed(events), EventKind.STATUS_CHANGED,
                             where=lambda e: e.details.get("to") == "resolved")
        out.append(_key("service_restored", resolved_ev, at) if at else _key("service_restored", None))
    return out


def mtta(incident: Incident, timeline: list[TimelineEvent]) -> timedelta | None:
    """Return the time from declared to acknowledged."""
    declared = _first(timeline, EventKind.DECLARED)
    ack = _first(timeline, EventKind.ACKNOWLEDGED)
    start = declared.at if declared else incident.created_at
    end = ack.at if ack else incident.acknowledged_at
    return end - start if end else None


def mttr(incident: Incident, timeline: list[TimelineEvent]) -> timedelta | None:
    """Return the time from declared to resolved (the last resolution when it was reopened)."""
    declared = _first(timeline, EventKind.DECLARED)
    start = declared.at if declared else incident.created_at
    end = resolved_time(incident, timeline)
    return end - start if end else None


def approval_timings(approvals: list[Approval], timeline: list[TimelineEvent]) -> list[ApprovalTiming]:
    """Return how long each decision waited: Approval.requested_at, else its approval_requested event."""
    requested = [e for e in timeline if e.kind == EventKind.APPROVAL_REQUESTED]
    out: list[ApprovalTiming] = []
    for a in approvals:
        start = a.requested_at
        if start is None:
            match = [e for e in requested if e.details.get("plan_hash") == a.plan_hash and e.at <= a.at]
            start = match[-1].at if match else None
        out.append(ApprovalTiming(action=a.action or "remediation", decision=a.decision, approver=a.approver,
                                  requested_at=start, decided_at=a.at, via=a.via,
                                  waited=(a.at - start) if start else None))
    if not approvals:
        # Decisions recorded only as timeline events (no approvals row): pair them by plan hash.
        for ev in (e for e in timeline if e.kind == EventKind.APPROVAL):
            match = [e for e in requested if e.details.get("plan_hash") == ev.details.get("plan_hash")
                     and e.at <= ev.at]
            start = match[-1].at if match else None
            out.append(ApprovalTiming(action=str(ev.details.get("action") or "remediation"),
                                      decision=str(ev.details.get("decision", "")), approver=ev.actor,
                                      requested_at=start, decided_at=ev.at,
                                      via=str(ev.details.get("via") or "api"),
                                      waited=(ev.at - start) if start else None))
    return out


def build_report(incident: Incident, timeline: list[TimelineEvent], approvals: list[Approval] | None = None,
                 action_items: list[ActionItem] | None = None, *, now: datetime | None = None) -> IncidentReport:
    """Compute the report's content from the record, its timeline, approvals and action items."""
    events = sorted(timeline, key=lambda e: (e.at, e.id or 0))
    return IncidentReport(
        incident=incident,
        timeline=events,
        key_times=key_times(incident, events),
        actions=[e for e in events if e.kind not in OBSERVATION_KINDS],
        approvals=approval_timings(approvals or [], events),
        action_items=action_items or [],
        versions=acted_versions(events),
        reopens=[e for e in events if e.kind == EventKind.REOPENED],
        mtta=mtta(incident, events),
        mttr=mttr(incident, events),
        generated_at=now or utcnow(),
    )


async def load_report(store: IncidentStore, incident_id: str, *, now: datetime | None = None) -> IncidentReport:
    """Read an incident's record, timeline, approvals and action items and compute its report."""
    return build_report(await store.get(incident_id), await store.timeline(incident_id),
                        await store.approvals(incident_id), await store.action_items(incident_id), now=now)


# -- Markdown ---------------------------------------------------------------------------------------------------


def _text(value: str | None) -> str:
    return value.strip() if value and value.strip() else NOT_RECORDED


def _one_line(value: str) -> str:
    return " ".join(value.split())


def artifact_key(incident_id: str) -> str:
    """Return the Prefect artifact key of an incident's report (lowercase letters, digits, dashes)."""
    return "report-" + re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", incident_id.lower())).strip("-")


def picture_name(incident_id: str) -> str:
    """Return the file name of the timeline picture next to the report."""
    return f"{incident_id}-timeline.svg"


def timeline_picture(report: IncidentReport) -> TimelinePicture:
    """Return what the timeline picture shows of a report, as plain data."""
    inc = report.incident
    return TimelinePicture(
        title=f"{inc.id} · {inc.severity} · {inc.title}",
        key_times=[KeyMoment(k.key, k.label, k.at) for k in report.key_times],
        events=report.timeline,
        mtta=report.mtta,
        mttr=report.mttr,
        resolved_at=inc.resolved_at,
        generated_at=report.generated_at,
    )


def acknowledged_by(timeline: list[TimelineEvent]) -> str | None:
    """Return who gave the first acknowledgement and through which channel (`Dana via pagerduty (user PX1)`)."""
    ack = _first(timeline, EventKind.ACKNOWLEDGED)
    if ack is None:
        return None
    via, identity = ack.details.get("via"), ack.details.get("identity")
    email = ack.details.get("email")
    extra = ", ".join(str(p) for p in (email, f"{via} user {identity}" if identity else None) if p)
    return f"{_one_line(ack.actor)} via {via or 'unknown channel'}" + (f" ({_one_line(extra)})" if extra else "")


def render_markdown(report: IncidentReport, *, picture: str | None = None) -> str:
    """Render the runbook's report template; `picture` is the (relative) link of the timeline SVG."""
    inc = report.incident
    detected = report.key_time("detected")
    lines: list[str] = [f"# Incident Report: {inc.title}", ""]

    lines += ["## Summary", ""]
    lines.append(_text(inc.summary) if inc.summary.strip() else inc.title)
    lines.append("")
    lines.append(f"- Incident: `{inc.id}`{' (drill)' if inc.drill else ''}")
    lines.append(f"- Severity: {inc.severity} ({inc.severity.label}: {inc.severity.description})")
    lines.append(f"- Status: {inc.status} ({inc.status.meaning})")
    lines.append(f"- Environment: {inc.environment}")
    if inc.scenario:
        lines.append(f"- Scenario: {inc.scenario}")
    lines.append(f"- Duration: {fmt_duration(report.mttr) if report.mttr else 'ongoing'}")
    if report.reopens:
        lines.append(f"- Reopened: {len(report.reopens)} time(s), the problem returned after a resolution")
    lines.append("")

    lines += ["## Timeline", ""]
    for kt in report.key_times:
        if kt.at is None:
            lines.append(f"- {NOT_RECORDED} - {kt.label}")
            continue
        offset = f" (+{fmt_duration(kt.at - detected)})" if detected and kt.key != "detected" else ""
        what = f": {_one_line(kt.summary)}" if kt.summary else ""
        lines.append(f"- {fmt_time(kt.at)}{offset} - {kt.label}{what}")
    lines.append("")
    lines.append(f"- MTTA (declared → acknowledged): {fmt_duration(report.mtta)}")
    if ack_line := acknowledged_by(report.timeline):
        lines.append(f"- Acknowledged by {ack_line}")
    final = " (to the final resolution)" if report.reopens else ""
    lines.append(f"- MTTR (declared → resolved{final}): {fmt_duration(report.mttr)}")
    for ev in report.reopens:
        after = ev.details.get("minutes_after_resolution")
        gap = f", {fmt_duration(timedelta(minutes=float(after)))} after it was resolved" \
            if isinstance(after, int | float) else ""
        lines.append(f"- Reopened {fmt_time(ev.at)}{gap}: {_one_line(ev.summary)}")
    for a in report.approvals:
        lines.append(f"- Time to approve ({a.action}, {a.decision} by {a.approver} via {a.via}): "
                     f"{fmt_duration(a.waited)}")
    if picture:
        lines += ["", f"![Incident timeline]({picture})"]
    lines.append("")

    lines += ["## Root Cause", ""]
    if inc.root_cause and inc.root_cause.strip():
        lines.append(inc.root_cause.strip())
    else:
        lines.append(NOT_RECORDED)
        found = next((k for k in report.key_times if k.key == "root_cause_identified" and k.summary), None)
        if found is not None:
            lines += ["", f"Automated diagnosis, to be confirmed at the review: {_one_line(found.summary or '')}"]
    lines.append("")

    lines += ["## Impact", ""]
    lines.append(f"- User impact: {inc.impact.user.value} ({USER_IMPACT[inc.impact.user]})")
    lines.append(f"- Business impact: {inc.impact.business.value} ({BUSINESS_IMPACT[inc.impact.business]})")
    lines.append(f"- Financial impact: {_text(inc.financial_impact)}")
    lines.append("")

    lines += ["## Actions Taken", ""]
    if not report.actions:
        lines.append(NOT_RECORDED)
    for ev in report.actions:
        lines.append(f"- {fmt_time(ev.at)} - {ev.actor} - {ev.kind}: {_one_line(ev.summary)}")
    lines.append("")

    lines += ["## Lessons Learned", "", _text(inc.lessons_learned), ""]
    lines += ["## Preventive Measures", "", _text(inc.preventive_measures), ""]

    lines += ["## Action Items", ""]
    if not report.action_items:
        lines.append(NOT_RECORDED)
    for item in report.action_items:
        box = "x" if item.done else " "
        lines.append(f"- [{box}] {item.title} (owner: {item.owner}, due {item.due.isoformat()})")
    lines.append("")
    lines += ["## Versions", "", "The code and Prefect deployments that wrote this incident's timeline:", ""]
    lines += [f"- {v.line()}" for v in report.versions] or [NOT_RECORDED]
    lines.append("")
    lines.append(f"_Generated {fmt_time(report.generated_at)} from the incident record and its timeline._")
    return "\n".join(lines) + "\n"


# -- files and the artifact -------------------------------------------------------------------------------------


class ReportFiles(BaseModel):
    """Where a report was written and what it says."""

    incident_id: str
    markdown_path: Path
    picture_path: Path
    markdown: str
    artifact_key: str
    artifact_created: bool = False


def _in_prefect_run() -> bool:
    try:
        from prefect.context import FlowRunContext, TaskRunContext
    except ImportError:  # pragma: no cover - prefect is a dependency
        return False
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


async def write_report(store: IncidentStore, incident_id: str, *, reports_dir: Path | None = None,
                       now: datetime | None = None) -> ReportFiles:
    """Write `<id>.md` and its timeline SVG to the reports directory; publish an artifact inside a Prefect run."""
    if reports_dir is None:
        from runbook.settings import get_settings

        reports_dir = get_settings().reports_dir
    report = await load_report(store, incident_id, now=now)
    reports_dir.mkdir(parents=True, exist_ok=True)
    picture = reports_dir / picture_name(incident_id)
    picture.write_text(render_timeline_svg(timeline_picture(report)), encoding="utf-8")
    markdown = render_markdown(report, picture=picture.name)
    path = reports_dir / f"{incident_id}.md"
    path.write_text(markdown, encoding="utf-8")
    files = ReportFiles(incident_id=incident_id, markdown_path=path, picture_path=picture, markdown=markdown,
                        artifact_key=artifact_key(incident_id))
    if _in_prefect_run():
        from prefect.artifacts import acreate_markdown_artifact

        # The UI cannot follow a relative file link: the artifact names the picture's path instead.
        published = render_markdown(report, picture=None) + f"\nTimeline picture: `{picture.resolve()}`\n"
        await acreate_markdown_artifact(markdown=published, key=files.artifact_key,
                                        description=f"Incident report of {incident_id}")
        files.artifact_created = True
    return files
