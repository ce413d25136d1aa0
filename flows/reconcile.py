"""Drift repair (scheduled every 5 minutes): the tools the response touched must agree with the incident record.

Each recent incident (declared within `lookback_hours`, and every open one) of this environment is compared with
what Statuspage and PagerDuty show, read through their APIs:

- a resolved incident whose status-page incident is not resolved: it is resolved there (`post_status_update`);
- a resolved incident whose PagerDuty incident is still open (triggered or acknowledged; read through the REST API,
  so only with RUNBOOK_PAGERDUTY_API_TOKEN): its page is resolved (`resolve_pages`);
- an open P0/P1 (of the severities with a status page) without a status-page incident: one is created at the
  incident's status (`post_status_update`);
- a degraded component that no open incident (ours, or one a person opened on Statuspage) explains: set back to
  operational (`restore_component`).

Every repair goes through the response's own idempotent tasks and is recorded on the incident's timeline
(`drift_repaired`). Nothing to repair is a named success ("nothing to repair, N incidents checked"), in the result,
the log and the `reconcile` artifact. Safe at any time and beside a live response: an incident whose record changed
within `grace_seconds` (60 s at least: the response's own calls take that long) is left to whoever is acting on it,
as is an open incident declared or announced within it; each repair re-reads the record just before it acts. Time
is the runbook clock's (`runbook.clock`). A tool that cannot be read is named as not checked, never as agreement.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import acreate_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from flows._response import FIRST_WORDS
from runbook import clock
from runbook.errors import IntegrationError
from runbook.models import EventKind, Incident, Severity, Status, TimelineEvent, utcnow
from runbook.policy import get_policy
from runbook.settings import get_settings
from runbook.store import open_store
from tasks.incident import read_incident, record
from tasks.pagerduty import read_page_statuses, resolve_pages
from tasks.statuspage import affected_components, post_status_update, read_status_page, restore_component

ARTIFACT_KEY = "reconcile"
DEGRADED = {"degraded_performance", "partial_outage", "major_outage"}
URGENT = {Severity.P0, Severity.P1}
WORDS = {Status.IDENTIFIED: "Root cause identified; implementing a fix.",
         Status.MONITORING: "A fix has been applied; monitoring the results.",
         Status.RESOLVED: "Issue resolved, normal operations restored."}
DriftKind = Literal["statuspage_unresolved", "pagerduty_open", "statuspage_missing", "component_degraded"]


class ReconcileParams(BaseModel):
    """Parameters of the drift repair."""

    lookback_hours: int = Field(72, ge=1, le=2160,
                                description="Check incidents declared within this many hours (and every open one)")
    grace_seconds: int = Field(60, ge=60, le=3600,
                               description="Leave an incident whose record changed within this many seconds to the "
                                           "response acting on it")
    dry_run: bool = Field(False, description="Report the drift, repair nothing")


class Drift(BaseModel):
    """One disagreement between a tool and the record, and what was done about it."""

    kind: DriftKind
    incident_id: str | None = None
    target: str = Field(description="The status-page incident, the PagerDuty dedup key or the component")
    detail: str
    repaired: bool = False
    error: str | None = None

    def line(self) -> str:
        """Return the drift in one line, with its outcome."""
        outcome = "repaired" if self.repaired else f"NOT repaired: {self.error}" if self.error else "not repaired"
        return f"{self.incident_id or '(no incident)'}: {self.detail} — {outcome}"


class ReconcileOutcome(BaseModel):
    """What the drift repair found and did."""

    checked: int = Field(0, description="Incidents compared with the tools")
    drifts: list[Drift] = Field(default_factory=list)
    left_alone: list[str] = Field(default_factory=list, description="Incidents a live response may be acting on")
    not_checked: list[str] = Field(default_factory=list, description="Tools that could not be read, and why")
    summary: str = ""

    @property
    def nothing_to_repair(self) -> bool:
        return not self.drifts


# PagerDuty REST reads of one reconcile run (every 5 minutes: at most 24 a minute, beside its limit of 960).
PAGE_READS_PER_RUN = 120


@task(name="list_incidents_to_reconcile", retries=0, cache_policy=NO_CACHE)
async def list_incidents_to_reconcile(since: datetime) -> list[tuple[Incident, list[TimelineEvent]]]:
    """Return this environment's incidents declared since a time and every open one, each with its timeline."""
    settings = get_settings()
    async with open_store() as store:
        found = {i.id: i for i in await store.list(since=since, limit=10_000)}
        found.update({i.id: i for i in await store.list(open_only=True, limit=10_000)})
        mine = [i for i in found.values() if i.drill == settings.drill and i.environment == settings.environment]
        return [(i, await store.timeline(i.id)) for i in sorted(mine, key=lambda i: i.created_at)]


def _age(now: datetime, at: datetime | None) -> float:
    return (now - at).total_seconds() if at is not None else float("inf")


def _paged_keys(timeline: list[TimelineEvent]) -> list[str]:
    return sorted({str(e.details["dedup_key"]) for e in timeline
                   if e.kind in {EventKind.PAGED, EventKind.ESCALATED} and e.details.get("dedup_key")})


def _components_shown(timeline: list[TimelineEvent]) -> set[str]:
    """Return the components the incident's status-page updates named."""
    return {str(c) for e in timeline if e.kind == EventKind.STATUS_PAGE for c in e.details.get("components") or {}}


async def _read(what: str, out: ReconcileOutcome, call: Any) -> Any:
    """Read a tool; a failure (or no configuration) is named as not checked, never taken for agreement."""
    try:
        return await call
    except IntegrationError as exc:
        out.not_checked.append(f"{what}: {exc}")
        return None


async def _repair(drift: Drift, act: Any) -> None:
    """Run a repair, recording it on the incident's timeline; a vendor failure is the drift's error."""
    try:
        await act
    except IntegrationError as exc:
        drift.error = str(exc)
        return
    drift.repaired = True
    await record(drift.incident_id, EventKind.DRIFT_REPAIRED, f"Reconcile: {drift.detail}; repaired",
                 {"drift": drift.kind, "target": drift.target}, actor="reconcile")


def find_drift(incidents: list[tuple[Incident, list[TimelineEvent]]], page: dict[str, Any] | None,
               now: datetime, grace: float, out: ReconcileOutcome) -> tuple[list[Drift], dict[str, list[str]]]:
    """Compare the records with the status page; return the drifts and, per resolved incident, its page keys."""
    drifts: list[Drift] = []
    pages: dict[str, list[str]] = {}
    status_page_for = set(get_policy().communication.status_page_for)
    unresolved = {i.id: i for i in (page or {}).get("unresolved", [])}
    held = {i.statuspage_incident_id for i, _ in incidents if i.status.is_open and i.statuspage_incident_id}
    busy: set[str] = set()  # components of incidents left alone or being repaired: not touched on their own
    for incident, timeline in incidents:
        changed = _age(now, max((e.at for e in timeline), default=incident.created_at))
        comps = affected_components(incident, list((page or {}).get("components", {})))
        if incident.status is Status.RESOLVED:
            if min(changed, _age(now, incident.resolved_at)) < grace:
                out.left_alone.append(f"{incident.id}: resolved, changed {changed:.0f}s ago; left to the response")
                busy.update(comps)
                continue
            sp_id = incident.statuspage_incident_id
            if sp_id and sp_id in unresolved and sp_id not in held:
                drifts.append(Drift(kind="statuspage_unresolved", incident_id=incident.id, target=sp_id,
                                    detail=f"status page incident {sp_id} is {unresolved[sp_id].status} although "
                                           "the incident is resolved"))
                busy.update(comps)
            if keys := _paged_keys(timeline):
                pages[incident.id] = keys
            continue
        busy.update(comps)
        if incident.severity in URGENT & status_page_for and not incident.statuspage_incident_id and page is not None:
            announced = [e.at for e in timeline if e.kind == EventKind.STATUS_PAGE]
            if min(_age(now, incident.created_at), _age(now, max(announced, default=None))) < grace:
                out.left_alone.append(f"{incident.id}: open {incident.severity}, declared or announced within "
                                      f"{grace:.0f}s; left to the response")
                continue
            drifts.append(Drift(kind="statuspage_missing", incident_id=incident.id, target=incident.id,
                                detail=f"open {incident.severity} has no status page incident"))
    if page is not None:
        names = page.get("names", {})
        explained = {names.get(cid, cid) for i in unresolved.values() if i.id not in
                     {x.statuspage_incident_id for x, _ in incidents} for cid in i.component_ids}
        for component, status in sorted(page.get("components", {}).items()):
            if status not in DEGRADED or component in busy or component in explained:
                continue
            shown = [i.id for i, timeline in incidents if component in _components_shown(timeline)]
            drifts.append(Drift(kind="component_degraded", incident_id=shown[-1] if shown else None,
                                target=component, detail=f"component {component} is {status} with no open incident "
                                                         "that explains it"))
    return drifts, pages


async def _page_drift(pages: dict[str, list[str]], out: ReconcileOutcome) -> list[Drift]:
    """Return the pages PagerDuty shows open for resolved incidents (read through the REST API).

    Newest incident first, at most PAGE_READS_PER_RUN pages a run: PagerDuty's REST API allows 960 requests a
    minute per key, shared with the escalations' acknowledgement polls; every incident is read in each run while it
    is among the newest, and the older ones left are named in not_checked."""
    drifts: list[Drift] = []
    budget = PAGE_READS_PER_RUN
    newest_first = list(reversed(pages.items()))  # pages is in declaration order
    for n, (incident_id, keys) in enumerate(newest_first):
        if len(keys) > budget:
            out.not_checked.append(f"pagerduty: the pages of {len(newest_first) - n} older resolved incident(s) not "
                                   f"read this run (at most {PAGE_READS_PER_RUN} reads a run)")
            break
        budget -= len(keys)
        statuses = await _read("pagerduty", out, read_page_statuses(keys))
        if statuses is None:
            break
        drifts += [Drift(kind="pagerduty_open", incident_id=incident_id, target=key,
                         detail=f"PagerDuty incident of page {key} is {status} although the incident is resolved")
                   for key, status in statuses.items() if status in ("triggered", "acknowledged")]
    return drifts


async def _fix(drift: Drift) -> None:
    """Repair one drift through the response's tasks, after re-reading the record (it may have moved on)."""
    if drift.kind == "component_degraded":
        await _repair(drift, restore_component(drift.target, drift.incident_id, "no open incident explains it"))
        return
    assert drift.incident_id is not None
    current = await read_incident(drift.incident_id)
    if drift.kind == "statuspage_missing":
        if not current.status.is_open or current.statuspage_incident_id:
            drift.error = "the record moved on meanwhile; left alone"
            return
        words = FIRST_WORDS[current.severity] if current.status is Status.INVESTIGATING else WORDS[current.status]
        await _repair(drift, post_status_update(current.id, current.status, words))
        return
    if current.status is not Status.RESOLVED:
        drift.error = f"the incident is {current.status.value} again; left alone"
        return
    if drift.kind == "statuspage_unresolved":  # `since`: post "resolved" again though a failed post is on record
        await _repair(drift, post_status_update(current.id, Status.RESOLVED, WORDS[Status.RESOLVED], since=utcnow()))
    else:
        await _repair(drift, resolve_pages(current, keys=[drift.target]))


def _summary(out: ReconcileOutcome, dry_run: bool) -> str:
    if out.nothing_to_repair:
        text = f"nothing to repair, {out.checked} incidents checked"
    else:
        done = sum(d.repaired for d in out.drifts)
        verb = "found (dry run)" if dry_run else f"repaired {done} of"
        text = f"{verb} {len(out.drifts)} drift(s), {out.checked} incidents checked"
    if out.not_checked:
        text += f"; not checked: {'; '.join(out.not_checked)}"
    return text


def _markdown(out: ReconcileOutcome) -> str:
    lines = ["# Drift repair", "", out.summary, ""]
    for title, items in (("Drift", [d.line() for d in out.drifts]), ("Left to a live response", out.left_alone),
                         ("Not checked", out.not_checked)):
        if items:
            lines += [f"## {title}", "", *[f"- {item}" for item in items], ""]
    return "\n".join(lines)


@flow(name="reconcile", description="Repair drift between the incident record and Statuspage / PagerDuty.")
async def reconcile(params: ReconcileParams = ReconcileParams()) -> ReconcileOutcome:
    """Compare each recent incident with Statuspage and PagerDuty and repair what disagrees."""
    logger = get_run_logger()
    now = clock.now()
    out = ReconcileOutcome()
    incidents = await list_incidents_to_reconcile(now - timedelta(hours=params.lookback_hours))
    out.checked = len(incidents)
    page = await _read("statuspage", out, read_status_page())
    drifts, pages = find_drift(incidents, page, now, params.grace_seconds, out)
    out.drifts = drifts + await _page_drift(pages, out)
    if not params.dry_run:
        for drift in out.drifts:
            await _fix(drift)
    out.summary = _summary(out, params.dry_run)
    (logger.info if out.nothing_to_repair or all(d.repaired for d in out.drifts) else logger.warning)(out.summary)
    for line in [d.line() for d in out.drifts] + out.left_alone:
        logger.info(line)
    await acreate_markdown_artifact(markdown=_markdown(out), key=ARTIFACT_KEY, description=out.summary[:500])
    return out
